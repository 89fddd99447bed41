"""Terminal output: one console, progress bars, plain log lines when not on a terminal.

Colour follows rich's rules (off when output is not a terminal, or when NO_COLOR is set).

A long pipeline (`glassgpt speedrun`) runs many bars one after the other; while a `Pipeline` is
active, every bar also shows where the whole pipeline is and how long it has left.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(highlight=False, soft_wrap=True)  # never break a command across lines
    return _console


def err_console() -> Console:
    """For notes and timings that should not mix into generated text on stdout."""
    global _err_console
    if _err_console is None:
        _err_console = Console(stderr=True, highlight=False, soft_wrap=True)
    return _err_console


_err_console: Console | None = None


def set_console(new: Console) -> None:
    global _console
    _console = new


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LiveProgress:
    """A context manager around `self._progress`: a Rich Progress, or None when nothing is shown
    (not a terminal, or not rank 0)."""

    _progress: Progress | None

    def __enter__(self):
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.stop()


class Pipeline:
    """Progress and ETA of a sequence of stages, each with an estimated duration in seconds.

    The ETA is the estimated time of what is left, scaled by the pace so far: the time spent on
    the stages run in this session (the current one included, by its progress) over what their
    estimates say that much work takes. A machine twice as slow as the estimates sees its ETA
    double within the first minute; stages skipped as already done count for neither. Until
    MIN_OBSERVED seconds of estimated work have run, the estimates are taken as they are.
    """

    MIN_OBSERVED = 30.0

    def __init__(self, name: str, stages: list[tuple[str, float]]):
        self.name, self.stages = name, list(stages)
        self.done: set[str] = set()
        self.current: str | None = None
        self.current_fraction = 0.0
        self._spent = self._estimated = 0.0
        self._stage_started = 0.0

    def start(self, stage: str) -> None:
        self.current, self.current_fraction, self._stage_started = stage, 0.0, time.perf_counter()

    def fraction(self, value: float) -> None:
        self.current_fraction = min(max(value, 0.0), 1.0)

    def finish(self, stage: str, skipped: bool = False) -> None:
        if not skipped:
            self._spent += time.perf_counter() - self._stage_started
            self._estimated += self.estimate(stage)
        self.done.add(stage)
        self.current, self.current_fraction = None, 0.0

    def estimate(self, stage: str) -> float:
        return dict(self.stages)[stage]

    def pace(self) -> float:
        spent, estimated = self._spent, self._estimated
        if self.current is not None:
            spent += time.perf_counter() - self._stage_started
            estimated += self.estimate(self.current) * self.current_fraction
        return spent / estimated if estimated >= self.MIN_OBSERVED else 1.0

    def remaining(self) -> float:
        left = sum(seconds for stage, seconds in self.stages if stage not in self.done and stage != self.current)
        if self.current is not None:
            left += self.estimate(self.current) * (1 - self.current_fraction)
        return left * self.pace()

    def completed(self) -> float:
        """0..1 of the whole pipeline, by estimated time."""
        total = sum(seconds for _, seconds in self.stages) or 1.0
        done = sum(seconds for stage, seconds in self.stages if stage in self.done)
        if self.current is not None:
            done += self.estimate(self.current) * self.current_fraction
        return done / total

    def summary(self) -> str:
        """'speedrun 3/8 mid · 41% · eta 17m05s'."""
        names = [stage for stage, _ in self.stages]
        at = names.index(self.current) + 1 if self.current in names else len(self.done)
        return (f"{self.name} {at}/{len(names)} {self.current or ''} · {self.completed():.0%} · "
                f"eta {format_duration(self.remaining())}")


_pipeline: Pipeline | None = None


def pipeline() -> Pipeline | None:
    """The pipeline running now, if any (bars show its summary beside their own)."""
    return _pipeline


def set_pipeline(new: Pipeline | None) -> None:
    global _pipeline
    _pipeline = new


class TrainingProgress(LiveProgress):
    """A progress bar showing step, loss, tokens/s and ETA on a terminal; elsewhere (logs, CI,
    pipes) a line every `log_every` steps. `print` writes above the bar."""

    def __init__(self, total_steps: int, start_step: int, log_every: int, out: Console | None = None):
        self.out = out or console()
        self.total, self.log_every = total_steps, log_every
        self.live = self.out.is_terminal
        self._progress = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold cyan]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss [bold]{task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("[dim]{task.fields[pipeline]}"),
                console=self.out, transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, loss="—", speed="—",
                                                 pipeline=_pipeline_text())
        self._start_step, self._started = start_step, time.perf_counter()

    def update(self, step: int, loss: float, tokens_per_sec: float, extra: str = "") -> None:
        if _pipeline is not None:
            _pipeline.fraction(step / max(self.total, 1))
        if self._progress:
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}", speed=f"{tokens_per_sec:,.0f}",
                                  pipeline=_pipeline_text())
        elif step % self.log_every == 0 or step == self.total:
            self.out.print(f"step {step:>6}/{self.total} | loss {loss:.4f} | {tokens_per_sec:,.0f} tok/s"
                           f" | eta {format_duration(self.eta(step))}{extra}"
                           + (f" | {_pipeline_text()}" if _pipeline is not None else ""))

    def eta(self, step: int) -> float:
        """Seconds left at the pace of this session so far (evaluations included, like the bar's)."""
        done = step - self._start_step
        if done <= 0:
            return 0.0
        return (self.total - step) * (time.perf_counter() - self._started) / done

    def print(self, *args, **kwargs) -> None:
        self.out.print(*args, **kwargs)


def _pipeline_text() -> str:
    return _pipeline.summary() if _pipeline is not None else ""


class TaskProgress(LiveProgress):
    """A bar per evaluation task (items done, ETA) on stderr, so that `--json` output on stdout
    stays clean; without a terminal, one line when each task ends."""

    def __init__(self, out: Console | None = None):
        self.out = out or err_console()
        self._progress = None
        if self.out.is_terminal:
            self._progress = Progress(
                TextColumn("[bold cyan]{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("[dim]{task.fields[pipeline]}"),
                console=self.out, transient=True)
        self._task = None

    def begin(self, name: str, total: int) -> None:
        if self._progress:
            self._task = self._progress.add_task(name, total=total, pipeline=_pipeline_text())

    def advance(self, done: int, total: int) -> None:
        """`done` of `total` items of the current task are scored."""
        if self._progress and self._task is not None:
            self._progress.update(self._task, completed=done, pipeline=_pipeline_text())

    def end(self, line: str) -> None:
        if self._progress and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        self.out.print(line, highlight=False)
