"""The grader's worker process: imports the learner's file and runs checks, one JSON line each.

    python -m glassgpt.learn.worker FILE RESULTS.jsonl --checks a,b,c --known a=pass,b=fail

Running in its own process keeps the grader safe from the learner's code: a hang is killed by the
parent after the per-check time limit, a crash ends only this process, and whatever the module
prints goes to a log file (summarised by the parent) instead of flooding the terminal.
Results are appended to RESULTS.jsonl as {"event": "start"|"result", ...} and flushed each time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from glassgpt.errors import GlassError
from glassgpt.learn import checks as grading
from glassgpt.learn.compare import finite_or_none
from glassgpt.learn.loader import check_family, check_names, import_learner, where_in
from glassgpt.see.registry import grader_hint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("results")
    parser.add_argument("--checks", default="")
    parser.add_argument("--known", default="")
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    # The grading model is tiny: a second thread only adds synchronisation to every operation, and on
    # a busy machine each operation then waits for a descheduled thread (measured 10x slower).
    import torch

    torch.set_num_threads(1)
    path = Path(args.file).resolve()
    known = dict(item.split("=", 1) for item in args.known.split(",") if item)
    wanted = [name for name in args.checks.split(",") if name]
    with open(args.log, "a", encoding="utf-8", errors="replace") as log, \
            open(args.results, "a", encoding="utf-8") as results, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):

        def emit(record: dict) -> None:  # strict JSON: a non-finite number is null (the record says so)
            results.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")
            results.flush()

        emit({"event": "start", "name": "import"})
        try:
            learner = import_learner(path)
            check_names(learner, path)
            family = check_family(learner, path)
        except GlassError as error:
            emit({"event": "result", **dataclasses.asdict(grading.CheckResult(
                "import", "initialisation", "fail", str(error)))})
            return 0
        emit({"event": "result", "family": family, **dataclasses.asdict(grading.CheckResult(
            "import", "initialisation", "pass", f"imported {path.name} ({family} family)"))})
        try:
            run_checks(grading.Context(learner, family), wanted, known, path, emit)
        except BaseException as error:  # not the learner's mistake: tell the parent instead of a traceback
            emit({"event": "crash", "message": f"the grader failed: {where_in(error, path)}"})
            return 1
    return 0


def run_checks(context: grading.Context, wanted: list[str], known: dict[str, str], path: Path, emit) -> None:
    failed_before = any(status != "pass" for status in known.values())
    for check in grading.CHECKS:
        if check.name not in wanted:
            continue
        blocked = [need for need in check.needs if known.get(need, "pass") != "pass" and need in known]
        if blocked:
            result = grading.CheckResult(check.name, check.phase, "not_started", f"waits for {', '.join(blocked)}")
        else:
            emit({"event": "start", "name": check.name})
            result = run_check(check, context, path, failed_before)
        failed_before = failed_before or result.status in ("fail", "error")
        known[check.name] = result.status
        emit({"event": "result", **dataclasses.asdict(result)})


def run_check(check: grading.Check, context: grading.Context, path: Path, failed_before: bool) -> grading.CheckResult:
    result = grading.CheckResult(check.name, check.phase, "pass")
    context.reached, context.max_abs_error = [], None
    try:
        check.run(context)
        for milestone in check.milestones:
            context.reach(milestone)
        result.message = "matches the reference"
        result.max_abs_error = context.max_abs_error  # the largest error among the comparisons it made
    except NotImplementedError as error:
        todo = str(error) or "a TODO"
        # The first unfinished piece is the learner's next task; later TODOs are simply not started.
        result.status = "not_started" if failed_before else "fail"
        result.todo, result.message = todo, f"not written yet: {todo}"
    except grading.CheckFailed as error:
        result.status, result.message = "fail", str(error)
        result.mistake, result.hint, result.config_fields = error.mistake, error.hint, error.fields
        if error.comparison is not None:
            result.comparison = dataclasses.asdict(error.comparison)
            result.max_abs_error = error.comparison.max_abs_error
            result.nonfinite = error.comparison.nonfinite
    except grading.LearnerError as error:  # the learner's exception, already located in their file
        result.status, result.message = "error", str(error)
        result.hint, result.config_fields = error.hint, error.fields
    except TypeError as error:
        result.status = "error"
        result.message = where_in(error, path)
        if "positional argument" in str(error) or "unexpected keyword" in str(error):
            result.hint = grader_hint("signature")
    except (Exception, SystemExit) as error:  # the learner's code raised (or exited): show where in their file
        result.status, result.message = "error", where_in(error, path)
    result.milestones = list(context.reached)
    return result


if __name__ == "__main__":
    sys.exit(main())
