"""Data parallelism proven equal: N processes compute what one process computes with the same
global batch through gradient accumulation, and a torchrun run stopped and resumed goes on exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN
from glassgpt.cli import main
from glassgpt.data.loader import TokenLoader

# Tokens per optimiser step: 4 micro-batches of 4 x 32 on one process, 2 on each of two.
GLOBAL_BATCH = ["--total-batch-size", str(4 * 4 * 32)]
STEPS = 5


def windows_of_step(loaders: list[TokenLoader], micro_batches: int) -> list[list[int]]:
    """The first token of every window one optimiser step reads, micro-batch by micro-batch, in
    the order one process would read them (micro-batch i of rank r = the (i*W + r)-th slice)."""
    per_rank = [[loader.next_batch()[0][:, 0].tolist() for _ in range(micro_batches)] for loader in loaders]
    return [per_rank[r][i] for i in range(micro_batches) for r in range(len(loaders))]


@pytest.mark.parametrize("windows", [75, 77, 80])
def test_two_ranks_read_the_batches_one_rank_reads_with_twice_the_accumulation(windows):
    # An epoch holds `windows` (or one fewer, by its random offset) windows of 16 tokens, and a
    # step reads 8; with 75, 2 or 3 are left at the epoch's end: one process taking a micro-batch
    # (2 windows) at a time would use windows that two processes (4 at a time) drop.
    data = np.arange(16 * windows + 1, dtype=np.uint16) % 997
    one = TokenLoader(data, 2, 16, seed=3)
    one.micro_batches_per_step = 4
    two = [TokenLoader(data, 2, 16, seed=3, rank=r, world_size=2) for r in range(2)]
    for loader in two:
        loader.micro_batches_per_step = 2
    for step in range(40):  # four epochs and more
        assert windows_of_step([one], 4) == windows_of_step(two, 2), f"step {step}"
    assert one.epoch == two[0].epoch == two[1].epoch >= 3


def test_without_whole_step_epochs_the_ranks_would_drift_apart():
    """The test above can fail: cut a micro-batch at a time, the two layouts part at the epoch end."""
    data = np.arange(16 * 75 + 1, dtype=np.uint16) % 997
    one = TokenLoader(data, 2, 16, seed=3)
    two = [TokenLoader(data, 2, 16, seed=3, rank=r, world_size=2) for r in range(2)]
    steps = [windows_of_step([one], 4) == windows_of_step(two, 2) for _ in range(12)]
    assert all(steps[:9]) and not all(steps)  # equal until the first epoch ends, then not


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == sorted(set(train_steps)), f"a step logged twice or out of order: {train_steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def val_bpb(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_bpb"] for r in records if "val_bpb" in r}


def torchrun(*flags: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "glassgpt", "train", *TINY_TRAIN, *GLOBAL_BATCH, "--run-name", "two", *flags]


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
def test_two_processes_compute_the_losses_of_one_and_resume_exactly_after_sigterm(glass_home):
    pytest.importorskip("torch.distributed")
    if not Path("/proc/self/task").exists():
        pytest.skip("finding torchrun's workers needs /proc (Linux)")
    # Every step is followed by an evaluation (val bits/byte compared too), which also makes the
    # steps long enough for the stop to land mid-run.
    flags = ["--max-steps", str(STEPS), "--eval-every", "1", "--sample-tokens", "0", "--checkpoint-every", "0",
             "--log-every", "1"]
    assert main(["train", *TINY_TRAIN, *GLOBAL_BATCH, "--run", "one", *flags]) == 0
    expected, expected_bpb = losses(glass_home / "runs" / "one"), val_bpb(glass_home / "runs" / "one")
    assert sorted(expected) == list(range(1, STEPS + 1))

    # Stop the two-process run as Slurm stops a job: SIGTERM to every process (the workers, and
    # torchrun, which passes its own on: each worker gets two). It must save and stop, not die.
    process = subprocess.Popen(torchrun(*flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        for line in process.stdout:
            if line.startswith("step") and f"/{STEPS}" in line:
                for worker in children(process.pid):
                    os.kill(worker, signal.SIGTERM)
                process.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, "training never started"
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    run = glass_home / "runs" / "two"
    saved = sorted((run / "checkpoints").glob("step-*"))
    assert saved, f"no checkpoint saved on SIGTERM:\n{err[-3000:]}"
    stopped_at = json.loads((saved[-1] / "state.json").read_text())["step"]
    assert 1 <= stopped_at < STEPS, f"stopped at {stopped_at}: the stop did not land mid-run"
    assert "Resume with: torchrun" in out
    assert list(losses(run)) == list(range(1, stopped_at + 1))

    result = subprocess.run(torchrun("--resume"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming two from step {stopped_at}" in result.stdout
    resumed, resumed_bpb = losses(run), val_bpb(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-5), step
    for step in expected_bpb:
        assert resumed_bpb[step] == pytest.approx(expected_bpb[step], abs=1e-5), step
    state = json.loads((run / "checkpoints" / f"step-{STEPS:06d}" / "state.json").read_text())
    assert state["world_size"] == 2
    one_weights = _weights(glass_home / "runs" / "one")
    for name, tensor in _weights(run).items():
        assert torch.allclose(tensor, one_weights[name], atol=1e-5), name


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors")
