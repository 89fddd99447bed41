"""Train one run of an experiment, watch it, measure it, and keep its record in the cache.

Why a runner of its own instead of `train.loop.train`: an experiment trains 2-5 small runs and
needs to *watch* them while they train (gradient norm per layer, attention entropy, logit growth,
activation statistics at a few steps), which the loop does not offer; the loop also writes a run
folder, checkpoints, samples and plots per run, several seconds of fixed cost that would be most of
a 20-second run. So this module calls the same pieces the loop calls, and nothing else trains:

    prepare_data → loop.build_model (seeded) → build_optimizers → TokenLoader
    every step: lr_multiplier, muon_momentum → train_step(..., watch=, on_gradients=)
    at the end: evals.bpb.evaluate (val split; a train slice), engine.complete (a sample),
                see.attention.capture_patterns (patterns → entropy, head names)

`watch=` and `on_gradients=` are the training step's hooks for observers: on a few steps spread
over the run a `SymptomTracer` reads named trace points (numbers only, no tensor is kept) and the
gradient of every block is measured. Asking for attention scores makes those steps take the model's
explicit attention path, which computes the same thing as the fused kernel (tested in test_model).

A run's record is a JSON file under $GLASSGPT_HOME/experiments/runs/, named by the hash of all that
decides its numbers (the training config, the model as built, the tokenizer, the device and number
format, the record's version), written atomically once the run is finished. Experiments that share a
run (most share the baseline) share its record; re-running an experiment finds its runs there and
only renders. A run that diverges (the loss becomes NaN or inf) stops there and says so in its record.

Decode speed is not a property of one run but a comparison: on a shared machine, speeds measured
minutes apart compare the machine's load, not the models. `decode_speeds` measures the runs of an
experiment together, interleaved, best of a few rounds (bench.bench_decode: the KV-cache engine on a
model of each run's architecture, whose speed does not depend on the weights); the suite caches the
result per (experiment, its runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from glassgpt import atomic, paths
from glassgpt.config import TrainConfig, apply
from glassgpt.data.loader import TokenLoader, sequential_windows
from glassgpt.model.taps import Tracer
from glassgpt.train.optim import build_optimizers, lr_multiplier, muon_momentum
from glassgpt.train.step import train_step

RECORD_VERSION = 1  # bump when a record's contents or the way they are measured change
OBSERVATIONS = 11  # watched steps per run, spread evenly from the first step to the last
PROBE_WINDOWS = 8  # windows of val text the attention patterns are measured on
SHUFFLE_WINDOWS = 48  # prefixes in the shuffled-prompt test
SHUFFLE_LEN = 32  # tokens per prefix in the shuffled-prompt test
SAMPLE_TOKENS = 40
DECODE_TOKENS = 48
DECODE_ROUNDS = 3
PATTERN_SHOWN = 24  # positions of the one example attention pattern a record keeps for the plots
EVAL_TOKENS = 16_384  # val loss: the first tokens of the val split; train loss: as many of the train split


def runs_cache() -> Path:
    return paths.home() / "experiments" / "runs"


# -- what a run is ---------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """One run to train (or to find in the cache): a label, its config, how many steps."""

    label: str
    config: TrainConfig
    steps: int  # 0: the model as initialised, never trained

    def identity(self, tokenizer_fingerprint: str, device: str, dtype: str) -> dict:
        """Everything that decides this run's numbers (its cache key is the hash of this)."""
        train = {k: v for k, v in self.config.to_dict().items() if k not in IRRELEVANT_FIELDS}
        return {"train": train, "model": self.config.model_config(self.config.vocab_size).to_dict(),
                "steps": self.steps, "tokenizer": tokenizer_fingerprint, "device": device, "dtype": dtype,
                "record_version": RECORD_VERSION}


# Training fields that do not change what an experiment's run computes: names, and what the
# training loop does around the steps (the runner evaluates once, at the end, on fixed slices).
IRRELEVANT_FIELDS = {"run", "eval_every", "sample_tokens", "checkpoint_every", "keep_checkpoints", "log_every",
                     "max_steps", "compile"}


def config_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def make_config(*layers: dict) -> TrainConfig:
    """A TrainConfig from layers of switches (later wins), as `glassgpt train --FIELD VALUE` takes them."""
    config = TrainConfig(run="experiment")
    for layer in layers:
        config = apply(config, layer)
    return config.validate()


@dataclass
class RunRecord:
    """What one run measured. Numbers and short texts only, so it is small and readable as JSON."""

    label: str
    key: str
    steps: int
    parameters: int
    block_parameters: int  # the parameters inside the blocks (no embedding, head or final norm)
    model: dict  # the model config as built
    losses: list[float] = field(default_factory=list)  # training loss per step
    grad_norms: list[float] = field(default_factory=list)  # global gradient norm per step, before clipping
    observed_steps: list[int] = field(default_factory=list)  # the steps the observations below were taken at
    layer_grad_norms: list[list[float]] = field(default_factory=list)  # per observed step: one per block
    entropy: list[list[float]] = field(default_factory=list)  # per observed step: attention entropy per layer
    score_max: list[list[float]] = field(default_factory=list)  # per observed step: max |q·k| score per layer
    logit_max: list[float] = field(default_factory=list)  # per observed step: max |logit| the softmax sees
    act_zero: list[list[float]] = field(default_factory=list)  # per observed step: MLP activations exactly 0
    act_negative: list[list[float]] = field(default_factory=list)  # per observed step: MLP activations < 0
    act_rms: list[list[float]] = field(default_factory=list)  # per observed step: RMS of MLP activations
    diverged_at: int | None = None  # the step whose loss was not finite (training stopped there)
    train_seconds: float = 0.0
    tokens_per_sec: float = 0.0  # median over the steps (the first few, warming up, left out)
    train_loss: float = math.nan  # evaluated after training on the first EVAL_TOKENS of the train split
    val_loss: float = math.nan  # ... and of the val split
    val_bpb: float = math.nan
    causal_val_loss: float = math.nan  # the same weights with the causal mask on (= val_loss if it was on)
    shuffle_kl: float = math.nan  # mean KL(next token | prefix ‖ next token | shuffled prefix), nats
    final_entropy: list[float] = field(default_factory=list)  # attention entropy per layer on probe text
    uniform_entropy: float = math.nan  # what evenly spread causal attention would have on the same rows
    heads: list[dict] = field(default_factory=list)  # HeadScores.to_dict() of every head
    pattern: list = field(default_factory=list)  # (L, H, t, t) attention of one window, t = PATTERN_SHOWN
    pattern_tokens: list[str] = field(default_factory=list)
    sample: str = ""  # a continuation of the corpus's first sample prompt
    sample_prompt: str = ""
    kv_bytes_per_token: int = 0
    decode_tokens_per_sec: float = math.nan  # filled in by the experiments that compare it (decode_speeds)
    device: str = ""
    dtype: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def relabel(self, label: str) -> "RunRecord":
        return dataclasses.replace(self, label=label)


# -- observers ---------------------------------------------------------------------------------------


class SymptomTracer(Tracer):
    """Reduces a few trace points of a training step to numbers per layer (nothing else is kept).

    attention scores → max |score|; attention pattern → mean row entropy; MLP activation → the
    share of exact zeros, of negatives, and its RMS; the logits the softmax sees → max |logit|.
    """

    PATTERNS = ["blocks.*.attn.scores", "blocks.*.attn.pattern", "blocks.*.mlp.act", "lm_head.logits"]

    def __init__(self):
        super().__init__(self.PATTERNS)
        self.values: dict[str, float] = {}

    @torch.no_grad()
    def record(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if not self.wants(name):
            return x
        from glassgpt.see.attention import attention_entropy

        data = x.detach().float()
        if name == "lm_head.logits":
            self.values["logit_max"] = data.abs().max().item()
            return x
        layer = int(name.split(".")[1])
        kind = name.split(".", 2)[2]
        if kind == "attn.scores":
            self.values[f"{layer}.score_max"] = data.abs().max().item()
        elif kind == "attn.pattern":
            self.values[f"{layer}.entropy"] = attention_entropy(data).mean().item()
        elif kind == "mlp.act":
            self.values[f"{layer}.act_zero"] = (data == 0).float().mean().item()
            self.values[f"{layer}.act_negative"] = (data < 0).float().mean().item()
            self.values[f"{layer}.act_rms"] = data.square().mean().sqrt().item()
        return x

    def per_layer(self, what: str, n_layer: int) -> list[float]:
        return [self.values.get(f"{layer}.{what}", math.nan) for layer in range(n_layer)]


def block_gradient_norms(model: torch.nn.Module, n_layer: int) -> list[float]:
    """The gradient norm of each block's parameters together (before clipping)."""
    squares = [0.0] * n_layer
    for name, parameter in model.named_parameters():
        if name.startswith("blocks.") and parameter.grad is not None:
            squares[int(name.split(".")[1])] += parameter.grad.detach().float().square().sum().item()
    return [math.sqrt(s) for s in squares]


def observed_steps(steps: int, count: int = OBSERVATIONS) -> list[int]:
    """`count` step indices (0-based) spread evenly from the first step to the last, no repeats."""
    if steps <= 0:
        return []
    if steps <= count:
        return list(range(steps))
    return sorted({round(i * (steps - 1) / (count - 1)) for i in range(count)})


def median_rate(tokens_per_step: int, seconds: list[float], warmup: int = 3) -> float:
    """Tokens per second over the steps after the first `warmup` (or all, for a short run)."""
    timed = seconds[warmup:] if len(seconds) > warmup + 2 else seconds
    return tokens_per_step / statistics.median(timed) if timed else math.nan


# -- data ---------------------------------------------------------------------------------------------


@dataclass
class Data:
    """A corpus as the experiments read it: the tokenizer and the train/val token arrays."""

    tokenizer: object
    train: np.ndarray
    val: np.ndarray
    sample_prompt: str


_DATA: dict[tuple, Data] = {}


def load_data(config: TrainConfig, say=print) -> Data:
    """The corpus, tokenizer and shards of `config` (prepared on first use; kept for the session)."""
    from glassgpt.data.prepare import prepare_data

    key = (config.data, config.vocab_size, config.tokenizer, str(paths.home()))
    if key not in _DATA:
        corpus, tokenizer, shards = prepare_data(config, None, say)
        _DATA[key] = Data(tokenizer, shards.train, shards.val, corpus.sample_prompts[0])
    return _DATA[key]


# -- one run -------------------------------------------------------------------------------------------


def train_run(plan: RunPlan, data: Data, runtime, key: str,
              on_step: Callable[[int, float], None] = lambda step, loss: None) -> RunRecord:
    """Train `plan` for its steps with the project's training step, watching it; then measure it."""
    from glassgpt.model.scaling import count_parameters
    from glassgpt.train.loop import build_model, grad_accumulation_steps

    config = plan.config
    model_config = config.model_config(data.tokenizer.vocab_size)
    model = build_model(config, model_config, runtime.device, say=lambda *a, **k: None)
    torch.manual_seed(config.seed)  # the data order and dropout, whichever model was built (as the loop does)
    optimizers = build_optimizers(model, config.optimizer_settings())
    loader = TokenLoader(data.train, config.device_batch_size, config.seq_len, config.seed, device=runtime.device)
    accumulation = grad_accumulation_steps(config.total_batch_size, config.device_batch_size * config.seq_len)
    tokens_per_step = accumulation * config.device_batch_size * config.seq_len
    counts = count_parameters(model_config)
    record = RunRecord(plan.label, key, plan.steps, counts.total, counts.layers_total, model_config.to_dict(),
                       device=runtime.device.type, dtype=runtime.dtype)
    watched = set(observed_steps(plan.steps))
    seconds: list[float] = []
    n_layer = model_config.n_layer
    for step in range(plan.steps):
        tracer = SymptomTracer() if step in watched else None
        gradients: list[float] = []
        started = time.perf_counter()
        result = train_step(
            model, optimizers, [loader.next_batch() for _ in range(accumulation)],
            lr_multiplier=lr_multiplier(step, plan.steps, config.warmup_steps, config.warmdown_ratio,
                                        config.final_lr_frac),
            muon_momentum=muon_momentum(step, config.muon_momentum_warmup), grad_clip=config.grad_clip,
            autocast=runtime.autocast,
            watch=(lambda: tracer) if tracer else contextlib.nullcontext,
            on_gradients=(lambda m: gradients.extend(block_gradient_norms(m, n_layer))) if tracer else None)
        seconds.append(time.perf_counter() - started)
        record.losses.append(result.loss)
        record.grad_norms.append(result.grad_norm)
        if tracer:
            record.observed_steps.append(step)
            record.layer_grad_norms.append(gradients)
            record.entropy.append(tracer.per_layer("entropy", n_layer))
            record.score_max.append(tracer.per_layer("score_max", n_layer))
            record.logit_max.append(tracer.values.get("logit_max", math.nan))
            record.act_zero.append(tracer.per_layer("act_zero", n_layer))
            record.act_negative.append(tracer.per_layer("act_negative", n_layer))
            record.act_rms.append(tracer.per_layer("act_rms", n_layer))
        on_step(step + 1, result.loss)
        if not math.isfinite(result.loss):
            record.diverged_at = step + 1
            break
    record.train_seconds = sum(seconds)
    record.tokens_per_sec = median_rate(tokens_per_step, seconds)
    measure(model, record, data, config, runtime)
    return record


# -- measurements of a trained model -------------------------------------------------------------------


def measure(model, record: RunRecord, data: Data, config: TrainConfig, runtime) -> None:
    """Fill in what is measured on the finished model (eval mode, no gradients)."""
    from glassgpt.evals.bpb import evaluate

    record.kv_bytes_per_token = kv_cache_bytes_per_token(model.config)
    if record.diverged:  # NaN weights: nothing to measure but the architecture
        return
    device, autocast = runtime.device, runtime.autocast
    token_bytes = data.tokenizer.token_bytes()
    batch = config.eval_batch_size or 4 * config.device_batch_size

    def loss_on(m, tokens) -> tuple[float, float]:
        result = evaluate(m, sequential_windows(tokens, config.seq_len, batch), token_bytes, device, autocast)
        return result.loss, result.bpb

    val, train = data.val[: EVAL_TOKENS + 1], data.train[: EVAL_TOKENS + 1]
    record.val_loss, record.val_bpb = loss_on(model, val)
    record.train_loss, _ = loss_on(model, train)
    record.causal_val_loss = record.val_loss if model.config.causal else loss_on(with_causal_mask(model), val)[0]
    record.shuffle_kl = shuffled_prefix_kl(model, data.val, min(SHUFFLE_LEN, config.seq_len), SHUFFLE_WINDOWS, device)
    attention_measures(model, record, data, config.seq_len)
    from glassgpt.engine import Engine, complete

    record.sample_prompt = data.sample_prompt
    record.sample = complete(Engine(model, autocast), data.tokenizer, data.sample_prompt, SAMPLE_TOKENS,
                             temperature=0.8, top_k=50, seed=config.seed)


def decode_speeds(model_configs: list, device, tokens: int | None = None, rounds: int | None = None) -> list[float]:
    """Decode tokens/s (KV cache, batch 1) of each architecture, measured in interleaved rounds and
    keeping each one's best round: the fairest comparison a busy machine allows."""
    from glassgpt.bench import bench_decode

    tokens, rounds = tokens or DECODE_TOKENS, rounds or DECODE_ROUNDS
    best = [0.0] * len(model_configs)
    for _ in range(rounds):
        for index, config in enumerate(model_configs):
            best[index] = max(best[index], bench_decode(config, device, tokens, use_cache=True))
    return best


def kv_cache_bytes_per_token(model_config) -> int:
    """Bytes the KV cache holds per token of context (fp32), read off a real one-token cache."""
    from glassgpt.model.gpt import KVCache

    cache = KVCache(model_config, batch_size=1, max_len=1, device="meta")
    return cache.keys.nbytes + cache.values.nbytes  # (L, 1, Hkv, 1, D) each


def with_causal_mask(model):
    """The same weights in the same GPT class with the causal switch on: what a model that learned
    without the mask predicts when it may no longer look ahead (as when it generates)."""
    from glassgpt.model.gpt import GPT

    masked = GPT.build(dataclasses.replace(model.config, causal=True), next(model.parameters()).device, init=False)
    masked.load_state_dict(model.state_dict())
    return masked


@torch.no_grad()
def shuffled_prefix_kl(model, tokens: np.ndarray, length: int, windows: int, device, seed: int = 0) -> float:
    """Mean KL divergence (nats) between the model's next-token distribution after a prefix and after
    the same prefix with its earlier tokens shuffled (the last token, the one predicting, stays).

    A model that cannot tell order gives (nearly) the same distribution: KL ≈ 0."""
    model.eval()
    generator = np.random.default_rng(seed)
    starts = np.linspace(0, len(tokens) - length - 1, windows).astype(np.int64)
    prefixes = np.stack([np.asarray(tokens[s:s + length], dtype=np.int64) for s in starts])  # (W, T)
    shuffled = prefixes.copy()
    for row in shuffled:
        row[:-1] = row[:-1][generator.permutation(length - 1)]
    both = torch.from_numpy(np.concatenate([prefixes, shuffled])).to(device)  # (2W, T)
    log_probs = model(both)[:, -1, :].float().log_softmax(dim=-1)  # (2W, V)
    original, reordered = log_probs[:windows], log_probs[windows:]
    return float((original.exp() * (original - reordered)).sum(dim=-1).mean())


@torch.no_grad()
def attention_measures(model, record: RunRecord, data: Data, seq_len: int) -> None:
    """Patterns of PROBE_WINDOWS windows of val text: entropy per layer, each head named, one example."""
    from glassgpt.experiments.heads import is_delimiter, score_heads
    from glassgpt.see.attention import attention_entropy, capture_patterns, token_label, uniform_entropy

    starts = np.linspace(0, len(data.val) - seq_len - 1, PROBE_WINDOWS).astype(np.int64)
    windows = [np.asarray(data.val[s:s + seq_len], dtype=np.int64).tolist() for s in starts]
    patterns = torch.stack([capture_patterns(model, ids) for ids in windows])  # (N, L, H, T, T)
    entropy = attention_entropy(patterns)  # (N, L, H, T)
    record.final_entropy = entropy.mean(dim=(0, 2, 3)).tolist()
    record.uniform_entropy = float(uniform_entropy(seq_len, seq_len, causal=True).mean())
    if model.config.causal:
        pieces = [[data.tokenizer.token_piece(i).decode("utf-8", "replace") for i in ids] for ids in windows]
        delimiters = torch.tensor([[is_delimiter(p) for p in row] for row in pieces])  # (N, T)
        record.heads = [h.to_dict() for h in score_heads(patterns, delimiters)]
    shown = min(PATTERN_SHOWN, seq_len)
    record.pattern = patterns[0, :, :, :shown, :shown].mul(1000).round().div(1000).tolist()
    record.pattern_tokens = [token_label(data.tokenizer.token_piece(i)) for i in windows[0][:shown]]


# -- the cache ------------------------------------------------------------------------------------------


def cached(key: str) -> RunRecord | None:
    path = runs_cache() / f"{key}.json"
    if not path.exists():
        return None
    try:
        return RunRecord.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # damaged or from an incompatible version: train it again


def save(record: RunRecord) -> Path:
    path = runs_cache() / f"{record.key}.json"
    atomic.write_text(path, json.dumps(record.to_dict()))
    return path
