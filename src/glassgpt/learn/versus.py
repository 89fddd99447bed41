"""`glassgpt learn compare`: train the learner's GPT and the reference side by side.

Both runs use the same preset, seed, data order and initial weights (the learner's model is
loaded with the reference's initialisation, `--init reference`), and the same device and number
format (resolved once here, since `--dtype auto` measures the CPU and could pick differently in
each process), so any gap in the loss curves comes from the implementations. Each run is a real
`glassgpt train` in its own process; its peak memory is that process's peak resident set size.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from rich.table import Table

from glassgpt import device as devices
from glassgpt import paths, ui
from glassgpt.errors import GlassError
from glassgpt.learn.grader import _family_of

LOSS_STEPS = (10, 25, 50)


def run(file: str, steps: int, preset: str | None = None) -> int:
    path = Path(file).resolve()
    if not path.is_file():
        raise GlassError(f"{path} does not exist; create it with: glassgpt learn init {Path(file).name}")
    family = _family_of(path)
    preset = preset or ("cpu-tiny" if family == "nanochat" else "cpu-tiny-gpt2")
    out = ui.console()
    stem = "".join(ch if ch.isalnum() else "-" for ch in path.stem)
    runs = {"reference": f"compare-{stem}-reference", "yours": f"compare-{stem}-yours"}
    device = devices.resolve_device("auto")
    dtype, reason = devices.resolve_dtype("auto", device)
    out.print(f"both on {device.type}, {dtype} ({reason})")
    common = ["--preset", preset, "--max-steps", str(steps), "--eval-every", "0", "--checkpoint-every", "0",
              "--sample-tokens", "0", "--log-every", str(max(1, steps // 5)), "--device", device.type, "--dtype", dtype]
    results = {}
    for label, run_name in runs.items():
        shutil.rmtree(paths.run_dir(run_name), ignore_errors=True)  # a comparison is always fresh
        extra = ["--model", str(path), "--init", "reference"] if label == "yours" else []
        out.print(f"[bold]training {label}[/] ({run_name}, {steps} steps, preset {preset}) …")
        code, peak_kb, stderr = _train([*common, "--run", run_name, *extra])
        if code != 0:
            raise GlassError(f"training {label} failed: {stderr.strip().splitlines()[-1] if stderr.strip() else code}"
                             + ("; run glassgpt learn check first" if label == "yours" else ""))
        results[label] = _summary(paths.run_dir(run_name), peak_kb)
    verdict = _verdict(results["reference"]["losses"], results["yours"]["losses"])
    table = Table(title=f"{path.name} vs the reference ({preset}, {steps} steps, {device.type} {dtype}; same seed, data and "
                        "initial weights)")
    table.add_column("")
    for label in runs:
        table.add_column(label, justify="right")
    for step in [s for s in LOSS_STEPS if s <= steps] + ([steps] if steps not in LOSS_STEPS else []):
        table.add_row(f"loss at step {step}", *(f"{r['losses'].get(step, float('nan')):.4f}" for r in results.values()))
    table.add_row("final val bits/byte", *(f"{r['val_bpb']:.4f}" for r in results.values()))
    table.add_row("tokens/s (median)", *(f"{r['tokens_per_sec']:,.0f}" for r in results.values()))
    table.add_row("peak memory", *(f"{r['peak_mb']:,.0f} MB" for r in results.values()))
    out.print(table)
    out.print(f"[bold]verdict[/]: {verdict}")
    out.print(f"[dim]runs kept: {', '.join(runs.values())} (glassgpt sample --run {runs['yours']} --prompt ...)[/]")
    return 0 if verdict.startswith("matches") else 1


def _train(args: list[str]) -> tuple[int, float, str]:
    """Run `glassgpt train ARGS` in a child process; (exit code, peak RSS in KB, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "glassgpt", "train", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss, stderr


def _summary(run_dir: Path, peak_kb: float) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    speeds = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]
    bpbs = [r["val_bpb"] for r in records if "val_bpb" in r]
    return {"losses": losses, "val_bpb": bpbs[-1] if bpbs else float("nan"),
            "tokens_per_sec": statistics.median(speeds) if speeds else 0.0, "peak_mb": peak_kb / 1024}


def _verdict(reference: dict[int, float], yours: dict[int, float], rtol: float = 1e-3) -> str:
    for step in sorted(reference):
        mine = yours.get(step)
        if mine is None or abs(mine - reference[step]) > rtol * abs(reference[step]) + 1e-5:
            got = "missing" if mine is None else f"{mine:.5f}"
            return f"the loss curves part at step {step}: yours {got}, the reference {reference[step]:.5f}"
    return f"matches: every step's loss is within {rtol:.0e} of the reference's"
