"""Build it yourself: a GPT skeleton to fill in (`skeleton`), the grader that compares it with the
reference component by component (`checks`, `mistakes`, `grader`), and a side-by-side training
comparison (`versus`)."""
