"""Reliability drills: a training run killed with SIGKILL at random moments, two processes on one
run, a disk that fills up during a checkpoint. Nothing is lost but the work since the last
checkpoint, nothing is corrupted, and every resume continues the exact loss curve.

The killed runs are forks of one pre-imported server process (multiprocessing's forkserver), so an
attempt costs a fork rather than a Python and PyTorch start-up. An attempt dies by SIGKILL sent to
itself at its k-th file-system operation in the run folder (seen through an audit hook: opens for
writing, renames, deletions, new folders): exactly what `kill -9` at that instant does, at moments
that a seeded generator picks and that repeat when a failure is investigated.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MIRROR, TINY_TRAIN
from glassgpt.cli import main
from glassgpt.errors import GlassError

STEPS = 24
FLAGS = [*TINY_TRAIN, "--max-steps", str(STEPS), "--eval-every", "0", "--sample-tokens", "0",
         "--checkpoint-every", "3", "--keep-checkpoints", "2"]
KILLS = 10
SEED = 11

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
KINDS = ("open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "tempfile.mkdtemp",
         "tempfile.mkstemp")


# -- the attempt, in a forked child ---------------------------------------------------------------


def _attempt(home: str, argv: list[str], kill_at: int | None, which: str, log: str) -> None:
    """Run `glassgpt ARGV` in this (forked) process; SIGKILL it at its `kill_at`-th file-system
    operation in the runs folder of kind `which` ("any", or "checkpoint": those on a checkpoint's
    temp folder, i.e. while one is written: made, filled, renamed into place).
    Every counted operation is logged to `log` first, so the test knows where each attempt died."""
    os.environ.update(GLASSGPT_HOME=home, GLASSGPT_DATA_MIRROR=str(MIRROR), NO_COLOR="1")
    runs = os.path.join(home, "runs")
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # os.write: not an audited event
    count = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal count
        if event not in KINDS or not args:
            return
        path = args[0]
        if isinstance(path, int):
            return
        path = os.fsdecode(path)
        # rmtree deletes a folder's entries by name relative to the folder (dir_fd)
        inside_a_folder_being_deleted = (event in ("os.remove", "os.rmdir") and len(args) > 1
                                         and args[-1] not in (None, -1))
        if not (path.startswith(runs) or inside_a_folder_being_deleted):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            writes = isinstance(mode, str) and any(c in mode for c in "wax+") or mode is None and flags & WRITE_FLAGS
            if not writes:
                return
        if which == "checkpoint" and "/checkpoints/." not in path:  # a temp folder: one being written
            return
        count += 1
        os.write(log_fd, (json.dumps([count, event, path]) + "\n").encode())
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    sys.stdout = sys.stderr = open(os.devnull, "w")
    from glassgpt.cli import main as glassgpt

    sys.exit(glassgpt(argv))


@pytest.fixture(scope="module")
def forks():
    """A multiprocessing context whose children are forks of a server that imported glassgpt."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["glassgpt.cli", "glassgpt.train.loop", "matplotlib.pyplot"])
    return context


def attempt(forks, home: Path, argv: list[str], kill_at: int | None = None, which: str = "any",
            log: Path | None = None) -> tuple[int, list]:
    """(exit code, -9 when killed; the counted operations as [n, event, path])."""
    log = log or home / "attempt.log"
    log.unlink(missing_ok=True)
    child = forks.Process(target=_attempt, args=(str(home), argv, kill_at, which, str(log)))
    child.start()
    child.join(timeout=300)
    assert child.exitcode is not None, "an attempt hung"
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return child.exitcode, events


# -- helpers -------------------------------------------------------------------------------------


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run) if "loss" in r}


def checkpoint_steps(run: Path) -> list[int]:
    from glassgpt.train import checkpoint

    return [int(p.name.split("-")[1]) for p in checkpoint.list_checkpoints(run)]


def leftovers(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if p.name != ".lock")


@pytest.fixture(scope="module")
def reference(forks, tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """A cache root with the data prepared, and the loss curve of an uninterrupted run in it."""
    home = tmp_path_factory.mktemp("drill-home")
    code, _ = attempt(forks, home, ["train", *FLAGS, "--run", "whole"])
    assert code == 0
    curve = losses(home / "runs" / "whole")
    assert sorted(curve) == list(range(1, STEPS + 1))
    return home, curve


# -- the drills ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_at_ten_random_moments_and_every_resume_continues_the_exact_loss_curve(forks, reference):
    home, expected = reference
    run = home / "runs" / "killed"
    rng = np.random.default_rng(SEED)
    deaths = []
    for _ in range(KILLS + 20):  # bounded: an attempt that finishes before its moment ends the drill
        # Half the moments fall while a checkpoint is written (its temp folder made, filled, renamed
        # into place), half among every operation in the run folder (deleting an old checkpoint,
        # appending a step's metrics, the config and tokenizer at the start, the lock...).
        which = "checkpoint" if rng.random() < 0.5 else "any"
        kill_at = int(rng.integers(1, 12 if which == "checkpoint" else 30))
        resume = ["--resume"] if checkpoint_steps(run) else []  # what a requeued job does
        code, events = attempt(forks, home, ["train", *FLAGS, "--run", "killed", *resume], kill_at, which)
        if code == -signal.SIGKILL:
            deaths.append(events[-1])
            # after every kill: whatever is on disk is whole (the newest checkpoint verifies)
            if checkpoint_steps(run):
                from glassgpt.train import checkpoint

                checkpoint.read_state(checkpoint.latest(run))
            if len(deaths) == KILLS:
                break
        else:
            assert code == 0, f"attempt exited {code}"
            if max(checkpoint_steps(run), default=0) == STEPS:
                break
    assert len(deaths) == KILLS, f"only {len(deaths)} kills happened before the run finished"
    in_checkpoint_writes = [d for d in deaths if "/checkpoints/." in d[2] and ".deleted" not in d[2]]
    assert len(in_checkpoint_writes) >= 3, deaths  # killed while a checkpoint was being written

    while max(checkpoint_steps(run), default=0) < STEPS:  # finish it
        code, _ = attempt(forks, home, ["train", *FLAGS, "--run", "killed",
                                        *(["--resume"] if checkpoint_steps(run) else [])])
        assert code == 0
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps == list(range(1, STEPS + 1)), f"duplicated or missing steps: {steps}"
    resumed = losses(run)
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step
    assert checkpoint_steps(run) == [STEPS - 3, STEPS]
    assert leftovers(run) == [], "a killed attempt's temp files were not cleared"


@pytest.mark.slow
def test_a_second_process_on_the_same_run_is_refused_and_a_killed_ones_lock_is_not_stale(
        forks, reference, monkeypatch, capsys):
    home, _ = reference
    monkeypatch.setenv("GLASSGPT_HOME", str(home))
    run = home / "runs" / "busy"
    long = ["train", *TINY_TRAIN, "--run", "busy", "--max-steps", "100000", "--eval-every", "0",
            "--sample-tokens", "0", "--checkpoint-every", "1"]
    child = forks.Process(target=_attempt, args=(str(home), long, None, "any", str(home / "busy.log")))
    child.start()
    try:
        deadline = time.monotonic() + 120
        while len(checkpoint_steps(run)) < 1:
            assert time.monotonic() < deadline and child.is_alive(), "the first process never trained"
            time.sleep(0.05)
        capsys.readouterr()
        for second in (["train", "--run", "busy", "--resume"], [*long[:-2], "--checkpoint-every", "2"]):
            assert main(second) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "run 'busy' is being trained by another process" in err[0], err
        assert child.is_alive()
        os.kill(child.pid, signal.SIGKILL)  # kill -9: its lock must die with it
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.kill()
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no line from the refused ones
    last = checkpoint_steps(run)[-1]
    assert main(["train", "--run", "busy", "--resume", "--max-steps", str(last + 1)]) == 0
    assert [r["step"] for r in metrics(run) if "loss" in r] == list(range(1, last + 2))


def _small_disk(mountpoint: Path, size: int) -> bool:
    """Mount a tmpfs of `size` bytes at `mountpoint`, when this process may (root): True if it did."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    mountpoint.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 1024}k", "tmpfs", str(mountpoint)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_disk_full_during_a_checkpoint_keeps_the_earlier_ones_and_resumes_exactly(reference, monkeypatch,
                                                                                    capsys, tmp_path):
    """A real full disk when this runs as root (a tmpfs for the runs folder with room for one and
    a half checkpoints: the first fits, the second does not); otherwise ENOSPC injected into the
    weights' write."""
    home, expected = reference
    work = tmp_path / "home"
    shutil.copytree(home, work, ignore=shutil.ignore_patterns("runs", "*.log"))
    monkeypatch.setenv("GLASSGPT_HOME", str(work))
    runs = work / "runs"
    newest = sorted((home / "runs" / "whole" / "checkpoints").glob("step-*"))[-1]
    one_checkpoint = sum(p.stat().st_size for p in newest.iterdir())
    mounted = _small_disk(runs, int(1.5 * one_checkpoint) + 64 * 1024)
    try:
        if not mounted:
            from glassgpt.train import checkpoint

            real, calls = checkpoint.save_file, []

            def fills_the_disk(tensors, filename, metadata=None):
                calls.append(filename)
                if len(calls) == 2:
                    Path(filename).write_bytes(b"\0" * 1000)  # half written, then the disk is full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(tensors, filename, metadata=metadata)

            monkeypatch.setattr(checkpoint, "save_file", fills_the_disk)
        flags = [f if f != "3" else "2" for f in FLAGS]  # --checkpoint-every 2
        capsys.readouterr()
        assert main(["train", *flags, "--run", "full"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot write checkpoint" in err[0] and "earlier checkpoints are kept" in err[0], err
        assert "no space left on the device" in err[0], err
        run = runs / "full"
        assert checkpoint_steps(run) == [2]
        from glassgpt.runs import load_run

        assert load_run("full").step == 2  # whole: checksums verified, weights load
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no half folder
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=16m", str(runs)], check=True)
        else:
            monkeypatch.undo()
            monkeypatch.setenv("GLASSGPT_HOME", str(work))
        assert main(["train", "--run", "full", "--resume"]) == 0
        assert [r["step"] for r in metrics(run) if "loss" in r] == list(range(1, STEPS + 1))
        assert losses(run) == pytest.approx(expected, abs=1e-6)
    finally:
        if mounted:
            subprocess.run(["umount", str(runs)], check=False)


# -- the pieces, one by one ---------------------------------------------------------------------


def test_the_run_lock_refuses_a_second_holder_and_leaves_no_folder_when_nothing_was_written(tmp_path):
    from glassgpt.runs import run_lock

    folder = tmp_path / "runs" / "r"
    with run_lock(folder, "r"):
        assert (folder / ".lock").exists()
        with pytest.raises(GlassError, match="run 'r' is being trained by another process"):
            with run_lock(folder, "r"):
                pass
    assert not folder.exists()  # nothing but the lock: gone with it
    with run_lock(folder, "r"):
        (folder / "config.json").write_text("{}")
    assert (folder / "config.json").exists()


def test_a_lock_whose_file_was_replaced_while_waiting_is_taken_on_the_new_file(tmp_path, monkeypatch):
    """The holder may delete the folder between our open and our flock: locking the deleted file
    would guard nothing, so the lock is taken again on the file now at that path."""
    import glassgpt.runs as runs

    folder = tmp_path / "r"
    real_open, opened = os.open, []

    def open_then_replace(path, flags, mode=0o777, **kw):
        fd = real_open(path, flags, mode, **kw)
        if str(path).endswith(".lock") and not opened:
            opened.append(fd)
            os.unlink(path)  # as if the previous holder removed it just now
            real_open(path, os.O_CREAT | os.O_RDWR, 0o666)
        return fd

    monkeypatch.setattr(runs.os, "open", open_then_replace)
    with runs.run_lock(folder, "r"):
        monkeypatch.undo()
        with pytest.raises(GlassError):  # the lock held is the one on the file at the path
            with runs.run_lock(folder, "r"):
                pass


def test_leftovers_of_a_killed_writer_are_cleared_and_a_checkpoint_moved_aside_comes_back(tmp_path):
    from glassgpt.runs import remove_leftovers

    run = tmp_path / "run"
    (run / "checkpoints" / ".step-000004.abc.tmp").mkdir(parents=True)  # unfinished checkpoint
    (run / "checkpoints" / ".step-000004.abc.tmp" / "model.safetensors").write_bytes(b"half")
    (run / "checkpoints" / ".step-000002.deleted.tmp").mkdir()  # a deletion cut short
    (run / "checkpoints" / ".step-000006.old").mkdir()  # replaced, and the new one never arrived
    (run / "checkpoints" / ".step-000006.old" / "state.json").write_text("{}")
    (run / ".config.json.xyz.tmp").write_text("{")
    (run / "plots").mkdir()
    (run / "plots" / ".loss.svg.q.tmp").write_bytes(b"")
    (run / ".lock").write_text("")
    removed = remove_leftovers(run)
    assert sorted(removed) == sorted([".step-000004.abc.tmp", ".step-000002.deleted.tmp", ".config.json.xyz.tmp",
                                      ".loss.svg.q.tmp"])
    assert (run / "checkpoints" / "step-000006" / "state.json").exists()
    assert leftovers(run) == [] and (run / ".lock").exists()


def test_an_old_checkpoint_leaves_the_list_before_it_is_deleted(tmp_path, monkeypatch):
    """Killed halfway through deleting an old checkpoint, no partial step-N folder remains to be
    mistaken for a whole one."""
    from glassgpt.train import checkpoint

    folder = tmp_path / "checkpoints" / "step-000002"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    seen = []
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda path, **kw: seen.append(Path(path)))  # "killed" before it
    checkpoint._delete(folder)
    assert not folder.exists() and seen == [tmp_path / "checkpoints" / ".step-000002.deleted.tmp"]
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_a_torn_last_metrics_line_is_dropped_and_a_damaged_one_elsewhere_is_an_error():
    from glassgpt.runs import read_metrics

    assert read_metrics('{"step": 1, "loss": 2.0}\n{"step": 2, "lo') == [{"step": 1, "loss": 2.0}]
    with pytest.raises(GlassError, match="metrics.jsonl is damaged at line 1"):
        read_metrics('{"step": 1, "lo\n{"step": 2, "loss": 2.0}\n')


def test_sigterm_asks_to_stop_however_often_it_comes_and_a_second_ctrl_c_stops_at_once():
    from glassgpt.train.loop import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # Slurm signals the worker, and torchrun passes its own on
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_quickstart_fresh_does_not_delete_a_run_another_process_is_training(glass_home, capsys):
    from glassgpt.runs import run_lock

    run = glass_home / "runs" / "quickstart"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with run_lock(run, "quickstart"):  # another file description: as another process would hold it
        assert main(["quickstart", "--fresh"]) == 1
    assert "run 'quickstart' is being trained by another process" in capsys.readouterr().err
    assert (run / "config.json").exists()
