"""Run real training iterations of the reference model under a tracer and collect what it saw.

`run_trace(options)` builds the model (fresh, or from a saved run with its optimiser state),
takes real batches from the corpus (or a given text, or a conversation with its loss mask), and
for each iteration runs the same `train_step` that `glassgpt train` runs (learning-rate schedule,
forward and backward, clipping, optimiser step), on one sequence (batch 1, one micro-batch) in
fp32 so that every statistic is read at full precision, recording:

- every trace point's statistics (and its gradient's), in every block: statistics are a handful
  of reductions, cheap next to the step itself, so the JSON and the HTML page hold all of them
  even when the terminal walk-through shows only some blocks in full;
- crops of the tensors that views draw: every layer's attention pattern (the page has a heatmap
  per layer), q before and after rotation for the blocks shown in full;
- gradient norms of every parameter, the global gradient norm;
- the learning-rate multiplier of the schedule step each iteration ran at, and how far the
  optimiser step moved every parameter (‖ΔW‖, and ‖ΔW‖ / ‖W‖ where W was not all zeros).

A saved run continues its own schedule: iteration 1 runs at the step the run stopped at (capped
at its last step, so a finished run traces at the small learning rate it ended with), exactly
as `glassgpt train` would take its next step. A fresh model starts at step 0.

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
from glassgpt.model.gpt import GPT, head_is_tied
from glassgpt.see.registry import check_patterns
from glassgpt.see.tracer import StatsTracer, TensorStats
from glassgpt.tokenizer import Tokenizer
from glassgpt.train.optim import Muon, build_optimizers, lr_multiplier, muon_momentum
from glassgpt.train.step import train_step


@dataclass
class TraceOptions:
    run: str | None = None
    # A fresh model's architecture; None = the default (depth 4, nanochat, the family's head size,
    # as many key/value heads as query heads). A run has its own, so giving these with it is an error.
    depth: int | None = None
    family: str | None = None
    n_kv_head: int | None = None
    head_dim: int | None = None
    seq_len: int | None = None  # default: 1024 for a fresh model, the run's sequence_len for --run
    steps: int = 3
    blocks: str | None = None  # "0,1,last"; default: the first three and the last
    only: list[str] = field(default_factory=list)
    text: str | None = None
    conversation: str | None = None  # a .jsonl file: its first conversation, with its loss mask
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
    update_norms: dict[str, float] = field(default_factory=dict)  # parameter → ‖ΔW‖ of this step
    lr_of: dict[str, float] = field(default_factory=dict)  # parameter → learning rate of this step
    schedule_step: int = 0  # the optimiser step of the schedule this iteration ran at (0-based)
    lr_multiplier: float = 1.0  # lr = the group's peak lr x this


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
    text_source: str = ""  # where the tokens came from: "a random window of tinyshakespeare's ..."
    max_steps: int = 0  # the schedule's length (a fresh model: the training default)
    optimizer: str = "muon"  # "muon" (Muon + AdamW) or "adamw" (AdamW alone)
    grad_clip: float = 0.0  # the global gradient norm is clipped to this before the step (0: never)
    run: str | None = None  # the traced run's name; None for a fresh model
    weight_decay: float = 0.0  # AdamW's, on matrices (the adamw optimizer only)
    target_ids: list[int] = field(default_factory=list)  # the first row's targets: -1 where the loss mask leaves one out


def parse_blocks(spec: str | None, n_layer: int) -> list[int]:
    """'0,1,last' → [0, 1, n_layer - 1]; None → the first three and the last."""
    if spec is None:
        return sorted({i for i in (0, 1, 2, n_layer - 1) if 0 <= i < n_layer})
    chosen = set()
    allowed = f"0-{n_layer - 1} (negative counts from the end), 'last' or 'all'"
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "last":
            chosen.add(n_layer - 1)
        elif part == "all":
            chosen.update(range(n_layer))
        elif not re.fullmatch(r"-?\d+", part):
            raise UsageError(f"--blocks {part!r} is not a block index: give block numbers {allowed}, "
                             "separated by commas")
        elif -n_layer <= int(part) < n_layer:
            chosen.add(int(part) % n_layer)
        else:
            raise UsageError(f"--blocks {part!r} is out of range: the model has {n_layer} blocks; give {allowed}")
    if not chosen:
        raise UsageError("--blocks is empty: give block indices like 0,1,last")
    return sorted(chosen)


FRESH_ONLY = ("depth", "family", "n_kv_head", "head_dim")  # options that describe a fresh model


def fresh_train_config(options: TraceOptions) -> TrainConfig:
    """The training config of a fresh model: the training defaults, with the trace's depth, family,
    head size, key/value heads and sequence length, so that `model_config` derives (and
    validates) the architecture exactly as `glassgpt train` would from the same flags."""
    overrides = {"n_kv_head": options.n_kv_head} if options.n_kv_head is not None else {}
    return TrainConfig(run="trace", seed=options.seed, depth=options.depth or 4, family=options.family or "nanochat",
                       head_dim=options.head_dim or 0, seq_len=options.seq_len or 1024, model=overrides)


def _fresh_model(options: TraceOptions, runtime):
    from glassgpt.data.prepare import prepare_data

    train_config = fresh_train_config(options)
    _, tokenizer, data = prepare_data(train_config, runtime, say=lambda *a, **k: None)
    config = train_config.model_config(tokenizer.vocab_size)
    torch.manual_seed(options.seed)
    model = GPT.build(config, runtime.device)
    optimizers = _optimizers(model, train_config)
    source = f"a fresh {train_config.family} model (depth {train_config.depth}, seed {options.seed})"
    return model, tokenizer, optimizers, train_config, source, data.train, 0


def _saved_model(options: TraceOptions, runtime):
    from glassgpt.runs import load_run
    from glassgpt.train import checkpoint
    from glassgpt.data.prepare import prepare_data

    run = load_run(options.run, device=runtime.device)
    saved = TrainConfig(**{k: v for k, v in run.config["train"].items() if k in TrainConfig.__dataclass_fields__})
    model = run.model
    optimizers = _optimizers(model, saved)
    folder = checkpoint.latest(run.folder)
    checkpoint.load_optimizers(folder, optimizers)  # continue from the run's real optimiser state
    seq_len = options.seq_len or model.config.sequence_len
    if seq_len > model.config.sequence_len:
        raise UsageError(f"--seq-len {seq_len} is longer than run {options.run!r}'s sequence_len "
                         f"{model.config.sequence_len}")
    tokens = None
    if options.text is None and not traces_a_conversation(options, saved):
        _, _, data = prepare_data(saved, runtime, say=lambda *a, **k: None)
        tokens = data.train
    saved.seq_len = seq_len
    return model, run.tokenizer, optimizers, saved, f"run {options.run!r} at step {run.step}", tokens, run.step


def _optimizers(model: GPT, config: TrainConfig):
    return build_optimizers(model, config.optimizer_settings())


def parameter_role(name: str, parameter: torch.Tensor, tied: bool) -> str:
    """What a parameter is for: 'attention', 'MLP', 'token embedding', 'gains & biases'..."""
    if parameter.dim() < 2:
        return "gains & biases"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "MLP"
    if name == "wte.weight":
        return "tied embedding/head" if tied else "token embedding"
    if name == "wpe.weight":
        return "position embedding"
    return "head"


def group_labels(model: GPT, optimizers) -> dict[str, str]:
    """Parameter name → '<optimiser> · <role>', e.g. 'Muon · attention', 'AdamW · head'.

    The optimiser is the one that really holds the parameter; the role says what the parameter
    is for. Roles are finer than optimiser groups (Muon holds attention and MLP matrices in one
    group; the gpt2 family's single AdamW holds everything), so the walk-through shows each
    row's learning rate next to it: rows with the same rate share one setting."""
    names = {id(p): n for n, p in model.named_parameters()}
    labels = {}
    for optimizer in optimizers:
        kind = "Muon" if isinstance(optimizer, Muon) else "AdamW"
        for group in optimizer.param_groups:
            for p in group["params"]:
                labels[names[id(p)]] = f"{kind} · {parameter_role(names[id(p)], p, head_is_tied(model))}"
    return labels


def learning_rates(model: GPT, optimizers) -> dict[str, float]:
    """Parameter name → the learning rate its optimiser group uses right now."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["lr"] for optimizer in optimizers for group in optimizer.param_groups
            for p in group["params"]}


def check_options(options: TraceOptions) -> GPTConfig:
    """Everything that can be wrong with the options, found before any data or model is made.
    Returns the architecture (its vocabulary may still change with the tokenizer)."""
    if options.steps < 1:
        raise UsageError(f"--steps must be at least 1, not {options.steps}")
    if options.text is not None and not options.text:
        raise UsageError("--text is empty: give some text to trace")
    if options.text is not None and options.conversation is not None:
        raise UsageError("give --text or --conversation, not both")
    if options.conversation is not None:
        from glassgpt.chat.conversation import read_conversations

        next(read_conversations(options.conversation))  # a bad file is one line, before any work
    if options.run:
        from glassgpt import paths
        from glassgpt.runs import read_run_config

        given = [name for name in FRESH_ONLY if getattr(options, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} describes a fresh model; run {options.run!r} has its own architecture "
                             f"(drop {flag} or --run)")
        config = GPTConfig.from_dict(read_run_config(paths.run_dir(options.run))["model"])
    else:
        train_config = fresh_train_config(options)
        config = train_config.model_config(train_config.vocab_size)
    parse_blocks(options.blocks, config.n_layer)
    if options.only:
        check_patterns(options.only, config)
    return config


def recorded_patterns(only: list[str]) -> list[str]:
    """What the tracer records: everything, or what --only selects. A `grad:` pattern selects a
    trace point for its gradient, which the tracer records by watching the tensor itself."""
    return [p.removeprefix("grad:") for p in only] or ["*"]


def run_trace(options: TraceOptions) -> TraceReport:
    check_options(options)
    runtime = devices.setup(options.device, "fp32")
    if options.run:
        model, tokenizer, optimizers, train_config, source, train_tokens, first_step = _saved_model(options, runtime)
    else:
        model, tokenizer, optimizers, train_config, source, train_tokens, first_step = _fresh_model(options, runtime)
    config = model.config
    seq_len = train_config.seq_len
    blocks = parse_blocks(options.blocks, config.n_layer)
    notices: list[str] = []

    if traces_a_conversation(options, train_config):
        fixed_x, fixed_y, text_source = _conversation_batch(options, tokenizer, config, notices, runtime.device)
        batches = lambda: (fixed_x, fixed_y)  # noqa: E731 - the same conversation every iteration
    elif options.text is not None:
        ids = tokenizer.encode(options.text, bos=True)
        if len(ids) - 1 > config.sequence_len:
            notices.append(f"--text has {len(ids) - 1} tokens; the model reads at most {config.sequence_len}, "
                           f"so only the first {config.sequence_len} were traced")
            ids = ids[: config.sequence_len + 1]
        fixed = torch.tensor([ids], device=runtime.device)
        batches = lambda: (fixed[:, :-1], fixed[:, 1:])  # noqa: E731 - the same text every iteration
        text_source = "your --text, after a <|bos|> token (the same text every iteration)"
    else:
        loader = TokenLoader(train_tokens, 1, seq_len, options.seed, device=runtime.device)
        batches = loader.next_batch
        text_source = f"a random {seq_len:,}-token window of {train_config.data}'s training split (a new one every iteration)"

    # Every layer's pattern feeds the page's attention views; q before and after rotation feeds
    # the walk-through's rotation check, only for the blocks it shows in full.
    keep = ([f"blocks.{i}.attn.pattern" for i in range(config.n_layer)]
            + [f"blocks.{i}.attn.{p}" for i in blocks for p in ("q", "q_rot")] + ["loss.per_token"])
    model.train()
    steps: list[StepTrace] = []
    first_ids: list[int] = []
    first_targets: list[int] = []
    for step in range(options.steps):
        # A run continues its schedule where it stopped; past its end, it stays at the last step.
        schedule_step = min(first_step + step, train_config.max_steps - 1)
        multiplier = lr_multiplier(schedule_step, train_config.max_steps, train_config.warmup_steps,
                                   train_config.warmdown_ratio, train_config.final_lr_frac)
        x, y = batches()
        if step == 0:
            first_ids, first_targets = x[0].tolist(), y[0].tolist()
        tracer = StatsTracer(recorded_patterns(options.only), keep=keep if step == 0 else [], crop=options.crop)
        seen: dict = {}

        def read_gradients(model, seen=seen) -> None:
            """The gradients as backward left them (before clipping), and the weights before the step."""
            seen["grads"] = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
            seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}

        # The one training step glassgpt train runs, with the tracer watching forward and backward.
        result = train_step(model, optimizers, [(x, y)], lr_multiplier=multiplier,
                            muon_momentum=muon_momentum(schedule_step, train_config.muon_momentum_warmup),
                            grad_clip=train_config.grad_clip, watch=lambda: tracer, on_gradients=read_gradients)
        moved = {n: update_size(seen["before"][n], p.detach()) for n, p in model.named_parameters()}
        steps.append(StepTrace(
            step + 1, result.loss, result.grad_norm, tracer.stats, seen["grads"], {n: m[1] for n, m in moved.items()},
            group_labels(model, optimizers), tracer.kept, tracer.order,
            update_norms={n: m[0] for n, m in moved.items()}, lr_of=learning_rates(model, optimizers),
            schedule_step=schedule_step, lr_multiplier=multiplier))
    runtime_lr = {f"{type(o).__name__} group {i}": g["lr"] for o in optimizers for i, g in enumerate(o.param_groups)}
    rotary = {}
    if config.position == "rope":
        rotary = {"cos": model.rotary_cos[: options.crop].cpu().clone(), "sin": model.rotary_sin[: options.crop].cpu().clone()}
    return TraceReport(config, tokenizer, source, first_ids, blocks, steps, rotary, notices, runtime_lr,
                       target_ids=first_targets,
                       same_batch=options.text is not None or traces_a_conversation(options, train_config),
                       text_source=text_source,
                       max_steps=train_config.max_steps, optimizer=train_config.resolved_optimizer,
                       grad_clip=train_config.grad_clip, weight_decay=train_config.weight_decay, run=options.run)


# What a chat run is traced on when it is given neither --text nor --conversation: one short
# conversation with a tool call, so the loss section shows the mask at work.
EXAMPLE_CONVERSATION = {"messages": [
    {"role": "user", "content": "What is 37 + 48?"},
    {"role": "assistant", "content": [{"type": "tool_call", "text": "37 + 48"}, {"type": "tool_result", "text": "85"},
                                      {"type": "text", "text": "37 + 48 = 85."}]}]}


def traces_a_conversation(options: TraceOptions, train_config: TrainConfig) -> bool:
    """--conversation, or a chat run traced without --text (it learned from conversations)."""
    return options.conversation is not None or (options.text is None and train_config.stage != "base")


def _conversation_batch(options: TraceOptions, tokenizer: Tokenizer, config: GPTConfig, notices: list[str], device):
    """(x, y, where from) of one conversation: y is -1 where the loss mask is 0, as in training."""
    from glassgpt.chat.conversation import read_conversations
    from glassgpt.chat.render import missing_chat_tokens, render_conversation

    missing = missing_chat_tokens(tokenizer)
    if missing:
        raise UsageError(f"this tokenizer has no {', '.join(missing)}: it cannot render a conversation")
    if options.conversation is not None:
        _, conversation = next(read_conversations(options.conversation))
        where = f"the first conversation of {options.conversation}, rendered with its loss mask"
    else:
        conversation = EXAMPLE_CONVERSATION
        where = "an example conversation (user: What is 37 + 48?; assistant: a calculator call, then the answer)"
    ids, mask = render_conversation(conversation, tokenizer)
    if len(ids) - 1 > config.sequence_len:
        notices.append(f"the conversation has {len(ids) - 1} tokens; the model reads at most {config.sequence_len}, "
                       f"so only the first {config.sequence_len} were traced")
        ids, mask = ids[: config.sequence_len + 1], mask[: config.sequence_len + 1]
    targets = [token if learned else -1 for token, learned in zip(ids[1:], mask[1:])]
    return (torch.tensor([ids[:-1]], device=device), torch.tensor([targets], device=device),
            f"{where} (the same every iteration)")


def update_size(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float | None]:
    """(‖ΔW‖, ‖ΔW‖ / ‖W‖) of one optimiser step; the ratio is None when W was all zeros (it is
    undefined: the step moved the tensor from nothing, so only ‖ΔW‖ says how far)."""
    size, step = before.norm().item(), (after - before).norm().item()
    return step, None if size == 0 else step / size

