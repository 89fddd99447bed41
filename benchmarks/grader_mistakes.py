"""How many realistic learner mistakes does `glassgpt learn check` catch, and how many does it name?

Each planted mistake of tests/fixtures/planted_mistakes.py (a mutated copy of a correct fixture)
is graded by every check of its family, in order, with the grader's own rules for checks that wait
for others (the worker's `run_checks`, in this process). A mistake is

    named   when a failing check's report names it: the config field, the catalogued mistake, or
            the quantity in words that the plant asks for (see planted_mistakes.py);
    caught  when some check fails or errors, but none names it;
    missed  when every check passes.

The blind plants were written after the grader's changes and not tuned to; they are counted apart.
The controls (correct files written differently) must pass every check. The grader measured is
whichever glassgpt is imported, so the same script measures another version of it:

    .venv/bin/python benchmarks/grader_mistakes.py                          # this checkout
    PYTHONPATH=/work/main/src .venv/bin/python benchmarks/grader_mistakes.py  # main's grader
    .venv/bin/python benchmarks/grader_mistakes.py --only mask_inverted --verbose
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

from planted_mistakes import BLIND, CONTROLS, PLANTS, Plant, named  # noqa: E402

import glassgpt  # noqa: E402
from glassgpt.learn import checks as grading  # noqa: E402
from glassgpt.learn.loader import import_learner  # noqa: E402
from glassgpt.learn.worker import run_checks  # noqa: E402


def one_thread() -> None:
    """As `glassgpt learn check`'s worker runs (main's worker did not set it: same counts, slower)."""
    import torch

    torch.set_num_threads(1)


def grade(path: Path, family: str) -> list[dict]:
    """Every check of the family, as the worker runs them (a check waits for a failed one it needs)."""
    module = import_learner(path)
    context = grading.Context(module, family)
    records: list[dict] = []

    def emit(record: dict) -> None:
        if record.get("event") == "result":
            records.append(record)

    wanted = [c.name for c in grading.CHECKS if family in c.families]
    run_checks(context, wanted, {}, path, emit)
    return records


def verdict(plant: Plant, records: list[dict]) -> tuple[str, dict | None]:
    failing = [r for r in records if r["status"] in ("fail", "error", "timeout")]
    for record in failing:
        if named(plant, record.get("message") or "", record.get("hint"), record.get("mistake"),
                 record.get("config_fields")):
            return "named", record
    return ("caught", failing[0]) if failing else ("missed", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="plant names to run")
    parser.add_argument("--verbose", action="store_true", help="print the deciding check's message")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    one_thread()
    plants = [p for p in PLANTS + BLIND + CONTROLS if not args.only or p.name in args.only]
    print(f"grader: {Path(glassgpt.__file__).parent}")
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grader-mistakes-") as tmp:
        for plant in plants:
            begin = time.perf_counter()
            records = grade(plant.write(Path(tmp)), plant.family)
            control = plant in CONTROLS
            if control:
                failing = [r for r in records if r["status"] != "pass"]
                outcome, record = ("passes" if not failing else "FAILS"), (failing[0] if failing else None)
            else:
                outcome, record = verdict(plant, records)
            rows.append({"plant": plant.name, "family": plant.family, "control": control, "blind": plant in BLIND,
                         "outcome": outcome,
                         "check": record and record["name"], "message": record and record.get("message"),
                         "seconds": round(time.perf_counter() - begin, 2)})
            check = record["name"] if record else "-"
            print(f"{plant.name:36s} {plant.family:8s} {outcome:7s} {check:22s} {rows[-1]['seconds']:6.1f} s",
                  flush=True)
            if args.verbose and record:
                print(f"    {record.get('message')}\n    hint: {record.get('hint')}", flush=True)
    for label, group in (("planted mistakes", [r for r in rows if not r["control"] and not r["blind"]]),
                         ("blind mistakes (written after the grader, not tuned to)", [r for r in rows if r["blind"]])):
        if group:
            counts = {k: sum(r["outcome"] == k for r in group) for k in ("named", "caught", "missed")}
            caught = counts["named"] + counts["caught"]
            print(f"\n{len(group)} {label}: named {counts['named']}, caught but not named {counts['caught']}, "
                  f"missed {counts['missed']} (caught in all: {caught}/{len(group)})", end="")
    controls = [r for r in rows if r["control"]]
    print(f"\ncontrols passing: {sum(r['outcome'] == 'passes' for r in controls)}/{len(controls)}; "
          f"{time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
