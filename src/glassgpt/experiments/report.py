"""What an experiment prints (the prediction before training; the table, the verdict and the why
after) and the self-contained HTML page of several experiments (plots inline as PNG data URIs, the
trace page's style; nothing is loaded from anywhere)."""

from __future__ import annotations

import base64
import math
from html import escape

from rich.console import Group
from rich.table import Table
from rich.text import Text

from glassgpt.experiments.declarations import SHARED, Experiment
from glassgpt.experiments.runner import RunPlan, RunRecord

COLUMNS = ("run", "switches", "train loss", "val loss", "val bits/byte", "tokens/s", "parameters")


def _num(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def switches_text(experiment: Experiment, label: str) -> str:
    variant = next(v for v in experiment.runs if v.label == label)
    text = variant.flags or "(baseline)"
    if variant.steps == 0:
        text = "untrained (0 steps)"
    return text


def settings_text(experiment: Experiment) -> str:
    from glassgpt.experiments.declarations import Variant

    return Variant("", experiment.settings).flags


def prediction(experiment: Experiment, plans: list[RunPlan]) -> Group:
    """Printed before any run trains."""
    steps = max(p.steps for p in plans)
    common = settings_text(experiment)
    lines = [Text(f"\n━━ {experiment.name}: {experiment.title}", style="bold magenta"),
             Text(experiment.question, style="italic"),
             Text.assemble(("predicted: ", "bold"), experiment.symptom),
             Text(f"runs ({steps} steps each, same data and seed{'; all with ' + common if common else ''}): "
                  + "; ".join(f"{p.label} [{switches_text(experiment, p.label)}]" for p in plans), style="dim")]
    return Group(*lines)


def results_table(experiment: Experiment, records: list[RunRecord], verdict) -> Table:
    """The terminal table (the switches are in the prediction above it; the HTML page has both)."""
    table = Table(show_edge=True, header_style="bold")
    for column in ("run", "train loss", "val loss", "tokens/s", "parameters", verdict.figure_name or "judge"):
        table.add_column(column, justify="left" if column == "run" else "right", overflow="fold")
    for record in records:
        losses = ["diverged", "—"] if record.diverged else [_num(record.train_loss), _num(record.val_loss)]
        table.add_row(record.label, *losses,
                      f"{record.tokens_per_sec:,.0f}" if math.isfinite(record.tokens_per_sec) else "—",
                      f"{record.parameters:,}", verdict.figures.get(record.label, ""))
    return table


def results(result, width: int = 100) -> Group:
    """Printed after the runs: the table, whether the predicted symptom appeared, why, the plots."""
    verdict, experiment = result.verdict, result.experiment
    said = Text.assemble(("symptom appeared: ", "bold"),
                         ("yes", "bold green") if verdict.appeared else ("no", "bold red"),
                         f": {verdict.detail}")
    parts = [results_table(experiment, result.records, verdict), said,
             Text.assemble(("why: ", "bold"), experiment.explanation)]
    if "samples" in experiment.plots:
        for record in result.records:
            parts.append(Text(f"sample of {record.label}: {record.sample_prompt}{record.sample}".replace("\n", "⏎ ")[:200],
                              style="italic"))
    if result.plots:
        parts.append(Text("plots: " + ", ".join(str(p) for p in result.plots.values()), style="dim"))
    return Group(*parts)


def summary_table(results_list) -> Table:
    table = Table(title="break the model: which predicted symptoms appeared", show_edge=True, header_style="bold")
    for column in ("experiment", "runs", "symptom appeared", "the numbers"):
        table.add_column(column, overflow="fold")
    for result in results_list:
        table.add_row(result.experiment.name, str(len(result.records)),
                      "[bold green]yes[/]" if result.verdict.appeared else "[bold red]no[/]", result.verdict.detail)
    return table


# -- HTML ---------------------------------------------------------------------------------------------------


def _e(value) -> str:
    return escape(str(value), quote=True)


def _img(path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


EXTRA_CSS = """
.verdict { display: inline-block; padding: .1rem .6rem; border-radius: 999px; font-weight: 600; font-size: 13.5px; }
.verdict.yes { background: #e2f4ea; color: #1e6b45; }
.verdict.no { background: #fbe5e8; color: #8e2436; }
.prediction { background: #f3eef7; border-radius: 6px; padding: .5rem .8rem; margin: .6rem 0; }
.why { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .6rem .9rem; }
figure.plot img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
table.summary td, table.summary th { text-align: left; white-space: normal; }
table.data td:nth-child(2) { text-align: left; }
pre.sample { white-space: pre-wrap; background: var(--code); padding: .4rem .6rem; border-radius: 4px; font-size: 12.5px; }
"""


def to_html(results_list) -> str:
    """One self-contained page for the experiments of a command."""
    from glassgpt.see.html import CSS

    toc = "".join(f'<li><a href="#{_e(r.experiment.name)}">{_e(r.experiment.title)}</a> '
                  f'<span class="verdict {"yes" if r.verdict.appeared else "no"}">{"yes" if r.verdict.appeared else "no"}</span></li>'
                  for r in results_list)
    summary_rows = "".join(
        f'<tr><td><a href="#{_e(r.experiment.name)}">{_e(r.experiment.name)}</a></td><td>{_e(r.experiment.question)}</td>'
        f'<td><span class="verdict {"yes" if r.verdict.appeared else "no"}">{"yes" if r.verdict.appeared else "no"}</span></td>'
        f"<td>{_e(r.verdict.detail)}</td></tr>" for r in results_list)
    shared = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in SHARED.items())
    sections = "".join(_section(r) for r in results_list)
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">\n",
        "<title>glassgpt experiments</title>\n<style>", CSS, EXTRA_CSS, "</style>\n</head>\n<body>\n",
        '<nav id="toc" aria-label="Contents"><h2>Experiments</h2><ol>', toc, "</ol></nav>\n<main>\n",
        '<header id="top"><h1>Break the model</h1>\n',
        "<p class=\"lede\">Each experiment flips one architectural switch of the same small model, trains it beside "
        "the baseline on the same data with the same seed and budget, and checks the symptom it predicted before "
        "training.</p>\n",
        f"<p>Every run: {_e(shared)} (unless an experiment says otherwise).</p>\n",
        '<table class="data summary" id="summary"><thead><tr><th>experiment</th><th>question</th><th>symptom appeared</th>'
        "<th>the numbers</th></tr></thead><tbody>", summary_rows, "</tbody></table>\n</header>\n",
        sections,
        "<footer>Written by glassgpt experiment. This page is self-contained: it loads nothing from the network.</footer>\n",
        "</main>\n</body>\n</html>\n",
    ])


def _section(result) -> str:
    experiment, verdict = result.experiment, result.verdict
    head = "".join(f"<th>{_e(c)}</th>" for c in (*COLUMNS, verdict.figure_name or "judge"))
    rows = []
    for record in result.records:
        losses = (["diverged", "—", "—"] if record.diverged
                  else [_num(record.train_loss), _num(record.val_loss), _num(record.val_bpb, 4)])
        cells = [record.label, switches_text(experiment, record.label), *losses,
                 f"{record.tokens_per_sec:,.0f}" if math.isfinite(record.tokens_per_sec) else "—",
                 f"{record.parameters:,}", verdict.figures.get(record.label, "")]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    from glassgpt.experiments.plots import CAPTIONS

    figures = "".join(f'<figure class="plot" id="{_e(experiment.name)}-{_e(name)}">{_img(path, f"{experiment.title}: {name}")}'
                      f"<figcaption>{_e(CAPTIONS.get(name, name))}</figcaption></figure>" for name, path in result.plots.items())
    samples = "".join(f"<p>{_e(r.label)}:</p><pre class=\"sample\">{_e(r.sample_prompt + r.sample)}</pre>"
                      for r in result.records if r.sample or r.sample_prompt)
    common = settings_text(experiment)
    answer = "yes" if verdict.appeared else "no"
    return (
        f'<section id="{_e(experiment.name)}">\n<h2>{_e(experiment.title)}</h2>\n'
        f"<p><b>{_e(experiment.question)}</b> <code>glassgpt experiment run {_e(experiment.name)}</code></p>\n"
        f'<div class="prediction"><b>Predicted before training:</b> {_e(experiment.symptom)}</div>\n'
        f"<p>{result.steps} steps per run, same data and seed{_e('; all runs with ' + common) if common else ''}.</p>\n"
        f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>\n'
        f'<p><span class="verdict {answer}">symptom appeared: {answer}</span> {_e(verdict.detail)}</p>\n'
        f'<div class="why"><b>Why.</b> {_e(experiment.explanation)}</div>\n'
        f'<div class="multiples">{figures}</div>\n'
        + (f"<details><summary>samples (the continuation of a prompt, temperature 0.8)</summary>{samples}</details>\n"
           if samples else "")
        + "</section>\n")


# -- the reference page ----------------------------------------------------------------------------------------


def reference_markdown() -> str:
    """docs/reference/experiments.md, generated from the declarations (a test keeps them equal):
    `python -m glassgpt.experiments.report > docs/reference/experiments.md`."""
    import inspect

    from glassgpt.experiments import declarations
    from glassgpt.experiments.plots import CAPTIONS
    from glassgpt.experiments.runner import EVAL_TOKENS

    settings = declarations.SHARED
    shared = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    lines = ["# The experiments", "",
             "<!-- generated by `python -m glassgpt.experiments.report`; edit src/glassgpt/experiments/declarations.py "
             "instead -->", "",
             "`glassgpt experiment run NAME` runs one of these, `glassgpt experiment all` runs them all "
             "([command line](cli.md#glassgpt-experiment); the [tutorial](../tutorials/break-it.md) has the results "
             "measured on a 2-core CPU). To see them listed:", "",
             "```bash", "glassgpt experiment list", "```", "",
             f"Every run trains for {declarations.DEFAULT_STEPS} steps (`--steps` changes it) with these settings, "
             "unless the experiment says otherwise:", "", "```text", shared, "```", "",
             f"that is a {settings['family']}-family model of {settings['depth']} blocks of width {settings['n_embd']} "
             f"(heads of {settings['head_dim']}) reading {settings['seq_len']}-token windows of {settings['data']}, "
             f"{settings['device_batch_size']} windows a step, in {settings['dtype']}. After training, the val loss is "
             f"measured on the first {EVAL_TOKENS:,} tokens of the val split and the train loss on as many of the "
             "train split. Runs that several experiments share (most share the baseline) are trained once.", "",
             "| experiment | question | runs |", "|---|---|---|"]
    for experiment in declarations.EXPERIMENTS:
        lines.append(f"| [`{experiment.name}`](#{experiment.name}) | {experiment.question} | "
                     + ", ".join(v.label for v in experiment.runs) + " |")
    for experiment in declarations.EXPERIMENTS:
        judge = " ".join((inspect.getdoc(experiment.judge) or "").split())
        margins = ", ".join(f"{name} = {p.default:g}" for name, p in inspect.signature(experiment.judge).parameters.items()
                            if p.default is not inspect.Parameter.empty)
        lines += ["", f"## {experiment.name}", "",
                  f"**{experiment.title}.** {experiment.question} Run it: `glassgpt experiment run {experiment.name}`.", ""]
        common = settings_text(experiment)
        if common:
            lines += [f"Every run of this experiment adds `{common}`.", ""]
        lines += ["| run | switches | what it breaks |", "|---|---|---|"]
        for variant in experiment.runs:
            lines.append(f"| {variant.label} | `{switches_text(experiment, variant.label)}` | {variant.breaks or '—'} |")
        lines += ["", f"- Predicted: {experiment.symptom}",
                  f"- Judged by `{experiment.judge.__name__}`" + (f" ({margins})" if margins else "") + f": {judge}",
                  "- Plots: " + "; ".join(f"`{name}`: {CAPTIONS[name]}" for name in ("loss", *experiment.plots)
                                          if name in CAPTIONS)
                  + ("; and each run's sample (a continuation of the corpus's first prompt)"
                     if "samples" in experiment.plots else ""),
                  f"- Why: {experiment.explanation}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
