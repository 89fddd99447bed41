"""`glassgpt report` on runs the speedrun did not make: one stage, no evaluations, a missing parent."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import train_once
from glassgpt.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_once(tmp_path_factory, "solo", "--max-steps", "6", "--eval-every", "3")


@pytest.fixture
def runs(trained, glass_home):
    shutil.copytree(trained, glass_home / "runs")
    return glass_home / "runs"


def test_a_base_run_alone_gets_one_column_and_no_evaluation_section(runs, capsys):
    assert main(["report", "--run", "solo"]) == 0
    assert "wrote" in capsys.readouterr().out
    markdown = (runs / "solo" / "report.md").read_text()
    assert "| metric | BASE |" in markdown and "| training tokens | 768 |" in markdown  # 6 steps x 4 rows x 32 tokens
    assert "## Evaluations" not in markdown and "CORE" not in markdown.split("## Training")[0]
    assert "wall time" in markdown and "| — |" in markdown  # no speedrun record: no wall time to show


def test_evaluations_appear_once_a_stage_is_evaluated(runs, capsys):
    assert main(["eval", "--run", "solo", "--tasks", "copa,winograd", "--max-per-task", "4"]) == 0
    assert main(["report", "--run", "solo"]) == 0
    markdown = (runs / "solo" / "report.md").read_text()
    evaluated = json.loads((runs / "solo" / "eval.json").read_text())
    assert "## Evaluations" in markdown and "| copa |" in markdown and "| winograd |" in markdown
    assert f"| CORE | {evaluated['core']['score']:+.4f} |" in markdown
    assert (runs / "solo" / "plots" / "report-evals.png").exists()


def test_a_chat_run_whose_parent_was_deleted_reports_what_is_left(runs, capsys):
    shutil.copytree(runs / "solo", runs / "child")
    config = json.loads((runs / "child" / "config.json").read_text())
    config["train"]["stage"], config["parent"] = "sft", {"run": "gone", "step": 6, "stage": "mid"}
    (runs / "child" / "config.json").write_text(json.dumps(config))
    assert main(["report", "--run", "child"]) == 0
    assert "| metric | SFT |" in (runs / "child" / "report.md").read_text()


def test_a_missing_run_is_one_line(runs, capsys):
    assert main(["report", "--run", "nope"]) == 1
    assert "no run named 'nope'" in capsys.readouterr().err
