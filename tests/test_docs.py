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
- a command ending with ` &` (`glassgpt serve --run x &`): a server the next commands talk to. It
  starts as a process of its own (`python -m glassgpt ...`, with the page's environment) on a
  free port that replaces its documented `--port` (default 8000) in it and in the
  `127.0.0.1:PORT` / `localhost:PORT` of the page's later commands; the next command runs once
  its `/health` answers (at most 60 s). At the end of the page it gets Ctrl-C (SIGINT) and must
  exit with status 0. `curl` is one of the shell verbs, to call such a server.

These adaptations keep CI fast and hermetic, and are the only ones: training commands run with
--max-steps capped at MAX_STEPS (a speedrun: every stage; `glassgpt experiment run|all`: each run
of each experiment, through --steps), evaluations (`glassgpt eval`, a speedrun's) score at most
MAX_PER_TASK items per task, and `glassgpt bench` times one small step and a few tokens (we check
that the documented command works, not how long it trains, how well it scores or how fast it is);
each page's cache root starts with tinyshakespeare and the speedrun's corpus, their default
tokenizers and token shards, and the contamination guard's fingerprints already in it (the
download, tokenizer and guard code have their own tests); `~/.cache/glassgpt` in a command means
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
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import MIRROR, REPO

MAX_STEPS = 3
MAX_PER_TASK = 2
PROGRAMS = ("glassgpt", "torchrun", "python benchmarks/")
SHELL_VERBS = ("printf ", "mkdir ", "cp ", "grep ", "head ", "cat ", "ls ", "curl ")
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCKS = ("```bash", "```sh", "```shell")
ENV_PREFIX = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S*\s+)+)")
NOT_RUN = "# not run by the tests:"
SERVE_PORT = 8000  # glassgpt serve's default --port
ADDRESS = re.compile(r"\b(127\.0\.0\.1|localhost):(\d+)")


@dataclass
class Command:
    text: str
    expected_exit: int = 0
    setup: bool = False  # a doc-test directive, not shown to readers
    background: bool = False  # `command &`: a server for the commands after it


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
            background = part.endswith(" &")
            part = part[:-2].rstrip() if background else part
            program = ENV_PREFIX.sub("", part)
            if program.startswith(PROGRAMS + SHELL_VERBS + ("export ",)) or program == "glassgpt":
                commands.append(Command(part, int(exits.group(1)) if exits else 0, background=background))
    return commands


BENCH_CAPS = {"--steps": "1", "--decode-tokens": "8", "--seq-len": "64", "--batch-size": "2"}


def capped(argv: list[str]) -> list[str]:
    """Cap --max-steps of training commands (add it when the command trains by default), the
    items per task of evaluations, and the timed steps and tokens of `glassgpt bench`."""
    command = argv[argv.index("glassgpt") + 1] if "glassgpt" in argv[:-1] else (argv[0] if argv else "")
    if command == "bench" and "--help" not in argv:
        return list(argv) + [item for flag, value in BENCH_CAPS.items() if flag not in argv for item in (flag, value)]
    if command in ("eval", "speedrun") and "--help" not in argv:
        argv = _capped_flag(argv, "--max-per-task", MAX_PER_TASK)
        return _capped_flag(argv, "--max-steps", MAX_STEPS) if command == "speedrun" else argv
    if command == "experiment" and ("run" in argv or "all" in argv) and "--help" not in argv:
        return _capped_flag(argv, "--steps", MAX_STEPS)
    training_scripts = ("speedrun_shakespeare.py", "run_profile.py", "run_overhead.py")
    trains = command in ("train", "quickstart") or any(a.endswith(training_scripts) for a in argv)
    if not trains or "--help" in argv:
        return argv
    argv = list(argv)
    if "--max-steps" in argv:
        i = argv.index("--max-steps")
        argv[i + 1] = str(min(int(argv[i + 1]), MAX_STEPS + (2 if "--resume" in argv else 0)))
    elif "--resume" not in argv:
        argv += ["--max-steps", str(MAX_STEPS)]
    return argv


def _capped_flag(argv: list[str], flag: str, cap: int) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = str(min(int(argv[argv.index(flag) + 1]), cap))
        return argv
    return argv + [flag, str(cap)]


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
    """A cache root holding tinyshakespeare and the speedrun's corpus, their default tokenizers and
    token shards, and the contamination guard's fingerprints of the evaluation questions."""
    import subprocess as sp

    home = tmp_path_factory.mktemp("docs-cache") / "home"
    env = {**os.environ, "GLASSGPT_HOME": str(home), "NO_COLOR": "1", "GLASSGPT_DATA_MIRROR": str(MIRROR)}
    script = ("from glassgpt.data import sources, shards; from glassgpt.data.prepare import prepare_tokenizer; "
              "from glassgpt.config import TrainConfig; from glassgpt.speedrun import PRESETS; "
              "from glassgpt.tasks.guard import evaluation_fingerprints; "
              "data = [TrainConfig(), TrainConfig(data=PRESETS['cpu'].base['data'])]\n"
              "for config in data:\n"
              "    c = sources.resolve(config.data); c.prepare()\n"
              "    shards.load_or_build(c, prepare_tokenizer(config, c, lambda *a: None))\n"
              "evaluation_fingerprints()")
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_ports(command: str, ports: dict[int, int]) -> str:
    """`command` with the documented ports of the page's servers replaced by the ones they got."""
    return ADDRESS.sub(lambda m: f"{m.group(1)}:{ports.get(int(m.group(2)), m.group(2))}", command)


def start_server(argv: list[str], env: dict, cwd: Path, ports: dict[int, int], page: str) -> subprocess.Popen:
    """Start a documented background server on a free port; return once its /health answers."""
    argv, port = list(argv), free_port()
    if "--port" in argv:
        ports[int(argv[argv.index("--port") + 1])] = port
        argv[argv.index("--port") + 1] = str(port)
    else:
        ports[SERVE_PORT] = port
        argv += ["--port", str(port)]
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"{page}: `{' '.join(argv)}` did not start serving:\n{out[-2000:]}\n{err[-2000:]}")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen, page: str) -> None:
    """Ctrl-C, as a reader would; the server must stop cleanly (exit 0)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, f"{page}: a server exited {process.returncode} on Ctrl-C:\n{err[-2000:]}"


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
    assert capped(["glassgpt", "speedrun", "--run", "x"])[4:] == ["--max-per-task", str(MAX_PER_TASK),
                                                                  "--max-steps", str(MAX_STEPS)]
    assert capped(["glassgpt", "eval", "--run", "x", "--max-per-task", "100"])[-1] == str(MAX_PER_TASK)
    assert capped(["glassgpt", "experiment", "run", "gqa"])[-2:] == ["--steps", str(MAX_STEPS)]
    assert capped(["glassgpt", "experiment", "all", "--steps", "50"])[-1] == str(MAX_STEPS)
    assert capped(["glassgpt", "experiment", "list"]) == ["glassgpt", "experiment", "list"]
    steps: dict[str, int] = {}
    check_resume_goes_further(["glassgpt", "quickstart"], steps, "page")
    with pytest.raises(AssertionError, match="a reader would get 'already reached'"):
        check_resume_goes_further(["glassgpt", "train", "--run", "quickstart", "--resume", "--max-steps", "300"], steps, "page")
    check_resume_goes_further(["glassgpt", "train", "--run", "quickstart", "--resume", "--max-steps", "600"], steps, "page")
    assert steps == {"quickstart": 600}


def test_the_harness_starts_servers_in_the_background_and_rewrites_their_ports(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nglassgpt serve --run x &\ncurl -s http://127.0.0.1:8000/health\n"
                    "glassgpt serve --run y --port 8080 &\n```\n")
    commands = commands_in(page)
    assert [(c.text, c.background) for c in commands] == [
        ("glassgpt serve --run x", True), ("curl -s http://127.0.0.1:8000/health", False),
        ("glassgpt serve --run y --port 8080", True)]
    assert to_process(commands[1].text, {"GLASSGPT_HOME": "/h"})[0][:2] == ["bash", "-c"]
    assert with_ports("curl localhost:8000/v1 http://127.0.0.1:8080/ x:8000", {8000: 1234}) == \
        "curl localhost:1234/v1 http://127.0.0.1:8080/ x:8000"


@pytest.mark.slow
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_run(path, tmp_path, warm_cache, monkeypatch, capsys):
    shutil.copytree(warm_cache, tmp_path / "home")
    env = {**os.environ, "GLASSGPT_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    trained_to: dict[str, int] = {}
    servers: list[subprocess.Popen] = []  # the page's `command &` servers, stopped at its end
    ports: dict[int, int] = {}  # documented port → the free port its server got
    try:
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
            argv, command_env = to_process(with_ports(command.text, ports), env)
            if command.background:
                servers.append(start_server(argv, command_env, tmp_path, ports, path.name))
                continue
            if argv[1:3] == ["-m", "glassgpt"]:
                code, out, err = run_in_process(argv[3:], command_env, tmp_path, monkeypatch, capsys)
            else:
                result = subprocess.run(argv, capture_output=True, text=True, env=command_env, cwd=tmp_path, timeout=600)
                code, out, err = result.returncode, result.stdout, result.stderr
            assert code == command.expected_exit, (
                f"{path.name}: `{command.text}` exited {code}, expected {command.expected_exit}:\n"
                f"{out[-2000:]}\n{err[-2000:]}")
    finally:
        for process in servers:
            stop_server(process, path.name)
