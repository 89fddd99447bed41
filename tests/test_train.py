"""`glassgpt train` end to end on a tiny model: run files, exact resume, Ctrl-C, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_TRAIN, run_cli
from glassgpt.cli import main


def train(*args: str) -> int:
    return main(["train", *TINY_TRAIN, *args])


def losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_training_writes_config_metrics_samples_plot_and_checkpoints(glass_home, capsys):
    assert train("--run", "tiny", "--max-steps", "6", "--eval-every", "3", "--checkpoint-every", "2") == 0
    run = glass_home / "runs" / "tiny"
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["max_steps"] == 6 and saved["model"]["n_embd"] == 32 and saved["tokenizer"]["vocab_size"] == 512
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_bpb" in r] == [0, 3, 6]
    assert records[0]["val_bpb"] > records[-1]["val_bpb"]  # it learned something in 6 steps
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-000004", "step-000006"]
    final = run / "checkpoints" / "step-000006"
    assert set(load_file(final / "model.safetensors")) >= {"wte.weight", "lm_head.weight"}
    optimizer_state = torch.load(final / "optimizer.pt", weights_only=True)
    assert len(optimizer_state["optimizers"]) == 2  # AdamW + Muon
    state = json.loads((final / "state.json").read_text())
    assert state["step"] == 6 and {"epoch", "position", "seed"} <= set(state["loader"]) and "torch" in state["rng"]
    assert (run / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "=== step 6 ===" in (run / "samples.txt").read_text()
    assert (run / "tokenizer.json").exists()
    out = capsys.readouterr().out
    assert "val bits/byte" in out and "done" in out


def test_resume_continues_the_exact_loss_curve(glass_home):
    # dropout makes the RNG state part of what must be restored
    flags = ["--max-steps", "10", "--checkpoint-every", "5", "--keep-checkpoints", "5", "--eval-every", "0",
             "--dropout", "0.1", "--total-batch-size", "256"]
    assert train("--run", "whole", *flags) == 0
    whole = glass_home / "runs" / "whole"
    shutil.copytree(whole, glass_home / "runs" / "cut")
    shutil.rmtree(glass_home / "runs" / "cut" / "checkpoints" / "step-000010")  # as if stopped at step 5
    assert main(["train", "--run", "cut", "--resume"]) == 0
    expected, resumed = losses(whole), losses(glass_home / "runs" / "cut")
    assert sorted(resumed) == list(range(1, 11))
    for step in range(6, 11):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step


def test_ctrl_c_saves_a_checkpoint_and_resume_goes_on(glass_home):
    command = [sys.executable, "-m", "glassgpt", "train", *TINY_TRAIN, "--run", "stopme", "--max-steps", "100000",
               "--eval-every", "0", "--checkpoint-every", "0", "--log-every", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in process.stdout:
        if line.startswith("step") and "/100000" in line and int(line.split()[1].split("/")[0]) >= 3:
            process.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline, "training never started"
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "glassgpt train --run stopme --resume" in out
    state = json.loads(next((glass_home / "runs" / "stopme" / "checkpoints").glob("step-*/state.json")).read_text())
    stopped_at = state["step"]
    assert stopped_at >= 3
    assert main(["train", "--run", "stopme", "--resume", "--max-steps", str(stopped_at + 2)]) == 0
    assert max(losses(glass_home / "runs" / "stopme")) == stopped_at + 2


def test_existing_run_is_not_overwritten_without_resume(glass_home, capsys):
    assert train("--run", "once", "--max-steps", "1", "--eval-every", "0") == 0
    capsys.readouterr()
    assert train("--run", "once", "--max-steps", "1") == 2
    assert "already exists" in capsys.readouterr().err


def test_resume_refuses_a_changed_field_but_accepts_more_steps(glass_home, capsys):
    assert train("--run", "r", "--max-steps", "2", "--eval-every", "0") == 0
    capsys.readouterr()
    assert main(["train", "--run", "r", "--resume", "--matrix-lr", "0.5"]) == 2
    assert "--matrix-lr differs from the run's saved config" in capsys.readouterr().err
    assert main(["train", "--run", "r", "--resume"]) == 2
    assert "already reached step 2" in capsys.readouterr().err
    assert main(["train", "--run", "r", "--resume", "--max-steps", "3"]) == 0


def one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def no_run_folders(home) -> bool:
    return not (home / "runs").exists() or not any((home / "runs").iterdir())


@pytest.mark.parametrize("content", ["", "   \n\t \n"], ids=["empty", "whitespace"])
def test_empty_corpus_is_refused(glass_home, tmp_path, content):
    corpus = tmp_path / "empty.txt"
    corpus.write_text(content)
    result = run_cli("train", *TINY_TRAIN, "--run", "x", "--data", str(corpus))
    one_line_error(result, 1, "empty")
    assert no_run_folders(glass_home)


def test_corpus_shorter_than_one_batch_is_refused(glass_home, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("Shall I compare thee to a summer's day? " * 3)  # ~100 train tokens
    result = run_cli("train", *TINY_TRAIN, "--run", "x", "--data", str(corpus), "--vocab-size", "267")
    one_line_error(result, 1, "fewer than one batch needs")
    assert no_run_folders(glass_home)


def test_invalid_utf8_in_a_user_file_is_refused(glass_home, tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    result = run_cli("train", *TINY_TRAIN, "--run", "x", "--data", str(corpus))
    one_line_error(result, 1, "not valid UTF-8", "offset 3")
    assert no_run_folders(glass_home)


@pytest.mark.parametrize("flags, fragment", [
    (["--vocab-size", "200"], "at least 267"),
    (["--seq-len", "64", "--sequence-len", "32"], "longer than the model's sequence_len 32"),
    (["--max-stepz", "3"], "did you mean --max-steps"),
    (["--depth", "two"], "--depth takes an integer"),
])
def test_bad_config_is_exit_code_2_and_writes_nothing(glass_home, flags, fragment):
    one_line_error(run_cli("train", *TINY_TRAIN, "--run", "x", *flags), 2, fragment)
    assert not glass_home.exists() or no_run_folders(glass_home)


def test_unknown_run_name_is_a_clear_error(glass_home):
    one_line_error(run_cli("sample", "--run", "nope", "--prompt", "hi"), 1, "no run named 'nope'")
    one_line_error(run_cli("train", "--run", "nope", "--resume"), 1, "no run named 'nope'")


def test_damaged_checkpoint_is_a_clear_error(glass_home):
    assert train("--run", "dmg", "--max-steps", "2", "--eval-every", "0") == 0
    weights = next((glass_home / "runs" / "dmg" / "checkpoints").glob("step-*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    one_line_error(run_cli("sample", "--run", "dmg", "--prompt", "hi"), 1, "damaged")
    one_line_error(run_cli("train", "--run", "dmg", "--resume", "--max-steps", "3"), 1, "damaged")


def test_unwritable_cache_root_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("train", *TINY_TRAIN, "--run", "x", env={"GLASSGPT_HOME": str(blocker / "home")})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "not a writable folder" in result.stderr or "cannot" in result.stderr


def test_loss_going_to_nan_stops_with_advice(glass_home, capsys):
    assert train("--run", "boom", "--max-steps", "3", "--eval-every", "0", "--optimizer", "adamw",
                 "--adamw-lr", "1e30", "--grad-clip", "0") == 1
    err = capsys.readouterr().err
    assert "lower the learning rates" in err


@pytest.mark.slow
def test_data_parallel_training_with_torchrun_on_two_cpu_processes(glass_home):
    pytest.importorskip("torch.distributed")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "glassgpt", "train", *TINY_TRAIN, "--run-name", "ddp", "--max-steps", "4", "--eval-every", "2",
               "--checkpoint-every", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = glass_home / "runs" / "ddp"
    state = json.loads((run / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["device_batch_size"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # one writer: rank 0


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    import os

    from glassgpt import atomic

    atomic.write_text(tmp_path / "a.txt", "x")
    with atomic.atomic_dir(tmp_path / "folder") as folder:
        (folder / "f").write_text("y")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.slow
def test_compiled_model_trains_to_the_same_losses(glass_home):
    flags = ["--max-steps", "2", "--eval-every", "0", "--sample-tokens", "0"]
    assert train("--run", "eager", *flags) == 0
    assert train("--run", "compiled", "--compile", *flags) == 0
    eager, compiled = losses(glass_home / "runs" / "eager"), losses(glass_home / "runs" / "compiled")
    assert compiled == pytest.approx(eager, rel=1e-4)
