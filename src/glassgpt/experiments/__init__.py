"""`glassgpt experiment`: break the model on purpose, one config switch at a time, and see why each
design choice exists.

    declarations.py   THE experiments: question, baseline, variants (config switches), predicted
                      symptom, judge, explanation; the registry's "break it" lines point here
    judges.py         each judge: pure arithmetic on run records → did the symptom appear?
    heads.py          name attention heads from their patterns (previous-token, first-token, ...)
    runner.py         train a run through the project's train_step, observe it, cache its record
    plots.py          the PNGs: loss curves and the plot that shows each symptom
    report.py         the terminal table and the self-contained HTML page
    suite.py          list / run / all: plan, train what is not cached, judge, render
"""
