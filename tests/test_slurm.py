"""The Slurm recipes in scripts/slurm/, run for real on a one-node Slurm cluster started here
(Debian's slurmctld and slurmd on localhost, CPU only): a job trains a run with two processes, and a
job stopped with SIGTERM (what preemption and the time limit send) saves, requeues itself and
resumes to the same loss curve.

The cluster needs the Slurm daemons (`apt-get install slurm-wlm`: .ci/run installs it) and root
(slurmd starts every job's processes); without them these tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_TRAIN

DAEMONS = ("slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "srun", "sinfo")
STEPS = 120
FLAGS = [*TINY_TRAIN, "--max-steps", str(STEPS), "--eval-every", "0", "--sample-tokens", "0",
         "--checkpoint-every", "5", "--log-every", "20"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster: the environment (SLURM_CONF) for its commands."""
    missing = [name for name in DAEMONS if not shutil.which(name)]
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} missing): apt-get install slurm-wlm")
    if os.geteuid() != 0:
        pytest.skip("a local Slurm cluster needs root (slurmd starts the jobs' processes)")
    folder = tmp_path_factory.mktemp("slurm")
    for name in ("state", "spool", "log"):
        (folder / name).mkdir()
    conf = folder / "slurm.conf"
    # auth/none: a one-machine cluster that trusts itself, so no munge daemon is needed.
    conf.write_text(f"""ClusterName=glassgpt-test
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=30
NodeName=localhost CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for command in (["slurmctld", "-D", "-c"], ["slurmd", "-D", "-N", "localhost"])]
    try:
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                log = "\n".join(p.read_text()[-1500:] for p in (folder / "log").iterdir())
                pytest.skip(f"the local Slurm cluster did not come up (node state {state!r}):\n{log}")
            time.sleep(0.5)
        yield env
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def job_state(env: dict, job: str) -> tuple[str, int]:
    text = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return re.search(r"JobState=(\w+)", text).group(1), int(re.search(r"Restarts=(\d+)", text).group(1))


def submit(env: dict, script: str, run: str, home: Path) -> str:
    """sbatch the recipe as a user would, with CPU processes standing in for the GPUs."""
    overrides = ["--gpus-per-node=0", f"--cpus-per-task={os.cpu_count()}", "--time=20",
                 f"--output={home}/%x-%j.out", "--chdir", str(home)]
    if "multinode" in script:
        overrides.append("--nodes=1")
    job_env = {**env, "NPROC_PER_NODE": "2", "GLASSGPT_RDZV_PORT": str(_free_port()),
               "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    result = subprocess.run(["sbatch", "--parsable", *overrides, str(REPO / "scripts" / "slurm" / script), run,
                             *FLAGS], env=job_env, capture_output=True, text=True, check=True)
    return result.stdout.strip().split(";")[0]


def wait_for(env: dict, job: str, home: Path, done, timeout: float = 300) -> None:
    deadline, failed_since, pending_since = time.monotonic() + timeout, None, None
    while not done():
        state, restarts = job_state(env, job)
        # A requeue shows CANCELLED for a moment before PENDING: only a lasting failure counts.
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            failed_since = failed_since or time.monotonic()
            if time.monotonic() - failed_since > 45:
                shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
                raise AssertionError(f"job {job} {state}:\n{shown}\n{log_of(home, job)[-3000:]}")
        else:
            failed_since = None
        pending_since = (pending_since or time.monotonic()) if state == "PENDING" and restarts else None
        if pending_since and time.monotonic() - pending_since > 5:
            # Slurm holds a requeued job back for a while (Reason=BeginTime) so that the node can
            # finish cleaning up its last run: started at once, slurmd refuses it ("Job credential
            # revoked") and the job fails. After a few seconds it is safe to start it now.
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, capture_output=True)
        assert time.monotonic() < deadline, f"job {job} still {state} after {timeout}s:\n{log_of(home, job)[-3000:]}"
        time.sleep(0.5)


def log_of(home: Path, job: str) -> str:
    return "".join(p.read_text() for p in home.glob(f"*-{job}.out"))


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, len(steps) + 1)), f"duplicated or missing steps: {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow
def test_the_slurm_recipes_train_and_a_job_stopped_by_sigterm_requeues_and_resumes_exactly(slurm, glass_home):
    glass_home.mkdir(parents=True, exist_ok=True)
    # The cluster's environment was taken before this test's fixtures set the cache root and the
    # data mirror: the jobs get both from here.
    env = {**slurm, "GLASSGPT_HOME": str(glass_home), "GLASSGPT_DATA_MIRROR": os.environ["GLASSGPT_DATA_MIRROR"]}

    # One node x 2 processes, to the end.
    job = submit(env, "train-1node.sbatch", "whole", glass_home)
    wait_for(env, job, glass_home, lambda: job_state(env, job)[0] == "COMPLETED")
    assert "run whole, new from step 0, 2 process(es)" in log_of(glass_home, job)
    expected = losses(glass_home / "runs" / "whole")
    assert sorted(expected) == list(range(1, STEPS + 1))

    # The several-node recipe (srun + torchrun rendezvous) on this one node, stopped the way a
    # time limit or `scancel --signal=TERM` stops it: SIGTERM to every process of the job step.
    run = glass_home / "runs" / "stopped"
    job = submit(env, "train-multinode.sbatch", "stopped", glass_home)
    wait_for(env, job, glass_home, lambda: any((run / "checkpoints").glob("step-*")))
    subprocess.run(["scancel", "--signal=TERM", job], env=env, check=True)
    wait_for(env, job, glass_home, lambda: job_state(env, job) == ("COMPLETED", 1))
    log = log_of(glass_home, job)
    stopped = re.search(r"interrupted: saved a checkpoint at step (\d+)", log)
    assert stopped, log[-3000:]
    stopped_at = int(stopped.group(1))
    assert stopped_at < STEPS, log[-3000:]
    assert f"requeueing job {job}" in log and f"resume from step {stopped_at}" in log, log[-3000:]
    assert "rendezvous at localhost:" in log
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step


def test_the_recipes_say_what_they_need_before_doing_anything(tmp_path):
    """Without GLASSGPT_HOME (shared storage) a recipe stops at once with the reason."""
    env = {k: v for k, v in os.environ.items() if k != "GLASSGPT_HOME"}
    for script in ("train-1node.sbatch", "train-multinode.sbatch"):
        result = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / script), "run"], env=env, cwd=tmp_path,
                                capture_output=True, text=True)
        assert result.returncode != 0 and "set GLASSGPT_HOME to a folder on shared storage" in result.stderr


def test_resume_state_tells_a_job_script_what_to_do(glass_home):
    from glassgpt.runs import resume_state

    assert resume_state("never") == ("new", 0)
    run = glass_home / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"max_steps": 2}}))
    assert resume_state("r") == ("new", 0)  # started, but stopped before its first checkpoint
    for step in (1, 2):
        (run / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step:06d}" / "state.json").write_text(json.dumps({"step": step}))
    (run / "checkpoints" / ".step-000003.x.tmp").mkdir()  # a half-written one does not count
    assert resume_state("r") == ("done", 2)
    shutil.rmtree(run / "checkpoints" / "step-000002")
    assert resume_state("r") == ("resume", 1)
