"""The walk-through as one self-contained HTML page: open it offline, from a file:// URL, anywhere.

Everything is inline: the CSS, a small script, and the data the script draws (embedded as JSON in
a `<script type="application/json">` tag, with every `<` escaped so no text can close the tag).
No fonts, images, styles or scripts are fetched; the page makes no network request at all.

The static part (rendered here, readable without JavaScript):

- a header (the trace's header line, the model config, notices) and a table of contents, one link
  per section (anchors are the section ids);
- every section in order: its intro, and every entry with a statistics table for the tensor and
  its gradient, the registry's explanation (in full the first time a pattern appears, then only
  its meaning, as in the terminal), notes, tables and the causal-mask grid;
- the gradient-flow charts (`id="gradient-flow"`, inline SVG, log scale, zeros drawn as zeros);
- the causal-mask view (`id="mask-view"`): the mask grid for short sequences, otherwise the first
  N x N positions, read from the attention pattern (weight > 0 means allowed).

The script draws one attention heatmap per layer (`id="heatmap-{i}"`, whose `data-head` names
the head on show) with a head selector (`id="head-select-{i}"`), token labels on both axes, a
colour legend and a readout of the value under the mouse. A block shown in full has its heatmap
in its attention section; the others' heatmaps sit in the "Other blocks" summary.
"""

from __future__ import annotations

import json
import math
from html import escape

import torch

from glassgpt.see.registry import Explanation, pattern_of
from glassgpt.see.trace import StepTrace, TraceReport
from glassgpt.see.tracer import TensorStats
from glassgpt.see.walkthrough import COMPONENTS, Entry, Section

PALETTE = ["#3b6fb6", "#d9822b", "#2e9e6a", "#b8415b", "#7a5cc2", "#8c7a3a", "#3aa0b8", "#c25ca5"]


def to_html(report: TraceReport, sections: list[Section], header: str) -> str:
    page = _Page(report, sections, header)
    return page.render()


# -- small helpers ---------------------------------------------------------------------------------


def _e(value) -> str:
    return escape(str(value), quote=True)


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.4g}"


def _percent(fraction: float) -> str:
    if fraction == 0:
        return "0%"
    return f"{100 * fraction:.1f}%" if fraction >= 0.001 else "<0.1%"


def visible_piece(piece: str, newline: str = "⏎", space: str = "·", empty: str = "∅") -> str:
    """A token piece with its whitespace made visible: newline ⏎, space ·, tab ⇥, other controls as \\xNN
    (a view that keeps line breaks passes newline="⏎\\n"; one that keeps spaces, space=" ")."""
    out = []
    for ch in piece:
        if ch == "\n":
            out.append(newline)
        elif ch == " ":
            out.append(space)
        elif ch == "\t":
            out.append("⇥")
        elif ch == "\r":
            out.append("␍")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or empty


def _json_for_script(data) -> str:
    """JSON safe inside <script>: every '<' (so '</script>' and '<!--'), '>' and '&' escaped.
    Inside JSON they can only occur in strings, where \\u003c is the same character."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _rounded(values: list[float]) -> list[float]:
    return [float(f"{v:.4g}") if math.isfinite(v) else 0.0 for v in values]


def _anchor(entry: Entry, section: Section, index: int) -> str:
    if entry.name:
        return "tp-" + entry.name.replace(".", "-").replace(":", "-")
    return f"{section.id}-{index}"


# -- the page --------------------------------------------------------------------------------------


class _Page:
    def __init__(self, report: TraceReport, sections: list[Section], header: str):
        self.report, self.sections, self.header = report, sections, header
        self.step = report.steps[0]
        self.explained: dict[str, str] = {}  # registry key → anchor of its full explanation
        self.labels = [visible_piece(report.tokenizer.token_piece(i).decode("utf-8", "replace"))
                       for i in report.token_ids]
        # Every layer gets an attention view, whether or not the walk-through shows its block in full.
        self.patterns = {i: self.step.kept[f"blocks.{i}.attn.pattern"] for i in range(report.config.n_layer)
                         if isinstance(self.step.kept.get(f"blocks.{i}.attn.pattern"), torch.Tensor)
                         and self.step.kept[f"blocks.{i}.attn.pattern"].dim() == 3}
        self.placed_heatmaps: set[int] = set()
        self.mask_placed = False
        self.gradients_placed = False

    # -- whole page --------------------------------------------------------------------------------

    def render(self) -> str:
        body = [self._section(s) for s in self.sections]
        extra = self._leftover_views()
        toc_sections = [(s.id, s.title) for s in self.sections] + ([("views", "Views")] if extra else [])
        data = self._data()
        return "".join([
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n",
            "<title>glassgpt trace</title>\n<style>", CSS, "</style>\n</head>\n<body>\n",
            self._toc(toc_sections),
            "<main>\n", self._header(), *body, extra,
            "<footer>Written by glassgpt trace. This page is self-contained: it loads nothing from the network.</footer>\n",
            "</main>\n",
            '<script type="application/json" id="trace-data">', _json_for_script(data), "</script>\n",
            "<script>", SCRIPT, "</script>\n</body>\n</html>\n",
        ])

    def _toc(self, sections: list[tuple[str, str]]) -> str:
        items = []
        for id, title in sections:
            items.append(f'<li><a href="#{_e(id)}">{_e(title)}</a>')
            sub = []
            if id.startswith("block-") and id.endswith("-attention"):
                block = id[len("block-"):-len("-attention")]
                if block.isdigit() and int(block) in self.patterns:
                    sub.append(f'<li><a href="#attention-{block}">attention heatmap</a></li>')
            if id == "other-blocks":
                sub += [f'<li><a href="#attention-{b}">attention heatmap, block {b}</a></li>'
                        for b in self._summarised_heatmaps()]
            if id == "gradients":
                sub.append('<li><a href="#gradient-flow">gradient-flow chart</a></li>')
            if sub:
                items.append('<ul>' + "".join(sub) + "</ul>")
            items.append("</li>")
        return ('<nav id="toc" aria-label="Contents"><h2>Contents</h2><ol>' + "".join(items) + "</ol></nav>\n")

    def _header(self) -> str:
        config = self.report.config
        steps = len(self.report.steps)
        summary = [("family", config.family), ("blocks", config.n_layer), ("width n_embd", config.n_embd),
                   ("heads", f"{config.n_head} x {config.head_dim} dims"), ("key/value heads", config.n_kv_head),
                   ("vocabulary", f"{config.vocab_size:,}"), ("sequence_len", config.sequence_len),
                   ("position", config.position), ("norm", f"{config.norm} ({config.norm_placement})"),
                   ("activation", config.activation), ("MLP", f"{config.mlp_ratio}x"),
                   ("softcap", "off" if config.softcap is None else f"{config.softcap:g}")]
        chips = "".join(f'<div class="chip"><span>{_e(k)}</span><b>{_e(v)}</b></div>' for k, v in summary)
        full = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in config.to_dict().items())
        lr = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_num(v))}</td></tr>" for k, v in self.report.lr.items())
        losses = " → ".join(f"{s.loss:.4f}" for s in self.report.steps)
        notices = "".join(f'<p class="notice">{_e(n)}</p>' for n in self.report.notices)
        return (
            '<header id="top">\n<h1>glassgpt trace</h1>\n'
            f'<p class="lede">{_e(self.header)}.</p>\n'
            f'<p>Iteration 1 of {steps} is shown in full; all iterations are summarised at the end. '
            f'Loss per iteration: {_e(losses)}.</p>\n{notices}'
            f'<div class="chips">{chips}</div>\n'
            '<details><summary>Full model config and learning rates</summary>'
            f'<div class="two"><table class="kv">{full}</table><table class="kv">{lr}</table></div></details>\n'
            "</header>\n")

    # -- sections and entries ----------------------------------------------------------------------

    def _section(self, section: Section) -> str:
        parts = [f'<section id="{_e(section.id)}">\n<h2>{_e(section.title)}</h2>\n']
        if section.intro:
            parts.append(self._intro(section.intro, section.id))
        if section.id == "gradients":
            parts.append(self._gradient_flow())
        block = _block_of(section.id)
        for index, entry in enumerate(section.entries):
            parts.append(self._entry(entry, section, index))
            if block is not None and entry.name == f"blocks.{block}.attn.pattern" and block in self.patterns:
                parts.append(self._heatmap_figure(block))
        if block is not None and block in self.patterns and block not in self.placed_heatmaps:
            parts.append(self._heatmap_figure(block))
        if section.id == "other-blocks":
            parts += [self._heatmap_figure(b) for b in self._summarised_heatmaps()]
        parts.append("</section>\n")
        return "".join(parts)

    def _summarised_heatmaps(self) -> list[int]:
        """Blocks that have a pattern but no section of their own: their heatmaps go with the summary."""
        own = {_block_of(s.id) for s in self.sections}
        return [b for b in sorted(self.patterns) if b not in own]

    def _intro(self, intro: Explanation, anchor: str) -> str:
        if intro.key in self.explained:
            return (f'<div class="intro"><p><b>{_e(intro.title)}</b>: {_e(intro.meaning)} '
                    f'<a class="back" href="#{_e(self.explained[intro.key])}">(explained above)</a></p></div>\n')
        self.explained[intro.key] = anchor
        rows = [("formula", intro.formula, True), ("look for", intro.look_for, False)]
        details = "".join(f"<dt>{label}</dt><dd>{'<code>' + _e(text) + '</code>' if code else _e(text)}</dd>"
                          for label, text, code in rows if text)
        return (f'<div class="intro"><p><b>{_e(intro.title)}</b>: {_e(intro.meaning)}</p>'
                + (f'<dl class="explain">{details}</dl>' if details else "") + "</div>\n")

    def _entry(self, entry: Entry, section: Section, index: int) -> str:
        anchor = _anchor(entry, section, index)
        name = f' <code class="tp">{_e(entry.name)}</code>' if entry.name else ""
        parts = [f'<article class="entry" id="{_e(anchor)}">\n<h3>{_e(entry.title)}{name}</h3>\n']
        if entry.stats or entry.grad:
            parts.append(_stats_table(entry.stats, entry.grad))
        if entry.explanation:
            parts.append(self._explanation(entry, anchor))
        if entry.notes:
            parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in entry.notes) + "</ul>\n")
        if entry.grid:
            mask_id = None
            if not self.mask_placed:
                self.mask_placed, mask_id = True, "mask-view"
            parts.append(_grid_figure(entry.grid, self.labels, mask_id))
        elif not self.mask_placed and entry.name and pattern_of(entry.name) == "blocks.*.attn.scores_masked":
            view = self._derived_mask()
            if view:
                self.mask_placed = True
                parts.append(view)
        if entry.table:
            parts.append(_table(entry.table))
        parts.append("</article>\n")
        return "".join(parts)

    def _explanation(self, entry: Entry, anchor: str) -> str:
        explanation = entry.explanation
        key = pattern_of(entry.name) if entry.name else explanation.key
        meaning = f'<p class="meaning">{_e(explanation.meaning)}'
        if key in self.explained:
            return meaning + f' <a class="back" href="#{_e(self.explained[key])}">(explained above)</a></p>\n'
        self.explained[key] = anchor
        rows = [("formula", explanation.formula, True), ("shape", explanation.shape, False),
                ("look for", explanation.look_for, False), ("common bug", explanation.common_bug, False),
                ("break it", explanation.experiment, True)]
        details = "".join(f"<dt>{label}</dt><dd>{'<code>' + _e(text) + '</code>' if code else _e(text)}</dd>"
                          for label, text, code in rows if text)
        return meaning + "</p>\n" + (f'<dl class="explain">{details}</dl>\n' if details else "")

    # -- views -------------------------------------------------------------------------------------

    def _heatmap_figure(self, block: int) -> str:
        self.placed_heatmaps.add(block)
        pattern = self.patterns[block]
        H, N = pattern.shape[0], pattern.shape[-1]
        T = len(self.report.token_ids)
        options = "".join(f'<option value="{h}">head {h}</option>' for h in range(H))
        cropped = f"the first {N} of {T} positions" if N < T else f"all {N} positions"
        return (
            f'<figure class="attention" id="attention-{block}">\n'
            f'<figcaption><b>Attention pattern, block {block}</b> — iteration 1, {cropped}. Rows are queries '
            "(the position reading), columns are keys (the positions it reads); each row sums to 1. "
            "Grey cells are masked (a key after its query).</figcaption>\n"
            '<div class="controls">'
            f'<label>head <select id="head-select-{block}" data-block="{block}">{options}</select></label> '
            f'<label>colour scale <select id="scale-select-{block}" data-block="{block}">'
            '<option value="linear">linear, 0 to 1</option><option value="sqrt">square root (small weights show)</option>'
            '<option value="row">each row to its own maximum</option>'
            "</select></label></div>\n"
            f'<div class="heatmap" id="heatmap-{block}" data-block="{block}" data-head="0">'
            "<noscript>The heatmap needs JavaScript.</noscript></div>\n"
            f'<div class="legend" id="legend-{block}"></div>\n'
            f'<p class="readout" id="readout-{block}">Point at a cell to read its weight.</p>\n'
            f'<div class="tooltip" id="tooltip-{block}" hidden></div>\n'
            "</figure>\n")

    def _derived_mask(self) -> str:
        """The first N x N of the mask, read from the first traced block's attention pattern."""
        if not self.patterns:
            return ""
        block = min(self.patterns)
        pattern = self.patterns[block]
        N = pattern.shape[-1]
        T = len(self.report.token_ids)
        allowed = (pattern > 0).any(dim=0)
        rule = torch.tril(torch.ones(N, N, dtype=torch.bool)) if self.report.config.causal else torch.ones(N, N, dtype=torch.bool)
        disagree = int((allowed != rule).sum().item())
        check = ("agrees with the rule key ≤ query everywhere" if disagree == 0 and self.report.config.causal
                 else "every key is allowed (causal is off)" if disagree == 0
                 else f"differs from the rule key ≤ query in {disagree} cell(s)")
        extent = f"the first {N} x {N} of {T} x {T} positions" if N < T else f"all {N} x {N} positions"
        caption = (f"<b>Causal mask</b> — {extent}, derived from block {block}'s "
                   f"attention pattern (a cell is allowed when its weight is &gt; 0 in any head); it {_e(check)}. "
                   "Rows are queries, columns keys.")
        return _mask_svg_figure(allowed.tolist(), self.labels[:N], caption, "mask-view")

    def _leftover_views(self) -> str:
        """Views whose section was not part of the walk-through (e.g. with --only)."""
        parts = []
        if not self.gradients_placed:
            parts.append(self._gradient_flow())
        for block in sorted(self.patterns):
            if block not in self.placed_heatmaps:
                parts.append(self._heatmap_figure(block))
        if not self.mask_placed:
            view = self._derived_mask()
            if view:
                self.mask_placed = True
                parts.append(view)
        parts = [p for p in parts if p]
        if not parts:
            return ""
        return '<section id="views">\n<h2>Views</h2>\n' + "".join(parts) + "</section>\n"

    def _gradient_flow(self) -> str:
        self.gradients_placed = True
        config, steps = self.report.config, self.report.steps
        layers = [str(i) for i in range(config.n_layer)]
        stream_series = []
        for k, step in enumerate(steps):
            values = [_stream_grad(step, i) for i in range(config.n_layer)]
            if any(v is not None for v in values):
                stream_series.append((f"iteration {step.step}", PALETTE[k % len(PALETTE)], values))
        parts = ['<figure id="gradient-flow" class="chart">\n<figcaption><b>Gradient flow</b> — how much '
                 "gradient reaches each block, log scale. A dashed stub at the baseline marked 0 is a gradient of "
                 "exactly zero (e.g. everything below a zero-initialised head in iteration 1). "
                 "Hover a bar for its value.</figcaption>\n"]
        if stream_series:
            parts.append('<h4>‖∂loss/∂residual stream‖ after each block</h4>\n')
            parts.append(_bar_chart(layers, stream_series, "block", "gradient norm"))
        param_charts = []
        all_values = []
        per_step = []
        for step in steps:
            series = []
            for c, (label, path) in enumerate(COMPONENTS):
                values = [step.param_grad_norms.get(f"blocks.{i}.{path}.weight") for i in range(config.n_layer)]
                if any(v is not None for v in values):
                    series.append((label, PALETTE[c % len(PALETTE)], values))
                    all_values += [v for v in values if v is not None]
            per_step.append((step, series))
        shared = _log_range(all_values)
        for step, series in per_step:
            if series:
                param_charts.append(f'<div class="small"><h5>iteration {step.step}</h5>'
                                    + _bar_chart(layers, series, "block", "weight gradient norm", shared,
                                                 legend=False) + "</div>")
        if param_charts:
            legend = "".join(f'<span class="key"><i style="background:{colour}"></i>{_e(label)}</span>'
                             for label, colour, _ in per_step[0][1])
            parts.append("<h4>Weight gradient norm per component and block</h4>\n"
                         f'<div class="chart-legend">{legend}</div>\n<div class="multiples">'
                         + "".join(param_charts) + "</div>\n")
        if not stream_series and not param_charts:
            parts.append("<p>No gradients were recorded.</p>\n")
        parts.append("</figure>\n")
        return "".join(parts)

    # -- data for the script -----------------------------------------------------------------------

    def _data(self) -> dict:
        tokens = [{"id": i, "label": label} for i, label in zip(self.report.token_ids, self.labels)]
        attention = {}
        for block, pattern in self.patterns.items():
            H, N = pattern.shape[0], pattern.shape[-1]
            attention[str(block)] = {
                "heads": H, "n": N, "t": len(self.report.token_ids),
                "values": [_rounded(pattern[h].reshape(-1).tolist()) for h in range(H)],
            }
        return {"tokens": tokens[: max([p.shape[-1] for p in self.patterns.values()], default=0)],
                "attention": attention, "causal": bool(self.report.config.causal)}


def _block_of(section_id: str) -> int | None:
    if section_id.startswith("block-") and section_id.endswith("-attention"):
        middle = section_id[len("block-"):-len("-attention")]
        if middle.isdigit():
            return int(middle)
    return None


def _stream_grad(step: StepTrace, i: int) -> float | None:
    stats = step.stats.get(f"grad:blocks.{i}.resid.post")
    return stats.norm if stats is not None and math.isfinite(stats.norm) else None


# -- static pieces ---------------------------------------------------------------------------------


def _stats_table(stats: TensorStats | None, grad: TensorStats | None) -> str:
    rows = [(label, s) for label, s in (("tensor", stats), ("gradient", grad)) if s is not None]
    show_inf = any(s.neg_inf for _, s in rows)
    head = ["", "shape", "dtype", "device", "mean", "std", "min", "max", "rms", "norm", "zeros"]
    if show_inf:
        head.append("-inf")
    lines = ['<table class="stats"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for label, s in rows:
        cells = [f"<th>{label}</th>", f'<td class="shape">({_e(", ".join(map(str, s.shape)))})</td>',
                 f"<td>{_e(s.dtype)}</td>", f"<td>{_e(s.device)}</td>"]
        cells += [f"<td>{_num(v)}</td>" for v in (s.mean, s.std, s.min, s.max, s.rms, s.norm)]
        cells.append(f"<td>{_percent(s.zeros)}</td>")
        if show_inf:
            cells.append(f"<td>{_percent(s.neg_inf)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>\n")
    return '<div class="scroll">' + "".join(lines) + "</div>"


def _table(table: dict) -> str:
    columns = table.get("columns", [])
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in table.get("rows", []))
    return f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>\n'


def _grid_figure(grid: list[list[int]], labels: list[str], id: str | None) -> str:
    T = len(grid)
    cells = []
    cells.append('<span class="corner">q\\k</span>')
    cells += [f'<span class="axis" title="{_e(labels[k]) if k < len(labels) else ""}">{k}</span>' for k in range(T)]
    for q, row in enumerate(grid):
        cells.append(f'<span class="axis" title="{_e(labels[q]) if q < len(labels) else ""}">{q}</span>')
        cells += ['<span class="on" title="allowed"></span>' if allowed else '<span class="off" title="masked to -inf"></span>'
                  for allowed in row]
    id_attr = f' id="{id}"' if id else ""
    return (f'<figure class="mask"{id_attr}><div class="grid" style="grid-template-columns: 2.2em repeat({T}, 1.1em)">'
            + "".join(cells) + f"</div><figcaption><b>Causal mask</b> ({T} x {T}, from the rule key ≤ query): "
            "dark = may attend, light = masked to -inf. Rows are queries, columns keys.</figcaption></figure>\n")


def _mask_svg_figure(allowed: list[list[bool]], labels: list[str], caption: str, id: str) -> str:
    N = len(allowed)
    cell = max(6, min(14, 360 // max(N, 1)))
    left, top = 34, 26
    size = N * cell
    parts = [f'<svg class="masksvg" width="{left + size + 4}" height="{top + size + 4}" '
             f'viewBox="0 0 {left + size + 4} {top + size + 4}" role="img" aria-label="causal mask">',
             f'<rect x="{left}" y="{top}" width="{size}" height="{size}" class="off"/>']
    for q, row in enumerate(allowed):
        k = 0
        while k < N:  # one rectangle per run of allowed keys
            if row[k]:
                start = k
                while k < N and row[k]:
                    k += 1
                parts.append(f'<rect x="{left + start * cell}" y="{top + q * cell}" width="{(k - start) * cell}" '
                             f'height="{cell}" class="on"/>')
            else:
                k += 1
    step = max(1, math.ceil(N / 12))
    for t in range(0, N, step):
        label = _e(labels[t]) if t < len(labels) else ""
        parts.append(f'<text x="{left - 4}" y="{top + t * cell + cell - 1}" text-anchor="end">{t}<title>{label}</title></text>')
        parts.append(f'<text x="{left + t * cell + cell / 2}" y="{top - 6}" text-anchor="middle">{t}<title>{label}</title></text>')
    parts.append(f'<text x="2" y="{top - 6}" class="dim">q\\k</text></svg>')
    return (f'<figure class="mask" id="{id}">' + "".join(parts)
            + f'<figcaption>{caption} Dark = may attend, light = masked.</figcaption></figure>\n')


def _log_range(values: list[float]) -> tuple[float, float] | None:
    positive = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not positive:
        return None
    lo = math.floor(math.log10(min(positive)))
    hi = math.ceil(math.log10(max(positive)))
    if hi <= lo:
        hi = lo + 1
    return lo, hi


def _bar_chart(groups: list[str], series: list[tuple[str, str, list[float | None]]], x_label: str,
               y_label: str, log_range: tuple[int, int] | None = None, legend: bool = True) -> str:
    """A grouped bar chart in inline SVG with a log-scale y axis; zeros drawn at the baseline."""
    log_range = log_range or _log_range([v for _, _, values in series for v in values])
    bar = 10 if len(series) <= 3 else 7
    gap = 12
    group_width = max(len(series) * bar + gap, 200 // max(len(groups), 1))
    gap = group_width - len(series) * bar
    left, right, top, bottom, height = 58, 10, 10, 34, 150
    width = left + right + max(len(groups), 1) * group_width
    total_height = top + height + bottom
    parts = [f'<svg class="bars" width="{width}" height="{total_height}" viewBox="0 0 {width} {total_height}" '
             f'role="img" aria-label="{_e(y_label)} per {_e(x_label)}">']
    if log_range is None:
        parts.append(f'<text x="{left + 4}" y="{top + height / 2}" class="dim">every value is zero</text>')

        def y_of(v: float) -> float:
            return top + height
    else:
        lo, hi = log_range

        def y_of(v: float) -> float:
            t = (math.log10(v) - lo) / (hi - lo)
            return top + height * (1 - min(max(t, 0.0), 1.0))

        for decade in range(lo, hi + 1):
            y = y_of(10.0 ** decade)
            parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="gridline"/>')
            parts.append(f'<text x="{left - 5}" y="{y + 3:.1f}" text-anchor="end">1e{decade}</text>')
            if hi - lo <= 2 and decade < hi:  # few decades: label 2x and 5x too
                for factor in (2, 5):
                    y = y_of(factor * 10.0 ** decade)
                    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="gridline minor"/>')
                    parts.append(f'<text x="{left - 5}" y="{y + 3:.1f}" text-anchor="end" class="dim">{factor}e{decade}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + height}" y2="{top + height}" class="axisline"/>')
    for g, group in enumerate(groups):
        x0 = left + g * group_width + gap / 2
        for s, (label, colour, values) in enumerate(series):
            value = values[g] if g < len(values) else None
            x = x0 + s * bar
            if value is None:
                continue
            tip = f"{label}, {x_label} {group}: {_num(value)}"
            if value > 0 and log_range is not None:
                y = y_of(value)
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 1}" height="{top + height - y:.1f}" '
                             f'fill="{colour}"><title>{_e(tip)}</title></rect>')
            else:
                # exactly zero (or no scale at all): a hollow stub at the baseline, never log(0)
                parts.append(f'<rect x="{x + 0.5:.1f}" y="{top + height - 6}" width="{bar - 2}" height="6" '
                             f'fill="none" stroke="{colour}" stroke-dasharray="2 1"><title>{_e(tip)}</title></rect>')
        in_group = [values[g] for _, _, values in series if g < len(values) and values[g] is not None]
        if in_group and all(v == 0 for v in in_group):
            parts.append(f'<text x="{x0 + len(series) * bar / 2:.1f}" y="{top + height - 9}" text-anchor="middle" '
                         f'class="zero">0</text>')
        elif any(v == 0 for v in in_group):
            for s, (_, _, values) in enumerate(series):
                if g < len(values) and values[g] == 0 and bar >= 9:
                    parts.append(f'<text x="{x0 + s * bar + (bar - 1) / 2:.1f}" y="{top + height - 9}" '
                                 f'text-anchor="middle" class="zero">0</text>')
        parts.append(f'<text x="{x0 + len(series) * bar / 2:.1f}" y="{top + height + 14}" '
                     f'text-anchor="middle">{_e(group)}</text>')
    parts.append(f'<text x="{left + (width - left - right) / 2:.1f}" y="{total_height - 4}" text-anchor="middle" '
                 f'class="dim">{_e(x_label)}</text>')
    parts.append(f'<text transform="translate(12 {top + height / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'class="dim">{_e(y_label)}</text></svg>')
    chart = "".join(parts)
    if legend:
        keys = "".join(f'<span class="key"><i style="background:{colour}"></i>{_e(label)}</span>'
                       for label, colour, _ in series)
        chart = f'<div class="chart-legend">{keys}</div>\n' + chart
    return f'<div class="scroll">{chart}</div>\n'


CSS = """
:root { color-scheme: light; --ink: #1d2430; --dim: #5d6675; --line: #d9dde4; --bg: #fbfbfa; --card: #ffffff;
  --accent: #3b6fb6; --note: #8a5a00; --code: #f1f3f6; }
* { box-sizing: border-box; }
html { scroll-behavior: smooth; }
body { margin: 0; background: var(--bg); color: var(--ink); line-height: 1.5;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
code, .tp, .shape, table.stats td, table.data td { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; }
code { background: var(--code); padding: 0 .25em; border-radius: 3px; font-size: .9em; }
a { color: var(--accent); }
#toc { position: fixed; top: 0; left: 0; bottom: 0; width: 240px; overflow-y: auto; padding: 1rem .9rem;
  border-right: 1px solid var(--line); background: #f4f5f7; font-size: 13.5px; }
#toc h2 { font-size: 1rem; margin: 0 0 .5rem; }
#toc ol { padding-left: 1.3rem; margin: 0; }
#toc ul { padding-left: 1rem; margin: 0; list-style: "↳ "; }
#toc li { margin: .15rem 0; }
#toc a { text-decoration: none; }
#toc a:hover { text-decoration: underline; }
main { margin-left: 240px; padding: 1.2rem 2rem 3rem; max-width: 1180px; }
@media (max-width: 900px) { #toc { position: static; width: auto; border-right: 0; border-bottom: 1px solid var(--line); }
  main { margin-left: 0; padding: 1rem; } }
header h1 { margin: 0 0 .3rem; font-size: 1.7rem; }
.lede { font-size: 1.05rem; margin: .2rem 0; }
.notice { background: #fff4d6; border-left: 4px solid #e0a800; padding: .4rem .7rem; }
.chips { display: flex; flex-wrap: wrap; gap: .4rem; margin: .7rem 0; }
.chip { border: 1px solid var(--line); background: var(--card); border-radius: 6px; padding: .15rem .55rem; font-size: 13px; }
.chip span { color: var(--dim); margin-right: .35rem; }
details { margin: .5rem 0 1rem; }
summary { cursor: pointer; color: var(--accent); }
.two { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
table.kv { border-collapse: collapse; font-size: 13px; }
table.kv th { text-align: left; color: var(--dim); font-weight: normal; padding: 0 .8rem 0 0; }
section { border-top: 2px solid var(--line); margin-top: 2rem; padding-top: .4rem; }
section > h2 { color: #7b2d8e; margin: .4rem 0 .6rem; }
.intro { background: #f3eef7; border-radius: 6px; padding: .5rem .8rem; margin-bottom: .8rem; }
.intro p { margin: .2rem 0; }
.entry { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .6rem .9rem; margin: .8rem 0; }
.entry h3 { margin: 0 0 .4rem; font-size: 1.05rem; color: #155a75; }
.tp { font-size: .8rem; color: var(--dim); background: none; margin-left: .4rem; font-weight: normal; }
.meaning { margin: .4rem 0; }
.back { font-size: .85em; color: var(--dim); }
dl.explain { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .8rem; margin: .3rem 0 .3rem .6rem; font-size: 14px; }
dl.explain dt { color: var(--dim); }
dl.explain dd { margin: 0; }
ul.notes { margin: .4rem 0; padding-left: 1.2rem; color: var(--note); }
ul.notes li::marker { content: "→ "; }
.scroll { overflow-x: auto; max-width: 100%; }
table.stats, table.data { border-collapse: collapse; font-size: 12.5px; margin: .3rem 0; font-variant-numeric: tabular-nums; }
table.stats th, table.stats td, table.data th, table.data td { border-bottom: 1px solid #eceef2; padding: .15rem .55rem; text-align: right; white-space: nowrap; }
table.stats thead th, table.data thead th { color: var(--dim); font-weight: 600; border-bottom: 1px solid var(--line); }
table.stats tbody th { text-align: left; color: var(--dim); font-weight: normal; }
table.data td:first-child { text-align: left; }
figure { margin: .8rem 0; }
figcaption { font-size: 13.5px; color: var(--dim); margin: .3rem 0; }
figure.attention { position: relative; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .6rem .9rem; }
.controls { display: flex; gap: 1.2rem; flex-wrap: wrap; margin: .3rem 0 .5rem; font-size: 14px; }
select { font: inherit; padding: .1rem .3rem; }
.heatmap { overflow-x: auto; }
.heatmap svg { display: block; cursor: crosshair; }
.heatmap text, .legend text { font-size: 10px; fill: var(--ink); }
.heatmap .hover { fill: none; stroke: #0a84ff; stroke-width: 2; pointer-events: none; }
.readout { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; min-height: 1.5em; margin: .3rem 0; }
.tooltip { position: absolute; pointer-events: none; background: rgba(25, 30, 40, .92); color: #fff; font-size: 12px;
  padding: .25rem .45rem; border-radius: 4px; white-space: nowrap; z-index: 5; }
.tooltip[hidden] { display: none; }
figure.mask .grid { display: inline-grid; gap: 1px; font-size: 10px; }
figure.mask .grid span { min-width: 1.1em; height: 1.1em; display: block; text-align: center; line-height: 1.1em; }
figure.mask .grid .on, svg.masksvg .on { background: #2f4f7f; fill: #2f4f7f; }
figure.mask .grid .off, svg.masksvg .off { background: #e9ecf1; fill: #e9ecf1; }
figure.mask .grid .axis, figure.mask .grid .corner { color: var(--dim); font-size: 9px; }
svg.masksvg text, svg.bars text { font-size: 10px; fill: var(--ink); }
svg .dim { fill: var(--dim); }
svg .zero { font-size: 9px; fill: var(--dim); }
svg .gridline { stroke: #e6e8ec; stroke-width: 1; }
svg .gridline.minor { stroke-dasharray: 2 3; }
svg .axisline { stroke: #9aa1ad; stroke-width: 1; }
figure.chart { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .6rem .9rem; }
figure.chart h4 { margin: .6rem 0 .2rem; font-size: .95rem; }
figure.chart h5 { margin: .2rem 0; font-size: .85rem; color: var(--dim); font-weight: normal; }
.multiples { display: flex; flex-wrap: wrap; gap: 1rem; }
.chart-legend { display: flex; flex-wrap: wrap; gap: .8rem; font-size: 12.5px; margin: .2rem 0; }
.chart-legend .key i { display: inline-block; width: .8em; height: .8em; margin-right: .3em; border-radius: 2px; vertical-align: -1px; }
footer { margin-top: 3rem; color: var(--dim); font-size: 12.5px; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("trace-data").textContent);
  // A sequential colour ramp (light → dark), interpolated between these stops.
  var RAMP = [[250, 250, 244], [246, 222, 140], [232, 147, 62], [186, 56, 66], [92, 20, 92], [30, 8, 48]];
  var MASKED = "#dfe3e9";

  function clamp01(t) { return t < 0 ? 0 : t > 1 ? 1 : t; }
  function colour(t) {
    t = clamp01(t) * (RAMP.length - 1);
    var i = Math.min(Math.floor(t), RAMP.length - 2), f = t - i, a = RAMP[i], b = RAMP[i + 1];
    return "rgb(" + Math.round(a[0] + (b[0] - a[0]) * f) + "," + Math.round(a[1] + (b[1] - a[1]) * f) + "," +
      Math.round(a[2] + (b[2] - a[2]) * f) + ")";
  }
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function short(s, n) { return s.length <= n ? s : s.slice(0, n - 1) + "\u2026"; }
  function position(v, mode) { return mode === "sqrt" ? Math.sqrt(clamp01(v)) : clamp01(v); }
  function rowMax(values, n, q) {
    var m = 0;
    for (var k = 0; k < n; k++) { m = Math.max(m, values[q * n + k]); }
    return m;
  }
  function fmt(v) { return v === 0 ? "0" : v >= 0.001 ? v.toFixed(4) : v.toExponential(2); }

  var LABEL_CHARS = 10;
  var state = {};

  function layout(n) {
    var cell = Math.max(8, Math.min(20, Math.floor(600 / n)));
    var longest = 0;
    for (var t = 0; t < n; t++) { longest = Math.max(longest, short(data.tokens[t].label, LABEL_CHARS).length); }
    var margin = 30 + Math.ceil(longest * 6.2);
    return { cell: cell, left: margin, top: margin, size: cell * n };
  }

  function isMasked(q, k, v) { return data.causal && k > q && v === 0; }

  function draw(block) {
    var info = data.attention[block], s = state[block];
    var n = info.n, head = s.head, values = info.values[head], L = s.layout, c = L.cell;
    var w = L.left + L.size + 6, h = L.top + L.size + 6;
    var out = ['<svg width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + " " + h +
      '" role="img" aria-label="attention of block ' + block + ", head " + head + '">'];
    for (var q = 0; q < n; q++) {
      var top = s.scale === "row" ? rowMax(values, n, q) || 1 : 1;
      for (var k = 0; k < n; k++) {
        var v = values[q * n + k];
        var fill = isMasked(q, k, v) ? MASKED : colour(position(v / top, s.scale));
        out.push('<rect x="' + (L.left + k * c) + '" y="' + (L.top + q * c) + '" width="' + c + '" height="' + c +
          '" fill="' + fill + '"/>');
      }
    }
    var fontStep = c >= 10 ? 1 : 2;
    for (var t = 0; t < n; t += fontStep) {
      var label = esc(short(data.tokens[t].label, LABEL_CHARS));
      out.push('<text x="' + (L.left - 4) + '" y="' + (L.top + t * c + c / 2 + 3) + '" text-anchor="end">' +
        label + " " + t + "</text>");
      out.push('<text transform="translate(' + (L.left + t * c + c / 2 + 3) + " " + (L.top - 4) +
        ') rotate(-90)">' + label + " " + t + "</text>");
    }
    out.push('<text x="4" y="12" class="dim">query \u2193 / key \u2192</text>');
    out.push('<rect class="hover" x="0" y="0" width="' + c + '" height="' + c + '" visibility="hidden"/>');
    out.push("</svg>");
    s.box.innerHTML = out.join("");
    s.box.setAttribute("data-head", String(head));
    s.box.setAttribute("data-scale", s.scale);
    drawLegend(block);
  }

  function drawLegend(block) {
    var s = state[block], width = 260, stops = [];
    for (var i = 0; i <= 10; i++) { stops.push('<stop offset="' + (i * 10) + '%" stop-color="' + colour(i / 10) + '"/>'); }
    var ticks = [0, 0.05, 0.25, 0.5, 1], out = ['<svg width="' + (width + 150) + '" height="34" viewBox="0 0 ' +
      (width + 150) + ' 34" role="img" aria-label="colour scale">',
      '<defs><linearGradient id="ramp-' + block + '" x1="0" x2="1" y1="0" y2="0">' + stops.join("") +
      "</linearGradient></defs>",
      '<rect x="8" y="2" width="' + width + '" height="12" fill="url(#ramp-' + block + ')" stroke="#aab"/>'];
    for (var j = 0; j < ticks.length; j++) {
      if (s.scale !== "sqrt" && ticks[j] === 0.05) { continue; }
      var x = 8 + width * position(ticks[j], s.scale);
      var tick = s.scale === "row" ? (ticks[j] === 1 ? "row max" : ticks[j] === 0 ? "0" : ticks[j] + "\u00d7") : ticks[j];
      out.push('<line x1="' + x + '" x2="' + x + '" y1="14" y2="18" stroke="#667"/>');
      out.push('<text x="' + x + '" y="29" text-anchor="middle">' + tick + "</text>");
    }
    out.push('<rect x="' + (width + 26) + '" y="2" width="12" height="12" fill="' + MASKED + '" stroke="#aab"/>');
    out.push('<text x="' + (width + 42) + '" y="12">masked</text></svg>');
    document.getElementById("legend-" + block).innerHTML = out.join("");
  }

  function cellAt(block, event) {
    var s = state[block], svg = s.box.querySelector("svg");
    if (!svg) { return null; }
    var r = svg.getBoundingClientRect(), scale = r.width / svg.viewBox.baseVal.width;
    var x = (event.clientX - r.left) / scale - s.layout.left, y = (event.clientY - r.top) / scale - s.layout.top;
    var k = Math.floor(x / s.layout.cell), q = Math.floor(y / s.layout.cell), n = data.attention[block].n;
    if (x < 0 || y < 0 || k >= n || q >= n) { return null; }
    return { q: q, k: k };
  }

  function hover(block, event) {
    var s = state[block], info = data.attention[block], cell = cellAt(block, event);
    var box = s.box.querySelector(".hover"), tip = document.getElementById("tooltip-" + block);
    if (!cell) {
      if (box) { box.setAttribute("visibility", "hidden"); }
      tip.hidden = true;
      return;
    }
    var v = info.values[s.head][cell.q * info.n + cell.k];
    var text = "head " + s.head + ": query " + cell.q + " \u201c" + data.tokens[cell.q].label + "\u201d \u2192 key " +
      cell.k + " \u201c" + data.tokens[cell.k].label + "\u201d = " + fmt(v) + (isMasked(cell.q, cell.k, v) ? " (masked)" : "");
    document.getElementById("readout-" + block).textContent = text;
    box.setAttribute("x", s.layout.left + cell.k * s.layout.cell);
    box.setAttribute("y", s.layout.top + cell.q * s.layout.cell);
    box.setAttribute("visibility", "visible");
    var figure = document.getElementById("attention-" + block), fr = figure.getBoundingClientRect();
    tip.textContent = text;
    tip.hidden = false;
    var left = event.clientX - fr.left + 14, top = event.clientY - fr.top + 14;
    if (left + tip.offsetWidth > fr.width) { left = Math.max(0, event.clientX - fr.left - tip.offsetWidth - 10); }
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }

  Object.keys(data.attention).forEach(function (block) {
    var box = document.getElementById("heatmap-" + block);
    var select = document.getElementById("head-select-" + block);
    var scale = document.getElementById("scale-select-" + block);
    if (!box || !select || !scale) { return; }
    state[block] = { head: 0, scale: scale.value || "linear", box: box, layout: layout(data.attention[block].n) };
    select.addEventListener("change", function () { state[block].head = parseInt(select.value, 10) || 0; draw(block); });
    scale.addEventListener("change", function () { state[block].scale = scale.value; draw(block); });
    box.addEventListener("mousemove", function (event) { hover(block, event); });
    box.addEventListener("mouseleave", function () {
      document.getElementById("tooltip-" + block).hidden = true;
      var r = box.querySelector(".hover");
      if (r) { r.setAttribute("visibility", "hidden"); }
    });
    state[block].head = parseInt(select.value, 10) || 0;
    draw(block);
  });
})();
"""
