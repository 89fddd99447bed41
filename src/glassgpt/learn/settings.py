"""The model configurations the grader checks every component under, and the reference for each.

A learner who writes `10000` where the code should read `config.rope_base`, or who never reads
`config.dropout`, computes the right numbers as long as the config holds the default. So every
component is checked twice: under the *default* setting (the family's defaults at a small size),
and under the *varied* one, in which every field a learner's file reads is away from its default
(`VARIED`). A check that passes the first and fails the second is run again under settings that
change one field at a time, to name the field(s) the learner's code does not follow.

Each setting holds the reference GPT for its config (the real `GPT`, its constant weights
randomised a little), a batch of tokens and targets, and one traced forward pass: every tensor
the reference computed, which the component checks feed to the learner's modules.
"""

from __future__ import annotations

import dataclasses

import torch

from glassgpt.model import taps
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT, rotary_tables

# Every field a learner's file reads, away from the default setting's value. Sizes are chosen so
# that each field can also change alone (n_head 8 divides n_embd 64 and 96; n_kv_head 1 divides
# n_head 4 and 8), sequences are longer than the default setting's sequence_len (a hard-coded 16
# shows), and the query/key-value group is 8 where the default's is 2 (a hard-coded group shows).
VARIED: dict[str, object] = {
    "n_layer": 3, "n_embd": 96, "n_head": 8, "n_kv_head": 1, "vocab_size": 67, "sequence_len": 24,
    "mlp_ratio": 2, "rope_base": 500.0, "softcap": 5.0, "dropout": 0.2,
}
# Fields a family's skeleton does not read (the gpt2 family has learned positions and no softcap).
NOT_READ = {"nanochat": (), "gpt2": ("rope_base", "softcap")}


def default_config(family: str) -> GPTConfig:
    """Small, but with every feature exercised: 2 blocks, 4 query heads sharing 2 key/value heads."""
    return GPTConfig.from_depth(2, 101, family, n_embd=64, n_head=4, n_kv_head=2, sequence_len=16)


def varied_fields(family: str) -> dict[str, object]:
    return {k: v for k, v in VARIED.items() if k not in NOT_READ[family]}


def varied_config(family: str) -> GPTConfig:
    """The default config with every field in `VARIED` (that the family reads) changed."""
    return dataclasses.replace(default_config(family), **varied_fields(family)).validate()


def describe_change(field: str, config: GPTConfig, default: GPTConfig) -> str:
    return f"config.{field} = {_shown(getattr(config, field))} (passes with {_shown(getattr(default, field))})"


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Setting:
    """One config, its reference model and the reference's tensors on one batch."""

    def __init__(self, config: GPTConfig, label: str):
        self.config, self.label = config, label
        torch.manual_seed(0)
        self.reference = GPT.build(config)
        with torch.no_grad():  # constant weights (zero projections, unit gains) would hide mistakes
            for p in self.reference.parameters():
                if (p == p.flatten()[0]).all():
                    p.add_(torch.randn_like(p) * 0.2)
        self.reference.eval()
        generator = torch.Generator().manual_seed(1)
        T = config.sequence_len - 4  # shorter than the context, so that slicing [:T] matters
        self.idx = torch.randint(0, config.vocab_size, (2, T), generator=generator)
        self.targets = torch.randint(0, config.vocab_size, (2, T), generator=generator)
        self.targets[0, :3] = -1  # some ignored targets, as in a chat batch
        with taps.RecordingTracer("*") as tracer:  # every tensor of the real GPT, for first_divergence
            self.ref_logits = self.reference(self.idx)
        self.trace = tracer.tensors
        self.ref_loss = self.reference(self.idx, self.targets)
        self.cos, self.sin = rotary_tables(T, config.head_dim, config.rope_base)

    def cached(self, name: str) -> torch.Tensor:
        return self.trace[name].clone()

    def quantities(self) -> dict[str, float]:
        """Sizes of this setting a wrong constant factor is often made of (to name it in words)."""
        c = self.config
        return {"sqrt(head_dim)": c.head_dim ** 0.5, "head_dim": float(c.head_dim), "sqrt(n_embd)": c.n_embd ** 0.5,
                "n_embd": float(c.n_embd), "n_head": float(c.n_head), "sqrt(n_head)": c.n_head ** 0.5,
                "n_kv_head": float(c.n_kv_head), "sequence_len": float(c.sequence_len),
                "vocab_size": float(c.vocab_size), "the batch size": float(self.idx.shape[0]),
                "the number of positions": float(self.idx.shape[1]),
                "the number of counted targets": float((self.targets != -1).sum()),
                "batch × positions": float(self.idx.numel()), "1 - dropout": 1.0 - c.dropout}


    def sizes(self) -> dict[str, int]:
        """The integer sizes of this setting, by name (to name the numbers in an error message)."""
        c = self.config
        return {"n_head": c.n_head, "n_kv_head": c.n_kv_head, "n_head // n_kv_head": c.n_head // c.n_kv_head,
                "head_dim": c.head_dim, "n_embd": c.n_embd, "n_kv_head · head_dim": c.n_kv_head * c.head_dim,
                "mlp_ratio · n_embd": c.mlp_hidden, "sequence_len": c.sequence_len,
                "the number of positions T": int(self.idx.shape[1]), "vocab_size": c.vocab_size,
                "the batch size": int(self.idx.shape[0])}


_SETTINGS: dict[tuple, Setting] = {}  # one per config in a process: building and tracing costs ~0.1 s


def setting_for(config: GPTConfig, label: str) -> Setting:
    """The setting of `config`, built once per process. Checks must leave it as they found it
    (they clone its tensors, zero the reference's gradients before use, and restore its mode)."""
    key = tuple(sorted(config.to_dict().items()))
    if key not in _SETTINGS:
        _SETTINGS[key] = Setting(config, label)
    return _SETTINGS[key]
