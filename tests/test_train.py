"""`glassgpt train` end to end on a tiny model: run files, exact resume, Ctrl-C, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from xml.etree import ElementTree

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_TRAIN, run_cli
from glassgpt.cli import main

SVG = "{http://www.w3.org/2000/svg}"


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
    chart = ElementTree.fromstring((run / "plots" / "loss.svg").read_text())
    lines = {line.get("data-label"): line.get("points").split() for line in chart.iter(f"{SVG}polyline")}
    assert {label: len(points) for label, points in lines.items()} == {"train": 6, "val": 3, "val bpb": 3}
    logged = (run / "samples.txt").read_text()
    assert "=== step 6 ===" in logged and "=== step 0 ===" not in logged  # an untrained model's samples are noise
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
    # a model field given with the value the run was built with (derived, not set) is no change
    assert main(["train", "--run", "r", "--resume", "--max-steps", "4", "--n-kv-head", "2"]) == 0
    assert main(["train", "--run", "r", "--resume", "--max-steps", "5", "--n-kv-head", "1"]) == 2
    assert "--n-kv-head differs from the run's saved config (2 → 1)" in capsys.readouterr().err


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
    one_line_error(result, 1, "not a writable folder", "GLASSGPT_HOME")
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root may write to a read-only folder")
def test_read_only_runs_folder_fails_before_any_work(tmp_path):
    home = tmp_path / "home"
    (home / "runs").mkdir(parents=True)
    (home / "runs").chmod(0o555)
    try:
        result = run_cli("train", *TINY_TRAIN, "--run", "x", env={"GLASSGPT_HOME": str(home)})
        one_line_error(result, 1, "not a writable folder")
        assert list((home / "runs").iterdir()) == [] and not (home / "shards").exists()
    finally:
        (home / "runs").chmod(0o755)


def test_loss_going_to_nan_stops_with_advice_and_frees_the_run_name(glass_home, capsys):
    boom = ["--run", "boom", "--max-steps", "3", "--eval-every", "0", "--optimizer", "adamw", "--grad-clip", "0"]
    assert train(*boom, "--adamw-lr", "1e30") == 1
    err = capsys.readouterr().err
    assert "lower the learning rates" in err
    assert not (glass_home / "runs" / "boom").exists()  # nothing to resume, so nothing kept
    assert train(*boom, "--adamw-lr", "1e-3") == 0  # the same name, with a sane learning rate


def test_a_run_folder_left_without_a_checkpoint_is_started_afresh(glass_home, capsys):
    stale = glass_home / "runs" / "stale"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # e.g. the machine lost power before step 1 was saved
    (stale / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    assert train("--run", "stale", "--max-steps", "1", "--eval-every", "0") == 0
    assert "has no checkpoint" in capsys.readouterr().out
    assert list(losses(stale)) == [1] and json.loads((stale / "config.json").read_text())["train"]["run"] == "stale"


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_nothing_half(glass_home, tmp_path):
    # RLIMIT_FSIZE: any write past 200 KB fails as on a full disk (the weights are ~250 KB).
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
              "from glassgpt.cli import main; sys.exit(main(sys.argv[1:]))")
    assert train("--run", "first", "--max-steps", "1", "--eval-every", "0") == 0  # tokenizer and shards cached
    result = subprocess.run([sys.executable, "-c", script, "train", *TINY_TRAIN, "--run", "full", "--max-steps", "2",
                             "--eval-every", "0"], capture_output=True, text=True, timeout=300)
    one_line_error(result, 1, "cannot write checkpoint", "disk full")
    assert not (glass_home / "runs" / "full").exists()


def test_resume_accepts_the_preset_it_was_trained_with_and_refuses_another(glass_home, capsys):
    preset_flags = ["--run", "p", "--data", "tinyshakespeare", "--vocab-size", "512", "--depth", "1", "--n-embd", "32",
                    "--n-head", "2", "--seq-len", "32", "--device-batch-size", "4", "--eval-every", "0",
                    "--sample-tokens", "0", "--dtype", "fp32"]
    assert main(["train", "--preset", "cpu-tiny", *preset_flags, "--max-steps", "1"]) == 0
    capsys.readouterr()
    # the command that started the run, with --resume and more steps: nothing disagrees
    assert main(["train", "--preset", "cpu-tiny", *preset_flags, "--resume", "--max-steps", "2"]) == 0
    assert main(["train", "--preset", "cpu-tiny-gpt2", *preset_flags, "--resume", "--max-steps", "3"]) == 2
    assert "--preset cpu-tiny-gpt2 sets --family 'gpt2', but run 'p' was trained with 'nanochat'" in capsys.readouterr().err


def test_a_single_learning_rate_flag_points_at_the_per_group_ones(glass_home):
    result = run_cli("train", *TINY_TRAIN, "--run", "x", "--lr", "1e-3")
    one_line_error(result, 2, "unknown option --lr", "--matrix-lr", "--adamw-lr")
    assert no_run_folders(glass_home)


def test_resume_drops_samples_logged_after_the_checkpoint_and_keeps_the_dtype(glass_home):
    assert train("--run", "s", "--max-steps", "4", "--eval-every", "2", "--checkpoint-every", "2",
                 "--keep-checkpoints", "3") == 0
    run = glass_home / "runs" / "s"
    shutil.rmtree(run / "checkpoints" / "step-000004")  # as if stopped just after step 2's checkpoint
    saved = json.loads((run / "config.json").read_text())
    assert saved["runtime"]["dtype"] == "fp32"
    saved["train"]["dtype"] = "auto"  # a run started with --dtype auto...
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["train", "--run", "s", "--resume"]) == 0
    text = (run / "samples.txt").read_text()
    assert [int(n) for n in __import__("re").findall(r"=== step (\d+) ===", text)] == [2, 4]  # none at step 0
    assert json.loads((run / "config.json").read_text())["runtime"]["dtype"] == "fp32"  # ...keeps what it used


@pytest.mark.slow
def test_data_parallel_training_with_torchrun_on_two_cpu_processes(glass_home):
    pytest.importorskip("torch.distributed")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "glassgpt", "train", *TINY_TRAIN, "--run-name", "ddp", "--max-steps", "4", "--eval-every", "2",
               "--checkpoint-every", "2", "--dtype", "auto"]  # auto: rank 0 decides for the group
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = glass_home / "runs" / "ddp"
    state = json.loads((run / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    assert len(state["rng_by_rank"]) == 2 and state["rng_by_rank"][0] == state["rng"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["device_batch_size"] == 4 and saved["runtime"]["dtype"] in ("fp32", "bf16")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # one writer: rank 0


def test_writing_below_a_file_says_which_path_is_a_file(tmp_path):
    from glassgpt import atomic
    from glassgpt.errors import GlassError

    (tmp_path / "report").write_text("a file")
    with pytest.raises(GlassError, match=r"cannot write .*out.json: .*report is a file, not a folder"):
        atomic.write_text(tmp_path / "report" / "sub" / "out.json", "{}")
    assert (tmp_path / "report").read_text() == "a file"


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


def test_a_resumed_auto_run_keeps_its_format_unless_the_machine_cannot_run_it(tmp_path, monkeypatch):
    from glassgpt import device as devices
    from glassgpt.config import TrainConfig
    from glassgpt.train.loop import kept_dtype

    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def started_with(dtype, device="cpu"):
        (run_dir / "config.json").write_text(json.dumps({"runtime": {"device": device, "dtype": dtype}}))

    auto, fp32 = TrainConfig(dtype="auto", device="cpu"), TrainConfig(dtype="fp32", device="cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    started_with("bf16")
    assert kept_dtype(run_dir, auto) == "bf16" and kept_dtype(run_dir, fp32) is None  # an explicit choice wins
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)  # moved to a CPU without bf16
    assert kept_dtype(run_dir, auto) is None
    started_with("fp32")
    assert kept_dtype(run_dir, auto) == "fp32"
    started_with("bf16", device="cuda")  # trained on a GPU, resumed on this CPU: choose again
    assert kept_dtype(run_dir, auto) is None
