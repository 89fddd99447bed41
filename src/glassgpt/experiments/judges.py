"""Judges: did the predicted symptom appear? Pure arithmetic on run records, no torch.

Every judge compares the variants with the baseline the experiment trained beside them (same data,
seed and budget), never with a number remembered from elsewhere, so that a judge whose variants are
the baseline itself (the switch neutralised) finds nothing: a judge that always says yes fails its
tests. Each returns a `Verdict`: whether the symptom appeared, the judge's figure for every run (the
table's last column) and one line saying which numbers decided it.

The margins are deliberately modest next to what the experiments show at their documented sizes
(docs/reference/experiments.md), and large next to run-to-run noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from glassgpt.experiments.heads import HeadScores, specialised, summary

if TYPE_CHECKING:  # records are plain data; judging them needs no torch
    from glassgpt.experiments.runner import RunRecord


@dataclass
class Verdict:
    appeared: bool
    detail: str  # the numbers that decided it, in one line
    figures: dict[str, str] = field(default_factory=dict)  # run label → the judge's figure for that run
    figure_name: str = ""  # what the figure is (the table's column title)


Judge = Callable[["RunRecord", Sequence["RunRecord"]], Verdict]


# -- small measures (each unit-tested) -------------------------------------------------------------------


def loss_spike(losses: Sequence[float], skip_fraction: float = 0.1) -> float:
    """The largest rise of the training loss above its lowest value so far, after the first
    `skip_fraction` of the steps (the early, fast fall is not a spike). inf if the loss stopped
    being finite (the run diverged)."""
    if any(not math.isfinite(x) for x in losses):
        return math.inf
    start = max(1, int(len(losses) * skip_fraction))
    lowest, spike = min(losses[:start], default=math.inf), 0.0
    for loss in losses[start:]:
        spike = max(spike, loss - lowest)
        lowest = min(lowest, loss)
    return spike


def gradient_ratio(layer_grad_norms: Sequence[Sequence[float]]) -> float:
    """How much gradient reaches the first block compared with the last: the median, over the
    observed steps after the first, of |grad first block| / |grad last block|. ~1 when gradients flow;
    orders of magnitude below 1 when they vanish on the way down. nan without observations."""
    ratios = [norms[0] / norms[-1] for norms in layer_grad_norms[1:] or layer_grad_norms
              if len(norms) >= 2 and norms[-1] > 0 and math.isfinite(norms[0] / norms[-1])]
    return statistics.median(ratios) if ratios else math.nan


def peak(values: Sequence[float] | Sequence[Sequence[float]]) -> float:
    """The largest finite value of a list, or of a list of lists (e.g. per step, per layer)."""
    flat = [v for item in values for v in (item if isinstance(item, (list, tuple)) else [item])]
    finite = [v for v in flat if math.isfinite(v)]
    return max(finite) if finite else math.nan


def mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def final(values: Sequence[Sequence[float]]) -> list[float]:
    """The last observation (e.g. per layer) of a run, [] if there was none."""
    return list(values[-1]) if values else []


def named_heads(record: RunRecord) -> list[HeadScores]:
    return specialised([HeadScores.from_dict(h) for h in record.heads])


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "diverged"
    return f"{value:.{digits}g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


# -- the judges ------------------------------------------------------------------------------------------


def reads_the_answer(baseline: RunRecord, variants: Sequence[RunRecord], margin: float = 0.3) -> Verdict:
    """No causal mask: the training loss falls well below the baseline's (each position can see the
    token it must predict), yet with the mask back on (as when it generates) the same weights do
    worse than the baseline on val."""
    figures = {r.label: _fmt(r.causal_val_loss) for r in [baseline, *variants]}
    shown = [r for r in variants if r.train_loss < baseline.train_loss - margin
             and r.causal_val_loss > baseline.val_loss + margin]
    worst = max(variants, key=lambda r: baseline.train_loss - r.train_loss)
    detail = (f"train loss {_fmt(worst.train_loss)} vs the baseline's {_fmt(baseline.train_loss)}; "
              f"val loss with the mask back on {_fmt(worst.causal_val_loss)} vs the baseline's {_fmt(baseline.val_loss)}")
    return Verdict(bool(shown) and len(shown) == len(variants), detail, figures, "val loss, mask on")


def gradients_vanish(baseline: RunRecord, variants: Sequence[RunRecord], factor: float = 0.05,
                     margin: float = 0.3) -> Verdict:
    """No residual: the gradient reaching the first block is a small fraction of the last block's
    (factor x the baseline's ratio or less), and the loss stalls above the baseline's."""
    ratio = {r.label: gradient_ratio(r.layer_grad_norms) for r in [baseline, *variants]}
    figures = {label: _fmt(value) for label, value in ratio.items()}
    shown = [r for r in variants if ratio[r.label] < factor * ratio[baseline.label]
             and r.val_loss > baseline.val_loss + margin]
    worst = min(variants, key=lambda r: ratio[r.label])
    detail = (f"first/last block gradient {_fmt(ratio[worst.label])} vs the baseline's {_fmt(ratio[baseline.label])}; "
              f"val loss {_fmt(worst.val_loss)} vs {_fmt(baseline.val_loss)}")
    return Verdict(len(shown) == len(variants), detail, figures, "gradient first/last block")


def unstable(baseline: RunRecord, variants: Sequence[RunRecord], spike: float = 1.0, margin: float = 0.1) -> Verdict:
    """Normalisation removed or moved: at the raised learning rate the baseline trains smoothly while
    a variant diverges or its loss jumps by more than `spike` nats, and no variant ends better than
    the baseline (within `margin` nats)."""
    spikes = {r.label: loss_spike(r.losses) for r in [baseline, *variants]}
    figures = {label: "diverged" if math.isinf(v) else f"{v:.2f}" for label, v in spikes.items()}
    for r in [baseline, *variants]:
        if r.diverged:
            figures[r.label] = f"diverged (step {r.diverged_at})"
    stable_baseline = spikes[baseline.label] < spike
    broke = [r for r in variants if spikes[r.label] >= spike]
    behind = all(r.diverged or r.val_loss > baseline.val_loss - margin for r in variants)
    detail = (f"baseline's largest loss rise {spikes[baseline.label]:.2f} nats; "
              + "; ".join(f"{r.label}: {figures[r.label]}, val loss {_fmt(r.val_loss)}" for r in variants)
              + f" (baseline {_fmt(baseline.val_loss)})")
    return Verdict(stable_baseline and bool(broke) and behind, detail, figures, "largest loss rise (nats)")


def sparsity_differs(baseline: RunRecord, variants: Sequence[RunRecord], gap: float = 0.25) -> Verdict:
    """Activations: the ReLU-like ones leave a large share of the MLP's units at exactly zero, the
    smooth ones (GELU, SiLU) almost none: the shares of exact zeros of the runs differ by `gap` or more."""
    runs = [baseline, *variants]
    zeros = {r.label: mean(final(r.act_zero)) for r in runs}
    figures = {r.label: f"{100 * zeros[r.label]:.0f}% / {100 * mean(final(r.act_negative)):.0f}%" for r in runs}
    spread = max(zeros.values()) - min(zeros.values())
    best = min(runs, key=lambda r: r.val_loss)
    detail = (f"exact zeros from {100 * min(zeros.values()):.0f}% to {100 * max(zeros.values()):.0f}% of the MLP's "
              f"activations; lowest val loss: {best.label} ({_fmt(best.val_loss)})")
    return Verdict(spread >= gap, detail, figures, "MLP activations at 0 / below 0")


def order_blind(baseline: RunRecord, variants: Sequence[RunRecord], factor: float = 0.2) -> Verdict:
    """No position information: shuffling the prefix barely moves the next-token distribution: a
    variant's shuffled-prefix KL is at most `factor` x the baseline's."""
    runs = [baseline, *variants]
    figures = {r.label: f"{r.shuffle_kl:.4f}" for r in runs}
    blindest = min(variants, key=lambda r: r.shuffle_kl)
    shown = blindest.shuffle_kl <= factor * baseline.shuffle_kl and baseline.shuffle_kl > 0
    detail = (f"shuffled-prefix KL: {blindest.label} {blindest.shuffle_kl:.4f} vs the baseline's "
              f"{baseline.shuffle_kl:.4f} nats ({blindest.shuffle_kl / max(baseline.shuffle_kl, 1e-12):.0%})")
    return Verdict(shown, detail, figures, "shuffled-prefix KL (nats)")


def entropy_follows_temperature(baseline: RunRecord, variants: Sequence[RunRecord], step: float = 0.1) -> Verdict:
    """Attention temperature: the higher the temperature, the flatter the attention: mean attention
    entropy rises by at least `step` nats from each temperature to the next higher one."""
    runs = sorted([baseline, *variants], key=lambda r: r.model.get("attn_temperature", 1.0))
    entropy = {r.label: mean(r.final_entropy) for r in runs}
    figures = {r.label: f"{entropy[r.label]:.2f}" for r in runs}
    temperatures = [r.model.get("attn_temperature", 1.0) for r in runs]
    rising = all(t2 > t1 and entropy[b.label] - entropy[a.label] >= step
                 for (a, t1), (b, t2) in zip(zip(runs, temperatures), zip(runs[1:], temperatures[1:])))
    detail = ", ".join(f"T={r.model.get('attn_temperature', 1.0):g}: {entropy[r.label]:.2f} nats, val {_fmt(r.val_loss)}"
                       for r in runs) + f" (uniform attention: {baseline.uniform_entropy:.2f} nats)"
    return Verdict(rising, detail, figures, "attention entropy (nats)")


def tying_saves(baseline: RunRecord, variants: Sequence[RunRecord]) -> Verdict:
    """Tied embeddings: one V x C matrix fewer, a real share of a small model, at some cost in loss."""
    runs = [baseline, *variants]
    figures = {r.label: f"{baseline.parameters - r.parameters:,}" for r in runs}
    vocab, width = baseline.model["vocab_size"], baseline.model["n_embd"]
    saved = [baseline.parameters - r.parameters for r in variants]
    shown = all(s == vocab * width for s in saved)
    detail = "; ".join(f"{r.label}: {s:,} parameters fewer ({s / baseline.parameters:.0%}), val loss {_fmt(r.val_loss)} "
                       f"vs {_fmt(baseline.val_loss)}" for r, s in zip(variants, saved))
    return Verdict(shown, detail, figures, "parameters saved")


def cache_shrinks(baseline: RunRecord, variants: Sequence[RunRecord], margin: float = 0.1) -> Verdict:
    """Grouped/multi-query attention: the KV cache per token shrinks by n_head / n_kv_head while the
    val loss stays within `margin` (relative) of multi-head attention's."""
    runs = [baseline, *variants]
    figures = {r.label: f"{r.kv_bytes_per_token:,} B, {r.decode_tokens_per_sec:,.0f}/s" for r in runs}
    # bytes per kv head stay the same: the cache shrinks exactly with the kv heads
    shrunk = [r for r in variants if r.kv_bytes_per_token < baseline.kv_bytes_per_token
              and r.kv_bytes_per_token * baseline.model["n_kv_head"] == baseline.kv_bytes_per_token * r.model["n_kv_head"]
              and r.val_loss <= baseline.val_loss * (1 + margin)]
    detail = "; ".join(f"{r.label}: {r.kv_bytes_per_token / baseline.kv_bytes_per_token:.0%} of the cache, val loss "
                       f"{_fmt(r.val_loss)}" for r in variants) + f" (baseline {_fmt(baseline.val_loss)})"
    return Verdict(len(shrunk) == len(variants), detail, figures, "KV cache/token, decode tok/s")


def logits_grow(baseline: RunRecord, variants: Sequence[RunRecord], factor: float = 2.0) -> Verdict:
    """Softcap / QK-norm off at a high learning rate: what the baseline's switches bounded grows past
    the bound. Each variant's largest output logit passes the baseline's softcap, or its largest
    attention score reaches `factor` x the bound QK-norm puts on the baseline's, sqrt(head_dim) / T."""
    runs = [baseline, *variants]
    logits = {r.label: peak(r.logit_max) for r in runs}
    scores = {r.label: peak(r.score_max) for r in runs}
    figures = {r.label: f"{_fmt(logits[r.label])} / {_fmt(scores[r.label])}" for r in runs}
    model = baseline.model
    cap = model.get("softcap") or math.inf
    bound = math.sqrt(model["n_embd"] // model["n_head"]) / model.get("attn_temperature", 1.0) if model.get("qk_norm") \
        else math.inf
    grew = [r for r in variants if logits[r.label] > cap or scores[r.label] >= factor * bound]
    detail = "; ".join(f"{r.label}: max |logit| {_fmt(logits[r.label])}, max |score| {_fmt(scores[r.label])}, loss rise "
                       f"{_fmt(loss_spike(r.losses))}" for r in runs)
    detail += f" (the baseline's bounds: logits < {cap:g}, scores ≤ {bound:.1f})"
    return Verdict(len(grew) == len(variants), detail, figures, "max logit / max score")


def depth_sets_decode_speed(baseline: RunRecord, variants: Sequence[RunRecord], factor: float = 1.3,
                            spread: float = 0.05) -> Verdict:
    """Depth vs width at the same block parameters (within 1%): the val losses end within `spread`
    (relative) of each other, while each deeper shape decodes at least `factor` x slower than the next
    shallower one."""
    runs = sorted([baseline, *variants], key=lambda r: r.model["n_layer"])
    figures = {r.label: f"{r.block_parameters:,}, {r.decode_tokens_per_sec:,.0f}/s" for r in runs}
    same_budget = all(abs(r.block_parameters - baseline.block_parameters) <= 0.01 * baseline.block_parameters
                      for r in variants)
    losses = [r.val_loss for r in runs]
    close = max(losses) <= min(losses) * (1 + spread)
    slower = all(deep.model["n_layer"] > shallow.model["n_layer"]
                 and deep.decode_tokens_per_sec * factor <= shallow.decode_tokens_per_sec
                 for shallow, deep in zip(runs, runs[1:]))
    detail = "; ".join(f"{r.model['n_layer']} x {r.model['n_embd']}: {r.block_parameters:,} block parameters, decodes "
                       f"{r.decode_tokens_per_sec:,.0f} tok/s, val loss {_fmt(r.val_loss)}" for r in runs)
    return Verdict(same_budget and close and slower, detail, figures, "block params, decode tok/s")


def heads_specialise(baseline: RunRecord, variants: Sequence[RunRecord]) -> Verdict:
    """Training creates heads with a job: a variant has named heads (previous-token, current-token,
    first-token, delimiter) where the baseline has fewer."""
    runs = [baseline, *variants]
    named = {r.label: named_heads(r) for r in runs}
    figures = {r.label: f"{len(named[r.label])} of {len(r.heads)}" for r in runs}
    shown = all(len(named[r.label]) > len(named[baseline.label]) for r in variants)
    detail = "; ".join(f"{r.label}: {summary(named[r.label]) if named[r.label] else 'none named'}" for r in runs)
    return Verdict(shown, detail, figures, "named heads")
