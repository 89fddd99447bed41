"""The trace as JSON (for programs) and as markdown (for notes and reports).

JSON: {"config", "source", "text", "traced_blocks", "tokens", "notices", "steps": [{"step",
"schedule_step", "lr_multiplier", "loss", "grad_norm", "trace_points": {"<full dotted name>": {shape,
dtype, device, mean, std, min, max, rms, norm, zeros, neg_inf, negative, head, "grad": {...same...}}},
"param_grad_norms", "learning_rates", "update_norms", "update_ratios", "update_groups"}]}. Every
trace point of every block is there (or those --only selects), whichever blocks the walk-through
shows in full.
"""

from __future__ import annotations

import json

from glassgpt.see.terminal import stats_line
from glassgpt.see.trace import TraceReport
from glassgpt.see.walkthrough import Section


def to_json(report: TraceReport) -> str:
    steps = []
    for step in report.steps:
        points = {}
        for name in step.order:
            record = step.stats[name].to_dict()
            grad = step.stats.get(f"grad:{name}")
            record["grad"] = grad.to_dict() if grad else None
            points[name] = record
        steps.append({
            "step": step.step, "schedule_step": step.schedule_step, "lr_multiplier": step.lr_multiplier,
            "loss": step.loss, "grad_norm": step.grad_norm, "trace_points": points,
            "param_grad_norms": step.param_grad_norms, "learning_rates": step.lr_of,
            "update_norms": step.update_norms, "update_ratios": step.update_ratios, "update_groups": step.group_of,
        })
    return json.dumps({
        "config": report.config.to_dict(), "source": report.source, "text": report.text_source,
        "traced_blocks": report.traced_blocks,
        "tokens": {"ids": report.token_ids,
                   "pieces": [report.tokenizer.token_piece(i).decode("utf-8", "replace") for i in report.token_ids]},
        "notices": report.notices, "steps": steps,
    }, indent=1, allow_nan=False, default=_finite)


def _finite(value):
    return str(value)


def to_markdown(sections: list[Section], header: str, steps: int) -> str:
    lines = ["# glassgpt trace", "", f"{header}. Iteration 1 of {steps} in full; all iterations summarised at the end.", ""]
    lines += ["## Contents", ""] + [f"- [{s.title}](#{s.id})" for s in sections] + [""]
    explained: set[str] = set()
    for section in sections:
        lines += [f'<a id="{section.id}"></a>', f"## {section.title}", ""]
        if section.intro:
            lines += [f"**{section.intro.title}.** {section.intro.meaning}", ""]
            if section.intro.formula:
                lines += [f"`{section.intro.formula}`", ""]
        for entry in section.entries:
            lines.append(f"### {entry.title}" + (f" — `{entry.name}`" if entry.name else ""))
            lines.append("")
            if entry.stats:
                lines += [f"- {stats_line(entry.stats)}"]
            if entry.grad:
                lines += [f"- {stats_line(entry.grad, 'gradient: ')}"]
            if entry.explanation:
                lines += [f"- {entry.explanation.meaning}"]
                key = entry.explanation.key
                if key not in explained:
                    explained.add(key)
                    for label, text in (("Formula", entry.explanation.formula), ("Look for", entry.explanation.look_for),
                                        ("Common bug", entry.explanation.common_bug),
                                        ("Break it", entry.explanation.experiment)):
                        if text:
                            lines.append(f"- {label}: {'`' + text + '`' if label == 'Formula' else text}")
            lines += [f"- **{note}**" for note in entry.notes]
            if entry.grid:
                lines += ["", "```"] + [" ".join("■" if a else "·" for a in row) for row in entry.grid] + ["```"]
            if entry.table:
                lines += ["", "| " + " | ".join(map(str, entry.table["columns"])) + " |",
                          "|" + "---|" * len(entry.table["columns"])]
                lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in entry.table["rows"]]
            lines.append("")
    return "\n".join(lines)
