"""Every command in the README and docs/ runs, so the docs never rot.

Commands are the lines of ```bash, ```sh and ```shell blocks that start with `glassgpt`, `torchrun`,
`python benchmarks/` or one of the few shell verbs a page uses to make or read an example file
(optionally after `NAME=value` environment settings). Each file runs top to bottom in its own cache
root, so a page can train a run and then sample from it. `export NAME=value` lines set the
environment for the lines after.

What a page can say to this test (and to its reader):

- `# exits N` as a trailing comment: the command is expected to exit with code N (a grader that
  fails an unfinished file, for example). Without it, the command must exit 0.
- `# not run by the tests: <reason>` as a trailing comment: the command needs what CI does not
  have (several GPUs, the internet); the reason is required.
- `<!-- doc-test: cp tests/fixtures/X.py my_gpt.py -->` (an HTML comment, invisible on the page):
  a setup step for the test only, e.g. standing in for the reader's finished exercise. The source
  path is relative to the repository.

These adaptations keep CI fast and hermetic, and are the only ones: training commands run with
--max-steps capped at MAX_STEPS and `glassgpt bench` times one small step and a few tokens (we
check that the documented command works, not how long it trains or how fast it is); each page's
cache root starts with tinyshakespeare, its default tokenizer and their token shards already in
it (the download and tokenizer code have their own tests); `~/.cache/glassgpt` in a command means
that cache root; `glassgpt` commands run in this process through `glassgpt.cli.main`, the function
the console script calls, which saves a Python and PyTorch start-up per command (torchrun and
the benchmark scripts still run as processes of their own); and the README's setup lines (venv,
pip) are run by .ci/run itself, so here only their `glassgpt` part runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import MIRROR, REPO

MAX_STEPS = 3
PROGRAMS = ("glassgpt", "torchrun", "python benchmarks/")
SHELL_VERBS = ("printf ", "mkdir ", "cp ", "grep ", "head ", "cat ", "ls ")
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCKS = ("```bash", "```sh", "```shell")
ENV_PREFIX = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S*\s+)+)")
NOT_RUN = "# not run by the tests:"


@dataclass
class Command:
    text: str
    expected_exit: int = 0
    setup: bool = False  # a doc-test directive, not shown to readers


def commands_in(path: Path) -> list[Command]:
    commands, in_block = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        directive = re.fullmatch(r"\s*<!-- doc-test: (.+?) -->\s*", line)
        if directive and not in_block:
            commands.append(Command(directive.group(1), setup=True))
            continue
        if line.startswith("```"):
            in_block = line.strip() in BLOCKS and not in_block
            continue
        if not in_block:
            continue
        if NOT_RUN in line:
            assert line.split(NOT_RUN, 1)[1].strip(), f"{path.name}: `{line}` is not run but says no reason"
            continue
        line, _, comment = line.partition(" #")
        exits = re.search(r"\bexits (\d+)", comment)
        for part in (p.strip() for p in line.strip().split("&&")):
            part = re.sub(r"^\.venv/bin/", "", part)
            program = ENV_PREFIX.sub("", part)
            if program.startswith(PROGRAMS + SHELL_VERBS + ("export ",)) or program == "glassgpt":
                commands.append(Command(part, int(exits.group(1)) if exits else 0))
    return commands


BENCH_CAPS = {"--steps": "1", "--decode-tokens": "8", "--seq-len": "64", "--batch-size": "2"}


def capped(argv: list[str]) -> list[str]:
    """Cap --max-steps of training commands (add it when the command trains by default), and the
    timed steps and tokens of `glassgpt bench`."""
    command = argv[argv.index("glassgpt") + 1] if "glassgpt" in argv[:-1] else (argv[0] if argv else "")
    if command == "bench" and "--help" not in argv:
        return list(argv) + [item for flag, value in BENCH_CAPS.items() if flag not in argv for item in (flag, value)]
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


def to_process(command: str, env: dict) -> tuple[list[str], dict]:
    """(argv, environment) for one documented command."""
    command = command.replace("~/.cache/glassgpt", env["GLASSGPT_HOME"])
    prefix = ENV_PREFIX.match(command)
    if prefix:
        env = {**env, **dict(setting.split("=", 1) for setting in prefix.group(1).split())}
        command = command[prefix.end():]
    if command.startswith(SHELL_VERBS):
        return ["bash", "-c", command], env
    argv = shlex.split(command)
    if argv[0] == "glassgpt":
        return [sys.executable, "-m", "glassgpt", *capped(argv[1:])], env
    if argv[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *capped(argv[1:])], env
    script, *rest = capped(argv[1:])  # the script's name tells capped() that it trains
    return [sys.executable, str(REPO / script), *rest], env


def run_in_process(argv: list[str], env: dict, cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """`python -m glassgpt ARGS` as this process: (exit code, stdout, stderr)."""
    from glassgpt.cli import main

    capsys.readouterr()
    with monkeypatch.context() as patch:
        for name, value in env.items():
            if os.environ.get(name) != value:
                patch.setenv(name, value)
        patch.chdir(cwd)
        try:
            code = main(argv)
        except SystemExit as exit_:  # --help
            code = exit_.code if isinstance(exit_.code, int) else 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory) -> Path:
    """A cache root holding tinyshakespeare, its default tokenizer and its token shards."""
    import subprocess as sp

    home = tmp_path_factory.mktemp("docs-cache") / "home"
    env = {**os.environ, "GLASSGPT_HOME": str(home), "NO_COLOR": "1", "GLASSGPT_DATA_MIRROR": str(MIRROR)}
    script = ("from glassgpt.data import sources, shards; from glassgpt.data.prepare import prepare_tokenizer; "
              "from glassgpt.config import TrainConfig; c = sources.resolve('tinyshakespeare'); c.prepare(); "
              "shards.load_or_build(c, prepare_tokenizer(TrainConfig(), c, lambda *a: None))")
    result = sp.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return home


def documented_steps(argv: list[str]) -> tuple[str, int] | None:
    """(run, max_steps) a documented training command asks for, before the harness caps it."""
    from glassgpt.config import PRESETS, TrainConfig

    if "glassgpt" not in argv or argv.index("glassgpt") + 1 >= len(argv):
        return None
    command, flags = argv[argv.index("glassgpt") + 1], argv[argv.index("glassgpt") + 2:]

    def flag(name: str, default=None):
        return flags[flags.index(name) + 1] if name in flags else default

    if command == "quickstart":
        return flag("--run", "quickstart"), int(flag("--max-steps", PRESETS["cpu-tiny"]["max_steps"]))
    if command != "train":
        return None
    preset = PRESETS.get(flag("--preset", ""), {})
    return (flag("--run") or flag("--run-name"),
            int(flag("--max-steps", preset.get("max_steps", TrainConfig().max_steps))))


def check_resume_goes_further(argv: list[str], steps: dict[str, int], page: str) -> None:
    """The cap hides a documented `--resume --max-steps N` that would stop at once for a reader
    (N no larger than the run already trained for): catch it here."""
    asked = documented_steps(argv)
    if not asked:
        return
    run, max_steps = asked
    if "--resume" in argv and "--max-steps" in argv and run in steps:
        assert max_steps > steps[run], (f"{page}: `{' '.join(argv)}` resumes {run!r} to step {max_steps}, but the page "
                                        f"trained it to {steps[run]} already: a reader would get 'already reached'")
    steps[run] = max(max_steps, steps.get(run, 0)) if "--resume" in argv else max_steps


def run_setup(directive: str, cwd: Path) -> None:
    verb, *args = shlex.split(directive)
    assert verb == "cp" and len(args) == 2, f"unknown doc-test directive: {directive}"
    shutil.copy(REPO / args[0], cwd / args[1])


def test_every_documented_file_has_commands():
    assert (REPO / "docs").is_dir()
    for path in DOC_FILES:
        if path.parent.name in ("tutorials", "how-to"):
            assert commands_in(path), f"{path.relative_to(REPO)} shows no command to run"


def test_the_harness_reads_exit_codes_reasons_and_setup(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-test: cp tests/fixtures/learner_nanochat.py my_gpt.py -->\n```bash\n"
                    "glassgpt learn check my_gpt.py   # exits 1 until every TODO is done\n"
                    "FOO=1 glassgpt bench --what matmul\n"
                    "torchrun --nproc-per-node 8 -m glassgpt train --run x   # not run by the tests: 8 GPUs\n"
                    "pip install glassgpt\n```\n```text\nglassgpt not-a-command\n```\n")
    commands = commands_in(page)
    assert [(c.text.split()[0], c.expected_exit, c.setup) for c in commands] == [
        ("cp", 0, True), ("glassgpt", 1, False), ("FOO=1", 0, False)]
    argv, env = to_process(commands[2].text, {"GLASSGPT_HOME": "/h"})
    assert argv[1:] == ["-m", "glassgpt", "bench", "--what", "matmul", *(x for kv in BENCH_CAPS.items() for x in kv)]
    assert env["FOO"] == "1"
    assert capped(["glassgpt", "train", "--run", "x"])[-2:] == ["--max-steps", str(MAX_STEPS)]
    assert capped(["glassgpt", "sample", "--run", "x"]) == ["glassgpt", "sample", "--run", "x"]
    steps: dict[str, int] = {}
    check_resume_goes_further(["glassgpt", "quickstart"], steps, "page")
    with pytest.raises(AssertionError, match="a reader would get 'already reached'"):
        check_resume_goes_further(["glassgpt", "train", "--run", "quickstart", "--resume", "--max-steps", "300"], steps, "page")
    check_resume_goes_further(["glassgpt", "train", "--run", "quickstart", "--resume", "--max-steps", "600"], steps, "page")
    assert steps == {"quickstart": 600}


@pytest.mark.slow
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_run(path, tmp_path, warm_cache, monkeypatch, capsys):
    shutil.copytree(warm_cache, tmp_path / "home")
    env = {**os.environ, "GLASSGPT_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    trained_to: dict[str, int] = {}
    for command in commands_in(path):
        if not command.setup and not command.text.startswith("export "):
            check_resume_goes_further(shlex.split(ENV_PREFIX.sub("", command.text)), trained_to, path.name)
        if command.setup:
            run_setup(command.text, tmp_path)
            continue
        if command.text.startswith("export "):
            name, _, value = command.text[len("export "):].partition("=")
            if name != "GLASSGPT_DATA_MIRROR":  # the tests already point at the mirror
                env[name] = os.path.expandvars(value.strip("'\""))
            continue
        argv, command_env = to_process(command.text, env)
        if argv[1:3] == ["-m", "glassgpt"]:
            code, out, err = run_in_process(argv[3:], command_env, tmp_path, monkeypatch, capsys)
        else:
            result = subprocess.run(argv, capture_output=True, text=True, env=command_env, cwd=tmp_path, timeout=600)
            code, out, err = result.returncode, result.stdout, result.stderr
        assert code == command.expected_exit, (
            f"{path.name}: `{command.text}` exited {code}, expected {command.expected_exit}:\n"
            f"{out[-2000:]}\n{err[-2000:]}")
