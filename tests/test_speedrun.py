"""The whole pipeline in one command (a miniature speedrun: tiny model, few steps per stage), the
report it ends with, and `glassgpt eval` on its runs: killed at any point, the same command goes on."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MIRROR, run_cli
from glassgpt.cli import main

pytestmark = pytest.mark.slow
NAME = "tin"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A cache root holding a finished tiny speedrun named `tin` (made once for the module)."""
    home = tmp_path_factory.mktemp("speedrun-home")
    settings = {"GLASSGPT_HOME": str(home), "GLASSGPT_DATA_MIRROR": str(MIRROR), "NO_COLOR": "1"}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        assert main(["speedrun", "--run", NAME, "--preset", "tiny"]) == 0
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return home


@pytest.fixture
def home(finished, glass_home) -> Path:
    """A copy of the finished speedrun in this test's own cache root."""
    shutil.copytree(finished, glass_home)
    return glass_home


def test_a_speedrun_makes_every_stage_and_a_report(home):
    runs = home / "runs"
    for run in (f"{NAME}-base", f"{NAME}-mid", NAME):
        assert (runs / run / "checkpoints").is_dir()
    assert json.loads((runs / f"{NAME}-base" / "eval.json").read_text())["core"]["tasks"] == 20
    for run in (f"{NAME}-mid", NAME):
        assert json.loads((runs / run / "eval.json").read_text())["chatcore"]["tasks"] == 6
    config = json.loads((runs / NAME / "config.json").read_text())
    assert config["parent"]["run"] == f"{NAME}-mid" and config["identity"]["run"] == NAME  # the model's own name
    mid = json.loads((runs / f"{NAME}-mid" / "config.json").read_text())
    assert mid["identity"]["run"] == NAME  # mid taught the same name, not "tin-mid"
    record = json.loads((home / "speedruns" / f"{NAME}.json").read_text())
    assert list(record["stages"]) == ["tokenizer", "base", "base-eval", "mid", "mid-eval", "sft", "sft-eval", "report"]
    assert all(stage["seconds"] >= 0 and stage["peak_rss_mb"] > 0 for stage in record["stages"].values())


def test_the_report_has_every_stage_side_by_side_and_the_page_stands_alone(home):
    markdown = (home / "runs" / NAME / "report.md").read_text()
    assert "| metric | BASE | MID | SFT |" in markdown
    for row in ("| CORE |", "| ChatCORE |", "| arithmetic |", "| identity |", "| val bits/byte |"):
        assert row in markdown
    assert "![loss curves of every stage](plots/report-losses.png)" in markdown
    assert (home / "runs" / NAME / "plots" / "report-losses.png").stat().st_size > 1000
    assert "## System and code" in markdown and "logical cores" in markdown

    page = (home / "runs" / NAME / "report.html").read_text()
    sources = _attributes(page, ("src", "href"))
    assert sources and all(value.startswith("data:image/png;base64,") for value in sources)
    assert "http://" not in page.replace("http-equiv", "") and "https://" not in page
    assert "default-src 'none'" in page


def _attributes(page: str, names: tuple[str, ...]) -> list[str]:
    found = []

    class Collect(html.parser.HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name in names)

    Collect().feed(page)
    return found


def test_run_again_it_skips_what_is_done_and_writes_the_report_again(home, capsys):
    assert main(["speedrun", "--run", NAME, "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 7 and "8/8 report" in out
    assert "report:" in out and f"glassgpt chat --run {NAME}" in out and f"glassgpt serve --run {NAME}" in out


def test_other_options_for_a_started_speedrun_are_refused(home, capsys):
    assert main(["speedrun", "--run", NAME, "--preset", "tiny", "--max-steps", "2"]) == 2
    assert "was started with --preset tiny; give the same options" in capsys.readouterr().err


def test_a_name_another_run_has_is_refused(home, capsys):
    assert main(["speedrun", "--run", f"{NAME}-base", "--preset", "tiny"]) == 2  # would make tin-base-base...
    shutil.copytree(home / "runs" / NAME, home / "runs" / "other-base")
    assert main(["speedrun", "--run", "other", "--preset", "tiny"]) == 2
    assert "run 'other-base' already exists" in capsys.readouterr().err


def test_killed_during_a_stage_the_same_command_continues_from_its_checkpoint(glass_home):
    command = [sys.executable, "-m", "glassgpt", "speedrun", "--run", "k", "--preset", "tiny"]
    mid = glass_home / "runs" / "k-mid"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (mid / "checkpoints" / "step-000010").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the speedrun ended before midtraining"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)  # kill -9: no handler runs, nothing is saved on the way out
    process.wait()
    steps = sorted(int(p.name.split("-")[1]) for p in (mid / "checkpoints").glob("step-*"))
    assert steps[-1] < 40, "midtraining finished before the kill; the test needs it killed in the middle"

    result = run_cli("speedrun", "--run", "k", "--preset", "tiny")
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("1/8 tokenizer", "2/8 base", "3/8 base-eval"):
        assert f"{stage}: " in result.stdout and "skipped" in result.stdout.split(stage)[1].splitlines()[0]
    assert f"resuming k-mid from step {steps[-1]}" in result.stdout
    records = [json.loads(line) for line in (mid / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 41))  # none missing, none twice
    assert (glass_home / "runs" / "k" / "report.html").exists()


# --- glassgpt eval on the speedrun's runs -------------------------------------------------------------

def test_eval_json_is_strict_and_counts_what_was_asked(home, capsys):
    assert main(["eval", "--run", NAME, "--tasks", "arithmetic,copa,arc-easy", "--max-per-task", "3", "--json"]) == 0

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    document = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert document["run"] == NAME and document["stage"] == "sft"
    assert {name: task["n"] for name, task in document["tasks"].items()
            if name in ("arithmetic", "copa", "arc-easy")} == {"arithmetic": 3, "copa": 3, "arc-easy": 3}
    saved = json.loads((home / "runs" / NAME / "eval.json").read_text())
    assert saved["tasks"]["copa"] == document["tasks"]["copa"]


def test_eval_mistakes_are_one_line(home, capsys):
    assert main(["eval", "--run", NAME, "--tasks", "mmlu,arithmetc"]) == 2
    assert "unknown evaluation task 'arithmetc'; did you mean arithmetic?" in capsys.readouterr().err
    assert main(["eval", "--run", "nope"]) == 1
    assert "no run named 'nope'" in capsys.readouterr().err


def test_eval_under_torchrun_splits_the_items_and_gathers_the_same_results(home):
    tasks = ["--tasks", "arithmetic,copa,arc-easy,identity", "--max-per-task", "5", "--json", "--device", "cpu"]
    alone = run_cli("eval", "--run", NAME, *tasks)
    assert alone.returncode == 0, alone.stderr[-2000:]
    together = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "glassgpt", "eval", "--run-name", NAME, *tasks],
                              capture_output=True, text=True, timeout=300)
    assert together.returncode == 0, together.stderr[-3000:]
    one, two = json.loads(alone.stdout), json.loads(together.stdout)
    for name in ("arithmetic", "copa", "arc-easy", "identity"):
        keep = ("n", "items", "correct", "accuracy", "baseline")
        assert {k: two["tasks"][name][k] for k in keep} == {k: one["tasks"][name][k] for k in keep}
        assert [e.get("reply") for e in two["tasks"][name]["examples"]] == [e.get("reply") for e in
                                                                         one["tasks"][name]["examples"]]


def test_a_tokenizer_can_be_trained_on_the_first_characters_of_a_corpus():
    from glassgpt.speedrun import _first_chars

    assert list(_first_chars(iter(["abcd", "efgh", "ijkl"]), 6)) == ["abcd", "ef"]
    assert list(_first_chars(iter(["abcd"]), 10)) == ["abcd"]
