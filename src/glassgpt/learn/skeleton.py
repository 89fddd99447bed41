"""`glassgpt learn init`: write a GPT skeleton whose TODOs state their contracts.

The templates (`templates/<family>.py.tmpl`) hold the structure; formulas, meanings and common
bugs are filled in from the explanation registry, so the skeleton says exactly what the trace
view and the grader's hints say.
"""

from __future__ import annotations

import re
import textwrap
from importlib import resources
from pathlib import Path

from glassgpt import atomic
from glassgpt.errors import UsageError
from glassgpt.model.config import FAMILIES
from glassgpt.see.registry import explain, grader_hint

_PLACEHOLDER = re.compile(r"\{\{(formula|meaning|bug|look|hint|file):?([^}]*)\}\}")
WIDTH = 100  # the templates' own line length


def render(family: str, file_name: str) -> str:
    if family not in FAMILIES:
        raise UsageError(f"--family must be one of {', '.join(FAMILIES)}, not {family!r}")
    template = resources.files("glassgpt.learn").joinpath("templates", f"{family}.py.tmpl").read_text(encoding="utf-8")

    def fill(match: re.Match) -> str:
        kind, key = match.groups()
        if kind == "file":
            return file_name
        if kind == "hint":  # a grader hint is a paragraph: wrap it at the placeholder's column
            column = match.start() - (match.string.rfind("\n", 0, match.start()) + 1)
            indent = " " * column
            return textwrap.fill(grader_hint(key), WIDTH, initial_indent=indent, subsequent_indent=indent,
                                 break_on_hyphens=False)[column:]
        entry = explain(key)
        return {"formula": entry.formula, "meaning": entry.meaning, "bug": entry.common_bug,
                "look": entry.look_for}[kind]

    return _PLACEHOLDER.sub(fill, template)


def write_skeleton(path: str | Path, family: str = "nanochat", force: bool = False) -> Path:
    path = Path(path)
    if path.suffix != ".py":
        raise UsageError(f"{path} should end in .py (it is a Python module)")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; add --force to overwrite it (your work in it would be lost)")
    atomic.write_text(path, render(family, path.name))
    return path
