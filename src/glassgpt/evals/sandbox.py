"""Running code a model wrote (HumanEval), never inside glassgpt's own process.

Each program runs in a fresh Python subprocess:

- in a temporary folder of its own, deleted afterwards, as the working directory and HOME;
- with a scrubbed environment (PATH, a UTF-8 locale, HOME and TMPDIR in that folder: none of the
  caller's variables, so no tokens or keys), under `python -I -S` (no user site, no site-packages,
  no PYTHON* variables: the standard library only);
- with limits set by the child on itself before the program runs: address space (memory), CPU
  seconds, the size of any file it writes, open files, and no core dumps;
- without network where the OS allows it: a network namespace of its own (no interfaces but a
  loopback that is down), and in any case an audit hook that refuses sockets, new processes and
  `os.system` (a speed bump against accidents, not a security boundary);
- killed, with its whole process group, when the wall-clock limit passes.

This keeps a model's mistakes (an infinite loop, a memory bomb, `shutil.rmtree('/')` in a
hallucinated test) away from the machine's state. It is not a jail against code written to
escape: run evaluations of models you do not trust in a container or VM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

OUTPUT_LIMIT = 2000  # characters of the program's output kept for the report

# Runs in the child, before the program: limits, network, guard. Kept as a string because it is
# the child's code, not glassgpt's (the child never imports glassgpt).
LAUNCHER = r'''
import ctypes, os, resource, runpy, sys

memory_bytes, cpu_seconds, file_bytes, program = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for limit, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
                     (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    try:
        resource.setrlimit(limit, (value, value))
    except (ValueError, OSError):
        pass

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
network = "audit hook only"
try:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        network = "namespace"
except (OSError, AttributeError):
    pass
sys.stderr.write(f"sandbox-network: {network}\n")

REFUSED = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "pty.")

def guard(event, args):
    if event.startswith(REFUSED) and event not in ("socket.gethostname",):
        raise PermissionError(f"{event} is not allowed in the sandbox")

sys.addaudithook(guard)
sys.argv = [program]
runpy.run_path(program, run_name="__main__")
'''


@dataclass(frozen=True)
class Limits:
    seconds: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file it may write


@dataclass(frozen=True)
class Outcome:
    status: str  # passed | failed | timeout | error
    output: str  # what it printed (stdout then stderr), cut to OUTPUT_LIMIT characters
    network: str = ""  # how the network was cut off: "namespace" or "audit hook only"

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(program: str, limits: Limits = Limits()) -> Outcome:
    """Run `program` in a sandboxed subprocess: passed (exit 0), failed (non-zero exit: an
    assertion, an exception, a limit), timeout (killed), or error (could not start)."""
    with tempfile.TemporaryDirectory(prefix="glassgpt-sandbox-") as folder:
        work = Path(folder)
        (work / "program.py").write_text(program, encoding="utf-8")
        (work / "launcher.py").write_text(LAUNCHER, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": folder, "TMPDIR": folder}
        command = [sys.executable, "-I", "-S", "launcher.py", str(limits.memory_mb * 2**20),
                   str(max(1, int(limits.seconds) + 1)), str(limits.file_mb * 2**20), "program.py"]
        try:
            process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
        except OSError as error:
            return Outcome("error", f"could not start Python: {error}")
        try:
            out, err = process.communicate(timeout=limits.seconds)
            status = "passed" if process.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(process)
            out, err = process.communicate()
            status = "timeout"
        finally:
            if process.poll() is None:
                _kill_group(process)
                process.wait()
    err_text = err.decode("utf-8", errors="replace")
    network = ""
    if err_text.startswith("sandbox-network: "):
        first, _, err_text = err_text.partition("\n")
        network = first.removeprefix("sandbox-network: ")
    text = out.decode("utf-8", errors="replace") + err_text
    return Outcome(status, text[-OUTPUT_LIMIT:], network)


def _kill_group(process: subprocess.Popen) -> None:
    """The program and anything it started (start_new_session made it a group leader)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
