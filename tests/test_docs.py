"""Every command in the README and docs/ runs, so the docs never rot.

Commands are the lines of ```bash blocks that start with `glassgpt`, `torchrun` or
`python benchmarks/`. Each file runs top to bottom in its own cache root, so a page can train a
run and then sample from it. `export NAME=value` lines set the environment for the lines after.
Two adaptations keep CI fast, and are the only ones: training commands run with --max-steps
capped at MAX_STEPS (we check that the documented command works, not how long it trains), and the
README's setup lines (venv, pip) are run by .ci/run itself, so here only their `glassgpt` part runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

MAX_STEPS = 3
# Lines that run: glassgpt itself, torchrun, the benchmarks, and the few shell verbs a page uses
# to make an example file. Anything else in a bash block (pip, venv) is setup, run by .ci/run.
RUNNABLE = ("glassgpt ", "torchrun ", "python benchmarks/", "export ", "printf ", "mkdir ", "cp ")
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def commands_in(path: Path) -> list[str]:
    commands, in_bash = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_bash = line.strip() in ("```bash", "```sh") and not in_bash
            continue
        if not in_bash:
            continue
        line = line.split(" #", 1)[0].strip()  # trailing comments explain, they do not run
        for part in (p.strip() for p in line.split("&&")):
            part = re.sub(r"^\.venv/bin/", "", part)
            if part.startswith(RUNNABLE) or part == "glassgpt":
                commands.append(part)
    return commands


def capped(argv: list[str]) -> list[str]:
    """Cap --max-steps of training commands; add it when the command trains by default."""
    command = argv[argv.index("glassgpt") + 1] if "glassgpt" in argv[:-1] else (argv[0] if argv else "")
    trains = command in ("train", "quickstart") or any(a.endswith("speedrun_shakespeare.py") for a in argv)
    if not trains or "--help" in argv:
        return argv
    argv = list(argv)
    if "--max-steps" in argv:
        i = argv.index("--max-steps")
        argv[i + 1] = str(min(int(argv[i + 1]), MAX_STEPS + (2 if "--resume" in argv else 0)))
    elif "--resume" not in argv:
        argv += ["--max-steps", str(MAX_STEPS)]
    return argv


def to_process(command: str) -> list[str]:
    if command.startswith(("printf ", "mkdir ", "cp ")):
        return ["bash", "-c", command]
    argv = shlex.split(command)
    if argv[0] == "glassgpt":
        return [sys.executable, "-m", "glassgpt", *capped(argv[1:])]
    if argv[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *capped(argv[1:])]
    script, *rest = capped(argv[1:])  # the script's name tells capped() that it trains
    return [sys.executable, str(REPO / script), *rest]


def test_every_documented_file_has_commands():
    assert (REPO / "docs").is_dir()
    for path in DOC_FILES:
        if path.parent.name in ("tutorials", "how-to"):
            assert commands_in(path), f"{path.relative_to(REPO)} shows no command to run"


@pytest.mark.slow
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_run(path, tmp_path):
    env = {**os.environ, "GLASSGPT_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    for command in commands_in(path):
        if command.startswith("export "):
            name, _, value = command[len("export "):].partition("=")
            if name != "GLASSGPT_DATA_MIRROR":  # the tests already point at the mirror
                env[name] = os.path.expandvars(value.strip("'\""))
            continue
        result = subprocess.run(to_process(command), capture_output=True, text=True, env=env, cwd=tmp_path,
                                timeout=600)
        assert result.returncode == 0, f"{path.name}: `{command}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
