"""The command line: --help that teaches, sample/tokenizer/data/bench commands, one-line errors."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_TRAIN, run_cli
from glassgpt.cli import main


@pytest.mark.parametrize("command, expected", [
    ([], ["quickstart", "train", "sample", "tokenizer", "data", "bench", "GLASSGPT_HOME"]),
    (["train"], ["--preset", "--max-steps", "--resume", "--n-kv-head", "--softcap", "--device", "--dtype",
                 "Muon", "defaults  <  --preset NAME", "torchrun"]),
    (["sample"], ["--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed"]),
    (["tokenizer"], ["train", "encode", "eval"]),
    (["tokenizer", "train"], ["--vocab-size", "--data"]),
    (["data"], ["list", "download", "GLASSGPT_DATA_MIRROR"]),
    (["bench"], ["tokens/s", "MFU", "KV cache"]),
    (["quickstart"], ["minutes on 2 cores", "--fresh"]),
])
def test_help_teaches_each_command(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for fragment in expected:
        assert fragment in out, f"{' '.join(command)} --help lacks {fragment!r}"


def test_train_help_lists_every_config_field(capsys):
    from glassgpt import config

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name in config.TRAIN_FIELDS + config.MODEL_FIELDS:
        assert f"--{name.replace('_', '-')}" in out


@pytest.mark.parametrize("args, fragment", [
    (["sample"], "the following arguments are required: --run"),
    (["sample", "--run", "x", "--top-p", "2"], "expected a probability in (0, 1]"),
    (["sample", "--run", "x", "--max-new-tokens", "0"], "expected a positive integer"),
    (["train", "--max-steps", "5"], "needs --run NAME"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["bench", "--what", "everything"], "--what takes matmul, train, decode"),
    (["bench", "--dtype", "fp16"], "--dtype takes auto, or a comma list of fp32, bf16"),
])
def test_usage_mistakes_are_one_line_and_exit_2(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr


def test_sample_streams_a_repeatable_continuation(glass_home, capsys):
    assert main(["train", *TINY_TRAIN, "--run", "s", "--max-steps", "2", "--eval-every", "0"]) == 0
    capsys.readouterr()
    args = ["sample", "--run", "s", "--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0.9",
            "--top-k", "20", "--top-p", "0.95", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert main(args) == 0
    second = capsys.readouterr()
    assert first.out.startswith("ROMEO:") and first.out == second.out
    assert "tok/s" in first.err
    assert main([*args[:-1], "4"]) == 0
    assert capsys.readouterr().out != first.out
    assert main(["sample", "--run", "s", "--prompt", "ROMEO:", "--max-new-tokens", "12", "--no-cache", "--seed", "3",
                 "--temperature", "0.9", "--top-k", "20", "--top-p", "0.95"]) == 0
    assert capsys.readouterr().out == first.out  # same tokens without the KV cache
    # --stop goes through the engine's stopping rule: the sample ends just before the stop text
    continuation = first.out[len("ROMEO:"):].rstrip("\n")
    stop = continuation[3:6]
    assert main([*args, "--stop", stop]) == 0
    assert capsys.readouterr().out.rstrip("\n") == "ROMEO:" + continuation[:continuation.index(stop)]


def test_tokenizer_commands_train_encode_and_evaluate(glass_home, capsys):
    assert main(["tokenizer", "train", "--data", "tinyshakespeare", "--vocab-size", "512"]) == 0
    out = capsys.readouterr().out
    assert "tinyshakespeare-512" in out and "MB/s" in out
    assert main(["tokenizer", "train", "--data", "tinyshakespeare", "--vocab-size", "512"]) == 2  # exists
    assert "--force" in capsys.readouterr().err
    assert main(["tokenizer", "encode", "--name", "tinyshakespeare-512", "--text", "To be, or not to be"]) == 0
    out = capsys.readouterr().out
    assert "round trip exact: True" in out and "ids: [" in out
    # é is two bytes that a Shakespeare vocabulary keeps apart: the text stays whole, the pieces show bytes
    assert main(["tokenizer", "encode", "--name", "tinyshakespeare-512", "--text", "café"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "café" and "b'\\xc3'" in out and "\ufffd" not in out
    assert main(["tokenizer", "eval", "--name", "tinyshakespeare-512", "--data", "tinyshakespeare"]) == 0
    out = capsys.readouterr().out
    assert "val" in out and "bytes/token" in out
    assert main(["tokenizer", "encode", "--name", "missing", "--text", "x"]) == 1
    assert "trained tokenizers: tinyshakespeare-512" in capsys.readouterr().err


def test_data_list_and_download(glass_home, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "tinyshakespeare" in out and "fineweb-edu" in out and "brown" in out and "mirror:" in out
    from glassgpt.tasks import TASKS
    from glassgpt.tasks.mixtures import MIXTURES

    assert "chat tasks" in out and all(name in out for name in [*TASKS, *MIXTURES])
    assert "6,973" in out  # gsm8k's train split size, from the task's own table
    assert main(["data", "download", "tinyshakespeare"]) == 0
    assert "1,115,394 bytes" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    assert "yes (1,115,394 bytes)" in capsys.readouterr().out


def test_bench_reports_throughput_mfu_and_decode_speed(tmp_path, capsys):
    out_file = tmp_path / "bench.json"
    assert main(["bench", "--depth", "1", "--vocab-size", "512", "--seq-len", "32", "--batch-size", "2",
                 "--steps", "2", "--decode-tokens", "10", "--json", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "tok/s" in out and "MFU" in out and "with KV cache" in out and "without KV cache" in out
    results = json.loads(out_file.read_text())
    assert results["train"]["fp32"]["tokens_per_sec"] > 0 and results["matmul_gflops"]["fp32"] > 0
    assert set(results["decode"]) == {"kv_cache", "no_cache"}


@pytest.mark.parametrize("native, expected", [(False, {"fp32"}), (True, {"fp32", "bf16"})])
def test_bench_times_bf16_by_default_only_where_training_would_use_it(tmp_path, monkeypatch, native, expected):
    from glassgpt import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(device, "cpu_matmul_speeds", lambda: (100.0, 250.0))  # as on a CPU with AVX512-BF16
    out_file = tmp_path / "bench.json"
    assert main(["bench", "--what", "matmul", "--device", "cpu", "--json", str(out_file)]) == 0
    assert set(json.loads(out_file.read_text())["matmul_gflops"]) == expected


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("glassgpt ")


def test_an_error_from_the_operating_system_is_one_line_not_a_traceback(monkeypatch, capsys):
    import errno

    from glassgpt import cli

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/shards/x.bin")

    monkeypatch.setattr(cli, "_run_data_list", full_disk)
    assert cli.main(["data", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: No space left on device: /data/shards/x.bin")

    def closed_pipe(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(cli, "_run_data_list", closed_pipe)  # `glassgpt data list | head -1`
    assert cli.main(["data", "list"]) == 0 and capsys.readouterr().err == ""


def test_an_output_path_that_is_a_folder_is_named_in_one_line(tmp_path, capsys):
    assert main(["scale", "--depth", "2", "--json", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot write {tmp_path}: it is a folder; give a file name\n"
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


EXIT_SCRIPT = """
import atexit, os, pathlib, sys, threading, time
import torch  # what makes the interpreter's teardown slow, and exit_quickly skip it
from glassgpt.cli import exit_quickly


class Teardown:  # deleted, and so heard from, only when the interpreter tears the modules down
    def __del__(self, write=os.write):
        write(2, b"torn down")


marker = Teardown()
out = pathlib.Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
if sys.argv[2] == "thread":  # a thread still writing when the command returns: a normal exit waits
    threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
if sys.stdout is not None:
    sys.stdout.write("unflushed output")  # no newline: still in the buffer when the process ends
exit_quickly(3)
"""


def run_exit_script(tmp_path, case: str, prefix: str = "", redirect: str = ""):
    import shlex
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(EXIT_SCRIPT)
    command = f"{shlex.quote(sys.executable)} {prefix} {shlex.quote(str(script))} {tmp_path} {case} {redirect}"
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)


def test_a_quick_exit_skips_the_teardown_but_keeps_the_exit_code_atexit_hooks_and_buffered_output(tmp_path):
    done = run_exit_script(tmp_path, "alone")
    assert done.returncode == 3 and done.stdout == "unflushed output"
    assert done.stderr == ""  # no teardown: the marker was never deleted
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_thread_still_running_gets_a_normal_exit_that_waits_for_it(tmp_path):
    done = run_exit_script(tmp_path, "thread")
    assert done.returncode == 3 and done.stdout == "unflushed output" and done.stderr == "torn down"
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"


def test_a_profiler_gets_a_normal_exit_and_writes_its_file(tmp_path):
    done = run_exit_script(tmp_path, "alone", prefix=f"-m cProfile -o {tmp_path / 'profile.out'}")
    assert done.stdout == "unflushed output" and done.stderr == "torn down"  # (cProfile exits 0 itself)
    assert (tmp_path / "profile.out").stat().st_size > 0


def test_a_closed_stdout_does_not_turn_a_finished_command_into_a_failure(tmp_path):
    done = run_exit_script(tmp_path, "alone", redirect=">&-")
    assert done.returncode == 3 and done.stderr == "" and (tmp_path / "atexit").read_text() == "ran"


def test_python_m_glassgpt_ends_with_the_commands_exit_code_and_whole_output(glass_home):
    done = run_cli("train", *TINY_TRAIN, "--run", "piped", "--max-steps", "2", "--eval-every", "0")
    assert done.returncode == 0 and done.stdout.rstrip().splitlines()[-1].startswith("done: 2 steps")
    assert run_cli("train", "--max-steps", "-1").returncode == 2
