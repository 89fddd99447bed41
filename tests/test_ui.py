"""The progress display: what a log (not a terminal) shows of a training run."""

from __future__ import annotations

import io

from rich.console import Console

from glassgpt import ui


def test_log_lines_show_loss_speed_and_an_eta_from_the_pace_so_far(monkeypatch):
    clock = iter([100.0, 110.0])  # constructed at t=100; step 10 logged at t=110
    monkeypatch.setattr(ui.time, "perf_counter", lambda: next(clock))
    buffer = io.StringIO()
    progress = ui.TrainingProgress(total_steps=50, start_step=0, log_every=10,
                                   out=Console(file=buffer, force_terminal=False, width=200))
    progress.update(5, 6.0, 1000.0)  # not a multiple of log_every: no line
    progress.update(10, 5.4321, 2345.0)
    assert buffer.getvalue() == "step     10/50 | loss 5.4321 | 2,345 tok/s | eta 40s\n"  # 40 steps at 1 s each


def test_eta_counts_only_the_steps_of_this_session(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(ui.time, "perf_counter", lambda: now[0])
    progress = ui.TrainingProgress(total_steps=300, start_step=200, log_every=10,
                                   out=Console(file=io.StringIO(), force_terminal=False))
    assert progress.eta(200) == 0.0  # nothing done yet in this session: no guess
    now[0] += 25.0  # 50 steps of this resumed session took 25 s: 0.5 s a step
    assert progress.eta(250) == 25.0  # 50 steps left, not 250 (the 200 before the resume do not count)


def test_durations_read_like_a_clock():
    assert [ui.format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_a_pipeline_eta_follows_the_estimates_until_the_pace_is_known(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(ui.time, "perf_counter", lambda: now[0])
    pipeline = ui.Pipeline("speedrun", [("a", 10.0), ("b", 100.0), ("c", 100.0)])
    pipeline.start("a")
    now[0] = 2.0
    pipeline.finish("a")  # 5x faster than estimated, but on 10 s of estimate: too little to judge
    assert pipeline.remaining() == 200.0
    pipeline.start("b")
    now[0] = 102.0
    pipeline.fraction(0.5)  # half of b (50 s estimated) took 100 s: with a, 102 s for 60 s of estimate
    assert pipeline.remaining() == (50 + 100) * 102 / 60
    assert pipeline.completed() == (10 + 50) / 210
    assert pipeline.summary().startswith("speedrun 2/3 b · 29% · eta ")


def test_stages_skipped_as_done_count_as_done_but_not_for_the_pace(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(ui.time, "perf_counter", lambda: now[0])
    pipeline = ui.Pipeline("speedrun", [("a", 100.0), ("b", 100.0)])
    pipeline.finish("a", skipped=True)
    pipeline.start("b")
    assert pipeline.completed() == 0.5 and pipeline.remaining() == 100.0


def test_a_training_bar_in_a_log_shows_where_the_pipeline_is(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(ui.time, "perf_counter", lambda: now[0])
    buffer = io.StringIO()
    pipeline = ui.Pipeline("speedrun", [("base", 100.0)])
    pipeline.start("base")
    ui.set_pipeline(pipeline)
    try:
        progress = ui.TrainingProgress(total_steps=20, start_step=0, log_every=10,
                                       out=Console(file=buffer, force_terminal=False, width=200))
        now[0] = 100.0  # half the stage in 100 s, estimated at 50 s: the rest takes 100 s too
        progress.update(10, 5.0, 100.0)
    finally:
        ui.set_pipeline(None)
    assert pipeline.current_fraction == 0.5
    assert buffer.getvalue().rstrip().endswith("| speedrun 1/1 base · 50% · eta 1m40s")
