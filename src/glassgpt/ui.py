"""Terminal output: one console, a training progress bar, plain log lines when not on a terminal.

Colour follows rich's rules (off when output is not a terminal, or when NO_COLOR is set).
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


class TrainingProgress:
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
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.out, transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, loss="—", speed="—")
        self._start_step, self._started = start_step, time.perf_counter()

    def __enter__(self) -> "TrainingProgress":
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.stop()

    def update(self, step: int, loss: float, tokens_per_sec: float, extra: str = "") -> None:
        if self._progress:
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}", speed=f"{tokens_per_sec:,.0f}")
        elif step % self.log_every == 0 or step == self.total:
            self.out.print(f"step {step:>6}/{self.total} | loss {loss:.4f} | {tokens_per_sec:,.0f} tok/s"
                           f" | eta {format_duration(self.eta(step))}{extra}")

    def eta(self, step: int) -> float:
        """Seconds left at the pace of this session so far (evaluations included, like the bar's)."""
        done = step - self._start_step
        if done <= 0:
            return 0.0
        return (self.total - step) * (time.perf_counter() - self._started) / done

    def print(self, *args, **kwargs) -> None:
        self.out.print(*args, **kwargs)
