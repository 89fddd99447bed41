"""The walk-through in a terminal (rich): coloured, sectioned, readable without colour too.

Colours carry meaning, never content: section headers magenta, component names cyan, values
green, explanations plain, notes yellow, iteration markers blue. With --no-color (or output
that is not a terminal) the same text prints without escape codes.

A pattern's full explanation (formula, what to look for, common bug, experiment) prints the
first time it appears; later blocks repeat only its one-line meaning.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from glassgpt.see.registry import pattern_of
from glassgpt.see.tracer import TensorStats
from glassgpt.see.walkthrough import Entry, Section


def stats_line(stats: TensorStats, label: str = "") -> str:
    shape = "(" + ", ".join(str(s) for s in stats.shape) + ")"
    parts = [f"{label}shape {shape} {stats.dtype} {stats.device}",
             f"mean {stats.mean:.4g}  std {stats.std:.4g}  min {stats.min:.4g}  max {stats.max:.4g}",
             f"rms {stats.rms:.4g}  norm {stats.norm:.4g}"]
    if stats.zeros >= 0.001:
        parts.append(f"zeros {100 * stats.zeros:.1f}%")
    if stats.neg_inf:
        parts.append(f"-inf {100 * stats.neg_inf:.1f}%")
    return " │ ".join(parts)


def render(sections: list[Section], console: Console, header: str, steps: int) -> None:
    console.print(Rule(f"[bold blue]iteration 1 of {steps}[/]", style="blue"))
    console.print(escape(header), highlight=False)
    explained: set[str] = set()
    for section in sections:
        console.print()
        console.print(Rule(f"[bold magenta]{section.title}[/]", style="magenta"))
        if section.intro and section.intro.key not in explained:
            explained.add(section.intro.key)
            console.print(f"[bold]{escape(section.intro.title)}[/]: {escape(section.intro.meaning)}", highlight=False)
            if section.intro.formula:
                console.print(f"  [dim]formula[/] {escape(section.intro.formula)}", highlight=False)
            if section.intro.look_for:
                console.print(f"  [dim]look for[/] {escape(section.intro.look_for)}", highlight=False)
        for entry in section.entries:
            _entry(entry, console, explained)
    console.print()
    console.print(Rule("[bold blue]end of the walk-through[/]", style="blue"))


def _entry(entry: Entry, console: Console, explained: set[str]) -> None:
    console.print()
    name = f"  [dim]{entry.name}[/]" if entry.name else ""
    console.print(f"[bold cyan]● {escape(entry.title)}[/]{name}", highlight=False)
    if entry.stats:
        console.print(f"  [green]{stats_line(entry.stats)}[/]", highlight=False)
    if entry.grad:
        console.print(f"  [green]{stats_line(entry.grad, 'gradient: ')}[/]", highlight=False)
    explanation = entry.explanation
    if explanation:
        key = pattern_of(entry.name) if entry.name else explanation.key
        console.print(f"  {escape(explanation.meaning)}", highlight=False)
        if key not in explained:
            explained.add(key)
            for label, text in (("formula", explanation.formula), ("shape", explanation.shape),
                                ("look for", explanation.look_for), ("common bug", explanation.common_bug),
                                ("break it", explanation.experiment)):
                if text:
                    console.print(f"    [dim]{label:<10}[/] {escape(text)}", highlight=False)
    for note in entry.notes:
        console.print(f"  [yellow]→ {escape(note)}[/]", highlight=False)
    if entry.grid:
        for row in entry.grid:
            console.print("    " + " ".join("■" if allowed else "·" for allowed in row), highlight=False)
        console.print("    [dim]■ may attend (key ≤ query), · masked to -inf; rows = queries, columns = keys[/]")
    if entry.table:
        table = Table(show_edge=False, header_style="bold", pad_edge=False)
        for column in entry.table["columns"]:
            table.add_column(escape(str(column)), justify="right")
        for row in entry.table["rows"]:
            table.add_row(*(escape(str(cell)) for cell in row))
        console.print(table)
