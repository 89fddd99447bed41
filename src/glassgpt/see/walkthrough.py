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
    """Sections for the first iteration, then the summary of all iterations.

    With `only`, just the matching trace points (a `grad:` pattern shows only the gradient)."""
    step = report.steps[0]
    config = report.config
    sections: list[Section] = []
    only = only or []
    whole = [p for p in only if not p.startswith("grad:")]
    grads = [p.removeprefix("grad:") for p in only if p.startswith("grad:")]

    def matches(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    def want(name: str) -> bool:
        return not only or matches(name, whole) or matches(name, grads)

    zero_explained = False  # the first tensor that is all zero because of zero_init_out says why

    def tensor(name: str, *notes: str, title: str | None = None) -> Entry | None:
        if name not in step.stats or not want(name):
            return None
        explanation = explain(name)
        stats = None if only and not matches(name, whole) else step.stats[name]  # grad: only
        return Entry(title or explanation.title, name, stats, step.stats.get(f"grad:{name}"),
                     explanation, [n for n in notes if n])

    def zero_init(entry: Entry | None, note: str) -> list[Entry | None]:
        """`entry`, and after it the zero-init explanation the first time a tensor is all zero
        because of it (with a note saying what is zero, every time)."""
        nonlocal zero_explained
        if entry is None or entry.stats is None or entry.stats.norm != 0 or not config.zero_init_out:
            return [entry]
        entry.notes.insert(0, f"all {_count(entry.stats)} entries are exactly 0: {note}")
        if zero_explained:
            return [entry]
        zero_explained = True
        return [entry, Entry("Why so many zeros", explanation=explain("topic:zero_init"))]

    def section(id: str, title: str, intro: str | None, *entries: Entry | None) -> None:
        kept = [e for e in entries if e is not None]
        if kept:
            sections.append(Section(id, title, explain(intro) if intro else None, kept))

    # -- input -----------------------------------------------------------------------------------
    if not only:
        T = len(report.token_ids)
        pieces = [(i, report.tokenizer.token_piece(i).decode("utf-8", "replace")) for i in report.token_ids[:TOKEN_ROWS]]
        shown = f"; the first {TOKEN_ROWS} of the {T:,} positions below" if T > TOKEN_ROWS else ""
        section("tokens", "Token ids", None, Entry(
            "Token ids", explanation=explain("topic:tokens"),
            notes=[f"shape (1, {T}): batch 1, {T:,} tokens, vocabulary of {config.vocab_size:,}{shown}",
                   f"text: {report.text_source}", *report.notices],
            table={"columns": ["position", "id", "piece"],
                   "rows": [[p, i, repr(piece)] for p, (i, piece) in enumerate(pieces)]}))
    section("embedding", "Embedding", None,
            tensor("embed.tok", f"looked up in wte of shape ({config.vocab_size:,}, {config.n_embd}): "
                                f"one row of {config.n_embd} numbers per token"),
            tensor("embed.pos", f"wpe has shape ({config.sequence_len}, {config.n_embd}): one row per position"),
            tensor("embed.norm", _rms_note(step.stats.get("embed.norm"))))
    if config.position == "rope" and report.rotary and any(want(f"blocks.{i}.attn.q_rot") for i in range(config.n_layer)):
        sections.append(_rope_section(report))

    # -- blocks ---------------------------------------------------------------------------------
    for i in report.traced_blocks:
        sections += _block_sections(report, step, i, tensor, want, zero_init)
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
            notes=["show them in full with --blocks all; --json and --html hold every trace point of every "
                   "block either way"])]))

    # -- head and loss --------------------------------------------------------------------------
    raw, capped = step.stats.get("lm_head.logits_raw"), step.stats.get("lm_head.logits")
    softcap_note = ""
    if raw and capped:
        if config.softcap is None:
            softcap_note = "softcap is off: the logits are used as they are"
        elif raw.norm == 0:
            softcap_note = (f"softcap c = {config.softcap:g}: range [0.000, 0.000] → [0.000, 0.000], nothing to cap "
                            f"yet: every logit is 0, and c·tanh(0/c) = 0")
        else:
            softcap_note = (f"softcap c = {config.softcap:g}: range [{raw.min:.3f}, {raw.max:.3f}] → "
                            f"[{capped.min:.3f}, {capped.max:.3f}], always inside (-{config.softcap:g}, {config.softcap:g})")
    head = "the tied head (wte.weight)" if config.tie_embeddings else "lm_head.weight"
    section("head", "Final norm and LM head", None,
            tensor("final.norm", _rms_note(step.stats.get("final.norm"))),
            *zero_init(tensor("lm_head.logits_raw", f"one score for each of the {config.vocab_size:,} tokens, at "
                                                    f"every position"),
                       f"{head} starts at zero (zero_init_out), so every token gets the same score"),
            tensor("lm_head.logits", softcap_note))
    uniform = math.log(config.vocab_size)
    masked = report.target_ids and -1 in report.target_ids
    section("loss", "Loss", None,
            tensor("loss.per_token", "one surprise value per position; the loss is their mean" if not masked else
                   "one surprise value per position, 0 where the loss mask leaves the target out; the loss is the "
                   "mean over the counted positions only"),
            _loss_mask_entry(report, step) if masked and want("loss.per_token") else None,
            tensor("loss", f"loss {step.loss:.4f} nats vs ln({config.vocab_size:,}) = {uniform:.4f} for a uniform "
                           f"guess ({_versus_uniform(step.loss, uniform)})"))

    # -- backward and optimiser -------------------------------------------------------------------
    if not only:
        sections.append(_gradient_section(report))
        sections.append(_optimizer_section(report, step))
        sections.append(_iterations_section(report))
    return sections


TOKEN_ROWS = 16  # token ids shown in the table; the JSON has all of them
MASK_GRID_LIMIT = 16  # the causal mask is drawn as a grid up to this many positions, described beyond


def _block_sections(report: TraceReport, step: StepTrace, i: int, tensor, want, zero_init) -> list[Section]:
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
    if Hkv == H:
        kv_note = f"{_plural(Hkv, 'key head')}, one per query head"
    else:
        kind = "multi-query" if Hkv == 1 else "grouped-query"
        kv_note = f"{kind}: {_plural(Hkv, 'key/value head')} for {H} query heads, each shared by {group}"
    entries.append(tensor(p + "attn.k", kv_note))
    entries.append(tensor(p + "attn.v", f"{C} → {Hkv * D}: {_plural(Hkv, 'value head')} x {D} dims"))
    entries.append(tensor(p + "attn.q_rot", _rotation_note(step, p)))
    entries.append(tensor(p + "attn.k_rot"))
    entries.append(tensor(p + "attn.q_norm", _rms_note(stats.get(p + "attn.q_norm"), "per head")))
    entries.append(tensor(p + "attn.k_norm", _rms_note(stats.get(p + "attn.k_norm"), "per head")))
    if want(p + "attn.scores"):
        entries.append(Entry("Heads become a batch dimension", explanation=explain("topic:transpose"),
                             notes=[f"(1, T, {H}, {D}) → (1, {H}, T, {D})"]))
    if Hkv < H and want(p + "attn.k_rep"):
        entries.append(Entry("Grouped-query attention", explanation=explain("topic:gqa"),
                             notes=[f"n_head / n_kv_head = {H} / {Hkv} = {group}: the KV cache is {group}x smaller"]))
    entries.append(tensor(p + "attn.k_rep", f"(1, {Hkv}, T, {D}) repeated {group}x along the head axis → (1, {H}, T, {D})"
                          if group > 1 else "no repeat needed (n_kv_head = n_head)"))
    entries.append(tensor(p + "attn.v_rep", f"(1, {Hkv}, T, {D}) repeated {group}x → (1, {H}, T, {D})" if group > 1 else ""))
    scale = 1 / (config.attn_temperature * math.sqrt(D))
    entries.append(tensor(p + "attn.scores", f"scale 1/({config.attn_temperature:g}·√{D}) = {scale:.4f}"))
    masked = tensor(p + "attn.scores_masked", _mask_note(stats.get(p + "attn.scores_masked")))
    if masked is not None and masked.stats is not None:
        T = masked.stats.shape[-1]
        if T <= MASK_GRID_LIMIT:
            masked.grid = [[1 if k <= q else 0 for k in range(T)] for q in range(T)]
        else:
            masked.notes.append(f"{T} x {T}: row q keeps keys 0 to q, the {T * (T - 1) // 2:,} entries above the "
                                f"diagonal are -inf")
    entries.append(masked)
    entries.append(tensor(p + "attn.pattern", _pattern_note(step.kept.get(p + "attn.pattern"))))
    entries.append(tensor(p + "attn.z", "(1, H, T, D) @ → transposed back to (1, T, H, D)"))
    entries += zero_init(tensor(p + "attn.out", f"{_plural(H, 'head')} x {D} concatenated = {H * D} → projected to {C}"),
                         "attn.c_proj starts at zero (zero_init_out), so attention adds nothing yet")
    mid = stats.get(p + "resid.mid")
    entries.append(tensor(p + "resid.mid", _residual_note(pre, mid, "attention", config.residual)))
    attention = Section(f"block-{i}-attention", f"Block {i} · attention", explain("topic:prenorm"),
                        [e for e in entries if e is not None])
    mlp_entries = [
        tensor(p + "mlp.norm", _rms_note(stats.get(p + "mlp.norm"))),
        tensor(p + "mlp.up", f"{C} → {config.mlp_hidden} ({config.mlp_ratio}x wider)"),
        tensor(p + "mlp.act", _activation_note(stats.get(p + "mlp.act"), config.activation)),
        *zero_init(tensor(p + "mlp.out", f"{config.mlp_hidden} → {C}"),
                   "mlp.c_proj starts at zero (zero_init_out), so the MLP adds nothing yet"),
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
               f"relative position, checked with the model's own rotation: q·k at positions {a} = {score(*a):.5f}, "
               f"at {b} = {score(*b):.5f} (same distance 3, same score)"],
        table={"columns": ["position", "cos pair 0", "sin pair 0", "cos last pair", "sin last pair"],
               "rows": [[t, f"{cos[t, 0]:.4f}", f"{sin[t, 0]:.4f}", f"{cos[t, -1]:.6f}", f"{sin[t, -1]:.6f}"]
                        for t in range(min(5, n))]})
    return Section("rope", "Rotary position embedding", None, [entry])


# The weight matrices of a block, as (label, path under blocks.<i>.): the gradient tables and charts.
COMPONENTS = [("c_q", "attn.c_q"), ("c_k", "attn.c_k"), ("c_v", "attn.c_v"), ("c_proj", "attn.c_proj"),
              ("c_fc", "mlp.c_fc"), ("mlp c_proj", "mlp.c_proj")]


def _gradient_section(report: TraceReport) -> Section:
    config, steps = report.config, report.steps
    step = steps[0]
    grads = step.param_grad_norms
    stopped_at_head = _blocked(step, config) and config.zero_init_out
    first = _layer_gradients(step, config)
    if stopped_at_head:
        first.notes.append("every entry is exactly 0: no gradient gets past the zero-initialised head in iteration 1")
        first.explanation = explain("topic:zero_init")
    entries = [first]
    if len(steps) > 1:  # the same table once the gradient has had time to flow
        last = _layer_gradients(steps[-1], config)
        norms = [steps[-1].param_grad_norms.get(f"blocks.{i}.{path}.weight") for i in range(config.n_layer)
                 for _, path in COMPONENTS]
        zeros = sum(1 for n in norms if not n)
        last.notes.append(f"{zeros} of {len(norms)} are still exactly 0" if zeros else
                          "every weight matrix of every block gets a gradient now")
        entries.append(last)
    nonzero = sorted(((n, v) for n, v in grads.items() if v > 0), key=lambda item: item[1])
    zero = [n for n, v in grads.items() if v == 0]
    if len(nonzero) > 6:
        notes = ["largest: " + ", ".join(f"{n} {v:.3e}" for n, v in nonzero[::-1][:3]),
                 "smallest: " + ", ".join(f"{n} {v:.3e}" for n, v in nonzero[:3])]
    else:
        notes = ["non-zero: " + ", ".join(f"{n} {v:.3e}" for n, v in nonzero[::-1])] if nonzero else []
    if zero:
        notes.append(f"{len(zero)} of {len(grads)} parameter tensors got a gradient of exactly 0"
                     + (" (none gets past the zero-initialised head yet)" if _blocked(step, config) else ""))
    clip = report.grad_clip
    notes.append(f"global gradient norm {step.grad_norm:.4f}" + (
        f", above grad_clip {clip:g}: the step used the gradient scaled by {clip / step.grad_norm:.3f}"
        if clip and step.grad_norm > clip else ""))
    entries.append(Entry("Largest and smallest parameter gradients, iteration 1", notes=notes))
    entries.append(Entry("Embedding and head", table={"columns": ["parameter", "gradient norm"], "rows": [
        [n, _fmt(v)] for n, v in grads.items() if not n.startswith("blocks.")]}))
    if len(steps) > 1:
        rows = [[i, *(_fmt(s.stats[f"grad:blocks.{i}.resid.post"].norm) if f"grad:blocks.{i}.resid.post" in s.stats
                      else "—" for s in steps)] for i in range(config.n_layer)]
        reached = next((s.step for s in steps if _reaches_every_block(s, config)), None)
        note = ("the signal reaches every block from the first iteration" if reached == 1
                else f"the signal reaches every block from iteration {reached}" if reached
                else "the signal does not reach every block in these iterations")
        if stopped_at_head:
            note = f"iteration 1 is all zero (the head was zero); {note}"
        entries.append(Entry("Gradient of the residual stream, every iteration", notes=[note], table={
            "columns": ["block", *(f"iteration {s.step}" for s in steps)], "rows": rows}))
    return Section("gradients", "Backward: gradient flow", explain("topic:gradients"), entries)


def _layer_gradients(step: StepTrace, config) -> Entry:
    """The gradient norm of every weight matrix of every block, in one iteration."""
    grads = step.param_grad_norms
    rows = [[i, *(_fmt(grads.get(f"blocks.{i}.{path}.weight")) for _, path in COMPONENTS)] for i in range(config.n_layer)]
    return Entry(f"Gradient norm per layer and component, iteration {step.step}",
                 table={"columns": ["block", *(c for c, _ in COMPONENTS)], "rows": rows})


def _blocked(step: StepTrace, config) -> bool:
    """True when no gradient reached the blocks (a zero head or zero output projections)."""
    norms = [step.stats[f"grad:blocks.{i}.resid.post"].norm for i in range(config.n_layer)
             if f"grad:blocks.{i}.resid.post" in step.stats]
    return bool(norms) and all(n == 0 for n in norms)


def _reaches_every_block(step: StepTrace, config) -> bool:
    norms = [step.stats.get(f"grad:blocks.{i}.resid.post") for i in range(config.n_layer)]
    return all(n is not None and n.norm > 0 for n in norms)


def _optimizer_section(report: TraceReport, step: StepTrace) -> Section:
    rows = []
    for group, names in sorted(_names_by_group(step).items()):
        ratios = [step.update_ratios[n] for n in names]
        defined = [r for r in ratios if r is not None]
        rows.append([group, _lr(step.lr_of[n] for n in names), len(names), _mean(defined),
                     f"{max(defined):.2e}" if defined else "—", len(ratios) - len(defined)])
    if report.optimizer == "adamw":
        who = (f"one AdamW for every parameter ({report.config.family} family), so one learning rate: the rows "
               f"split it by role only; weight decay {report.weight_decay:g} on matrices, none on gains & biases")
    else:
        who = "Muon for the matrices inside the blocks, AdamW for the rest, each group at its own learning rate"
    ranked = sorted(((n, r) for n, r in step.update_ratios.items() if r), key=lambda item: -item[1])
    largest = [f"{n}: {r:.2e}" for n, r in ranked[:5]] or ["no tensor that held values moved in this step"]
    from_zero = sorted(((n, step.update_norms.get(n, 0.0)) for n, r in step.update_ratios.items() if r is None),
                       key=lambda item: -item[1])
    moved = [f"{n} {d:.3e}" for n, d in from_zero if d > 0]
    still = [n for n, d in from_zero if d == 0]
    zero_notes = []
    if moved:
        zero_notes.append(f"started at zero, so no ratio; moved by ‖ΔW‖: {_names(moved)}")
    if still:
        zero_notes.append(f"still all zero after this step: {_plural(len(still), 'tensor')} ({_names(still)}), "
                          f"no gradient reached them yet")
    return Section("optimizer", "Optimizer step", explain("topic:update_ratio"), [
        Entry("Learning rate of this step", explanation=explain("topic:schedule"), notes=[_schedule_note(report, step)]),
        Entry("Update-to-weight ratio per parameter group", notes=[who], table={
            "columns": ["group", "lr", "tensors", "mean ‖ΔW‖/‖W‖", "max", "started at 0"], "rows": rows}),
        Entry("Largest relative updates", notes=largest + zero_notes),
    ])


def _schedule_note(report: TraceReport, step: StepTrace) -> str:
    if report.run is None:
        where = "a fresh model starts at the first"
    elif step.schedule_step == report.max_steps - 1:
        where = "the last: the run finished its schedule, so the trace repeats its last step"
    else:
        where = "the run continues where it stopped"
    return (f"schedule step {step.schedule_step + 1:,} of {report.max_steps:,} ({where}): lr multiplier "
            f"{step.lr_multiplier:.4g}, so every group steps at {100 * step.lr_multiplier:.3g}% of its peak lr")


def _names_by_group(step: StepTrace) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in step.update_ratios:
        groups.setdefault(step.group_of[name], []).append(name)
    return groups


def _ratios_by_group(step: StepTrace) -> dict[str, list[float | None]]:
    return {group: [step.update_ratios[n] for n in names] for group, names in _names_by_group(step).items()}


def _lr(values) -> str:
    values = sorted(set(values))
    return f"{values[0]:.3g}" if len(values) == 1 else f"{values[0]:.3g}-{values[-1]:.3g}"


def _names(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2e}" if values else "—"


def _iterations_section(report: TraceReport) -> Section:
    groups = sorted(set(report.steps[0].group_of.values()))
    rows = []
    for step in report.steps:
        by_group = _ratios_by_group(step)
        rows.append([step.step, f"{step.loss:.4f}", f"{step.grad_norm:.4f}", f"{step.lr_multiplier:.4g}",
                     *(_mean([r for r in by_group.get(g, []) if r is not None]) for g in groups)])
    losses = [s.loss for s in report.steps]
    batches = "the same text every iteration: the drop is partly memorisation" if report.same_batch \
        else "each on a new batch of the corpus"
    note = (f"loss {losses[0]:.4f} → {losses[-1]:.4f} over {len(losses)} iterations ({batches})"
            if len(losses) > 1 else "one iteration")
    return Section("iterations", "All iterations", None, [Entry(
        "Loss, gradient norm and update ratios per iteration",
        notes=[note, "lr x: the schedule's learning-rate multiplier; a group's column is the mean ‖ΔW‖/‖W‖ of its "
                     "tensors (those that started at zero have no ratio)"],
        table={"columns": ["iteration", "loss", "grad norm", "lr x", *groups], "rows": rows})])


# -- notes computed from the real values -----------------------------------------------------------


def _loss_mask_entry(report: TraceReport, step: StepTrace) -> Entry:
    """Which targets the loss counted: a chat conversation learns only the assistant's tokens."""
    targets, tokenizer = report.target_ids, report.tokenizer
    inputs = report.token_ids
    counted = sum(1 for t in targets if t != -1)
    per_token = step.kept.get("loss.per_token")
    # Start a few positions before the first counted target, so the table shows the switch from
    # masked (the user's turn) to counted (the reply) rather than only the start of the prompt.
    first_counted = next((i for i, t in enumerate(targets) if t != -1), 0)
    start = max(0, min(first_counted - 4, len(targets) - TOKEN_ROWS))
    rows = []
    for position, target in enumerate(targets[start:start + TOKEN_ROWS], start=start):
        following = inputs[position + 1] if position + 1 < len(inputs) else target
        token = target if target != -1 else following
        loss = f"{per_token[position].item():.3f}" if per_token is not None and position < len(per_token) else "—"
        rows.append([position, repr(tokenizer.token_piece(token).decode("utf-8", "replace")),
                     "✓ counted" if target != -1 else "· masked", loss if target != -1 else "0"])
    shown = (f"; positions {start} to {start + TOKEN_ROWS - 1} below, where the reply begins"
             if len(targets) > TOKEN_ROWS else "")
    names = {token_id: name for name, token_id in tokenizer.special_ids.items()}
    present = {names.get(t) for t in inputs} | {names.get(t) for t in targets if t != -1}
    learned = ["the assistant's reply"] + (["its tool call"] if "<|tool_call_start|>" in present else [])
    masked = ["<|bos|>"] + (["the system message"] if "<|system_start|>" in present else []) + [
        "the user's turn", "<|assistant_start|>"] + (["the tool's result"] if "<|tool_result_start|>" in present else [])
    return Entry("The loss mask", explanation=explain("topic:loss_mask"), notes=[
        f"{counted} of {len(targets)} targets are counted: {', '.join(learned)} and <|assistant_end|>; "
        f"{', '.join(masked[:-1])} and {masked[-1]} are masked{shown}",
        f"loss = sum of the counted per-token losses / {counted}: the masked positions add nothing"],
        table={"columns": ["position", "target token", "in the loss", "loss (nats)"], "rows": rows})


def _versus_uniform(loss: float, uniform: float) -> str:
    if abs(loss - uniform) < 1e-3:
        return "exactly a uniform guess: every token equally likely"
    return "better than uniform" if loss < uniform else "worse than uniform: confidently wrong"


def _activation_note(stats: TensorStats | None, activation: str) -> str:
    if stats is None:
        return ""
    if activation in ("relu", "relu2"):
        return f"{activation}: {100 * stats.zeros:.1f}% of the units are exactly 0"
    return (f"{activation}: {100 * stats.negative:.1f}% of the units are negative (the lowest {stats.min:.3f}), "
            f"{100 * stats.zeros:.1f}% exactly 0")


def _count(stats: TensorStats) -> str:
    return f"{math.prod(stats.shape):,}"


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
