"""Parameter, FLOP and memory accounting for a GPTConfig, in a fraction of a second.

- `parameter_shapes`: the name and shape of every parameter of `GPT(config)`, in the order of
  `named_parameters()`, worked out from the config as the constructors in model/gpt.py make them.
  Importing torch alone takes longer (1-2 s, ~220 MB) than `glassgpt scale` may, so this module
  does not need it. The model stays the authority: `meta_parameter_shapes` reads the same list
  off the real `GPT` built on PyTorch's meta device (shapes, no storage), `glassgpt scale
  --verify` compares the two, and the tests compare them for every combination of switches.
- `count_parameters`: those tensors grouped by name (one block's tensors grouped across all
  blocks); the groups add up to the model's total.
- `flops_per_token`: training FLOPs per token, the 6N + attention convention used for MFU.
- `training_memory`: weights, gradients, optimiser state (split between Muon and AdamW as
  `train.optim.build_optimizers` splits it) and a rough activation estimate, fp32 and bf16 mixed.
- `analyse` gathers all of it into a `ScaleReport`; `render` prints it (`glassgpt scale`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from glassgpt.model.config import GPTConfig

BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2}

Shape = tuple[int, ...]


def parameter_shapes(config: GPTConfig) -> list[tuple[str, Shape]]:
    """`[(name, shape) for name, p in GPT(config).named_parameters()]`, from the config alone.

    Follows the constructors in model/gpt.py, module by module in registration order: the
    embedding (and learned positions), the embedding norm, each block (norm_1, attention's four
    projections and QK-norm gains, norm_2, the MLP's two projections), the final norm (none
    after post-norm blocks, which end in a norm), and the head unless it is tied to wte."""
    C, V, M, D = config.n_embd, config.vocab_size, config.mlp_hidden, config.head_dim
    H, Hkv, bias = config.n_head, config.n_kv_head, config.bias

    def linear(name: str, fan_in: int, fan_out: int, with_bias: bool = bias) -> list[tuple[str, Shape]]:
        return [(f"{name}.weight", (fan_out, fan_in))] + ([(f"{name}.bias", (fan_out,))] if with_bias else [])

    def norm(name: str, dim: int, kind: str = config.norm, with_bias: bool = bias) -> list[tuple[str, Shape]]:
        if not config.norm_affine or kind == "none":
            return []  # parameter-free RMSNorm, or no norm at all
        return [(f"{name}.weight", (dim,))] + ([(f"{name}.bias", (dim,))] if with_bias and kind == "layer" else [])

    shapes: list[tuple[str, Shape]] = [("wte.weight", (V, C))]
    if config.position == "learned":
        shapes.append(("wpe.weight", (config.sequence_len, C)))
    if config.embed_norm:
        shapes += norm("embed_norm", C)
    for i in range(config.n_layer):
        p = f"blocks.{i}."
        shapes += norm(p + "norm_1", C)
        shapes += linear(p + "attn.c_q", C, H * D) + linear(p + "attn.c_k", C, Hkv * D)
        shapes += linear(p + "attn.c_v", C, Hkv * D) + linear(p + "attn.c_proj", H * D, C)
        if config.qk_norm:  # per-head RMSNorm, never a bias
            shapes += norm(p + "attn.q_norm", D, "rms", False) + norm(p + "attn.k_norm", D, "rms", False)
        shapes += norm(p + "norm_2", C)
        shapes += linear(p + "mlp.c_fc", C, M) + linear(p + "mlp.c_proj", M, C)
    shapes += norm("final_norm", C, config.norm if config.norm_placement == "pre" else "none")
    if not config.tie_embeddings:
        shapes += linear("lm_head", C, V, with_bias=False)
    return shapes


def meta_parameter_shapes(config: GPTConfig) -> list[tuple[str, Shape]]:
    """The same list read off the real model, built on the meta device (imports torch)."""
    from glassgpt.model.gpt import GPT

    return [(name, tuple(p.shape)) for name, p in GPT.build(config, "meta").named_parameters()]


def verify(config: GPTConfig) -> str:
    """Compare `parameter_shapes` with the meta-device model; the first difference, or ''."""
    ours, model = parameter_shapes(config), meta_parameter_shapes(config)
    for index, (mine, theirs) in enumerate(zip(ours, model)):
        if mine != theirs:
            return f"parameter {index}: counted {mine}, the model has {theirs}"
    if len(ours) != len(model):
        return f"counted {len(ours)} parameter tensors, the model has {len(model)}"
    return ""


def matmul_params(config: GPTConfig) -> int:
    """Weights that take part in a matmul per token: every 2-D weight except the embedding
    lookups, plus the head (which, when tied, is the embedding matrix used a second time)."""
    shapes = parameter_shapes(config)
    count = sum(math.prod(s) for n, s in shapes if len(s) == 2 and n not in ("wte.weight", "wpe.weight"))
    if config.tie_embeddings:
        count += config.vocab_size * config.n_embd
    return count


def attention_flops_per_token(config: GPTConfig, seq_len: int | None = None) -> int:
    """12 x n_layer x n_head x head_dim x seq_len: q·k and pattern·v (2 FLOPs per multiply-add,
    each a T x T x D product per head), forward and backward (x 3)."""
    seq_len = seq_len or config.sequence_len
    return 12 * config.n_layer * config.n_head * config.head_dim * seq_len


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward), the convention used for MFU:

        6 x matmul parameters                       (2 for the forward multiply-add, 4 for backward)
      + 12 x n_layer x n_head x head_dim x seq_len  (q·k and pattern·v, forward and backward)

    The attention term counts the full T x T product; causal kernels skip about half of it, so
    MFU computed with this count slightly overstates the work done (the common convention).
    """
    return 6 * matmul_params(config) + attention_flops_per_token(config, seq_len)


# -- parameters ----------------------------------------------------------------------------------

# What each module is, by its name inside the model (a block's modules without "blocks.<i>.").
MODULE_ROLES = {
    "wte": "token embedding",
    "wpe": "position embedding (learned)",
    "embed_norm": "norm after the embedding",
    "norm_1": "norm before attention",
    "attn.c_q": "attention: queries",
    "attn.c_k": "attention: keys",
    "attn.c_v": "attention: values",
    "attn.c_proj": "attention: output projection",
    "attn.q_norm": "QK-norm gain on queries",
    "attn.k_norm": "QK-norm gain on keys",
    "norm_2": "norm before the MLP",
    "mlp.c_fc": "MLP: up-projection",
    "mlp.c_proj": "MLP: down-projection",
    "final_norm": "final norm",
    "lm_head": "LM head (logits)",
}
_BLOCK_PARAMETER = re.compile(r"blocks\.(\d+)\.(.+)")


@dataclass
class ParameterGroup:
    """Parameters with one name, or, inside the blocks, one name in every block (`blocks.*.x`)."""

    name: str  # "wte.weight", "blocks.*.attn.c_q.weight"
    role: str  # "token embedding", "attention: queries (bias)"
    shape: list[int]  # of one tensor ([] when the group is empty)
    count: int  # elements in the whole model
    per_layer: int | None = None  # elements in block 0; None outside the blocks
    percent: float = 0.0  # of the total, rounded so that all groups add up to exactly 100

    @property
    def in_blocks(self) -> bool:
        return self.per_layer is not None


@dataclass
class ParameterCounts:
    groups: list[ParameterGroup]  # every parameter tensor in exactly one group, in model order
    n_layer: int
    tied: bool
    total: int  # == sum(p.numel() for p in GPT(config).parameters()), checked by the tests

    @property
    def layer_total(self) -> int:
        """Parameters of one block (block 0)."""
        return sum(g.per_layer for g in self.groups if g.in_blocks)

    @property
    def layers_total(self) -> int:
        """Parameters of all blocks."""
        return sum(g.count for g in self.groups if g.in_blocks)

    @property
    def layers_percent(self) -> float:
        return round(sum(g.percent for g in self.groups if g.in_blocks), 2)


def _role(key: str) -> str:
    module, _, kind = key.removeprefix("blocks.*.").rpartition(".")
    role = MODULE_ROLES.get(module, module)
    return f"{role} (bias)" if kind == "bias" else role


def count_parameters(config: GPTConfig) -> ParameterCounts:
    """The parameters of `GPT(config)`, grouped (see `group_parameters`)."""
    return group_parameters(parameter_shapes(config), config.n_layer, config.tie_embeddings)


def group_parameters(named: list[tuple[str, Shape]], n_layer: int, tied: bool) -> ParameterCounts:
    """Group (name, shape) pairs, in model order, by name: `blocks.<i>.x` of every block into
    `blocks.*.x`. A tied head is the embedding matrix itself, so the model names it once and it
    is counted once; its row says "0 extra"."""
    groups: dict[str, ParameterGroup] = {}
    for name, shape in named:
        size = math.prod(shape)
        in_block = _BLOCK_PARAMETER.fullmatch(name)
        key = f"blocks.*.{in_block[2]}" if in_block else name
        if key not in groups:
            groups[key] = ParameterGroup(key, _role(key), list(shape), 0, 0 if in_block else None)
        groups[key].count += size
        if in_block and in_block[1] == "0":
            groups[key].per_layer += size
    rows = list(groups.values())
    # The final norm and the head always get a row, so a reader sees "0" rather than wonders.
    if not any(g.name.startswith("final_norm.") for g in rows):
        at = next((i for i, g in enumerate(rows) if g.name.startswith("lm_head.")), len(rows))
        rows.insert(at, ParameterGroup("final_norm", "final norm: parameter-free (or none)", [], 0))
    if not any(g.name.startswith("lm_head.") for g in rows):
        rows.append(ParameterGroup("lm_head", "LM head: tied with the embedding, 0 extra", [], 0))
    for group, percent in zip(rows, rounded_percentages([g.count for g in rows])):
        group.percent = percent
    return ParameterCounts(rows, n_layer, tied, sum(g.count for g in rows))


def rounded_percentages(counts: list[int], decimals: int = 2) -> list[float]:
    """Each count's share of their sum, in percent, rounded to `decimals` places so that the
    rounded values add up to exactly 100 (largest remainder: the units lost to rounding down go
    to the counts that lost the most). Exact rational arithmetic, so no float can tip a tie."""
    total = sum(counts)
    if total <= 0:
        raise ValueError("percentages of nothing: the counts sum to 0")
    unit = 10**decimals
    exact = [Fraction(count * 100 * unit, total) for count in counts]  # in units of 10^-decimals %
    floors = [math.floor(value) for value in exact]
    missing = 100 * unit - sum(floors)
    # Equal counts (the same matrix in every block...) should show equal percentages: hand the
    # units out to all equal counts at once while that fits, then one by one.
    classes: dict[int, list[int]] = {}
    for i in sorted(range(len(counts)), key=lambda i: exact[i] - floors[i], reverse=True):
        classes.setdefault(counts[i], []).append(i)
    for members in classes.values():
        if 0 < len(members) <= missing and exact[members[0]] != floors[members[0]]:
            for i in members:
                floors[i] += 1
            missing -= len(members)
    for i in sorted(range(len(counts)), key=lambda i: exact[i] - floors[i], reverse=True)[:missing]:
        floors[i] += 1
    return [value / unit for value in floors]


# -- memory ----------------------------------------------------------------------------------------


@dataclass
class OptimizerSplit:
    kind: str  # "muon" (Muon for the block matrices, AdamW for the rest) or "adamw" (AdamW for all)
    muon_params: int  # one momentum buffer each
    adamw_params: int  # two moments (exp_avg, exp_avg_sq) each


def optimizer_split(config: GPTConfig) -> OptimizerSplit:
    """Which parameters each optimiser holds, by the rule `build_optimizers` uses: with Muon, the
    2-D matrices inside the blocks (`train.optim.is_block_matrix`) get Muon and all others AdamW;
    with AdamW alone, everything. The optimiser is the training default for the family
    (`TrainConfig.resolved_optimizer`): Muon for nanochat, AdamW for gpt2.

    The rule is restated on names and shapes rather than imported (train.optim imports torch);
    a test builds the real optimisers and checks that the split is theirs."""
    from glassgpt.config import TrainConfig

    kind = TrainConfig(family=config.family).resolved_optimizer
    muon = adamw = 0
    for name, shape in parameter_shapes(config):
        if kind == "muon" and name.startswith("blocks.") and len(shape) == 2:
            muon += math.prod(shape)
        else:
            adamw += math.prod(shape)
    return OptimizerSplit(kind, muon, adamw)


def activation_elements_per_token(config: GPTConfig) -> dict[str, int]:
    """A rough count of the activations autograd keeps for the backward pass, per token.

    Per block (C n_embd, H/Hkv query/key-value heads of D, M mlp_hidden):
        4C             the stream and its normalised copy, before attention and before the MLP
        (H + 2Hkv)D    q, k, v as attention reads them
        (H + Hkv)D     q and k before QK-norm (with qk_norm)
        HD             the heads' output, which c_proj reads
        2M             the MLP's hidden layer before and after the activation
    Outside the blocks: 2C (final norm input and output), C more with the embedding norm, and the
    fp32 logits: 2V with a softcap (tanh output, log-softmax for the loss), V without.
    Not counted: per-row norm statistics, dropout masks, and T x T attention patterns, which the
    fused attention kernel never stores (the explicit path used when tracing stores H x T per
    token per layer). A test checks this against the tensors autograd really saves.
    """
    C, M, V, D = config.n_embd, config.mlp_hidden, config.vocab_size, config.head_dim
    H, Hkv = config.n_head, config.n_kv_head
    per_layer = 4 * C + (H + 2 * Hkv) * D + ((H + Hkv) * D if config.qk_norm else 0) + H * D + 2 * M
    return {
        "per_layer": per_layer,
        "blocks": config.n_layer * per_layer,
        "stream": (3 if config.embed_norm else 2) * C,
        "logits": (2 if config.softcap is not None else 1) * V,
    }


ACTIVATION_FORMULA = (
    "activations per token ≈ n_layer x [4C + (H + 2·Hkv)·D + (H + Hkv)·D with QK-norm + H·D + 2·mlp_hidden] "
    "+ 3C (2C without embedding norm), in the block dtype, + 2V fp32 logits (V without softcap); not counted: "
    "norm statistics, dropout masks, T x T attention patterns (the fused kernel keeps none)"
)


@dataclass
class MemoryEstimate:
    """Bytes to train, in one precision. `total` is a rough peak: all of it alive at once."""

    precision: str  # "fp32" or "bf16 mixed"
    weights: int
    weight_copies: int  # bf16 copies autocast makes of the matmul weights (kept for backward)
    gradients: int
    muon_state: int
    adamw_state: int
    activations: int
    tokens: int  # batch_size x seq_len the activations are for

    @property
    def total(self) -> int:
        return (self.weights + self.weight_copies + self.gradients + self.muon_state + self.adamw_state
                + self.activations)


def training_memory(config: GPTConfig, counts: ParameterCounts, split: OptimizerSplit, n_matmul: int,
                    batch_size: int, seq_len: int) -> list[MemoryEstimate]:
    """fp32 and bf16 mixed precision. Under autocast the weights stay fp32 (master weights), their
    gradients are fp32, and so is the optimiser state; only matmul inputs and outputs are bf16."""
    fp32 = BYTES_PER_ELEMENT["fp32"]
    activations = activation_elements_per_token(config)
    tokens = batch_size * seq_len
    estimates = []
    for precision, block_dtype in (("fp32", "fp32"), ("bf16 mixed", "bf16")):
        per_token = ((activations["blocks"] + activations["stream"]) * BYTES_PER_ELEMENT[block_dtype]
                     + activations["logits"] * fp32)
        estimates.append(MemoryEstimate(
            precision=precision,
            weights=counts.total * fp32,
            weight_copies=n_matmul * BYTES_PER_ELEMENT["bf16"] if block_dtype == "bf16" else 0,
            gradients=counts.total * fp32,
            muon_state=split.muon_params * fp32,  # momentum buffer
            adamw_state=split.adamw_params * 2 * fp32,  # first and second moments
            activations=per_token * tokens,
            tokens=tokens,
        ))
    return estimates


# -- the whole analysis -------------------------------------------------------------------------------


@dataclass
class ScaleReport:
    config: GPTConfig
    parameters: ParameterCounts
    matmul_params: int
    attention_flops_per_token: int
    train_flops_per_token: int
    batch_tokens: int | None
    optimizer: OptimizerSplit
    batch_size: int
    memory: list[MemoryEstimate]
    activation_elements: dict[str, int] = field(default_factory=dict)

    @property
    def forward_flops_per_token(self) -> int:
        return self.train_flops_per_token // 3  # the forward pass is one of the three matmul passes

    @property
    def train_flops_per_step(self) -> int | None:
        return None if self.batch_tokens is None else self.train_flops_per_token * self.batch_tokens

    def to_dict(self) -> dict:
        parameters = self.parameters
        return {
            "config": self.config.to_dict(),
            "parameters": {
                "total": parameters.total,
                "tied_embeddings": parameters.tied,
                "per_layer": parameters.layer_total,
                "all_layers": parameters.layers_total,
                "groups": [asdict(g) for g in parameters.groups],
            },
            "flops": {
                "matmul_params": self.matmul_params,
                "attention_per_token": self.attention_flops_per_token,
                "train_per_token": self.train_flops_per_token,
                "forward_per_token": self.forward_flops_per_token,
                "batch_tokens": self.batch_tokens,
                "train_per_step": self.train_flops_per_step,
            },
            "optimizer": asdict(self.optimizer),
            "activations": {"batch_size": self.batch_size, "seq_len": self.config.sequence_len,
                            "elements_per_token": self.activation_elements, "formula": ACTIVATION_FORMULA},
            "memory_bytes": {m.precision: {**asdict(m), "total": m.total} for m in self.memory},
        }


def analyse(config: GPTConfig, batch_size: int = 1, batch_tokens: int | None = None) -> ScaleReport:
    """Everything `glassgpt scale` prints, from the config alone."""
    counts = count_parameters(config)
    n_matmul = matmul_params(config)
    split = optimizer_split(config)
    return ScaleReport(
        config=config,
        parameters=counts,
        matmul_params=n_matmul,
        attention_flops_per_token=attention_flops_per_token(config),
        train_flops_per_token=flops_per_token(config),
        batch_tokens=batch_tokens,
        optimizer=split,
        batch_size=batch_size,
        memory=training_memory(config, counts, split, n_matmul, batch_size, config.sequence_len),
        activation_elements=activation_elements_per_token(config),
    )


# -- printing --------------------------------------------------------------------------------------------


def human(number: float, unit: str = "") -> str:
    """3_491_758_080 → '3.49 G' (decimal prefixes)."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f} {prefix}{unit}"
    return f"{number:g} {unit}".rstrip()


def human_bytes(n: int) -> str:
    """Binary units, as memory is sold: 1 GiB = 2^30 bytes."""
    for prefix, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {prefix}"
    return f"{n:,} B"


def render(report: ScaleReport, out) -> None:
    """Print the report on a rich console: parameters, FLOPs, memory, each with its convention."""
    from rich import box
    from rich.table import Table

    config, parameters = report.config, report.parameters
    out.print(
        f"[bold]{config.family}[/] depth {config.n_layer}: width {config.n_embd}, {config.n_head} heads of "
        f"{config.head_dim} ({config.n_kv_head} key/value heads), MLP {config.mlp_hidden}, vocab "
        f"{config.vocab_size:,}, seq_len {config.sequence_len:,}. Counted from the config: no weights are "
        f"made, so any size takes a moment (--verify checks it against the model on the meta device)."
    )

    # Numbers are never wrapped or cut; the "what" column appears only where it fits.
    show_roles = out.width >= 112
    table = Table(title="parameters, by the names of the model's named_parameters()", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("parameter", no_wrap=True)
    if show_roles:
        table.add_column("what")
    shapes = [" x ".join(f"{d:,}" for d in group.shape) or "—" for group in parameters.groups]
    numbers = [("shape", max(map(len, shapes))), ("one layer", len(f"{parameters.layer_total:,}")),
               ("whole model", len(f"{parameters.total:,}")), ("%", 6)]
    for column, width in numbers:
        table.add_column(column, justify="right", no_wrap=True, min_width=width)

    def row(name: str, role: str, *cells: str, **style) -> None:
        table.add_row(name, *([role] if show_roles else []), *cells, **style)

    groups = parameters.groups
    for index, (group, shape) in enumerate(zip(groups, shapes)):
        if group.in_blocks and (index == 0 or not groups[index - 1].in_blocks):
            row(f"blocks.0 … blocks.{parameters.n_layer - 1}, each:", "", "", "", "", "", style="bold")
        name = "  " + group.name.removeprefix("blocks.*.") if group.in_blocks else group.name
        per_layer = f"{group.per_layer:,}" if group.in_blocks else ""
        row(name, group.role, shape, per_layer, f"{group.count:,}", f"{group.percent:.2f}")
        if group.in_blocks and (index + 1 == len(groups) or not groups[index + 1].in_blocks):
            row(f"  one layer / all {parameters.n_layer} layers", "subtotal", "", f"{parameters.layer_total:,}",
                f"{parameters.layers_total:,}", f"{parameters.layers_percent:.2f}", style="bold", end_section=True)
    row("total", "= sum(p.numel() for p in model.parameters())", "", "", f"{parameters.total:,}", "100.00",
        style="bold")
    _print_whole(table, out)
    tied = "; the tied head is the embedding matrix, counted once" if parameters.tied else ""
    out.print(f"total parameters: [bold]{parameters.total:,}[/] ({human(parameters.total)}) = sum(p.numel() for p "
              f"in model.parameters()){tied}. Percentages are rounded so that they add up to exactly 100.")

    table = Table(title="compute (FLOPs)", title_justify="left")
    table.add_column("what")
    table.add_column("FLOPs", justify="right")
    table.add_column("", justify="right")
    table.add_row("training, per token (forward + backward)", f"{report.train_flops_per_token:,}",
                  human(report.train_flops_per_token, "FLOP"))
    table.add_row("forward only, per token (one third)", f"{report.forward_flops_per_token:,}",
                  human(report.forward_flops_per_token, "FLOP"))
    if report.train_flops_per_step is not None:
        table.add_row(f"one training step of {report.batch_tokens:,} tokens", f"{report.train_flops_per_step:,}",
                      human(report.train_flops_per_step, "FLOP"))
    _print_whole(table, out)
    out.print(
        f"convention: 6 x N_matmul (2 forward multiply-add + 4 backward; N_matmul = {report.matmul_params:,}: "
        f"the 2-D weights used in matmuls, embedding lookups excluded, head included) + 12 x n_layer x n_head "
        f"x head_dim x seq_len for q·k and pattern·v (= {report.attention_flops_per_token:,}, the full T x T)"
    )

    split = report.optimizer
    table = Table(title=f"memory to train (batch {report.batch_size} x {config.sequence_len:,} tokens)",
                  title_justify="left")
    table.add_column("what")
    for estimate in report.memory:
        table.add_column(estimate.precision, justify="right")
    rows = [
        ("weights (fp32; bf16: fp32 master weights kept)", "weights"),
        ("bf16 copies of the matmul weights (autocast)", "weight_copies"),
        ("gradients (fp32, like the weights)", "gradients"),
        (f"Muon: 1 momentum buffer x {split.muon_params:,} params", "muon_state"),
        (f"AdamW: 2 fp32 moments x {split.adamw_params:,} params", "adamw_state"),
        (f"activations (rough, {report.batch_size * config.sequence_len:,} tokens)", "activations"),
    ]
    for label, attribute in rows:
        table.add_row(label, *(human_bytes(getattr(m, attribute)) if getattr(m, attribute) else "—"
                               for m in report.memory))
    table.add_row("total (rough peak)", *(human_bytes(m.total) for m in report.memory), style="bold")
    _print_whole(table, out)
    who = ("Muon for the 2-D matrices inside the blocks, AdamW for embeddings, head and gains"
           if split.kind == "muon" else "AdamW for every parameter (family gpt2)")
    out.print(f"optimiser: {who}, as train.optim.build_optimizers files them.")
    out.print("bf16 mixed = autocast: fp32 master weights, gradients and optimiser state; bf16 matmul "
              "inputs and outputs; logits in fp32.")
    out.print(f"rough formula: {ACTIVATION_FORMULA}", markup=False)


def _print_whole(table, out) -> None:
    """Print `table` at its natural width even on a console narrower than that (below about 78
    columns): its lines then run past the edge, where rich would otherwise cut cells with "…"."""
    from rich.measure import Measurement
    from rich.segment import Segments

    natural = Measurement.get(out, out.options.update_width(10_000), table).maximum
    if natural <= out.width:
        out.print(table)
        return
    lines = out.render_lines(table, out.options.update_width(natural), new_lines=True)
    out.print(Segments([segment for line in lines for segment in line]), soft_wrap=True)
