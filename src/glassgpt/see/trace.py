"""Run real training iterations of the reference model under a tracer and collect what it saw.

`run_trace(options)` builds the model (fresh, or from a saved run with its optimiser state),
takes real batches from the corpus (or a given text), and for each iteration runs forward,
backward and the optimiser step exactly as `glassgpt train` does, recording:

- every watched trace point's statistics (and its gradient's), and crops of the tensors that
  views draw (attention patterns, q/k before and after rotation);
- gradient norms of every parameter, the global gradient norm;
- how far the optimiser step moved every parameter, relative to its size.

The result (`TraceReport`) is what the terminal walk-through, the HTML page, the markdown and
the JSON are made from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from glassgpt import device as devices
from glassgpt.config import TrainConfig
from glassgpt.data.loader import TokenLoader
from glassgpt.errors import UsageError
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT
from glassgpt.see.registry import check_patterns
from glassgpt.see.tracer import StatsTracer, TensorStats
from glassgpt.tokenizer import Tokenizer
from glassgpt.train.optim import Muon, build_optimizers, lr_multiplier, muon_momentum, set_learning_rates


@dataclass
class TraceOptions:
    run: str | None = None
    depth: int = 4
    seq_len: int | None = None  # default: 1024 for a fresh model, the run's sequence_len for --run
    steps: int = 3
    blocks: str | None = None  # "0,1,last"; default: the first three and the last
    only: list[str] = field(default_factory=list)
    text: str | None = None
    family: str = "nanochat"
    seed: int = 1337
    device: str = "cpu"
    crop: int = 48  # positions kept for heatmaps


@dataclass
class StepTrace:
    step: int
    loss: float
    grad_norm: float
    stats: dict[str, TensorStats]  # trace point → stats; "grad:<name>" for gradients
    param_grad_norms: dict[str, float]
    update_ratios: dict[str, float | None]  # parameter → ‖ΔW‖ / ‖W‖ of this step (None: W was 0)
    group_of: dict[str, str]  # parameter → optimiser group label
    kept: dict[str, torch.Tensor] = field(default_factory=dict)  # crops, first iteration only
    order: list[str] = field(default_factory=list)  # trace points in the order they were emitted


@dataclass
class TraceReport:
    config: GPTConfig
    tokenizer: Tokenizer
    source: str
    token_ids: list[int]  # the first iteration's input row
    traced_blocks: list[int]
    steps: list[StepTrace]
    rotary: dict[str, torch.Tensor]
    notices: list[str]
    lr: dict[str, float]
    same_batch: bool  # --text: every iteration sees the same tokens


def parse_blocks(spec: str | None, n_layer: int) -> list[int]:
    """'0,1,last' → [0, 1, n_layer - 1]; None → the first three and the last."""
    if spec is None:
        return sorted({i for i in (0, 1, 2, n_layer - 1) if 0 <= i < n_layer})
    chosen = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "last":
            chosen.add(n_layer - 1)
        elif part == "all":
            chosen.update(range(n_layer))
        elif re.fullmatch(r"-?\d+", part) and -n_layer <= int(part) < n_layer:
            chosen.add(int(part) % n_layer)
        else:
            raise UsageError(f"--blocks {part!r} is out of range: the model has {n_layer} blocks "
                             f"(0-{n_layer - 1}, 'last' or 'all')")
    if not chosen:
        raise UsageError("--blocks is empty: give block indices like 0,1,last")
    return sorted(chosen)


def _fresh_model(options: TraceOptions, runtime) -> tuple[GPT, Tokenizer, list, TrainConfig, str, object]:
    from glassgpt.train.loop import prepare_data

    seq_len = options.seq_len or 1024
    train_config = TrainConfig(run="trace", seed=options.seed, depth=options.depth, family=options.family,
                               seq_len=seq_len)
    _, tokenizer, data = prepare_data(train_config, runtime, say=lambda *a, **k: None)
    config = GPTConfig.from_depth(options.depth, tokenizer.vocab_size, options.family, sequence_len=seq_len)
    torch.manual_seed(options.seed)
    model = GPT.build(config, runtime.device)
    optimizers = _optimizers(model, train_config)
    source = f"a fresh {options.family} model (depth {options.depth}, seed {options.seed})"
    return model, tokenizer, optimizers, train_config, source, data.train, 0


def _saved_model(options: TraceOptions, runtime):
    from glassgpt.runs import load_run
    from glassgpt.train import checkpoint
    from glassgpt.train.loop import prepare_data

    run = load_run(options.run, device=runtime.device)
    saved = TrainConfig(**{k: v for k, v in run.config["train"].items() if k in TrainConfig.__dataclass_fields__})
    model = run.model
    optimizers = _optimizers(model, saved)
    saved_step = run.step
    folder = checkpoint.latest(run.folder)
    checkpoint.load_optimizers(folder, optimizers)  # continue from the run's real optimiser state
    seq_len = options.seq_len or model.config.sequence_len
    if seq_len > model.config.sequence_len:
        raise UsageError(f"--seq-len {seq_len} is longer than run {options.run!r}'s sequence_len "
                         f"{model.config.sequence_len}")
    tokens = None
    if options.text is None:
        _, _, data = prepare_data(saved, runtime, say=lambda *a, **k: None)
        tokens = data.train
    saved.seq_len = seq_len
    return model, run.tokenizer, optimizers, saved, f"run {options.run!r} at step {run.step}", tokens, saved_step


def _optimizers(model: GPT, config: TrainConfig):
    return build_optimizers(model, config.optimizer_settings())


def group_labels(model: GPT, optimizers) -> dict[str, str]:
    """Parameter name → a readable optimiser group, e.g. 'Muon · attention'."""
    names = {id(p): n for n, p in model.named_parameters()}
    labels = {}
    for optimizer in optimizers:
        kind = "Muon" if isinstance(optimizer, Muon) else "AdamW"
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = names[id(p)]
                if p.dim() < 2:
                    role = "gains & biases"
                elif ".attn." in name:
                    role = "attention"
                elif ".mlp." in name:
                    role = "MLP"
                elif name == "wte.weight" and model.lm_head is None:
                    role = "tied embedding/head"
                elif name.startswith(("wte", "wpe")):
                    role = "embedding"
                else:
                    role = "head"
                labels[name] = f"{kind} · {role}"
    return labels


def check_options(options: TraceOptions) -> GPTConfig:
    """Everything that can be wrong with the options, found before any data or model is made.
    Returns the architecture (its vocabulary may still change with the tokenizer)."""
    if options.steps < 1:
        raise UsageError(f"--steps must be at least 1, not {options.steps}")
    if options.text is not None and not options.text:
        raise UsageError("--text is empty: give some text to trace")
    if options.run:
        from glassgpt import paths
        from glassgpt.train.loop import read_run_config

        config = GPTConfig.from_dict(read_run_config(paths.run_dir(options.run))["model"])
    else:
        config = GPTConfig.from_depth(options.depth, 4096, options.family, sequence_len=options.seq_len or 1024)
    parse_blocks(options.blocks, config.n_layer)
    if options.only:
        check_patterns(options.only, config)
    return config


def run_trace(options: TraceOptions) -> TraceReport:
    check_options(options)
    runtime = devices.setup(options.device, "fp32")
    # A saved run continues its schedule where it stopped (its learning rate and Muon momentum).
    if options.run:
        model, tokenizer, optimizers, train_config, source, train_tokens, first_step = _saved_model(options, runtime)
    else:
        model, tokenizer, optimizers, train_config, source, train_tokens, first_step = _fresh_model(options, runtime)
    config = model.config
    seq_len = train_config.seq_len
    blocks = parse_blocks(options.blocks, config.n_layer)
    notices: list[str] = []

    if options.text is not None:
        ids = tokenizer.encode(options.text, bos=True)
        if len(ids) - 1 > config.sequence_len:
            notices.append(f"--text has {len(ids) - 1} tokens; the model reads at most {config.sequence_len}, "
                           f"so only the first {config.sequence_len} were traced")
            ids = ids[: config.sequence_len + 1]
        fixed = torch.tensor([ids], device=runtime.device)
        batches = lambda: (fixed[:, :-1], fixed[:, 1:])  # noqa: E731 - the same text every iteration
    else:
        loader = TokenLoader(train_tokens, 1, seq_len, options.seed, device=runtime.device)
        batches = loader.next_batch

    tracer_patterns = options.only or (
        ["embed.*", "final.*", "lm_head.*", "loss*"]
        + [f"blocks.{i}.*" for i in blocks]
        + [f"blocks.{i}.{p}" for i in range(config.n_layer) if i not in blocks
           for p in ("resid.*", "attn.out", "mlp.out")])
    keep = [f"blocks.{i}.attn.{p}" for i in blocks for p in ("pattern", "q", "q_rot", "k_rot")]
    model.train()
    steps: list[StepTrace] = []
    first_ids: list[int] = []
    for step in range(options.steps):
        schedule_step = min(first_step + step, train_config.max_steps - 1)
        multiplier = lr_multiplier(schedule_step, train_config.max_steps, train_config.warmup_steps,
                                   train_config.warmdown_ratio, train_config.final_lr_frac)
        set_learning_rates(optimizers, multiplier, muon_momentum(schedule_step, train_config.muon_momentum_warmup))
        x, y = batches()
        if step == 0:
            first_ids = x[0].tolist()
        tracer = StatsTracer(tracer_patterns, keep=keep if step == 0 else [], crop=options.crop)
        with tracer:
            loss = model(x, y)
            loss.backward()
        param_grads = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip or float("inf")).item()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for optimizer in optimizers:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        ratios = {n: update_ratio(before[n], p.detach()) for n, p in model.named_parameters()}
        steps.append(StepTrace(step + 1, loss.item(), grad_norm, tracer.stats, param_grads, ratios,
                               group_labels(model, optimizers), tracer.kept, tracer.order))
    runtime_lr = {f"{type(o).__name__} group {i}": g["lr"] for o in optimizers for i, g in enumerate(o.param_groups)}
    rotary = {}
    if config.position == "rope":
        rotary = {"cos": model.rotary_cos[: options.crop].cpu().clone(), "sin": model.rotary_sin[: options.crop].cpu().clone()}
    return TraceReport(config, tokenizer, source, first_ids, blocks, steps, rotary, notices, runtime_lr,
                       same_batch=options.text is not None)


def update_ratio(before: torch.Tensor, after: torch.Tensor) -> float | None:
    """‖ΔW‖ / ‖W‖ of one optimiser step; None when W was all zeros (the ratio is undefined)."""
    size = before.norm().item()
    return None if size == 0 else (after - before).norm().item() / size
