"""The reference GPT: one readable file, read top to bottom.

    Norm → rotary embedding → CausalSelfAttention → MLP → Block → GPT (+ KVCache for generation)

Training, tracing, the learner's grader and the experiments all run this code. Every operation
passes through a named trace point (`tap`), which costs one global check when nobody is watching.

Shapes: B batch, T time (tokens), C n_embd, H query heads, Hkv key/value heads, D head_dim,
V vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from glassgpt.model import taps
from glassgpt.model.config import GPTConfig
from glassgpt.model.taps import tap

NORM_EPS = 1e-5


class Norm(nn.Module):
    """RMSNorm, LayerNorm or nothing, over the last dimension; optionally with a learned gain
    (and a LayerNorm bias when the model has biases)."""

    def __init__(self, dim: int, kind: str = "rms", affine: bool = False, bias: bool = False):
        super().__init__()
        self.dim, self.kind = dim, kind
        self.weight = nn.Parameter(torch.ones(dim)) if affine and kind != "none" else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine and bias and kind == "layer" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rms":  # x / sqrt(mean(x²) + eps): unit root-mean-square, no centring
            return F.rms_norm(x, (self.dim,), self.weight, NORM_EPS)
        if self.kind == "layer":  # (x - mean) / sqrt(var + eps): zero mean, unit variance
            return F.layer_norm(x, (self.dim,), self.weight, self.bias, NORM_EPS)
        return x


# ---------------------------------------------------------------------------------------------
# Rotary position embedding (RoPE): position enters attention by rotating q and k, so that
# q_i · k_j depends only on their offset i - j. Dimension pairs (d, d + D/2) turn at
# frequency base^(-2d/D) radians per token: fast pairs see local order, slow pairs far context.


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0, device=None):
    """cos and sin of every (position, frequency) angle, each (seq_len, head_dim / 2), fp32."""
    frequencies = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    positions = torch.arange(seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, frequencies)  # (seq_len, D/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[..., d], x[..., d + D/2]) of x (B, T, H, D) by its angle.

    cos and sin are (T, D/2), already sliced to the positions of x. The two halves pairing
    (as in GPT-NeoX and nanochat) avoids interleaving, so each half is one contiguous slice.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # (B, T, H, D/2) each
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # (T, 1, D/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, T, H, D)


# ---------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head attention with grouped key/value heads (GQA; MQA when n_kv_head = 1).

    Each of the H query heads reads from key/value head h // (H / Hkv). The fast path is
    `scaled_dot_product_attention`; when a tracer asks for scores or patterns, the same
    computation runs explicitly so they can be shown (a test checks both paths agree).
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.use_rope, self.causal, self.dropout = config.position == "rope", config.causal, config.dropout
        self.scale = 1.0 / (config.attn_temperature * math.sqrt(self.head_dim))
        C, D = config.n_embd, self.head_dim
        self.c_q = nn.Linear(C, self.n_head * D, bias=config.bias)
        self.c_k = nn.Linear(C, self.n_kv_head * D, bias=config.bias)
        self.c_v = nn.Linear(C, self.n_kv_head * D, bias=config.bias)
        self.c_proj = nn.Linear(self.n_head * D, C, bias=config.bias)
        self.q_norm = Norm(D, "rms", config.norm_affine) if config.qk_norm else None
        self.k_norm = Norm(D, "rms", config.norm_affine) if config.qk_norm else None
        p = f"blocks.{layer_idx}.attn."
        self.names = {n: p + n for n in (
            "q", "k", "v", "q_rot", "k_rot", "q_norm", "k_norm", "k_rep", "v_rep",
            "scores", "scores_masked", "pattern", "z", "out")}
        self._explicit_names = [self.names[n] for n in ("k_rep", "v_rep", "scores", "scores_masked", "pattern")]

    def forward(self, x, cos, sin, kv_cache: "KVCache | None" = None) -> torch.Tensor:
        """x: the normalised stream (B, T, C); cos/sin: rotary tables for these T positions."""
        B, T, _ = x.shape
        names = self.names
        q = tap(names["q"], self.c_q(x).view(B, T, self.n_head, self.head_dim))  # (B, T, H, D)
        k = tap(names["k"], self.c_k(x).view(B, T, self.n_kv_head, self.head_dim))  # (B, T, Hkv, D)
        v = tap(names["v"], self.c_v(x).view(B, T, self.n_kv_head, self.head_dim))  # (B, T, Hkv, D)
        if self.use_rope:  # only q and k carry position: v is the content that gets moved
            q = tap(names["q_rot"], apply_rotary(q, cos, sin))
            k = tap(names["k_rot"], apply_rotary(k, cos, sin))
        if self.q_norm is not None:  # bounds q·k, so no logit can blow up the softmax
            q = tap(names["q_norm"], self.q_norm(q))
            k = tap(names["k_norm"], self.k_norm(k))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hkv, T, D)
        visible = None  # which keys each query may see: causal unless a static cache says otherwise
        if kv_cache is not None:  # append this chunk's keys/values, attend over all so far
            k, v, visible = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, Tk, D); (T, Tk) or None
        # One token over a static cache (a compiled decode step) also takes the explicit path: there
        # the compiler fuses the mask and softmax into one small kernel, cheaper than SDPA's call.
        if any(taps.wants(n) for n in self._explicit_names) or (visible is not None and T == 1):
            z = self._explicit_attention(q, k, v, visible)
        else:
            z = self._fast_attention(q, k, v, visible)
        z = tap(names["z"], z.transpose(1, 2))  # (B, T, H, D): each head's output
        out = self.c_proj(z.reshape(B, T, self.n_head * self.head_dim))  # heads concatenated (B, T, C)
        return tap(names["out"], F.dropout(out, self.dropout, self.training))

    def _causal_mask(self, T: int, offset: int, device) -> torch.Tensor:
        """(T, offset + T) bool, True where query i (at position offset + i) may see key j."""
        query_pos = torch.arange(offset, offset + T, device=device)[:, None]
        key_pos = torch.arange(offset + T, device=device)[None, :]
        return key_pos <= query_pos

    def _fast_attention(self, q, k, v, visible: torch.Tensor | None = None) -> torch.Tensor:
        T, offset = q.shape[2], k.shape[2] - q.shape[2]  # offset: keys before this chunk (a cache's)
        mask, is_causal = visible, False
        if mask is None and self.causal and T > 1:  # one new token may see every cached key: no mask
            if offset == 0:
                is_causal = True
            else:
                mask = self._causal_mask(T, offset, q.device)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, H, T, D)

    def _explicit_attention(self, q, k, v, visible: torch.Tensor | None = None) -> torch.Tensor:
        names, T = self.names, q.shape[2]
        group = self.n_head // self.n_kv_head
        k = tap(names["k_rep"], k.repeat_interleave(group, dim=1))  # (B, H, Tk, D)
        v = tap(names["v_rep"], v.repeat_interleave(group, dim=1))  # (B, H, Tk, D)
        scores = tap(names["scores"], (q @ k.transpose(-2, -1)) * self.scale)  # (B, H, T, Tk)
        if self.causal or visible is not None:
            allowed = visible if visible is not None else self._causal_mask(T, k.shape[2] - T, q.device)
            scores = tap(names["scores_masked"], scores.masked_fill(~allowed, float("-inf")))
        pattern = tap(names["pattern"], scores.softmax(dim=-1))  # (B, H, T, Tk), rows sum to 1
        pattern = F.dropout(pattern, self.dropout, self.training)
        return pattern @ v  # (B, H, T, D)


class MLP(nn.Module):
    """Per-token feed-forward: expand to mlp_ratio x C, non-linearity, project back."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.activation, self.dropout = config.activation, config.dropout
        p = f"blocks.{layer_idx}.mlp."
        self.names = {n: p + n for n in ("up", "act", "out")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = tap(self.names["up"], self.c_fc(x))  # (B, T, 4C)
        h = tap(self.names["act"], activate(h, self.activation))  # (B, T, 4C)
        out = self.c_proj(h)  # (B, T, C)
        return tap(self.names["out"], F.dropout(out, self.dropout, self.training))


def activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "relu2":  # ReLU squared: sparse like ReLU, smooth at 0 on the positive side
        return F.relu(x).square()
    if kind == "gelu":  # GPT-2's tanh approximation
        return F.gelu(x, approximate="tanh")
    if kind == "relu":
        return F.relu(x)
    return F.silu(x)


class Block(nn.Module):
    """One transformer block. Pre-norm: x = x + attn(norm(x)); x = x + mlp(norm(x)).
    Post-norm: x = norm(x + attn(x)); x = norm(x + mlp(x)). Without residual: x = f(...)."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        norm_args = (config.n_embd, config.norm, config.norm_affine, config.bias)
        self.norm_1, self.attn = Norm(*norm_args), CausalSelfAttention(config, layer_idx)
        self.norm_2, self.mlp = Norm(*norm_args), MLP(config, layer_idx)
        self.pre_norm, self.residual = config.norm_placement == "pre", config.residual
        p = f"blocks.{layer_idx}."
        self.names = {n: p + n for n in ("resid.pre", "attn.norm", "resid.mid", "mlp.norm", "resid.post")}

    def forward(self, x, cos, sin, kv_cache: "KVCache | None" = None) -> torch.Tensor:
        names = self.names
        x = tap(names["resid.pre"], x)  # (B, T, C)
        if self.pre_norm:
            h = self.attn(tap(names["attn.norm"], self.norm_1(x)), cos, sin, kv_cache)
            x = tap(names["resid.mid"], x + h if self.residual else h)
            h = self.mlp(tap(names["mlp.norm"], self.norm_2(x)))
            return tap(names["resid.post"], x + h if self.residual else h)
        h = self.attn(x, cos, sin, kv_cache)
        x = tap(names["resid.mid"], tap(names["attn.norm"], self.norm_1(x + h if self.residual else h)))
        h = self.mlp(x)
        return tap(names["resid.post"], tap(names["mlp.norm"], self.norm_2(x + h if self.residual else h)))


# Head and loss in blocks of rows: the largest tensors of a small model's step are its
# full-vocabulary ones (B·T x V fp32: 32 MB each at 2,048 tokens and V = 4,096, and the plain path
# keeps about eight of them alive between forward and backward). Blocks of this many bytes of
# logits keep the peak at a few blocks, whatever B·T is.
HEAD_BLOCK_BYTES = 8 * 2**20
HEAD_LOGIT_TAPS = ("lm_head.logits_raw", "lm_head.logits", "loss.per_token")


class BlockwiseHeadLoss(torch.autograd.Function):
    """sum over counted rows of cross_entropy(softcap(x @ Wᵀ), target), never holding all logits.

    Forward walks the rows in blocks; with `with_grad` it also computes each block's gradients
    right away (d loss / d logits = softmax − one-hot, times the softcap's slope 1 − tanh²) and
    keeps only their products with W and x, which are as small as x and W. Backward scales them
    by the incoming gradient: the loss is a scalar, so that is all the chain rule needs.
    The same arithmetic as `GPT.forward`'s plain path (equal to 1e-5 in fp32, tested); under
    autocast the matmuls run in the autocast dtype, as the plain path's do.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, softcap: float | None, rows: int, with_grad: bool):
        # x (N, C), weight (V, C), targets (N,) with -1 for "not counted"
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if with_grad else None  # (N, C)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grad else None
        for start in range(0, x.shape[0], rows):
            x_block, target_block = x[start:start + rows], targets[start:start + rows]  # (n, C), (n,)
            raw = F.linear(x_block, weight)  # (n, V), in the autocast dtype if any
            logits = raw.float()
            if softcap is not None:
                squashed = torch.tanh(logits / softcap)  # (n, V)
                logits = softcap * squashed
            counted = (target_block != -1).unsqueeze(1)  # (n, 1)
            picked = target_block.clamp(min=0).unsqueeze(1)  # (n, 1): any valid index for ignored rows
            log_norm = torch.logsumexp(logits, dim=1, keepdim=True)  # (n, 1)
            total += ((log_norm - logits.gather(1, picked)) * counted).sum()
            if not with_grad:
                continue
            grad_logits = logits.sub_(log_norm).exp_()  # softmax, reusing the logits' memory (n, V)
            grad_logits.scatter_add_(1, picked, torch.full_like(log_norm, -1.0))  # − one-hot
            grad_logits.mul_(counted)
            if softcap is not None:
                grad_logits.mul_(1 - squashed.square_())
            grad_logits = grad_logits.to(raw.dtype)
            grad_x[start:start + rows] = grad_logits @ weight.to(raw.dtype)  # (n, C)
            grad_weight += grad_logits.T @ x_block.to(raw.dtype)  # (V, C)
        ctx.save_for_backward(grad_x, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_weight = ctx.saved_tensors
        return grad_x * grad_total, (grad_weight * grad_total).to(ctx.weight_dtype), None, None, None, None


def head_block_rows(vocab_size: int) -> int:
    return max(1, HEAD_BLOCK_BYTES // (4 * vocab_size))


class _SkipDefaultInit(TorchFunctionMode):
    """Skip nn.Linear's and nn.Embedding's default initialisers while a model is constructed:
    `init_weights` overwrites every value anyway, and on the meta device PyTorch runs them (and
    arange) through Python kernels whose first use imports torch._dynamo and sympy, 2-3 s at
    start-up. On meta, arange is made on the CPU for the same reason."""

    def __init__(self, arange_on_cpu: bool):
        super().__init__()
        self.arange_on_cpu = arange_on_cpu

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        if self.arange_on_cpu and func is torch.arange and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


class GPT(nn.Module):
    """Token ids (B, T) → logits (B, T, V), or → the loss when targets are given.

    Build with `GPT.build(config, device)`: the tensors are allocated on `device` without
    PyTorch's default initialisation, then `init_weights` sets every value. On the meta device
    the model has shapes and no memory (for counting parameters and FLOPs).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config.validate()
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(config.sequence_len, C) if config.position == "learned" else None
        self.embed_norm = Norm(C, config.norm, config.norm_affine, config.bias) if config.embed_norm else None
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        # Post-norm blocks already end in a norm, so a final one would normalise twice.
        self.final_norm = Norm(C, config.norm if config.norm_placement == "pre" else "none",
                               config.norm_affine, config.bias)
        # Tied: the head reuses wte.weight (see `forward`), so there is one matrix, counted once.
        self.lm_head = None if config.tie_embeddings else nn.Linear(C, config.vocab_size, bias=False)
        # Rotary tables are functions of position, not learned: buffers, rebuilt on load rather
        # than saved (persistent=False), so a checkpoint holds only what training changed.
        cos, sin = rotary_tables(config.sequence_len, config.head_dim, config.rope_base)
        self.register_buffer("rotary_cos", cos, persistent=False)  # (sequence_len, D/2)
        self.register_buffer("rotary_sin", sin, persistent=False)

    @classmethod
    def build(cls, config: GPTConfig, device: str | torch.device = "cpu", init: bool = True) -> "GPT":
        """Allocate on `device` (no default initialisation), then initialise; init=False leaves the
        weights unset, for a checkpoint to fill. device="meta" returns the shapes-only model.
        (Not meta then `to_empty`: materialising meta tensors imports sympy, 0.3 s and 46 MB.)"""
        meta = torch.device(device).type == "meta"
        with torch.device(device), _SkipDefaultInit(arange_on_cpu=meta):
            model = cls(config)
        if meta:
            return model
        model.init_buffers()
        if init:
            model.init_weights()
        return model

    def init_buffers(self) -> None:
        device = self.wte.weight.device
        cos, sin = rotary_tables(self.config.sequence_len, self.config.head_dim, self.config.rope_base, device)
        self.rotary_cos.copy_(cos)
        self.rotary_sin.copy_(sin)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every tensor. With family "nanochat" (fan-in scaled):

        - wte.weight: normal(0, 1), so each looked-up row has unit RMS, as a normalised stream
          would (with the embedding norm on, its scale does not matter at all); normal(0, 0.02)
          when tied, because the same matrix then produces the logits.
        - wpe.weight (learned positions only): same std as wte.
        - c_q, c_k, c_v, c_fc weights: normal(0, s), s = min(1, sqrt(fan_out/fan_in)) / sqrt(fan_in),
          so each output starts with about unit variance.
        - attn.c_proj, mlp.c_proj weights: zeros when zero_init_out (each block starts as the
          identity on the residual stream), otherwise like c_q.
        - lm_head.weight: zeros when zero_init_out (the first prediction is uniform: loss = ln V),
          otherwise like c_q.

        With family "gpt2": every Linear and Embedding weight normal(0, 0.02); the two c_proj
        weights normal(0, 0.02 / sqrt(2 n_layer)) (two residual adds per block), or zeros when
        zero_init_out.

        Both families: biases zeros; norm gains ones, norm biases zeros; rotary tables computed.
        """
        if seed is not None:
            torch.manual_seed(seed)
        config = self.config
        gpt2 = config.family == "gpt2"

        def init_linear(linear: nn.Linear, zero: bool = False, std: float | None = None) -> None:
            fan_out, fan_in = linear.weight.shape
            if zero:
                nn.init.zeros_(linear.weight)
            else:
                if std is None:
                    std = 0.02 if gpt2 else min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in)
                nn.init.normal_(linear.weight, 0.0, std)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

        embed_std = 0.02 if (gpt2 or config.tie_embeddings) else 1.0
        nn.init.normal_(self.wte.weight, 0.0, embed_std)
        if self.wpe is not None:
            nn.init.normal_(self.wpe.weight, 0.0, embed_std)
        proj_std = 0.02 / math.sqrt(2 * config.n_layer) if gpt2 else None
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                init_linear(linear)
            init_linear(block.attn.c_proj, zero=config.zero_init_out, std=proj_std)
            init_linear(block.mlp.c_proj, zero=config.zero_init_out, std=proj_std)
        if self.lm_head is not None:
            init_linear(self.lm_head, zero=config.zero_init_out)
        for module in self.modules():
            if isinstance(module, Norm):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.init_buffers()

    def forward(self, idx, targets=None, kv_cache: "KVCache | None" = None):
        """idx (B, T) int64 → logits (B, T, V) fp32; with targets (B, T) → the mean loss.

        Targets equal to -1 are ignored; the mean is over the counted ones (0, not NaN, when a
        batch has none, as in a chat batch whose positions are all masked).
        """
        B, T = idx.shape
        # The positions of these T tokens: 0..T-1, or after what a cache holds. A static cache gives
        # them as a tensor, so that one compiled decode step serves every position.
        positions = kv_cache.positions(T) if kv_cache is not None else slice(0, T)
        if isinstance(positions, slice) and positions.stop > self.config.sequence_len:
            raise ValueError(
                f"sequence of {positions.stop} tokens exceeds the model's sequence_len {self.config.sequence_len}"
            )
        x = tap("embed.tok", self.wte(idx))  # (B, T, C)
        if self.wpe is not None:
            x = x + tap("embed.pos", self.wpe.weight[positions])  # (T, C) broadcast over B
        x = F.dropout(x, self.config.dropout, self.training)
        if self.embed_norm is not None:
            x = tap("embed.norm", self.embed_norm(x))
        cos, sin = self.rotary_cos[positions], self.rotary_sin[positions]  # (T, D/2)
        for block in self.blocks:
            x = block(x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = tap("final.norm", self.final_norm(x))
        head_weight = self.wte.weight if self.lm_head is None else self.lm_head.weight
        if targets is not None and self._blockwise_loss(x, B * T):
            with_grad = torch.is_grad_enabled() and (x.requires_grad or head_weight.requires_grad)
            loss_sum = BlockwiseHeadLoss.apply(x.flatten(0, 1), head_weight, targets.reshape(-1),
                                               self.config.softcap, head_block_rows(self.config.vocab_size),
                                               with_grad)
            return tap("loss", loss_sum / (targets != -1).sum().clamp(min=1))
        logits = tap("lm_head.logits_raw", F.linear(x, head_weight).float())  # (B, T, V)
        if self.config.softcap is not None:  # smoothly bound logits to (-c, c)
            cap = self.config.softcap
            if torch.is_grad_enabled() or taps.active() is not None:
                logits = cap * torch.tanh(logits / cap)
            else:  # nothing else holds the raw logits: squash them in place, one (B, T, V) tensor, not three
                logits = logits.div_(cap).tanh_().mul_(cap)
        logits = tap("lm_head.logits", logits)
        if targets is None:
            return logits
        losses = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                                 ignore_index=-1, reduction="none").view(B, T)
        losses = tap("loss.per_token", losses)  # (B, T), 0 where the target is ignored
        counted = (targets != -1).sum()
        return tap("loss", losses.sum() / counted.clamp(min=1))

    def _blockwise_loss(self, x: torch.Tensor, rows: int) -> bool:
        """Whether the loss takes `BlockwiseHeadLoss` rather than the plain path below it: on the
        CPU, where memory is scarce and nothing fuses the plain path's full-vocabulary tensors,
        when the logits are more than one block; not when a tracer wants to see the logits or the
        per-token losses, nor while torch.compile (which fuses them itself) is tracing."""
        return (x.device.type == "cpu" and rows > head_block_rows(self.config.vocab_size)
                and not torch.compiler.is_compiling() and not any(taps.wants(name) for name in HEAD_LOGIT_TAPS))


def head_is_tied(model: nn.Module) -> bool:
    """Whether the logits come from the embedding matrix: no lm_head at all (this file's way), or
    an lm_head whose weight is wte.weight itself (nanoGPT's way). Holds for a learner's GPT too."""
    head = getattr(model, "lm_head", None)
    return head is None or getattr(head, "weight", None) is model.wte.weight


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for `max_len`.

    Generation runs a prefill (the prompt, many tokens) then one-token decode steps; each layer
    writes its new keys/values at [pos, pos + T) and attends over [0, pos + T). `GPT.forward`
    advances `pos` once all layers have written.

    static=True keeps the same numbers in a form with fixed shapes, for a compiled decode step
    (Engine(compile=True)): the write position is a tensor, and attention reads a fixed number of
    slots (`span`, all `max_len` unless lowered) with a mask that hides the ones not yet written.
    A graph compiled for one step then serves every step of that span, with no recompiling and no
    Python-side bookkeeping in between.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype=torch.float32,
                 static: bool = False):
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.max_len, self.static, self._pos = max_len, static, 0
        if not static:
            self.keys = torch.empty(shape, device=device, dtype=dtype)  # (L, B, Hkv, max_len, D)
            self.values = torch.empty(shape, device=device, dtype=dtype)
            return
        # One tensor per layer, not views of one: a compiled step that writes into a view copies
        # the whole tensor behind it. Zeros, not empty: an unwritten slot gets attention weight 0,
        # and 0 x NaN (left in uninitialised memory) would still be NaN.
        self.keys = [torch.zeros(shape[1:], device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape[1:], device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.position = torch.zeros((), dtype=torch.long, device=device)  # where the next token goes
        self.slots = torch.arange(max_len, device=device)  # (max_len,)
        # How many slots attention reads. Whoever drives the cache may lower it while the text is
        # short (it must stay above pos + T): less to read per step, at one compiled graph per value.
        self.span = max_len

    @property
    def pos(self) -> int:
        """How many tokens the cache holds (a static cache reads its tensor: not in a compiled step)."""
        return int(self.position) if self.static else self._pos

    def positions(self, T: int):
        """Where the next T tokens go: a slice, or for a static cache a (T,) tensor."""
        if self.static:
            return self.position + self.slots[:T]  # (T,)
        if self._pos + T > self.max_len:
            raise ValueError(f"KV cache full: {self._pos + T} tokens > max_len {self.max_len}")
        return slice(self._pos, self._pos + T)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, Hkv, T, D) after what the cache holds; return every key and value to
        attend over, and which of them each new token may see (None: causal, from the shapes)."""
        T = k.shape[2]
        where = self.positions(T)
        if not self.static:
            self.keys[layer, :, :, where] = k
            self.values[layer, :, :, where] = v
            return self.keys[layer, :, :, :where.stop], self.values[layer, :, :, :where.stop], None
        keys, values = self.keys[layer], self.values[layer]  # (B, Hkv, max_len, D) each
        keys[:, :, where] = k
        values[:, :, where] = v
        span = self.span
        visible = self.slots[None, :span] <= where[:, None]  # (T, span): written, and not in the future
        return keys[:, :, :span], values[:, :, :span], visible

    def advance(self, n: int) -> None:
        if self.static:
            self.position += n  # in place: a compiled step updates the cache it was given
        else:
            self._pos += n

    def repeat(self, n: int) -> "KVCache":
        """A cache of n rows, each a copy of this one-row cache: one prefill of a prompt serves n
        generations from it."""
        copy = object.__new__(KVCache)
        copy.__dict__.update(self.__dict__)
        if self.static:
            copy.keys = [k.repeat(n, 1, 1, 1) for k in self.keys]
            copy.values = [v.repeat(n, 1, 1, 1) for v in self.values]
            copy.position = self.position.clone()
        else:
            copy.keys, copy.values = self.keys.repeat(1, n, 1, 1, 1), self.values.repeat(1, n, 1, 1, 1)
        return copy

    def reset(self) -> None:
        if self.static:
            self.position.zero_()
        else:
            self._pos = 0
