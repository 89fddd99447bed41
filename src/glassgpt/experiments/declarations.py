"""THE experiments: each one a question, a baseline, variants that flip config switches, the symptom
predicted in words before anything is trained, a judge that measures it, and why it happens.

Nothing here is model code. A variant is a set of `glassgpt train --FIELD VALUE` switches (model or
training fields) laid over the experiment's baseline, which is laid over SHARED; the runs all go
through the one reference model and the one training step. The explanation registry
(`see/registry.py`) points its "break it" lines here, so each symptom is written once.

Sizes: every run trains a small nanochat-family model (4 blocks of width 128, 4 heads of 32, 64-token
windows, 16 windows a step, tinyshakespeare with its 4,096-token tokenizer) for DEFAULT_STEPS steps
in fp32 (bf16 is no faster at this width, and fp32 repeats on any CPU). `glassgpt experiment all`
trains 23 distinct runs, about 14 minutes of work for one CPU core, so that it fits in 20 minutes on
2 cores. The sizes and learning rates were chosen so that every symptom shows at them; the tutorial
(docs/tutorials/break-it.md) gives the figures measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from glassgpt.errors import UsageError
from glassgpt.experiments import judges

DEFAULT_STEPS = 200

# What every run of every experiment shares (an experiment's baseline and variants go on top).
SHARED: dict[str, Any] = dict(
    data="tinyshakespeare", vocab_size=4096, family="nanochat", depth=4, n_embd=128, head_dim=32,
    seq_len=64, device_batch_size=16, eval_batch_size=64, dtype="fp32", seed=1337,
)
# 4x every learning rate of the defaults: where a missing safeguard shows.
HIGH_LR: dict[str, Any] = dict(matrix_lr=0.08, embedding_lr=0.8, unembedding_lr=0.016, scalar_lr=0.016)


@dataclass(frozen=True)
class Variant:
    label: str
    switches: dict[str, Any] = field(default_factory=dict)  # fields as `glassgpt train --FIELD VALUE` takes them
    steps: int | None = None  # None: the experiment's steps; 0: the model as initialised, untrained
    breaks: str = ""  # what this switch breaks, in a few words (the registry's "break it" lines)

    @property
    def flags(self) -> str:
        """The switches as `glassgpt train` flags: {"causal": False} → '--causal off'."""
        return " ".join(f"--{name.replace('_', '-')} {_shown(value)}" for name, value in self.switches.items())


def _shown(value: Any) -> str:
    if value is None or value is False:
        return "off"
    return "on" if value is True else f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    question: str
    baseline: Variant
    variants: tuple[Variant, ...]
    symptom: str  # the prediction, stated before training
    judge: Callable  # judges.X(baseline record, variant records) → Verdict
    explanation: str  # why, one paragraph
    plots: tuple[str, ...]  # plots.PLOTS names, besides the loss curves every experiment gets
    settings: dict[str, Any] = field(default_factory=dict)  # what baseline and variants share beyond SHARED
    compares_decode: bool = False  # measure the runs' decode speeds side by side (runner.decode_speeds)

    @property
    def runs(self) -> tuple[Variant, ...]:
        return (self.baseline, *self.variants)


def neutralised(experiment: Experiment) -> Experiment:
    """The same experiment with every variant made the baseline (its label kept): no switch flipped,
    so no judge may find the symptom. The tests run both versions."""
    return replace(experiment, variants=tuple(
        Variant(v.label, dict(experiment.baseline.switches), experiment.baseline.steps) for v in experiment.variants))


def variant(experiment: Experiment, label: str) -> Variant:
    return next(v for v in experiment.variants if v.label == label)


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "no-causal-mask", "No causal mask",
        "What does the causal mask protect?",
        Variant("baseline (causal)"),
        (Variant("no mask", {"causal": False},
                 breaks="the model reads the next token: training loss collapses, generation is garbage"),),
        "Without the mask every position can read the token it has to predict, so the training loss "
        "collapses far below the baseline's. Generating has no future to read: with the mask back on, the "
        "same weights predict worse than the baseline, and their samples are garbage.",
        judges.reads_the_answer,
        "The target at position t is the token at t + 1, and without the mask position t attends to it: "
        "the cheapest solution is to copy it, and gradient descent finds it within a hundred steps (a "
        "head's attention pattern puts its weight just above the diagonal). Nothing of that is language: when the "
        "model generates, or when the mask is put back, the next token is not there to copy, and the "
        "weights, which never learned to predict, do worse than a model that had to. A loss that looks too "
        "good to be true usually is: a leak from the future.",
        ("pattern", "samples"),
    ),
    Experiment(
        "no-residual", "No residual connections",
        "Why does every block add to the stream instead of replacing it?",
        Variant("baseline (residual)"),
        (Variant("no residual", {"residual": False},
                 breaks="gradients vanish before the first blocks; deep models stop learning"),),
        "At depth 6 without residual connections the gradient that reaches the first block is a tiny "
        "fraction of the last block's (it vanishes on the way down), and the loss stalls far above the "
        "baseline's.",
        judges.gradients_vanish,
        "With x = x + f(x) the gradient of the loss reaches every block directly through the additions "
        "(the derivative of x + f(x) is 1 + f'(x)). Without them, x = f(x), it has to pass back through "
        "every block's Jacobian in turn, and a product of six of them shrinks it by orders of magnitude: "
        "the first blocks barely learn, and the model behaves like a much shallower one that also lost "
        "the token identity the stream used to carry. Both runs start from random output projections "
        "(--zero-init-out off): with the nanochat default of zero projections a residual-free model would "
        "output exactly zero and learn nothing at all, which hides the mechanism.",
        ("gradients",), settings={"depth": 6, "zero_init_out": False},
    ),
    Experiment(
        "no-norm", "No normalisation, and post-norm, at a higher learning rate",
        "Why normalise, and why before each block rather than after?",
        Variant("pre-norm (baseline)"),
        (Variant("post-norm", {"norm_placement": "post"},
                 breaks="the original Transformer's norm(x + f(x)): ends behind pre-norm"),
         Variant("no norm", {"norm": "none"},
                 breaks="at a higher learning rate the loss diverges")),
        "At 4x the default learning rates the pre-norm baseline trains smoothly. Without normalisation the "
        "activations and the loss blow up within a few dozen steps (the run diverges); post-norm trains "
        "but ends behind pre-norm, its gradient piled up in the last block.",
        judges.unstable,
        "Normalisation keeps each block's input at unit scale whatever the stream has grown to, so a large "
        "step cannot feed on itself. Without it, a large update makes larger activations, which make "
        "larger gradients and updates, until the logits overflow. Post-norm, norm(x + f(x)), normalises the "
        "stream itself after every addition: the gradient to the early blocks passes through every norm on "
        "the way down and the last block gets most of it, which is why the original Transformer needed a "
        "learning-rate warmup. Pre-norm leaves the stream as a plain sum and normalises only what each "
        "block reads.",
        ("gradients",), settings=HIGH_LR,
    ),
    Experiment(
        "activations", "Activation functions",
        "Does the MLP's non-linearity matter: ReLU², GELU, ReLU or SiLU?",
        Variant("ReLU² (baseline)"),
        (Variant("GELU", {"activation": "gelu"},
                 breaks="smooth: no unit exactly 0, small negatives pass"),
         Variant("ReLU", {"activation": "relu"},
                 breaks="plain ReLU: about half the units exactly 0"),
         Variant("SiLU", {"activation": "silu"}, breaks="smooth: no unit exactly 0, small negatives pass")),
        "All four train to nearly the same loss at this size (their differences show at larger scale). "
        "They use the MLP differently: ReLU and ReLU² leave more than half of the hidden units at exactly "
        "zero for each token, GELU and SiLU leave almost none at zero and let small negative values through.",
        judges.sparsity_differs,
        "ReLU cuts every negative input to exactly 0, so for each token only the units with a positive input "
        "take part: a sparse code, cheap to read. ReLU² squares what passes, which sharpens large "
        "activations (nanochat uses it; the Primer paper found it better at scale). GELU and SiLU are smooth "
        "curves that dip slightly below zero for negative inputs, so gradients flow through every unit. At "
        "a few hundred steps the loss hardly tells them apart; their activation statistics do.",
        ("activations",),
    ),
    Experiment(
        "positions", "Position encoding: rotary, learned or none",
        "How does the model know the order of the tokens?",
        Variant("rotary (baseline)"),
        (Variant("learned", {"position": "learned"},
                 breaks="a learned table instead: covers only sequence_len positions"),
         Variant("none", {"position": "none"},
                 breaks="no order information: a shuffled prompt reads the same")),
        "Without any position encoding the model is nearly blind to order: shuffling the earlier tokens of "
        "a prompt barely changes its next-token distribution (the shuffled-prefix KL is a small fraction of "
        "the rotary model's), while the rotary and learned models react to the shuffle.",
        judges.order_blind,
        "Attention is a weighted sum over a set: without rotations of q and k (rotary) or a position vector "
        "added to each token (learned), nothing in a score says where a key sits. The only order left is "
        "the causal mask itself (position i sees i + 1 tokens), from which deeper models recover a little: "
        "a one-block model without positions gives exactly the same prediction for any order of the prefix. "
        "The test keeps the last token (the one predicting) and shuffles the rest, then measures the KL "
        "divergence between the two next-token distributions.",
        ("shuffle",),
    ),
    Experiment(
        "attention-temperature", "Attention temperature",
        "What does the 1/sqrt(head_dim) scale of the attention scores do?",
        Variant("T = 1 (baseline)"),
        (Variant("T = 0.25", {"attn_temperature": 0.25},
                 breaks="sharper attention: heads can look at a single token"),
         Variant("T = 4", {"attn_temperature": 4.0},
                 breaks="flatter attention: every row close to uniform")),
        "The temperature sets how peaked attention can be: the entropy of the attention rises with it at "
        "every layer, from sharp (T = 0.25) to nearly uniform (T = 4, within a few hundredths of a nat of "
        "uniform attention).",
        judges.entropy_follows_temperature,
        "Scores are q·k / (T sqrt(head_dim)). With QK-norm, q and k have unit RMS, so a score can be at most "
        "sqrt(head_dim) / T: the temperature caps how far one key can stand out before the softmax. At T = 4 "
        "the cap is about 1.4 and every row stays close to uniform; at T = 0.25 it is about 23 and heads can "
        "look at a single token. At this budget the loss moves little: a small model leans mostly on the "
        "current token, and even uniform attention passes on an average of the context.",
        ("entropy", "pattern"),
    ),
    Experiment(
        "tied-embeddings", "Tied vs untied embeddings",
        "What does sharing one matrix between the embedding and the LM head buy and cost?",
        Variant("untied (baseline)"),
        (Variant("tied", {"tie_embeddings": True},
                 breaks="one vocab x width matrix fewer, one learning rate for both jobs"),),
        "Tying removes exactly one vocab x width matrix (4,096 x 128 = 524,288 parameters, 29% of this "
        "model); the val loss changes little either way at this size.",
        judges.tying_saves,
        "The embedding and the head are both vocab x width tables; tied, the head is the embedding used "
        "a second time. In a small model with a large vocabulary that is a large share of the parameters. "
        "Untied, each table can start and learn at its own scale (docs/explanation/untied-embeddings.md), "
        "which matters more as models grow; nanochat unties, GPT-2 ties.",
        ("parameters",),
    ),
    Experiment(
        "gqa", "Multi-head, grouped-query and multi-query attention",
        "How much key/value memory does each query head need?",
        Variant("MHA, 4 kv heads (baseline)"),
        (Variant("GQA, 2 kv heads", {"n_kv_head": 2},
                 breaks="half the KV cache"),
         Variant("MQA, 1 kv head", {"n_kv_head": 1},
                 breaks="multi-query attention: the KV cache shrinks by n_head")),
        "The KV cache per token shrinks with the key/value heads, to 1/2 (GQA) and 1/4 (MQA) of multi-head "
        "attention's, while the val loss stays within a few percent of it.",
        judges.cache_shrinks,
        "When generating, every layer keeps the keys and values of every token so far: 2 x layers x "
        "kv_heads x head_dim numbers per token. Query heads that share a key/value head (a group) shrink "
        "that by the group size, and with it the memory read at every decode step, the bottleneck of "
        "generation on large models. The queries keep their own heads, so most of what attention can "
        "express survives (docs/explanation/gqa.md). On a model this small, decode speed is set by Python "
        "overhead rather than memory, so the speed column moves little.",
        ("kv_cache",), compares_decode=True,
    ),
    Experiment(
        "softcap-qk-norm", "Logit softcap and QK-norm at a high learning rate",
        "What do the logit softcap and QK-norm keep in check?",
        Variant("both on (baseline)"),
        (Variant("softcap off", {"softcap": None},
                 breaks="output logits grow past the cap"),
         Variant("QK-norm off", {"qk_norm": False},
                 breaks="attention scores grow until the softmax saturates"),
         Variant("both off", {"softcap": None, "qk_norm": False}, breaks="nothing bounds the logits or the scores")),
        "At 4x the default learning rates, what each one bounded grows: without the softcap the output "
        "logits pass 15, the cap; without QK-norm the attention scores grow to many times their bound "
        "sqrt(head_dim) and attention collapses onto single tokens (its entropy falls towards 0).",
        judges.logits_grow,
        "The softcap squashes the output logits with 15 tanh(x / 15), so no logit can exceed 15 and no "
        "prediction can become arbitrarily confident. QK-norm RMS-normalises queries and keys, so an "
        "attention score is at most sqrt(head_dim) / temperature. Large learning rates push both to grow, "
        "because sharper predictions and sharper attention lower the training loss quickly; unchecked, the "
        "softmax saturates, its gradients vanish for all but one entry, and training becomes brittle. At "
        "this size and length the loss survives the growth; in larger, longer runs it is the usual road to "
        "loss spikes (docs/explanation/softcap.md, qk-norm.md).",
        ("logits", "entropy"), settings=HIGH_LR,
    ),
    Experiment(
        "depth-vs-width", "Depth vs width at a fixed parameter budget",
        "At the same number of block parameters, is it better to be deep or wide?",
        Variant("4 x 128 (baseline)", {"depth": 4, "n_embd": 128}),
        (Variant("1 x 256", {"depth": 1, "n_embd": 256},
                 breaks="one wide block: decodes fastest"),
         Variant("16 x 64", {"depth": 16, "n_embd": 64},
                 breaks="same block parameters, 4x the depth: decodes slower")),
        "The three shapes have the same 786,432 parameters in their blocks and end within a few percent of "
        "each other in val loss, but generating one token costs one pass through every block in turn: the "
        "deeper the shape, the slower it decodes, the 16-block model several times slower than the 1-block one.",
        judges.depth_sets_decode_speed,
        "A block of width C holds 12 C² parameters (attention 4 C², MLP 8 C²), so 1 x 256, 4 x 128 and "
        "16 x 64 hold the same 786,432. Scaling-law studies (Kaplan et al., 2020) found that the loss depends "
        "mostly on that count and only weakly on the shape over a wide range. Speed does not: a decode step "
        "is a sequence of small operations, block after block, whose count grows with depth, and on a CPU "
        "(or a GPU at batch 1) their fixed cost dominates. Training batches hide part of it; generation, one "
        "token at a time, shows it whole. Width also sets the embedding and head tables (vocab x width), "
        "so the total parameter counts differ although the blocks' do not.",
        ("shape",), compares_decode=True,
    ),
    Experiment(
        "head-specialisation", "Head specialisation",
        "What do the attention heads of a trained model do?",
        Variant("untrained (baseline)", steps=0),
        (Variant("trained",
                 breaks="heads a trained model grows, named from their patterns"),),
        "Training gives some heads a job that can be named from their patterns alone (at this size, "
        "delimiter heads that look back to the last commas and line breaks), while at initialisation every "
        "head spreads its attention with no preference and none can be named.",
        judges.heads_specialise,
        "Every head scores each visible key with q·k and spreads its attention by the softmax. At "
        "initialisation q and k are random, so attention is spread with no preference. Training shapes "
        "the queries and keys so that each head reads what helps the prediction: the current token, where "
        "the line or clause began (delimiter heads, a role small models trained on verse learn early), the "
        "previous token (the first half of an induction circuit, given more training), the first token "
        "(an 'attention sink' where a head parks its weight when nothing is relevant). The heads are found "
        "by measuring, over several windows of val text, how much of each head's attention lands on each "
        "kind of key; a head is named when one kind takes at least half of it.",
        ("heads",),
    ),
]

BY_NAME: dict[str, Experiment] = {e.name: e for e in EXPERIMENTS}


def get(name: str) -> Experiment:
    if name not in BY_NAME:
        import difflib

        close = difflib.get_close_matches(name, list(BY_NAME), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see glassgpt experiment list"
        raise UsageError(f"no experiment named {name!r}{hint}")
    return BY_NAME[name]


def break_it(name: str, label: str | None = None) -> str:
    """The registry's "break it" line: a variant's switches as flags, what they break, and the
    experiment that shows it: '--causal off (the model reads ...): glassgpt experiment run no-causal-mask'.
    `label` picks the variant (default: the experiment's first)."""
    experiment = BY_NAME[name]
    chosen = variant(experiment, label) if label else experiment.variants[0]
    return f"{chosen.flags} ({chosen.breaks}): glassgpt experiment run {name}"
