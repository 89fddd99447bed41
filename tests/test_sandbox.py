"""The HumanEval sandbox: generated code runs in a subprocess with limits, never in glassgpt."""

from __future__ import annotations

import ast
import os
import socket
import time
from pathlib import Path

from glassgpt.evals.sandbox import Limits, run_python


def test_a_program_that_passes_and_one_that_fails():
    assert run_python("assert sum([1, 2]) == 3\nprint('ok')").status == "passed"
    failed = run_python("assert sum([1, 2]) == 4")
    assert failed.status == "failed" and "AssertionError" in failed.output


def test_an_endless_loop_is_killed_at_the_time_limit():
    started = time.perf_counter()
    outcome = run_python("while True:\n    pass", Limits(seconds=1.0))
    assert outcome.status == "timeout"
    assert time.perf_counter() - started < 5


def test_memory_is_limited():
    outcome = run_python("block = bytearray(3 * 1024**3)", Limits(memory_mb=256))
    assert outcome.status == "failed" and "MemoryError" in outcome.output


def test_the_environment_is_scrubbed_and_the_folder_is_temporary(monkeypatch):
    monkeypatch.setenv("GLASSGPT_SECRET_TOKEN", "hunter2")
    outcome = run_python("import os, sys\nprint(sorted(os.environ))\nprint(os.getcwd())\nprint(sys.flags.isolated)\n"
                         "open('left-behind.txt', 'w').write('x')")
    assert outcome.status == "passed"
    names, folder, isolated = outcome.output.splitlines()
    assert "GLASSGPT_SECRET_TOKEN" not in names and "hunter2" not in outcome.output
    assert ast.literal_eval(names) == ["HOME", "LANG", "LC_ALL", "PATH", "TMPDIR"]
    assert isolated == "1"
    assert not Path(folder).exists()  # deleted with everything written in it


def test_the_network_is_out_of_reach():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        outcome = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED')")
        assert outcome.status == "failed" and "CONNECTED" not in outcome.output
        # Where the kernel allows a network namespace, the child has no interface but loopback,
        # so even code that slipped past the guard would find nothing to connect to.
        if outcome.network == "namespace":
            interfaces = run_python("print(open('/proc/self/net/dev').read())").output
            assert "lo:" in interfaces and not any(line.split(":")[0].strip() not in ("lo", "")
                                                   for line in interfaces.splitlines()[2:] if ":" in line)
    finally:
        listener.close()


def test_new_processes_and_shell_commands_are_refused():
    for program in ("import subprocess\nsubprocess.run(['true'])", "import os\nos.system('true')"):
        outcome = run_python(program)
        assert outcome.status == "failed" and "not allowed in the sandbox" in outcome.output


def test_the_sandbox_never_runs_code_in_this_process():
    marker = "GLASSGPT_SANDBOX_MARKER"
    run_python(f"import os\nos.environ['{marker}'] = '1'\nglobals()['{marker}'] = 1")
    assert marker not in os.environ and marker not in globals()
