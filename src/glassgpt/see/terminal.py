"""The walk-through in a terminal (rich): coloured, sectioned, readable without colour too.

Colours carry meaning, never content: section headers magenta, component names cyan, values
green, explanations plain, notes yellow, iteration markers blue. With --no-color (or output
that is not a terminal) the same text prints without escape codes.

A pattern's full explanation (formula, what to look for, common bug, experiment) prints the
first time it appears; later blocks repeat only its one-line meaning.

Tables are never cut: `fit_table` lays a table out at the console's width (80 columns when the
output is a pipe or a file, unless $COLUMNS says otherwise) with every number whole. Headers wrap
at spaces; a table that is still too wide is transposed (its columns become rows), and one that
fits neither way prints as one "column: value" line per cell.
"""

from __future__ import annotations

import re

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

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
        console.print(fit_table(entry.table["columns"], entry.table["rows"], console.width))


# -- tables that fit ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[-+]?(?:\d[\d,]*\.?\d*(?:e[-+]?\d+)?|—|nan|inf)[%x×]?$")


def fit_table(columns: list, rows: list[list], width: int, show_edge: bool = False) -> RenderableType:
    """A table of `columns` and `rows` (any values, shown with str) no wider than `width`, with
    no cell cut: as it is, transposed, or as one line per cell (see the module docstring).

    The first layout that works wins: as given with whole headers, transposed with whole headers,
    as given with wrapped headers, transposed with wrapped headers, one line per cell."""
    columns, rows = [str(c) for c in columns], [[str(cell) for cell in row] for row in rows]
    layouts = [(columns, rows)]
    if rows:
        layouts.append(([columns[0], *(row[0] for row in rows)],
                        [[columns[c], *(row[c] for row in rows)] for c in range(1, len(columns))]))
    for wrap in (False, True):
        for layout in layouts:
            widths = column_widths(*layout, width, show_edge, wrap_headers=wrap)
            if widths is not None:
                return _table(*layout, widths, show_edge)
    return _records(columns, rows)


def _table(columns: list[str], rows: list[list[str]], widths: list[int], show_edge: bool) -> Table:
    table = Table(show_edge=show_edge, pad_edge=show_edge, header_style="bold")
    for c, header in enumerate(columns):
        numeric = bool(rows) and all(_NUMBER.match(row[c]) for row in rows)
        table.add_column(escape(header), width=widths[c], overflow="fold", justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def column_widths(columns: list[str], rows: list[list[str]], width: int, show_edge: bool = False,
                  wrap_headers: bool = True) -> list[int] | None:
    """Each column's width, so that the table fits in `width` with every cell whole (and, with
    `wrap_headers`, headers wrapped at spaces where needed); None when it does not fit."""
    overhead = 3 * (len(columns) - 1) + (4 if show_edge else 0)  # " │ " between columns, "│ " edges
    cells = [max((cell_len(row[c]) for row in rows), default=0) for c in range(len(columns))]
    full = [max(cells[c], cell_len(h)) for c, h in enumerate(columns)]
    if sum(full) + overhead <= width:
        return full
    if not wrap_headers:
        return None
    tight = [max(cells[c], *(cell_len(word) for word in h.split() or [""])) for c, h in enumerate(columns)]
    spare = width - overhead - sum(tight)
    if spare < 0:
        return None
    for c in sorted(range(len(columns)), key=lambda c: full[c] - tight[c]):  # fewest wrapped headers
        grow = min(spare, full[c] - tight[c])
        tight[c], spare = tight[c] + grow, spare - grow
    return tight


def _records(columns: list[str], rows: list[list[str]]) -> RenderableType:
    """The last resort for a table too wide either way: each row as a block of 'column: value'."""
    lines = []
    for row in rows:
        lines.append(Text(f"{columns[0]} {row[0]}", style="bold"))
        lines += [Text(f"  {header}: {cell}") for header, cell in zip(columns[1:], row[1:])]
    return Group(*lines)
