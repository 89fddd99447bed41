"""Typed training config: defaults in one place, presets, override parsing and validation.

A run's config is resolved in this order, later wins:

    TrainConfig defaults  <  --preset NAME  <  --config FILE.json  <  --FIELD VALUE flags

Model fields (`GPTConfig`, e.g. `--n-kv-head 1`, `--softcap off`) are accepted alongside training
fields and kept in `TrainConfig.model`; the model is then derived from `--depth` and `--family`
(see `GPTConfig.from_depth`) with those overrides applied. Unknown keys and bad values raise
`UsageError` naming the key and what it accepts.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glassgpt import paths
from glassgpt.errors import GlassError, UsageError
from glassgpt.model.config import FAMILIES, GPTConfig

OPTIMIZERS = ("auto", "muon", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model's architecture switches."""

    # -- run ---------------------------------------------------------------------------------
    run: str = ""
    """Name of the run: its folder is $GLASSGPT_HOME/runs/<run>."""
    seed: int = 1337
    """Seeds weights, data order and dropout: same seed, same run."""
    # -- stage -------------------------------------------------------------------------------
    stage: str = "base"
    """base: pretrain on --data | mid: midtrain a run on a conversation mixture (packed rows) |
    sft: fine-tune a run on whole conversations (padded rows). mid and sft need --from."""
    from_run: str = ""
    """mid/sft: the run whose final weights and tokenizer this stage starts from (not its optimiser)."""
    mixture: str = ""
    """mid/sft: conversations to train on: a mixture name (glassgpt data list) or entries such as
    'identity:2,gsm8k,chats.jsonl' (name or .jsonl file, optional :epochs)."""
    identity_name: str = ""
    """mid/sft: who trained the model, as the identity conversations tell it; empty = your user name."""
    model_name: str = ""
    """mid/sft: the model's own name, as the identity conversations tell it; empty = the run's name."""
    # -- data --------------------------------------------------------------------------------
    data: str = "tinyshakespeare"
    """Corpus: tinyshakespeare | fineweb-edu[:N] | a .txt/.jsonl/.parquet file, folder or glob."""
    vocab_size: int = 4096
    """Tokenizer vocabulary, special tokens included (at least 267)."""
    tokenizer: str = ""
    """Name of a trained tokenizer to use; empty = '<corpus>-<vocab_size>', trained if missing."""
    # -- model -------------------------------------------------------------------------------
    model_file: str = ""
    """Train your own GPT from this .py file (see glassgpt learn); empty = the reference model."""
    init: str = "model"
    """model: the model's own init_weights() | reference: the reference's initial weights for this
    seed (a learner's model then starts exactly where the reference starts)."""
    family: str = "nanochat"
    """Architecture family: nanochat | gpt2 (sets the defaults of every model switch)."""
    depth: int = 4
    """Number of blocks; width = 64 x depth unless --n-embd is given."""
    head_dim: int = 0
    """Target size of each attention head; 0 = family default (nanochat 128, gpt2 64)."""
    seq_len: int = 256
    """Tokens per training sequence (at most the model's --sequence-len, which defaults to it)."""
    # -- optimisation --------------------------------------------------------------------------
    device_batch_size: int = 16
    """Sequences per forward/backward pass on each device."""
    total_batch_size: int = 0
    """Tokens per optimiser step; gradients are accumulated to reach it. 0 = one pass per step."""
    max_steps: int = 1000
    """Optimiser steps to train for."""
    optimizer: str = "auto"
    """auto (family default: nanochat → muon, gpt2 → adamw) | muon (Muon + AdamW) | adamw."""
    matrix_lr: float = 0.02
    """Muon learning rate for the 2-D matrices inside blocks."""
    embedding_lr: float = 0.2
    """AdamW learning rate for the token embedding (muon optimizer; scaled by (n_embd/768)^-0.5)."""
    unembedding_lr: float = 0.004
    """AdamW learning rate for the LM head (muon optimizer; scaled by (n_embd/768)^-0.5)."""
    scalar_lr: float = 0.004
    """AdamW learning rate for gains and biases (muon optimizer; scaled by (n_embd/768)^-0.5)."""
    adamw_lr: float = 1e-3
    """Learning rate of every parameter with the adamw optimizer."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (adamw optimizer only)."""
    beta1: float = 0.8
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warmup."""
    warmdown_ratio: float = 0.2
    """Fraction of the steps, at the end, over which the learning rate decays linearly."""
    final_lr_frac: float = 0.0
    """Learning rate at the very end, as a fraction of the peak."""
    muon_momentum_warmup: int = 300
    """Steps over which Muon's momentum rises from 0.85 to 0.95."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this; 0 = no clipping."""
    # -- evaluation, samples, checkpoints ---------------------------------------------------------
    eval_every: int = 250
    """Evaluate val bits per byte (on the whole val split) every N steps; 0 = only at the end."""
    eval_batch_size: int = 0
    """Sequences per evaluation pass; 0 = 4 x device_batch_size."""
    sample_tokens: int = 64
    """Tokens per sample printed at each evaluation (a fresh model's step 0 has none); 0 = no samples."""
    checkpoint_every: int = 500
    """Save a checkpoint every N steps (one is always saved at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    log_every: int = 10
    """Steps between log lines when the output is not a terminal (a terminal gets a progress bar)."""
    # -- hardware ------------------------------------------------------------------------------
    device: str = "auto"
    """auto (cuda > mps > cpu) | cpu | cuda | mps."""
    dtype: str = "auto"
    """auto | fp32 | bf16 (autocast). auto picks bf16 on GPUs that support it and on CPUs
    where a bf16 matmul measures faster than fp32; otherwise fp32."""
    compile: bool = False
    """torch.compile the model (slow to start; pays off on long GPU runs)."""
    # -- model overrides ---------------------------------------------------------------------------
    model: dict = field(default_factory=dict)
    """GPTConfig fields set explicitly (e.g. {"n_kv_head": 1}); the rest follow family and depth."""

    def validate(self) -> "TrainConfig":
        paths.check_name(self.run, "run")
        if self.stage not in STAGES:
            raise UsageError(f"--stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if self.stage == "base" and (self.from_run or self.mixture):
            flag = "--from" if self.from_run else "--mixture"
            raise UsageError(f"{flag} is for the chat stages: add --stage mid or --stage sft")
        if self.stage != "base":
            if not self.from_run:
                raise UsageError(f"--stage {self.stage} starts from another run's weights: add --from RUN "
                                 "(e.g. the quickstart's base run: --from quickstart)")
            paths.check_name(self.from_run, "run")
            if self.from_run == self.run:
                raise UsageError(f"--from {self.from_run} is the run being trained; give the new stage its own --run")
            if len(self.model_name) > 60 or "\n" in self.model_name:
                raise UsageError("--model-name is how the model names itself: one line of at most 60 characters")
            if not self.mixture.strip():
                raise UsageError(f"--mixture is empty; --stage {self.stage} trains on a conversation mixture "
                                 "(see glassgpt data list)")
        if self.family not in FAMILIES:
            raise UsageError(f"--family must be one of {', '.join(FAMILIES)}, not {self.family!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("device", DEVICES), ("dtype", DTYPES),
                              ("init", ("model", "reference"))):
            if getattr(self, name) not in allowed:
                raise UsageError(f"--{_dash(name)} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("depth", "seq_len", "device_batch_size", "max_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{_dash(name)} must be at least 1, not {getattr(self, name)}")
        for name in ("head_dim", "total_batch_size", "warmup_steps", "eval_every", "eval_batch_size",
                     "sample_tokens", "checkpoint_every", "muon_momentum_warmup"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{_dash(name)} must be 0 or more, not {getattr(self, name)}")
        for name in ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "adamw_lr"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"--{_dash(name)} must be a finite number ≥ 0, not {value}")
        for name in ("warmdown_ratio", "final_lr_frac", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"--{_dash(name)} must be between 0 and 1, not {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UsageError("--weight-decay and --grad-clip must be 0 or more")
        if self.data.strip() == "":
            raise UsageError("--data is empty: give a corpus name or a path")
        from glassgpt.tokenizer import check_vocab_size

        check_vocab_size(self.vocab_size)
        if self.tokenizer:
            paths.check_name(self.tokenizer, "tokenizer")
        unknown = set(self.model) - set(MODEL_FIELDS)
        if unknown:
            raise UsageError(f"unknown model field(s) in config: {', '.join(sorted(unknown))}")
        return self

    @property
    def resolved_optimizer(self) -> str:
        if self.optimizer != "auto":
            return self.optimizer
        return "muon" if self.family == "nanochat" else "adamw"

    def optimizer_settings(self):
        """The optimiser fields, as `train.optim.build_optimizers` takes them."""
        from glassgpt.train.optim import OptimizerSettings

        return OptimizerSettings(
            kind=self.resolved_optimizer, matrix_lr=self.matrix_lr, embedding_lr=self.embedding_lr,
            unembedding_lr=self.unembedding_lr, scalar_lr=self.scalar_lr, adamw_lr=self.adamw_lr,
            weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2)

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The architecture: family preset at this depth, then explicit overrides."""
        fields = dict(self.model)
        fields.setdefault("sequence_len", self.seq_len)
        config = GPTConfig.from_depth(self.depth, vocab_size, self.family, head_dim=self.head_dim or None, **fields)
        if self.seq_len > config.sequence_len:
            raise UsageError(
                f"--seq-len {self.seq_len} is longer than the model's sequence_len {config.sequence_len}; "
                f"lower --seq-len or raise --sequence-len"
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Model fields a run may override. vocab_size comes from the tokenizer, n_layer from --depth and
# family from --family, so they are not separate knobs.
MODEL_FIELDS = [f.name for f in dataclasses.fields(GPTConfig) if f.name not in ("vocab_size", "n_layer", "family")]
TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]

STAGES = ("base", "mid", "sft")
# A stage's own defaults, applied over TrainConfig's and under --config and flags. The model, its
# tokenizer and (by default) its context come from the --from run instead (see stage_fields).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "base": {},
    # Midtraining teaches the chat format, tool calls and the tasks' skills on packed rows, at
    # glassgpt's default learning rates (the quickstart's; a --from run's own are not carried
    # over): a fresh optimiser, warmed down at the end, as nanochat's midtraining does.
    "mid": dict(mixture="mid", device_batch_size=8, max_steps=400, warmdown_ratio=0.2, eval_every=200,
                checkpoint_every=100, sample_tokens=64),
    # SFT polishes whole conversations at a small, linearly decaying learning rate, so it adjusts the
    # model to the conversation boundaries without washing out what midtraining taught.
    "sft": dict(mixture="sft", device_batch_size=8, max_steps=150, matrix_lr=0.004, embedding_lr=0.04,
                unembedding_lr=0.0008, scalar_lr=0.0008, adamw_lr=2e-4, warmdown_ratio=1.0, eval_every=75,
                checkpoint_every=50, sample_tokens=64),
}
# The context the chat stages train at by default: conversations run longer than the quickstart's
# 128-token windows. Rotary (or no) position encodings extend to it; learned positions cannot.
STAGE_SEQ_LEN = 512
# Fields a chat stage takes from its --from run: the architecture and the tokenizer.
INHERITED_FIELDS = ("family", "depth", "head_dim", "vocab_size", "tokenizer", "model_file", "init")

PRESETS: dict[str, dict[str, Any]] = {
    # The quickstart: about 2 minutes of training on a 2-core laptop CPU. Tuned on tinyshakespeare
    # for the lowest val bits per byte in that time (benchmarks/speedrun_shakespeare.py): deeper,
    # wider or longer runs did not do better here, because 300 steps of 2,048 tokens already make
    # two passes over the ~300k training tokens and more passes start to overfit.
    "cpu-tiny": dict(
        data="tinyshakespeare", vocab_size=4096, family="nanochat", depth=3, head_dim=64,
        seq_len=128, device_batch_size=16, max_steps=300, eval_every=100, checkpoint_every=100,
    ),
    # The same budget with the GPT-2 architecture and AdamW alone, for comparison.
    "cpu-tiny-gpt2": dict(
        data="tinyshakespeare", vocab_size=4096, family="gpt2", depth=3, seq_len=128,
        device_batch_size=16, max_steps=300, adamw_lr=3e-3, beta1=0.9, warmup_steps=20,
        eval_every=100, checkpoint_every=100,
    ),
}


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


# -- parsing values --------------------------------------------------------------------------

_TRUE, _FALSE = {"true", "on", "yes", "1"}, {"false", "off", "no", "0"}


def field_type(name: str) -> Any:
    """The annotated type of a train or model field."""
    hints = _hints(TrainConfig) if name in TRAIN_FIELDS else _hints(GPTConfig)
    return hints[name]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def convert(name: str, raw: Any) -> Any:
    """Turn a command-line string (or a JSON value) into the field's type, or raise UsageError."""
    kind = field_type(name)
    optional = isinstance(kind, types.UnionType) and type(None) in kind.__args__
    if optional:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("off", "none", "null")):
            return None
        kind = next(a for a in kind.__args__ if a is not type(None))
    flag = f"--{_dash(name)}"
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise UsageError(f"{flag} takes on/off (or true/false), not {raw!r}")
    if kind is int:
        if isinstance(raw, bool):
            raise UsageError(f"{flag} takes an integer, not {raw!r}")
        try:
            value = float(str(raw).replace("_", "").replace(",", ""))
        except ValueError:
            raise UsageError(f"{flag} takes an integer, not {raw!r}") from None
        if not value.is_integer():
            raise UsageError(f"{flag} takes an integer, not {raw!r}")
        return int(value)
    if kind is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{flag} takes a number{' or off' if optional else ''}, not {raw!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"{flag} takes a finite number, not {raw!r}")
        return value
    if kind is str:
        return str(raw)
    raise UsageError(f"{flag} cannot be set from the command line")


def _dash(name: str) -> str:
    return name.replace("_", "-")


def canonical_key(key: str) -> str:
    """'--max-steps' / 'max_steps' → 'max_steps', or UsageError with close matches."""
    name = key.lstrip("-").replace("-", "_")
    if name in TRAIN_FIELDS or name in MODEL_FIELDS:
        return name
    choices = [_dash(f) for f in TRAIN_FIELDS + MODEL_FIELDS]
    close = difflib.get_close_matches(_dash(name), choices, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else "; see glassgpt train --help"
    if name == "n_layer":
        hint = "; the number of blocks is --depth"
    if name in ("lr", "learning_rate"):
        # nanoGPT has one learning rate; here each parameter group has its own (see optim.py).
        hint = ("; each parameter group has its own learning rate: --matrix-lr (Muon, block matrices), "
                "--embedding-lr, --unembedding-lr, --scalar-lr (AdamW, with --optimizer muon), "
                "--adamw-lr (every parameter, with --optimizer adamw)")
    raise UsageError(f"unknown option --{_dash(name)}{hint}")


def apply(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with `values` (train or model fields, raw or typed) applied."""
    train_values: dict[str, Any] = {}
    model_values = dict(config.model)
    for key, raw in values.items():
        if key == "model":
            if not isinstance(raw, dict):
                raise UsageError('"model" in a config file must be an object of model fields')
            for model_key, model_raw in raw.items():
                name = canonical_key(model_key)
                if name not in MODEL_FIELDS:
                    raise UsageError(f"{model_key!r} is not a model field")
                model_values[name] = convert(name, model_raw)
            continue
        name = canonical_key(key)
        if name in TRAIN_FIELDS:
            train_values[name] = convert(name, raw)
        else:
            model_values[name] = convert(name, raw)
    return dataclasses.replace(config, **train_values, model=model_values)


def load_config_file(path: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read config file {file}: {error.strerror or error}") from None
    try:
        if file.suffix == ".toml":
            import tomllib  # Python ≥ 3.11

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise UsageError("TOML config files need Python 3.11 or newer; use JSON") from None
    except ValueError as error:
        kind = "TOML" if file.suffix == ".toml" else "JSON"
        raise UsageError(f"config file {file} is not valid {kind}: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {file} must hold one object of fields")
    return data


def resolve(preset_name: str | None, config_file: str | None, flags: dict[str, Any]) -> TrainConfig:
    """Defaults < preset (or the stage's defaults and its --from run) < config file < flags; validated."""
    file_values = load_config_file(config_file) if config_file else {}
    given = {(canonical_key(k) if k != "model" else k): v for k, v in {**file_values, **flags}.items()}
    stage = str(given.get("stage") or "base")
    config = TrainConfig()
    if stage in STAGE_DEFAULTS and stage != "base":
        if preset_name:
            raise UsageError(f"--preset describes a base run; --stage {stage} takes its model from --from RUN")
        config = apply(apply(config, STAGE_DEFAULTS[stage]), stage_fields(stage, given))
    elif preset_name:
        config = apply(config, preset(preset_name))
    config = apply(apply(config, file_values), flags)
    if config.stage != "base":
        config = extend_context(config)
    if config.model_file:  # runs are reopened from anywhere: keep where the file really is
        config = dataclasses.replace(config, model_file=str(Path(config.model_file).expanduser().resolve()))
    config.validate()
    config.model_config(config.vocab_size)  # surfaces architecture errors before anything is written
    return config


def stage_fields(stage: str, given: dict[str, Any]) -> dict[str, Any]:
    """What a chat stage takes from its --from run: the architecture as built, the tokenizer, and a
    context of max(the run's, --seq-len or STAGE_SEQ_LEN) (the run's own where positions are learned).

    Flags that would change the architecture or the data are refused: the weights decide the first,
    and the mixture replaces the second."""
    keys = set(given)
    if "data" in keys:
        raise UsageError(f"--stage {stage} trains on conversations: give --mixture (see glassgpt data list), "
                         "not --data")
    changed = sorted(k for k in keys & (set(INHERITED_FIELDS) | set(MODEL_FIELDS) | {"model"})
                     if k not in ("dropout", "sequence_len"))
    if changed:
        raise UsageError(f"--{_dash(changed[0])} cannot be set with --stage {stage}: the model comes from the "
                         "--from run as it was trained")
    parent = str(given.get("from_run") or "")
    if not parent:
        raise UsageError(f"--stage {stage} starts from another run's weights: add --from RUN "
                         "(e.g. the quickstart's base run: --from quickstart)")
    from glassgpt.runs import checkpoint_of, read_run_config

    paths.check_name(parent, "run")
    if parent == given.get("run"):
        raise UsageError(f"--from {parent} and --run {parent} name the same run: a stage is a new run of its own; "
                         f"give it another name, e.g. --run {parent}-{stage}")
    try:
        checkpoint_of(parent)  # the run exists and has weights to start from
    except GlassError as error:  # the user's flag names it, so a usage error (exit 2)
        raise UsageError(f"--from {parent}: {error}") from None
    saved = read_run_config(paths.run_dir(parent))
    train, built = saved["train"], dict(saved["model"])
    inherited = {name: train[name] for name in INHERITED_FIELDS if name in train}
    inherited["tokenizer"] = saved.get("tokenizer", {}).get("name", train.get("tokenizer", ""))
    model = {k: v for k, v in built.items() if k not in ("vocab_size", "n_layer", "family")}
    # given holds the flags as typed: convert like every other field (1_024, 1e3; a bad one is one line)
    rows = convert("seq_len", given["seq_len"]) if given.get("seq_len") not in (None, "") else STAGE_SEQ_LEN
    context = built["sequence_len"] if built["position"] == "learned" else max(built["sequence_len"], rows)
    model["sequence_len"] = context
    return {**inherited, "model": model, "seq_len": rows if "seq_len" in given else context}


def extend_context(config: TrainConfig) -> TrainConfig:
    """A chat stage asked for a longer --seq-len than its model holds: rotary tables are computed
    for any length, so a rope (or position-free) model's context grows with it; learned positions
    have one trained row per position and cannot (model_config then says so)."""
    fields = dict(config.model)
    if config.seq_len > fields.get("sequence_len", 0) and fields.get("position") != "learned":
        fields["sequence_len"] = config.seq_len
    return dataclasses.replace(config, model=fields)


# -- help text -----------------------------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass, read from its
    source, so that help text lives next to the field it describes."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def help_for(name: str) -> str:
    cls = TrainConfig if name in TRAIN_FIELDS else GPTConfig
    return field_docs(cls).get(name, "")
