"""`glassgpt experiment list | run NAME | all`: plan the runs, train what the cache lacks, judge, render.

For each experiment, in order: print its question and its prediction (before anything trains), find
or train its runs (a run shared with an earlier experiment, such as the common baseline, is trained
once), judge them, print the table, the verdict and the explanation, and draw its plots into
$GLASSGPT_HOME/experiments/<name>/. `--html F` then writes every experiment of the command into one
self-contained page. A progress view follows the training across all the experiments, with an ETA.

Ctrl-C stops at once: every run that finished is already in the cache, so the same command picks up
from there (only the interrupted run starts again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from glassgpt import atomic, paths, ui
from glassgpt.errors import UsageError
from glassgpt.experiments import declarations, plots, report, runner
from glassgpt.experiments.declarations import Experiment
from glassgpt.experiments.judges import Verdict

MEASURE_COST = 15  # what measuring a finished run costs, in training steps of the baseline (for the ETA)


@dataclass
class Result:
    """An experiment, its runs (baseline first) and what the judge said."""

    experiment: Experiment
    records: list[runner.RunRecord]
    verdict: Verdict
    plots: dict[str, Path]  # plot name → PNG file
    steps: int
    trained: int  # how many of its runs were trained by this command (the others came from the cache)


def experiments_dir() -> Path:
    return paths.home() / "experiments"


def plan(experiment: Experiment, steps: int | None, shared: dict | None = None) -> list[runner.RunPlan]:
    """The experiment's runs: `shared` (default SHARED), then its settings, then each variant's switches."""
    steps = experiment_steps(steps)
    plans = []
    for variant in experiment.runs:
        try:
            config = runner.make_config(declarations.SHARED if shared is None else shared, experiment.settings,
                                        variant.switches)
        except UsageError as error:  # a declaration the config refuses is a bug here, not the user's
            raise AssertionError(f"experiment {experiment.name}, run {variant.label!r}: {error}") from error
        plans.append(runner.RunPlan(variant.label, config, steps if variant.steps is None else variant.steps))
    return plans


def experiment_steps(steps: int | None) -> int:
    if steps is None:
        return declarations.DEFAULT_STEPS
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, not {steps}")
    return steps


# -- progress across experiments --------------------------------------------------------------------------


class SuiteProgress(ui.LiveProgress):
    """One bar for all the training a command will do (in steps, measuring included), with an ETA, and
    a line for the run in progress; on a terminal. Elsewhere (logs, CI) a line per run."""

    def __init__(self, total_steps: int, out):
        self.out, self.total = out, max(total_steps, 1)
        self.live = out.is_terminal
        self.done = 0
        self.started = time.perf_counter()
        self._progress = None
        if self.live and total_steps:
            self._progress = Progress(
                TextColumn("[bold cyan]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=out, transient=True)
            self._all = self._progress.add_task("all runs (steps)", total=self.total, info="")
            self._run = self._progress.add_task("run", total=1, info="", visible=False)

    def start_run(self, experiment: str, label: str, steps: int) -> None:
        self._run_done = 0
        if self._progress:
            self._progress.update(self._run, description=f"{experiment}: {label}", total=max(steps, 1), completed=0,
                                  info="", visible=True)
        else:
            self.out.print(f"  training {label} ({steps} steps){self._eta_text()}")

    def step(self, step: int, loss: float) -> None:
        self.done += 1
        if self._progress:
            self._progress.update(self._all, completed=self.done)
            self._progress.update(self._run, completed=step, info=f"loss {loss:.3f}")

    def end_run(self, steps_trained: int, planned: int) -> None:
        self.done += MEASURE_COST + (planned - steps_trained)  # a run that diverged early still counts whole
        if self._progress:
            self._progress.update(self._all, completed=self.done)
            self._progress.update(self._run, visible=False)

    def print(self, *args, **kwargs) -> None:
        (self._progress.console if self._progress else self.out).print(*args, **kwargs)

    def _eta_text(self) -> str:
        if self.done <= 0:
            return ""
        left = (self.total - self.done) * (time.perf_counter() - self.started) / self.done
        return f"; all runs: {100 * self.done / self.total:.0f}% done, eta {ui.format_duration(left)}"


# -- the commands -------------------------------------------------------------------------------------------


def list_experiments() -> int:
    from rich.table import Table

    out = ui.console()
    table = Table(title=f"{len(declarations.EXPERIMENTS)} experiments (glassgpt experiment run NAME)", show_lines=False)
    for column in ("name", "question", "runs"):
        table.add_column(column, overflow="fold")
    for experiment in declarations.EXPERIMENTS:
        runs = ", ".join(v.label for v in experiment.runs)
        table.add_row(experiment.name, experiment.question, runs)
    out.print(table)
    cache = runner.runs_cache()
    count = len(list(cache.glob("*.json"))) if cache.is_dir() else 0
    out.print(f"each run: {declarations.DEFAULT_STEPS} steps of a {declarations.SHARED['depth']}-block, "
              f"{declarations.SHARED['n_embd']}-wide model on {declarations.SHARED['data']} (unless the "
              f"experiment says otherwise); {count} finished run(s) cached in {cache}")
    return 0


def run(names: list[str | Experiment], steps: int | None = None, fresh: bool = False, html: str | None = None,
        shared: dict | None = None, draw: bool = True) -> list[Result]:
    """Run the experiments (names or declarations, in order), print each one's results, and write the
    HTML page. `shared` replaces SHARED (the tests run the real declarations on a tiny model), and
    `draw=False` leaves the plots out (the tests of the judges do not look at them)."""
    from glassgpt import device as devices

    experiments = [declarations.get(name) if isinstance(name, str) else name for name in names]
    shared = declarations.SHARED if shared is None else shared
    if html:
        if Path(html).is_dir():
            raise UsageError(f"--html {html} is a folder; give a file name, e.g. {Path(html) / 'experiments.html'}")
    out = ui.console()
    runtime = devices.setup(shared.get("device", "auto"), shared.get("dtype", "fp32"))
    plans = {e.name: plan(e, steps, shared) for e in experiments}
    data = {(name, p.label): runner.load_data(p.config, say=out.print) for name, ps in plans.items() for p in ps}
    keys = {(name, p.label): runner.config_hash(p.identity(data[(name, p.label)].tokenizer.fingerprint,
                                                           runtime.device.type, runtime.dtype))
            for name, ps in plans.items() for p in ps}
    # What this command will train: each distinct run once, unless it is in the cache already.
    to_train: dict[str, int] = {}
    for name, ps in plans.items():
        for p in ps:
            key = keys[(name, p.label)]
            if key not in to_train and (fresh or runner.cached(key) is None):
                to_train[key] = p.steps
    total = sum(steps + MEASURE_COST for steps in to_train.values())
    if to_train:
        out.print(f"{len(to_train)} run(s) to train for {len(experiments)} experiment(s), "
                  f"{len({k for k in keys.values()}) - len(to_train)} from the cache; "
                  f"{runtime.device.type}, {runtime.dtype}")
    results, trained_now = [], {}
    try:
        with SuiteProgress(total, out) as progress:
            for experiment in experiments:
                results.append(_one(experiment, plans[experiment.name], keys, to_train, trained_now, data, runtime,
                                    progress, draw))
    except KeyboardInterrupt:
        done = len(trained_now)
        ui.err_console().print(f"[yellow]interrupted[/]: {done} run(s) finished by this command are kept in the cache "
                               f"({runner.runs_cache()}); the same command continues from there")
        raise
    finally:
        devices.teardown(runtime)
    if len(results) > 1:
        out.print(report.summary_table(results))
    if html:
        atomic.write_text(html, report.to_html(results))
        out.print(f"wrote {html}")
    return results


def _with_decode_speeds(experiment: Experiment, records: list[runner.RunRecord], retrained: bool, runtime,
                        progress: SuiteProgress) -> list[runner.RunRecord]:
    """The records with decode speeds measured side by side, cached per (experiment, its runs): a
    re-run renders the same comparison; one that trained a run measures again."""
    import dataclasses
    import json

    from glassgpt.model.config import GPTConfig

    key = runner.config_hash({"experiment": experiment.name, "runs": [r.key for r in records],
                              "tokens": runner.DECODE_TOKENS, "rounds": runner.DECODE_ROUNDS})
    path = experiments_dir() / experiment.name / f"decode-{key}.json"
    speeds = None
    if path.exists() and not retrained:
        try:
            speeds = json.loads(path.read_text())["decode_tokens_per_sec"]
        except (ValueError, KeyError):
            speeds = None
    if speeds is None or len(speeds) != len(records):
        progress.print(f"  [dim]measuring decode speed side by side ({runner.DECODE_ROUNDS} interleaved rounds)[/]")
        speeds = runner.decode_speeds([GPTConfig.from_dict(r.model) for r in records], runtime.device)
        atomic.write_text(path, json.dumps({"runs": [r.label for r in records], "decode_tokens_per_sec": speeds}))
    return [dataclasses.replace(r, decode_tokens_per_sec=speed) for r, speed in zip(records, speeds)]


def _one(experiment: Experiment, plans: list[runner.RunPlan], keys: dict, to_train: dict, trained_now: dict,
         data: dict, runtime, progress: SuiteProgress, draw: bool = True) -> Result:
    """One experiment: prediction, runs (cached or trained), verdict, table, plots."""
    progress.print(report.prediction(experiment, plans))
    records, trained = [], 0
    for p in plans:
        key = keys[(experiment.name, p.label)]
        record = trained_now.get(key) or (None if key in to_train else runner.cached(key))
        if record is None:
            progress.start_run(experiment.name, p.label, p.steps)
            started = time.perf_counter()
            record = runner.train_run(p, data[(experiment.name, p.label)], runtime, key, on_step=progress.step)
            runner.save(record)
            trained_now[key] = record
            trained += 1
            progress.end_run(len(record.losses), p.steps)
            note = f", diverged at step {record.diverged_at}" if record.diverged else ""
            progress.print(f"  [dim]{p.label}: trained {len(record.losses)} steps in "
                           f"{ui.format_duration(time.perf_counter() - started)}{note}[/]")
        records.append(record.relabel(p.label))
    if experiment.compares_decode:
        records = _with_decode_speeds(experiment, records, trained > 0, runtime, progress)
    verdict = experiment.judge(records[0], records[1:])
    folder = experiments_dir() / experiment.name
    drawn = plots.draw(experiment, records, folder) if draw else {}
    result = Result(experiment, records, verdict, drawn, max(p.steps for p in plans), trained)
    progress.print(report.results(result, progress.out.width))
    return result
