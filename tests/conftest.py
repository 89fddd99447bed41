"""Shared fixtures. Every test runs with its own cache root (GLASSGPT_HOME) and, for data, the
offline mirror (GLASSGPT_DATA_MIRROR, default ../shared/data): hermetic and network-free."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("GLASSGPT_DATA_MIRROR") or REPO.parent / "shared" / "data")


@pytest.fixture(autouse=True)
def glass_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache root for every test, with the data mirror set."""
    home = tmp_path / "glassgpt-home"
    monkeypatch.setenv("GLASSGPT_HOME", str(home))
    monkeypatch.setenv("GLASSGPT_DATA_MIRROR", str(MIRROR))
    monkeypatch.setenv("NO_COLOR", "1")
    return home


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    path = MIRROR / "tinyshakespeare" / "input.txt"
    if not path.exists():
        pytest.skip(f"no data mirror at {MIRROR} (set GLASSGPT_DATA_MIRROR)")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tokenizer_512(shakespeare_text):
    """A small BPE tokenizer trained on tinyshakespeare's train split (session-wide: ~0.2 s)."""
    from glassgpt.tokenizer import Tokenizer

    return Tokenizer.train([shakespeare_text[: int(len(shakespeare_text) * 0.9)]], 512)


def tiny_config(family: str = "nanochat", **overrides) -> GPTConfig:
    """A model small enough for a test to run forward and backward in milliseconds."""
    fields = dict(n_embd=32, n_head=4, sequence_len=32)
    fields.update(overrides)
    depth = fields.pop("depth", 2)
    vocab = fields.pop("vocab_size", 97)
    return GPTConfig.from_depth(depth, vocab, family, **fields)


def tiny_model(config: GPTConfig | None = None, seed: int = 0, random_outputs: bool = True) -> GPT:
    """A built model; `random_outputs` adds noise to every parameter that starts constant (zero
    output projections, zero biases, unit gains), so that every path carries signal: a zero
    matrix or a unit gain hides many bugs."""
    config = config or tiny_config()
    torch.manual_seed(seed)
    model = GPT.build(config)
    if random_outputs:
        with torch.no_grad():
            for p in model.parameters():
                if (p == p.flatten()[0]).all():
                    p.add_(torch.randn_like(p) * 0.1)
    return model


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, input: str | None = None):
    """Run `python -m glassgpt ARGS` in a subprocess (exit codes, signals, real stdout/stderr)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "glassgpt", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=input)


# Flags for a training run that takes a few seconds on a CPU.
TINY_TRAIN = ["--data", "tinyshakespeare", "--vocab-size", "512", "--depth", "1", "--n-embd", "32",
              "--n-head", "2", "--seq-len", "32", "--device-batch-size", "4", "--eval-batch-size", "64",
              "--sample-tokens", "8", "--dtype", "fp32", "--device", "cpu"]


def train_once(tmp_path_factory, name: str, *flags: str) -> Path:
    """The runs folder of a tiny base run `name`, trained in a cache root of its own: for a
    module-scoped fixture (the per-test cache root does not exist yet), whose tests copy it in."""
    from glassgpt.cli import main

    home = tmp_path_factory.mktemp(f"{name}-home")
    settings = {"GLASSGPT_HOME": str(home), "GLASSGPT_DATA_MIRROR": str(MIRROR)}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        assert main(["train", *TINY_TRAIN, "--run", name, *flags]) == 0
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return home / "runs"
