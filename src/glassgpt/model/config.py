"""GPTConfig: every architectural choice of the reference model, each one an independent switch.

Two families are presets of the same config:

- `nanochat`: rotary positions, QK-norm, parameter-free RMSNorm (after the embedding, before each
  block part, before the head), ReLU², untied embedding and head, logit softcap 15, no biases,
  zero-initialised output projections. Width = 64 x depth, head_dim 128.
- `gpt2`: learned positions, LayerNorm with gain and bias, GELU, tied embedding and head, biases
  (dropout is available for it, default 0 as in nanoGPT). Width = 64 x depth, head_dim 64 (depth
  12 is GPT-2 small).

Experiments flip one switch at a time, so no switch implies another.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from glassgpt.errors import UsageError

FAMILIES = ("nanochat", "gpt2")
POSITIONS = ("rope", "learned", "none")
NORMS = ("rms", "layer", "none")
NORM_PLACEMENTS = ("pre", "post")
ACTIVATIONS = ("relu2", "gelu", "relu", "silu")


@dataclass
class GPTConfig:
    """The architecture. Field docs double as `--help` text for `glassgpt train --FIELD VALUE`."""

    vocab_size: int = 4096
    """Rows of the embedding and the head: the tokenizer's vocabulary, special tokens included."""
    sequence_len: int = 1024
    """Longest context the model is built for (sizes the rotary tables and learned positions)."""
    n_layer: int = 4
    """Number of transformer blocks (the depth)."""
    n_embd: int = 256
    """Width of the residual stream."""
    n_head: int = 2
    """Query heads; head_dim = n_embd / n_head."""
    n_kv_head: int = 2
    """Key/value heads: n_head for multi-head, 1 for multi-query, in between for grouped-query."""
    mlp_ratio: int = 4
    """MLP hidden width = mlp_ratio x n_embd."""
    position: str = "rope"
    """Position information: rope (rotate q and k) | learned (added embedding) | none."""
    rope_base: float = 10000.0
    """Base of the rotary frequencies: dimension pair i turns at base^(-2i/head_dim) radians/token."""
    norm: str = "rms"
    """Normalisation: rms (RMSNorm) | layer (LayerNorm) | none."""
    norm_placement: str = "pre"
    """pre: x + f(norm(x)) (GPT-2 onwards) | post: norm(x + f(x)) (the original Transformer)."""
    norm_affine: bool = False
    """Give each norm a learned gain (and, for LayerNorm, a bias)."""
    embed_norm: bool = True
    """Normalise the token embedding before the first block."""
    activation: str = "relu2"
    """MLP non-linearity: relu2 (ReLU squared) | gelu | relu | silu."""
    tie_embeddings: bool = False
    """Use one matrix for the token embedding and the LM head."""
    softcap: float | None = 15.0
    """Squash logits with c*tanh(logits/c); None (or 'off') disables."""
    qk_norm: bool = True
    """RMS-normalise queries and keys per head before the dot product."""
    causal: bool = True
    """Mask attention to future tokens. Off lets the model read the answer: training 'succeeds'."""
    residual: bool = True
    """Add each block part's output to the stream (x + f(x)); off replaces the stream (x = f(x))."""
    attn_temperature: float = 1.0
    """Attention scores are q.k / (temperature x sqrt(head_dim)); 1 is standard."""
    bias: bool = False
    """Biases in the linear layers."""
    dropout: float = 0.0
    """Dropout probability on embeddings, attention weights and block outputs (training only)."""
    zero_init_out: bool = True
    """Start attention/MLP output projections (and an untied head) at zero: each block begins as
    the identity, and the first logits are uniform."""
    family: str = "nanochat"
    """Which preset the defaults came from (nanochat | gpt2); it also picks the weight
    initialisation scheme (see GPT.init_weights)."""

    # ----------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_ratio * self.n_embd

    @classmethod
    def from_depth(
        cls,
        depth: int,
        vocab_size: int,
        family: str = "nanochat",
        *,
        aspect_ratio: int = 64,
        head_dim: int | None = None,
        **fields: Any,
    ) -> "GPTConfig":
        """Derive a whole model from one dial, the way nanochat does: width = aspect_ratio x depth,
        heads of about `head_dim` (128 for nanochat, 64 for gpt2). `fields` override anything."""
        if family not in FAMILIES:
            raise UsageError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
        if not isinstance(depth, int) or depth < 1:
            raise UsageError(f"depth must be a positive integer, not {depth!r}")
        n_embd = fields.pop("n_embd", None) or aspect_ratio * depth
        head_dim = head_dim or (128 if family == "nanochat" else 64)
        n_head = fields.pop("n_head", None) or _heads_near(n_embd, head_dim)
        base = dict(_FAMILY_DEFAULTS[family])
        base.update(
            vocab_size=vocab_size, n_layer=depth, n_embd=n_embd, n_head=n_head, n_kv_head=n_head
        )
        base.update(fields)
        config = cls(**base)
        config.validate()
        return config

    def validate(self) -> "GPTConfig":
        """Raise UsageError naming the first field with a value the model cannot be built with."""
        for name, value, allowed in [
            ("family", self.family, FAMILIES),
            ("position", self.position, POSITIONS),
            ("norm", self.norm, NORMS),
            ("norm_placement", self.norm_placement, NORM_PLACEMENTS),
            ("activation", self.activation, ACTIVATIONS),
        ]:
            if value not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        for name in ("vocab_size", "sequence_len", "n_layer", "n_embd", "n_head", "n_kv_head", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, not {value!r}")
        if self.n_embd % self.n_head:
            raise UsageError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise UsageError(
                f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}): "
                "each key/value head serves a whole group of query heads"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise UsageError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.softcap is not None and not (self.softcap > 0 and math.isfinite(self.softcap)):
            raise UsageError(f"softcap must be a positive number or off, not {self.softcap!r}")
        if not (self.attn_temperature > 0 and math.isfinite(self.attn_temperature)):
            raise UsageError(f"attn_temperature must be a positive number, not {self.attn_temperature!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), not {self.dropout!r}")
        if self.rope_base <= 1:
            raise UsageError(f"rope_base must be greater than 1, not {self.rope_base!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**data).validate()


_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "nanochat": dict(
        family="nanochat", position="rope", norm="rms", norm_affine=False, embed_norm=True,
        activation="relu2", tie_embeddings=False, softcap=15.0, qk_norm=True, bias=False,
        dropout=0.0, zero_init_out=True,
    ),
    "gpt2": dict(
        family="gpt2", position="learned", norm="layer", norm_affine=True, embed_norm=False,
        activation="gelu", tie_embeddings=True, softcap=None, qk_norm=False, bias=True,
        dropout=0.0, zero_init_out=False,
    ),
}


def _heads_near(n_embd: int, head_dim: int) -> int:
    """The head count whose head_dim is closest to `head_dim` (in ratio) while dividing n_embd
    into even-sized heads (rotary embeddings rotate pairs of dimensions)."""
    candidates = [h for h in range(1, n_embd + 1) if n_embd % h == 0 and (n_embd // h) % 2 == 0]
    if not candidates:
        return 1
    return min(candidates, key=lambda h: (abs(math.log((n_embd / h) / head_dim)), h))
