"""`glassgpt learn check`: run the checks in a worker process, enforce time limits, report.

The worker runs the checks in order and appends one JSON line per event. This side watches the
clock: a check that runs past its limit is reported as `timeout`, the worker is killed and a fresh
one continues with the next checks; a worker that dies (a crash in the learner's module) is
reported as `error` on the check it was running, or about to run. What the learner's module printed
is kept in a log and summarised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from glassgpt.errors import GlassError, UsageError
from glassgpt.learn.checks import CHECKS, MILESTONES
from glassgpt.learn.compare import finite_or_none
from glassgpt.learn.describe import describe_nonfinite
from glassgpt.learn.mistakes import BY_ID
from glassgpt.model.config import FAMILIES

SYMBOLS = {"pass": "[green]✓[/]", "fail": "[red]✗[/]", "error": "[red]✗[/]", "timeout": "[red]⧗[/]",
           "not_started": "[dim]·[/]"}


@dataclass
class Report:
    file: str
    family: str
    component: str | None = None  # --component: only some checks ran
    checks: list[dict] = field(default_factory=list)
    milestones: dict[str, bool] = field(default_factory=dict)
    printed_lines: int = 0
    printed_head: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c["status"] == "pass" for c in self.checks)

    def to_json(self) -> str:
        """Strict JSON (any parser reads it): a non-finite error is null, and `nonfinite` says why."""
        keys = ("name", "phase", "status", "max_abs_error", "mistake", "hint", "message", "todo", "config_fields")
        checks = []
        for check in self.checks:
            entry = {k: check.get(k) for k in keys}
            nonfinite = check.get("nonfinite")
            entry["nonfinite"] = {k: nonfinite[k] for k in ("nan", "inf", "values", "where")} if nonfinite else None
            checks.append(entry)
        return json.dumps(finite_or_none({"file": self.file, "family": self.family, "component": self.component,
                                          "passed": self.passed, "milestones": self.milestones,
                                          "printed_lines": self.printed_lines, "checks": checks}),
                          indent=1, allow_nan=False)


def check_names(family: str, component: str | None = None) -> list[str]:
    names = [c.name for c in CHECKS if family in c.families]
    if component is None:
        return names
    matching = [n for n in names if n == component or n.split(".", 1)[1] == component]
    if not matching:
        raise UsageError(f"--component {component!r} is not a check; checks: {', '.join(names)}")
    return matching


def grade(path: str | Path, component: str | None = None, time_limit: float = 60.0) -> Report:
    path = Path(path)
    if not path.is_file():
        raise GlassError(f"{path} does not exist; create it with: glassgpt learn init {path.name}")
    with tempfile.TemporaryDirectory(prefix="glassgpt-grade-") as tmp:
        results, log = Path(tmp) / "results.jsonl", Path(tmp) / "printed.log"
        results.touch()
        log.touch()
        family = _family_of(path)
        remaining = check_names(family, component)
        report = Report(str(path), family, component)
        known: dict[str, str] = {}
        first_run = True
        while first_run or remaining:
            outcome = _run_worker(path, results, log, remaining, known, time_limit)
            first_run = False
            for record in outcome.records:
                if record["name"] == "import":
                    if record["status"] != "pass":
                        report.checks.append(record)
                        remaining = _not_started(report, remaining, "waits for import")
                    else:
                        report.family = record.get("family", family)
                    continue
                report.checks.append(record)
                known[record["name"]] = record["status"]
            done = {r["name"] for r in outcome.records}
            if outcome.stuck == "import":
                report.checks.append({"name": "import", "phase": "initialisation", "status": outcome.stuck_status,
                                      "message": outcome.stuck_message})
                remaining = _not_started(report, remaining, "waits for import")
            elif outcome.stuck:  # the check that was running when the worker stopped
                report.checks.append({"name": outcome.stuck, "phase": _phase(outcome.stuck),
                                      "status": outcome.stuck_status, "message": outcome.stuck_message})
                known[outcome.stuck] = outcome.stuck_status
                done.add(outcome.stuck)
            remaining = [n for n in remaining if n not in done]
            if outcome.fatal:  # the worker itself failed between checks: a fresh one would too
                remaining = _not_started(report, remaining, f"not run: the grader stopped at {outcome.stuck}")
            if not outcome.stuck:
                break
        reached = {m for c in report.checks for m in c.get("milestones") or []}
        report.milestones = {m: m in reached for m in MILESTONES[:-1]}
        report.milestones["matches the reference"] = report.passed and component is None
        printed = log.read_text(encoding="utf-8", errors="replace").splitlines()
        report.printed_lines, report.printed_head = len(printed), printed[:3]
    return report


def _phase(name: str) -> str:
    return next(c.phase for c in CHECKS if c.name == name)


def _not_started(report: Report, names: list[str], message: str) -> list[str]:
    """List `names` in the report as not started; nothing remains to run."""
    report.checks.extend({"name": n, "phase": _phase(n), "status": "not_started", "message": message} for n in names)
    return []


def _family_of(path: Path) -> str:
    """Read FAMILY = "..." without importing (importing is the worker's job, which also rejects an
    unknown family)."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("FAMILY") and "=" in line:
            value = line.split("=", 1)[1].split("#")[0].strip().strip("'\"")
            if value in FAMILIES:
                return value
    return "nanochat"


@dataclass
class _Outcome:
    records: list[dict]
    stuck: str | None = None
    stuck_status: str = ""
    stuck_message: str = ""
    fatal: bool = False


# Starting Python and importing torch is not the learner's time: importing the file gets this much more.
STARTUP_SECONDS = 30


def _run_worker(path: Path, results: Path, log: Path, checks: list[str], known: dict[str, str],
                time_limit: float) -> _Outcome:
    offset = results.stat().st_size
    command = [sys.executable, "-m", "glassgpt.learn.worker", str(path), str(results), "--log", str(log),
               "--checks", ",".join(checks), "--known", ",".join(f"{k}={v}" for k, v in known.items())]
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # The import's clock starts with the process, so its allowance covers starting Python and torch.
    state = {"current": "import", "started": time.monotonic(), "crash": None}
    records: list[dict] = []

    def read_events() -> None:
        nonlocal offset
        for line in _new_lines(results, offset):
            offset += len(line.encode("utf-8")) + 1
            record = json.loads(line)
            event = record.pop("event")
            if event == "start":
                if record["name"] != "import":  # the import's clock started with the process
                    state["current"], state["started"] = record["name"], time.monotonic()
            elif event == "crash":
                state["crash"] = record["message"]
            else:
                records.append(record)
                state["current"] = None

    try:
        while True:
            read_events()
            if process.poll() is not None:
                read_events()
                current, crash = state["current"], state["crash"]
                between_checks = current is None and (process.returncode != 0 or crash)
                if between_checks:  # it had finished one check and not yet started the next
                    done = {r["name"] for r in records}
                    current = next((n for n in ["import", *checks] if n not in done), None)
                if current is None:
                    return _Outcome(records)
                message = crash or (f"the worker stopped during this check (exit code {process.returncode}: a crash "
                                    "or os._exit in your module?)")
                return _Outcome(records, current, "error", message, fatal=bool(between_checks))
            current = state["current"]
            budget = time_limit + (STARTUP_SECONDS if current == "import" else 0)
            if current is not None and time.monotonic() - state["started"] > budget:
                _kill(process)
                if current == "import":
                    message = (f"importing {path.name} did not finish within {budget:g} s ({time_limit:g} s plus "
                               f"{STARTUP_SECONDS} s to start Python and PyTorch: an endless loop at its top level?); "
                               "it was stopped")
                else:
                    message = f"this check did not finish within {time_limit:g} s (an endless loop?); it was stopped"
                return _Outcome(records, current, "timeout", message)
            time.sleep(0.05)
    except BaseException:
        _kill(process)
        raise


def _new_lines(path: Path, offset: int) -> list[str]:
    with open(path, "rb") as file:
        file.seek(offset)
        data = file.read()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    return [line for line in data.decode("utf-8").split("\n") if line]


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


# -- output -----------------------------------------------------------------------------------------


def render(report: Report, console: Console) -> None:
    console.print(f"[bold]glassgpt learn check[/] {escape(report.file)} ({report.family} family)")
    phase = None
    first_problem = None
    for check in report.checks:
        if check["phase"] != phase:
            phase = check["phase"]
            console.print(f"[bold magenta]{phase}[/]")
        detail = "" if check["status"] == "pass" else f"  [dim]{escape(check.get('message') or '')}[/]"
        console.print(f"  {SYMBOLS.get(check['status'], '?')} {check['name']}{detail}", highlight=False)
        if first_problem is None and check["status"] in ("fail", "error", "timeout"):
            first_problem = check
    console.print("[bold magenta]milestones[/]")
    console.print("  " + "   ".join(f"{'[green]✓[/]' if ok else '[dim]·[/]'} {m}" for m, ok in report.milestones.items()))
    if first_problem:
        console.print()
        console.print(f"[bold red]first problem: {first_problem['name']}[/]")
        for line in _detail(first_problem):
            console.print(f"  {line}", highlight=False)
    if report.printed_lines:
        shown = "; ".join(escape(line[:80]) for line in report.printed_head)
        console.print(f"[dim]your module printed {report.printed_lines:,} line(s) while being checked"
                      f"{' (first: ' + shown + ')' if shown else ''}[/]")
    if report.passed and report.component:
        names = ", ".join(c["name"] for c in report.checks)
        console.print(f"[bold green]the selected checks pass[/] ({escape(names)}). Check the whole model with: "
                      f"glassgpt learn check {escape(report.file)}", highlight=False)
    elif report.passed:
        console.print("[bold green]every check passes: your GPT matches the reference.[/] Train it: "
                      f"glassgpt train --model {escape(report.file)} --preset "
                      f"{'cpu-tiny' if report.family == 'nanochat' else 'cpu-tiny-gpt2'} --run mine")


def _detail(check: dict) -> list[str]:
    lines = [escape(check.get("message") or "")]
    comparison = check.get("comparison")
    if comparison:
        lines.append(f"compared: {escape(comparison['what'])}")
        lines.append(f"shapes: expected {tuple(comparison['expected_shape'])}, got {tuple(comparison['got_shape'])}")
        if comparison.get("nonfinite"):
            lines.append(f"non-finite: {escape(describe_nonfinite(comparison['nonfinite']))}")
        elif comparison.get("max_abs_error") is not None and comparison.get("max_rel_error") is not None:
            lines.append(f"max abs error {comparison['max_abs_error']:.3g}, max rel error {comparison['max_rel_error']:.3g}, "
                         f"{100 * comparison['within_tolerance']:.1f}% of values within tolerance")
        if comparison.get("first_difference"):
            first = comparison["first_difference"]
            lines.append(f"first difference at index {tuple(first['index'])}: got {_number(first['got'])}, "
                         f"expected {_number(first['expected'])}")
    if check.get("config_fields"):
        lines.append(f"[yellow]depends on: {', '.join('config.' + f for f in check['config_fields'])}[/]")
    if check.get("mistake"):
        lines.append(f"[yellow]looks like: {check['mistake']} — {escape(BY_ID[check['mistake']].description)}[/]")
    if check.get("hint"):
        lines.append(f"[yellow]hint: {escape(check['hint'])}[/]")
    if check.get("todo"):
        lines.append(f"[cyan]next: {escape(check['todo'])}[/]")
    return lines


def _number(value) -> str:
    """A value of the first difference; None stands for a NaN or inf (strict JSON has neither)."""
    return "NaN or inf" if value is None else f"{value:.6g}"


def watch(path: str | Path, run, interval: float = 0.5) -> int:
    """Re-run `run()` every time the file changes (polling: no OS-specific watcher)."""
    path = Path(path)
    last = None
    try:
        while True:
            try:
                status = path.stat()
                stamp = (status.st_mtime_ns, status.st_size)  # size too: two saves within one clock tick
            except FileNotFoundError:  # editors that save by rename leave a moment with no file
                stamp = None
            if stamp is not None and stamp != last:
                last = stamp
                try:
                    run()
                except GlassError as error:  # e.g. the file went away mid-check: report, keep watching
                    print(f"error: {error}", flush=True)
                print(f"\nwatching {path} for changes (Ctrl-C to stop)…", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
