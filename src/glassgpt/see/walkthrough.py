"""The walk-through of one traced training iteration, as data: sections of entries, in the order
the model computed them. Every renderer (terminal, markdown, HTML) formats these same sections,
and every explanation comes from the registry.

An entry is one tensor (a trace point with its statistics, its gradient's, the registry's
explanation and notes computed from the real values) or a figure (token list, mask grid, table).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch

from glassgpt.model.gpt import apply_rotary
from glassgpt.see.registry import Explanation, explain
from glassgpt.see.trace import StepTrace, TraceReport
from glassgpt.see.tracer import TensorStats


@dataclass
class Entry:
    title: str
    name: str | None = None  # full trace-point name
    stats: TensorStats | None = None
    grad: TensorStats | None = None
    explanation: Explanation | None = None
    notes: list[str] = field(default_factory=list)
    table: dict | None = None  # {"columns": [...], "rows": [[...], ...]}
    grid: list[list[int]] | None = None  # a small 0/1 matrix (the causal mask)


@dataclass
class Section:
    id: str
    title: str
    intro: Explanation | None = None
    entries: list[Entry] = field(default_factory=list)


def build(report: TraceReport, only: list[str] | None = None) -> list[Section]:
    """Sections for the first iteration, then the summary of all iterations."""
    step = report.steps[0]
    config = report.config
    sections: list[Section] = []
    want = (lambda name: any(fnmatch.fnmatchcase(name, p) for p in only)) if only else (lambda name: True)

    def tensor(name: str, *notes: str, title: str | None = None) -> Entry | None:
        if name not in step.stats or not want(name):
            return None
        explanation = explain(name)
        return Entry(title or explanation.title, name, step.stats[name], step.stats.get(f"grad:{name}"),
                     explanation, [n for n in notes if n])

    def section(id: str, title: str, intro: str | None, *entries: Entry | None) -> None:
        kept = [e for e in entries if e is not None]
        if kept:
            sections.append(Section(id, title, explain(intro) if intro else None, kept))

    # -- input -----------------------------------------------------------------------------------
    if not only:
        pieces = [(i, report.tokenizer.token_piece(i).decode("utf-8", "replace")) for i in report.token_ids[:16]]
        section("tokens", "Token ids", None, Entry(
            "Token ids", explanation=explain("topic:tokens"),
            notes=[f"shape (1, {len(report.token_ids)}): batch 1, {len(report.token_ids)} tokens, "
                   f"vocabulary of {config.vocab_size:,}; source: {report.source}", *report.notices],
            table={"columns": ["position", "id", "piece"],
                   "rows": [[p, i, repr(piece)] for p, (i, piece) in enumerate(pieces)]}))
    section("embedding", "Embedding", None,
            tensor("embed.tok", f"looked up in wte of shape ({config.vocab_size:,}, {config.n_embd}): "
                                f"one row of {config.n_embd} numbers per token"),
            tensor("embed.pos", f"wpe has shape ({config.sequence_len}, {config.n_embd}): one row per position"),
            tensor("embed.norm", _rms_note(step.stats.get("embed.norm"))))
    if config.position == "rope" and report.rotary and (not only or want("blocks.*.attn.q_rot")):
        sections.append(_rope_section(report))

    # -- blocks ---------------------------------------------------------------------------------
    for i in report.traced_blocks:
        sections += _block_sections(report, step, i, tensor, want)
    summarised = [i for i in range(config.n_layer) if i not in report.traced_blocks]
    if summarised and not only:
        rows = []
        for i in summarised:
            pre, post = step.stats.get(f"blocks.{i}.resid.pre"), step.stats.get(f"blocks.{i}.resid.post")
            attn, mlp = step.stats.get(f"blocks.{i}.attn.out"), step.stats.get(f"blocks.{i}.mlp.out")
            rows.append([i, _fmt(pre.norm if pre else None), _fmt(post.norm if post else None),
                         _fmt(attn.rms if attn else None), _fmt(mlp.rms if mlp else None)])
        sections.append(Section("other-blocks", "Other blocks (summary)", explain("topic:prenorm"), [Entry(
            "Residual stream through the blocks not shown in full",
            table={"columns": ["block", "‖stream‖ in", "‖stream‖ out", "attn.out RMS", "mlp.out RMS"], "rows": rows},
            notes=["show them in full with --blocks all"])]))

    # -- head and loss --------------------------------------------------------------------------
    raw, capped = step.stats.get("lm_head.logits_raw"), step.stats.get("lm_head.logits")
    softcap_note = ""
    if raw and capped:
        if config.softcap is not None:
            softcap_note = (f"softcap c = {config.softcap:g}: range [{raw.min:.3f}, {raw.max:.3f}] → "
                            f"[{capped.min:.3f}, {capped.max:.3f}], always inside (-{config.softcap:g}, {config.softcap:g})")
        else:
            softcap_note = "softcap is off: the logits are used as they are"
    section("head", "Final norm and LM head", None,
            tensor("final.norm", _rms_note(step.stats.get("final.norm"))),
            tensor("lm_head.logits_raw", f"one score for each of the {config.vocab_size:,} tokens, at every position"),
            tensor("lm_head.logits", softcap_note))
    uniform = math.log(config.vocab_size)
    section("loss", "Loss", None,
            tensor("loss.per_token", "one surprise value per position; the loss is their mean"),
            tensor("loss", f"loss {step.loss:.4f} nats vs ln({config.vocab_size:,}) = {uniform:.4f} for a uniform "
                           f"guess ({_versus_uniform(step.loss, uniform)})"))

    # -- backward and optimiser -------------------------------------------------------------------
    if not only:
        sections.append(_gradient_section(report, step))
        sections.append(_optimizer_section(step))
        sections.append(_iterations_section(report))
    return sections


def _block_sections(report: TraceReport, step: StepTrace, i: int, tensor, want) -> list[Section]:
    config = report.config
    p = f"blocks.{i}."
    H, Hkv, D, C = config.n_head, config.n_kv_head, config.head_dim, config.n_embd
    stats = step.stats
    entries: list[Entry | None] = []
    pre = stats.get(p + "resid.pre")
    entries.append(tensor(p + "resid.pre", f"‖stream‖ = {pre.norm:.3f}" if pre else ""))
    entries.append(tensor(p + "attn.norm", _rms_note(stats.get(p + "attn.norm"))))
    entries.append(tensor(p + "attn.q", f"(1, T, {C}) @ W_qᵀ ({C} → {H * D}) then split: {_plural(H, 'head')} "
                                         f"x {D} dims"))
    group = H // Hkv
    kv_note = (f"grouped-query: {_plural(Hkv, 'key/value head')} for {H} query heads, each shared by {group}"
               if Hkv < H else f"{_plural(Hkv, 'key head')}, one per query head")
    entries.append(tensor(p + "attn.k", kv_note))
    entries.append(tensor(p + "attn.v", "values are not rotated: they carry content, not position"))
    entries.append(tensor(p + "attn.q_rot", _rotation_note(step, p)))
    entries.append(tensor(p + "attn.k_rot", "keys turn by the same angles, so q·k depends on the distance only"))
    entries.append(tensor(p + "attn.q_norm", _rms_note(stats.get(p + "attn.q_norm"), "per head")))
    entries.append(tensor(p + "attn.k_norm", _rms_note(stats.get(p + "attn.k_norm"), "per head")))
    if want(p + "attn.scores"):
        entries.append(Entry("Heads become a batch dimension", explanation=explain("topic:transpose"),
                             notes=[f"(1, T, {H}, {D}) → (1, {H}, T, {D})"]))
    if Hkv < H:
        entries.append(Entry("Grouped-query attention", explanation=explain("topic:gqa"),
                             notes=[f"n_head / n_kv_head = {H} / {Hkv} = {group}: the KV cache is {group}x smaller"]))
    entries.append(tensor(p + "attn.k_rep", f"repeated {group}x along the head axis" if group > 1 else "no repeat needed (n_kv_head = n_head)"))
    entries.append(tensor(p + "attn.v_rep"))
    scale = 1 / (config.attn_temperature * math.sqrt(D))
    entries.append(tensor(p + "attn.scores", f"scale 1/({config.attn_temperature:g}·√{D}) = {scale:.4f}"))
    masked = tensor(p + "attn.scores_masked", _mask_note(stats.get(p + "attn.scores_masked")))
    if masked is not None:
        T = masked.stats.shape[-1]
        if T <= 16:
            masked.grid = [[1 if k <= q else 0 for k in range(T)] for q in range(T)]
        else:
            masked.notes.append(f"{T} x {T}: row q keeps keys 0…q, the {T * (T - 1) // 2:,} entries above the diagonal are -inf")
    entries.append(masked)
    entries.append(tensor(p + "attn.pattern", _pattern_note(step.kept.get(p + "attn.pattern"))))
    entries.append(tensor(p + "attn.z", "(1, H, T, D) @ → transposed back to (1, T, H, D)"))
    entries.append(tensor(p + "attn.out", f"{_plural(H, 'head')} x {D} concatenated = {H * D} → projected to {C}"))
    mid = stats.get(p + "resid.mid")
    entries.append(tensor(p + "resid.mid", _residual_note(pre, mid, "attention", config.residual)))
    attention = Section(f"block-{i}-attention", f"Block {i} · attention", explain("topic:prenorm"),
                        [e for e in entries if e is not None])
    act = stats.get(p + "mlp.act")
    mlp_entries = [
        tensor(p + "mlp.norm", _rms_note(stats.get(p + "mlp.norm"))),
        tensor(p + "mlp.up", f"{C} → {config.mlp_hidden} ({config.mlp_ratio}x wider)"),
        tensor(p + "mlp.act", f"{config.activation}: {100 * act.zeros:.1f}% of the units are exactly 0" if act else ""),
        tensor(p + "mlp.out", f"{config.mlp_hidden} → {C}"),
        tensor(p + "resid.post", _residual_note(mid, stats.get(p + "resid.post"), "the MLP", config.residual)),
    ]
    mlp = Section(f"block-{i}-mlp", f"Block {i} · MLP", None, [e for e in mlp_entries if e is not None])
    return [s for s in (attention, mlp) if s.entries and any(e.name for e in s.entries)]


def _rope_section(report: TraceReport) -> Section:
    config = report.config
    D = config.head_dim
    cos, sin = report.rotary["cos"], report.rotary["sin"]
    # Demonstrate the relative-position property with the model's own rotation function.
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, D, generator=generator), torch.randn(1, 1, 1, D, generator=generator)
    n = cos.shape[0]

    def score(i: int, j: int) -> float:
        return (apply_rotary(q, cos[i:i + 1], sin[i:i + 1]) * apply_rotary(k, cos[j:j + 1], sin[j:j + 1])).sum().item()

    a, b = (5, 2), (min(n - 1, 40), min(n - 1, 40) - 3)
    frequencies = [config.rope_base ** (-2 * i / D) for i in (0, 1, D // 2 - 1)]
    entry = Entry(
        "cos/sin tables", explanation=explain("topic:rope"),
        notes=[f"buffers rotary_cos, rotary_sin: ({config.sequence_len}, {D // 2}) each — not parameters, never trained",
               f"dimension pairs (i, i + {D // 2}) rotate together: {D // 2} pairs per head",
               f"pair 0 turns {frequencies[0]:.3f} rad/token, pair 1 {frequencies[1]:.3f}, the last pair "
               f"{frequencies[2]:.2e} (one turn every {2 * math.pi / frequencies[2]:,.0f} tokens)",
               "applied to q and k, not to v",
               f"relative position, checked with the model's own rotation: q·k at positions {a} = {score(*a):.5f}, "
               f"at {b} = {score(*b):.5f} (same distance 3, same score)"],
        table={"columns": ["position", "cos pair 0", "sin pair 0", "cos last pair", "sin last pair"],
               "rows": [[t, f"{cos[t, 0]:.4f}", f"{sin[t, 0]:.4f}", f"{cos[t, -1]:.6f}", f"{sin[t, -1]:.6f}"]
                        for t in range(min(5, n))]})
    return Section("rope", "Rotary position embedding", None, [entry])


def _gradient_section(report: TraceReport, step: StepTrace) -> Section:
    config = report.config
    grads = step.param_grad_norms
    components = [("c_q", "attn.c_q"), ("c_k", "attn.c_k"), ("c_v", "attn.c_v"), ("c_proj", "attn.c_proj"),
                  ("c_fc", "mlp.c_fc"), ("mlp c_proj", "mlp.c_proj")]
    rows = []
    for i in range(config.n_layer):
        stream = step.stats.get(f"grad:blocks.{i}.resid.post")
        rows.append([i, *(_fmt(grads.get(f"blocks.{i}.{path}.weight")) for _, path in components),
                     _fmt(stream.norm if stream else None)])
    flow = Entry("Gradient norm per layer and component",
                 table={"columns": ["block", *(c for c, _ in components), "‖∂loss/∂stream‖"], "rows": rows})
    ranked = sorted(grads.items(), key=lambda item: item[1])
    extremes = Entry("Largest and smallest parameter gradients", notes=[
        "largest: " + ", ".join(f"{n} {v:.3e}" for n, v in ranked[::-1][:3]),
        "smallest: " + ", ".join(f"{n} {v:.3e}" for n, v in ranked[:3]),
        f"global gradient norm {step.grad_norm:.4f}" + (" (zero-initialised projections get their first gradient "
                                                        "only once the head is non-zero)" if _blocked(step, config) else "")])
    others = Entry("Embedding and head", table={"columns": ["parameter", "gradient norm"], "rows": [
        [n, _fmt(v)] for n, v in grads.items() if not n.startswith("blocks.")]})
    entries = [flow, extremes, others]
    if len(report.steps) > 1:
        rows = [[i, *(_fmt(s.stats[f"grad:blocks.{i}.resid.post"].norm) if f"grad:blocks.{i}.resid.post" in s.stats
                      else "—" for s in report.steps)] for i in range(config.n_layer)]
        entries.append(Entry("Gradient of the residual stream, every iteration", table={
            "columns": ["block", *(f"iteration {s.step}" for s in report.steps)], "rows": rows}, notes=[
            "with a zero-initialised head and output projections, nothing below the head gets a gradient in "
            "iteration 1; once the head is non-zero (iteration 2) the stream, the embedding and the c_proj layers "
            "do; the layers feeding a c_proj get theirs once that c_proj is non-zero (iteration 3)"
            if _blocked(report.steps[0], config) else "the signal reaches every block from the first iteration"]))
    return Section("gradients", "Backward: gradient flow", explain("topic:gradients"), entries)


def _blocked(step: StepTrace, config) -> bool:
    """True when no gradient reached the blocks (a zero head or zero output projections)."""
    norms = [step.stats[f"grad:blocks.{i}.resid.post"].norm for i in range(config.n_layer)
             if f"grad:blocks.{i}.resid.post" in step.stats]
    return bool(norms) and all(n == 0 for n in norms)


def _optimizer_section(step: StepTrace) -> Section:
    rows = []
    for group, ratios in sorted(_ratios_by_group(step).items()):
        defined = [r for r in ratios if r is not None]
        rows.append([group, len(ratios), _mean(defined), f"{max(defined):.2e}" if defined else "—",
                     len(ratios) - len(defined)])
    per_param = sorted(((n, r) for n, r in step.update_ratios.items() if r is not None), key=lambda item: -item[1])
    return Section("optimizer", "Optimizer step", explain("topic:update_ratio"), [
        Entry("Update-to-weight ratio per parameter group",
              table={"columns": ["group", "tensors", "mean ‖ΔW‖/‖W‖", "max", "started at 0"], "rows": rows},
              notes=["a tensor that was all zeros has no ratio: its first step moves it from nothing"]),
        Entry("Largest relative updates", notes=[f"{n}: {r:.2e}" for n, r in per_param[:5]]),
    ])


def _ratios_by_group(step: StepTrace) -> dict[str, list[float | None]]:
    groups: dict[str, list[float | None]] = {}
    for name, ratio in step.update_ratios.items():
        groups.setdefault(step.group_of[name], []).append(ratio)
    return groups


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2e}" if values else "—"


def _iterations_section(report: TraceReport) -> Section:
    groups = sorted(set(report.steps[0].group_of.values()))
    rows = []
    for step in report.steps:
        by_group = _ratios_by_group(step)
        rows.append([step.step, f"{step.loss:.4f}", f"{step.grad_norm:.4f}",
                     *(_mean([r for r in by_group.get(g, []) if r is not None]) for g in groups)])
    losses = [s.loss for s in report.steps]
    batches = "the same text every iteration: the drop is partly memorisation" if report.same_batch \
        else "each on a new batch of the corpus"
    note = (f"loss {losses[0]:.4f} → {losses[-1]:.4f} over {len(losses)} iterations ({batches})"
            if len(losses) > 1 else "one iteration")
    return Section("iterations", "All iterations", None, [Entry(
        "Loss, gradient norm and update ratios per iteration", notes=[note],
        table={"columns": ["iteration", "loss", "grad norm", *groups], "rows": rows})])


# -- notes computed from the real values -----------------------------------------------------------


def _versus_uniform(loss: float, uniform: float) -> str:
    if abs(loss - uniform) < 1e-3:
        return "exactly a uniform guess: every token equally likely"
    return "better than uniform" if loss < uniform else "worse than uniform: confidently wrong"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3e}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4f}"


def _rms_note(stats: TensorStats | None, where: str = "per position") -> str:
    if stats is None:
        return ""
    return f"RMS over the whole tensor {stats.rms:.4f} (normalised {where})"


def _mask_note(stats: TensorStats | None) -> str:
    if stats is None:
        return ""
    return f"{100 * stats.neg_inf:.1f}% of the scores are now -inf (the future)"


def _pattern_note(kept: torch.Tensor | None) -> str:
    if kept is None:
        return ""
    error = (kept.sum(-1) - 1).abs().max().item()
    return f"every row sums to 1 (largest deviation {error:.1e}, first {kept.shape[-1]} positions checked)"


def _rotation_note(step: StepTrace, prefix: str) -> str:
    q, rotated = step.kept.get(prefix + "attn.q"), step.kept.get(prefix + "attn.q_rot")
    if q is None or rotated is None or q.shape[0] < 2:
        return ""
    t = min(5, q.shape[0] - 1)
    half = q.shape[-1] // 2
    before = (q[t, 0, 0].item(), q[t, 0, half].item())
    after = (rotated[t, 0, 0].item(), rotated[t, 0, half].item())
    return (f"head 0, position {t}, pair (0, {half}): ({before[0]:.4f}, {before[1]:.4f}) → ({after[0]:.4f}, {after[1]:.4f}); "
            f"length {math.hypot(*before):.4f} → {math.hypot(*after):.4f}")


def _residual_note(before: TensorStats | None, after: TensorStats | None, what: str, residual: bool) -> str:
    if before is None or after is None:
        return ""
    verb = "adds" if residual else "replaces the stream with"
    return f"{what} {verb} its output: ‖stream‖ {before.norm:.3f} → {after.norm:.3f}"
