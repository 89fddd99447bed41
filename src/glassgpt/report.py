"""`glassgpt report`: a run and the runs it grew from, on one page.

A chat run names its parent in config.json, so `report --run NAME` walks NAME → its mid run → its
base run and reports each as a stage (BASE | MID | SFT): how it was trained (config, steps,
tokens, time, memory), how it learned (loss curves of every stage on one figure), what it can do
(eval.json of each stage, as one table and as bars), and what it says (its last samples and a few
evaluation replies). The speedrun's record, when there is one, adds wall time and peak memory.

The page is written twice from one list of blocks: `report.md` (plots as PNG files beside it) and
`report.html` (one self-contained file: the same plots inline, no network). Nothing is computed
here that a run did not record, except the system and code-size facts, which describe the machine
and the glassgpt that wrote the report.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from glassgpt import __version__, atomic, paths
from glassgpt.errors import GlassError

MARKDOWN, HTML = "report.md", "report.html"
LOSS_PLOT, EVAL_PLOT = "plots/report-losses.png", "plots/report-evals.png"
STAGE_LABELS = {"base": "BASE", "mid": "MID", "sft": "SFT"}
# Chat tasks whose questions need knowledge or reasoning that a model of a few million parameters,
# trained for minutes, does not have: the report says so when they come out at chance.
KNOWLEDGE_TASKS = ("arc-easy", "arc-challenge", "mmlu", "gsm8k", "humaneval")


@dataclass
class Stage:
    stage: str  # base | mid | sft
    run: str
    folder: Path
    config: dict
    metrics: list[dict]
    evals: dict | None
    samples: list[tuple[str, str]]

    @property
    def label(self) -> str:
        return STAGE_LABELS.get(self.stage, self.stage.upper())

    @property
    def steps(self) -> int:
        return max((m["step"] for m in self.metrics), default=0)

    @property
    def train_seconds(self) -> float:
        return max((m.get("train_seconds", 0.0) for m in self.metrics), default=0.0)

    @property
    def tokens_per_step(self) -> int:
        train = self.config["train"]
        world = self.config.get("runtime", {}).get("world_size", 1)
        per_pass = train["device_batch_size"] * train["seq_len"] * world
        return max(train.get("total_batch_size") or 0, per_pass)

    def last(self, key: str) -> float | None:
        values = [m[key] for m in self.metrics if m.get(key) is not None]
        return values[-1] if values else None

    def final_train_loss(self) -> float | None:
        """Mean training loss of the last 10 steps (one step's loss is noisy)."""
        losses = [m["loss"] for m in self.metrics if "loss" in m][-10:]
        return sum(losses) / len(losses) if losses else None


def stages_of(run: str) -> list[Stage]:
    """The run and its ancestors, oldest first."""
    from glassgpt.runs import read_run_config

    chain, seen, name = [], set(), run
    while name and name not in seen:
        seen.add(name)
        folder = paths.run_dir(name)
        if not (folder / "config.json").exists() and chain:
            break  # an ancestor that was deleted: report what is left
        config = read_run_config(folder)
        metrics = _metrics(folder)
        if not metrics:
            raise GlassError(f"run {name!r} has no metrics yet; train it first")
        evals = _json(folder / "eval.json")
        chain.append(Stage(config["train"].get("stage", "base"), name, folder, config, metrics, evals, _samples(folder)))
        name = (config.get("parent") or {}).get("run")
    return chain[::-1]


def _metrics(folder: Path) -> list[dict]:
    from glassgpt.runs import RunFolder

    return RunFolder(folder).metrics()


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _samples(folder: Path) -> list[tuple[str, str]]:
    """The last evaluation's samples from samples.txt, as (prompt, text): a chat sample is written
    "user: PROMPT\nassistant: REPLY"; a base sample is the prompt run on into its continuation, so
    it stays whole (prompt "")."""
    path = folder / "samples.txt"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    sections = [s for s in text.split("=== step ") if s.strip()]
    if not sections:
        return []
    body = sections[-1].split("\n", 1)[1] if "\n" in sections[-1] else ""
    pairs = []
    for chunk in (c.strip("\n") for c in body.split("\n---\n")):
        if not chunk:
            continue
        if chunk.startswith("user: ") and "\nassistant: " in chunk:
            prompt, reply = chunk[len("user: "):].split("\nassistant: ", 1)
            pairs.append((prompt, reply))
        else:
            pairs.append(("", chunk))
    return pairs


def speedrun_record(run: str) -> dict | None:
    """The record of the speedrun whose final run is `run`, if it was made by one."""
    from glassgpt.speedrun import read_record

    return read_record(run)


# --- facts about the machine and the code ---------------------------------------------------------

def system() -> list[tuple[str, str]]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = "unknown"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    elif torch.backends.mps.is_available():
        gpu = "Apple MPS"
    else:
        gpu = "none"
    return [("CPU", f"{cpu}, {os.cpu_count()} logical cores"), ("memory", memory), ("GPU", gpu),
            ("torch", torch.__version__), ("Python", platform.python_version()), ("system", platform.platform()),
            ("glassgpt", __version__)]


def code_size() -> dict:
    """Files, lines and characters of glassgpt's own source (what a reader would read)."""
    root = Path(__file__).resolve().parent
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".html", ".tmpl")]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    return {"files": len(files), "lines": sum(t.count("\n") for t in texts), "characters": sum(map(len, texts))}


# --- plots --------------------------------------------------------------------------------------------

def plot_losses(stages: list[Stage], path: Path) -> None:
    """Training loss (and val loss) of every stage, side by side, on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for axis, stage in zip(axes[0], stages):
        train = [(m["step"], m["loss"]) for m in stage.metrics if "loss" in m]
        val = [(m["step"], m["val_loss"]) for m in stage.metrics if m.get("val_loss") is not None]
        if train:
            axis.plot(*zip(*train), lw=0.8, color="tab:blue", label="train")
        if val:
            axis.plot(*zip(*val), "o-", color="tab:orange", label="val")
        counted = "" if stage.stage == "base" else " (assistant tokens)"
        axis.set(title=f"{stage.label}: {stage.run}", xlabel="step", ylabel=f"loss, nats{counted}")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    _save(figure, path)


def plot_evals(stages: list[Stage], path: Path) -> bool:
    """Centred accuracy of every evaluated task, one panel per group (CORE tasks, chat tasks), one
    bar per stage that has the task; False when no stage was evaluated."""
    panels = [(title, rows) for title, rows in (("CORE-style tasks", _eval_rows(stages, "core")),
                                                 ("chat tasks", _eval_rows(stages, "chat"))) if rows]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"BASE": "tab:gray", "MID": "tab:blue", "SFT": "tab:green"}
    tallest = max(len(rows) * max(1, len(_labels(rows))) for _, rows in panels)
    figure, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 0.22 * tallest + 1.6), squeeze=False)
    for axis, (title, rows) in zip(axes[0], panels):
        labels = _labels(rows)
        height = 0.8 / len(labels)
        for offset, label in enumerate(labels):
            values = [row[label] if row[label] is not None else 0.0 for row in rows]
            axis.barh([i + offset * height for i in range(len(rows))], values, height, label=label,
                      color=colours.get(label))
        axis.set_yticks([i + height * (len(labels) - 1) / 2 for i in range(len(rows))], [row["task"] for row in rows])
        axis.invert_yaxis()
        axis.axvline(0, color="black", lw=0.8)
        axis.set(xlabel="centred accuracy (0 = chance, 1 = all right)", title=title)
        axis.grid(alpha=0.3, axis="x")
        axis.legend(loc="lower right")
    figure.tight_layout()
    _save(figure, path)
    return True


def _labels(rows: list[dict]) -> list[str]:
    """The stages with a result in any of these rows."""
    return [label for label in STAGE_LABELS.values() if any(row.get(label) is not None for row in rows)]


def _eval_rows(stages: list[Stage], group: str) -> list[dict]:
    """[{"task": name, "BASE": centred or None, ...}] over every task of `group` any stage has."""
    names: list[str] = []
    for stage in stages:
        for name, task in (stage.evals or {}).get("tasks", {}).items():
            if task["group"] == group and name not in names:
                names.append(name)
    return [{"task": name, **{stage.label: ((stage.evals or {}).get("tasks", {}).get(name) or {}).get("centred")
                              for stage in stages}} for name in names]


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


# --- the page, as blocks --------------------------------------------------------------------------

def blocks(stages: list[Stage], record: dict | None, has_eval_plot: bool) -> list[tuple]:
    """The report as a list of ("h1"|"h2"|"p"|"table"|"image"|"replies", ...) blocks."""
    final = stages[-1]
    out: list[tuple] = [("h1", f"glassgpt report: {final.run}")]
    chain = " → ".join(f"{s.run} ({s.label})" for s in stages)
    out.append(("p", f"Written {time.strftime('%Y-%m-%d %H:%M')} by glassgpt {__version__}. Stages: {chain}."))
    if record:
        total = sum(s.get("seconds", 0) for s in record.get("stages", {}).values())
        peak = max((s.get("peak_rss_mb", 0) for s in record.get("stages", {}).values()), default=0)
        out.append(("p", f"Made by `glassgpt speedrun --run {record['run']} --preset {record['options']['preset']}`: "
                         f"{_duration(total)} of wall time over its stages, peak memory {peak:,.0f} MB."))

    out.append(("h2", "Summary"))
    out.append(("table", ["metric", *[s.label for s in stages]], _summary_rows(stages)))
    out += _honesty(stages)

    out.append(("h2", "Training"))
    out.append(("image", LOSS_PLOT, "loss curves of every stage"))
    out.append(("table", ["stage", "run", "steps", "tokens", "training time", "wall time", "peak memory",
                          "final train loss", "val loss", "val bits/byte"], _stage_rows(stages, record)))
    out.append(("h3", "config of each stage"))
    out.append(("table", ["field", *[s.label for s in stages]], _config_rows(stages)))

    if has_eval_plot:
        out.append(("h2", "Evaluations"))
        out.append(("image", EVAL_PLOT, "centred accuracy of every task by stage"))
        out.append(("p", "Centred accuracy = (accuracy - chance) / (1 - chance): 0 is what guessing scores, 1 every "
                         "answer right, below 0 worse than guessing. CORE and ChatCORE are means of it "
                         "(see docs/explanation/core-and-chatcore.md)."))
        for stage in stages:
            if stage.evals:
                out.append(("h3", f"{stage.label}: {stage.run} at step {stage.evals['step']}"))
                out.append(("table", ["task", "items", "accuracy", "chance", "centred", "other"],
                            _eval_table(stage.evals)))

    out.append(("h2", "What it says"))
    for stage in stages:
        if stage.samples:
            out.append(("h3", f"{stage.label} samples at step {stage.steps} (from samples.txt)"))
            out.append(("replies", [(prompt, text, None) for prompt, text in stage.samples]))
    chat = next((s for s in reversed(stages) if s.evals and s.stage != "base"), None)
    if chat:
        examples = [(f"{name}: {ex['question']}", ex.get("reply", ""), ex["correct"])
                    for name in ("identity", "arithmetic", "spelling", "gsm8k")
                    for ex in chat.evals["tasks"].get(name, {}).get("examples", [])[:2]]
        if examples:
            out.append(("h3", f"evaluation replies of {chat.run} (✓ right, ✗ wrong)"))
            out.append(("replies", examples))

    out.append(("h2", "System and code"))
    out.append(("table", ["", ""], system()))
    size = code_size()
    out.append(("p", f"glassgpt's source: {size['files']} files, {size['lines']:,} lines, "
                     f"{size['characters']:,} characters."))
    return out


def _summary_rows(stages: list[Stage]) -> list[list[str]]:
    def each(fn) -> list[str]:
        return [fn(stage) for stage in stages]

    rows = [
        ["parameters", *each(lambda s: f"{_parameters(s):,}")],
        ["training tokens", *each(lambda s: f"{s.steps * s.tokens_per_step:,}")],
        ["training time", *each(lambda s: _duration(s.train_seconds))],
        ["val bits/byte (base: held-out text; chat: assistant tokens)", *each(lambda s: _number(s.last("val_bpb")))],
    ]
    for key, label in (("core", "CORE"), ("chatcore", "ChatCORE")):
        if any((s.evals or {}).get(key) for s in stages):
            rows.append([label, *each(lambda s: _number(((s.evals or {}).get(key) or {}).get("score"), signed=True))])
    for row in _eval_rows(stages, "chat") + _eval_rows(stages, "core"):
        accuracies = [((s.evals or {}).get("tasks", {}).get(row["task"]) or {}).get("accuracy") for s in stages]
        rows.append([row["task"], *[_percent(a) for a in accuracies]])
    return rows


def _honesty(stages: list[Stage]) -> list[tuple]:
    chat = next((s for s in reversed(stages) if s.evals and s.stage != "base"), None)
    if chat is None:
        return []
    tasks = chat.evals.get("tasks", {})
    near = [name for name in KNOWLEDGE_TASKS if name in tasks and at_chance(tasks[name])]
    if not near:
        return []
    return [("p", f"{', '.join(near)}: no better than chance. That is expected, not a bug: these questions need "
                  f"knowledge and reasoning that a model of {_parameters(chat):,} parameters, trained for minutes, "
                  "does not have. What a model this size can learn is the chat format, facts about itself and "
                  "when to call its calculator: the identity, arithmetic and spelling rows.")]


def at_chance(task: dict) -> bool:
    """Whether a task's accuracy is within two standard errors of guessing (for a task where
    guessing scores 0: whether it is 0)."""
    chance, n = task["baseline"], task["n"]
    if chance == 0:
        return task["accuracy"] == 0
    return abs(task["accuracy"] - chance) <= 2 * (chance * (1 - chance) / n) ** 0.5


def _stage_rows(stages: list[Stage], record: dict | None) -> list[list[str]]:
    recorded = (record or {}).get("stages", {})
    rows = []
    for stage in stages:
        mine = recorded.get(stage.stage, {})
        rows.append([stage.label, stage.run, f"{stage.steps:,}", f"{stage.steps * stage.tokens_per_step:,}",
                     _duration(stage.train_seconds), _duration(mine["seconds"]) if "seconds" in mine else "—",
                     f"{mine['peak_rss_mb']:,.0f} MB" if "peak_rss_mb" in mine else "—",
                     _number(stage.final_train_loss()), _number(stage.last("val_loss")), _number(stage.last("val_bpb"))])
    return rows


CONFIG_FIELDS = ("data", "mixture", "from_run", "vocab_size", "family", "depth", "seq_len", "device_batch_size",
                 "total_batch_size", "max_steps", "optimizer", "matrix_lr", "embedding_lr", "unembedding_lr",
                 "warmdown_ratio", "seed")


def _config_rows(stages: list[Stage]) -> list[list[str]]:
    """The training fields that say how each stage was made, one column per stage ("—" where a
    field does not apply: a chat stage has a mixture, not --data)."""
    def value(stage: Stage, name: str) -> str:
        train = stage.config["train"]
        if name == "data" and stage.stage != "base":
            return "—"
        return "—" if train.get(name) in (None, "", 0) else str(train[name])

    rows = [[name, *[value(s, name) for s in stages]] for name in CONFIG_FIELDS]
    rows = [row for row in rows if any(cell != "—" for cell in row[1:])]
    rows.append(["model", *[f"{s.config['model']['n_layer']} blocks, width {s.config['model']['n_embd']}, "
                            f"{s.config['model']['n_head']} heads ({s.config['model']['n_kv_head']} kv), context "
                            f"{s.config['model']['sequence_len']}" for s in stages]])
    rows.append(["device", *[_device(s) for s in stages]])
    return rows


def _device(stage: Stage) -> str:
    runtime = stage.config.get("runtime", {})
    return f"{runtime.get('device')}, {runtime.get('dtype')}, {runtime.get('world_size', 1)} process(es)" if runtime else "—"


def _eval_table(evals: dict) -> list[list[str]]:
    rows = []
    for name, task in evals.get("tasks", {}).items():
        other = ", ".join(f"{k.replace('_', ' ')} {task[k]:.0%}" for k in ("well_formed_call", "used_calculator",
                                                                         "exact_call") if k in task)
        if task.get("shots") is not None:
            other = f"{task['shots']:.1f} shots"
        rows.append([name, f"{task['n']:,}" + ("" if task["items"] == task["of"] else f" of {task['of']:,}"),
                     _percent(task["accuracy"]), _percent(task["baseline"]), f"{task['centred']:+.3f}", other])
    return rows


def _parameters(stage: Stage) -> int:
    from glassgpt.model.config import GPTConfig
    from glassgpt.model.scaling import count_parameters

    return count_parameters(GPTConfig.from_dict(stage.config["model"])).total


def _number(value, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _percent(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def _duration(seconds: float) -> str:
    from glassgpt.ui import format_duration

    return format_duration(seconds)


# --- rendering ----------------------------------------------------------------------------------------

def to_markdown(page: list[tuple]) -> str:
    lines: list[str] = []
    for block in page:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "image":
            lines += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join(" --- " for _ in header) + "|")
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "replies":
            for prompt, text, correct in block[1]:
                mark = "" if correct is None else ("✓ " if correct else "✗ ")
                lines.append(f"- {mark}**{_cell(prompt.strip())}** {_cell(text)}")
            lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ⏎ ")


def to_html(page: list[tuple], folder: Path) -> str:
    parts = []
    for block in page:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "image":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode()
            parts.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}"></figure>')
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
        elif kind == "replies":
            items = "".join(
                f'<li class="{"" if correct is None else ("right" if correct else "wrong")}"><b>{html.escape(prompt)}'
                f"</b> <span>{html.escape(text)}</span></li>" for prompt, text, correct in block[1])
            parts.append(f'<ul class="replies">{items}</ul>')
    title = html.escape(page[0][1]) if page and page[0][0] == "h1" else "glassgpt report"
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">\n",
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        "\n".join(parts),
        "\n<footer>Written by glassgpt report. This page is self-contained: it loads nothing from the network."
        "</footer>\n</main>\n</body>\n</html>\n",
    ])


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


CSS = """
:root { color-scheme: light; --ink: #1d2430; --dim: #5d6675; --line: #d9dde4; --bg: #fbfbfa; --card: #fff; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
  Roboto, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 1.2rem 2rem 3rem; }
h1 { font-size: 1.7rem; margin: .2rem 0 .4rem; }
h2 { color: #7b2d8e; border-top: 2px solid var(--line); padding-top: .5rem; margin-top: 2rem; }
h3 { color: #155a75; font-size: 1.02rem; margin: 1.2rem 0 .4rem; }
code { background: #f1f3f6; padding: 0 .25em; border-radius: 3px; font-size: .9em;
  font-family: ui-monospace, Menlo, Consolas, monospace; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13.5px; margin: .4rem 0 1rem; background: var(--card); }
th, td { border: 1px solid var(--line); padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f4f5f7; }
td { font-family: ui-monospace, Menlo, Consolas, monospace; }
figure { margin: .6rem 0; }
figure img { max-width: 100%; border: 1px solid var(--line); background: #fff; }
ul.replies { list-style: none; padding: 0; }
ul.replies li { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .35rem .7rem;
  margin: .35rem 0; white-space: pre-wrap; }
ul.replies li.right { border-left: 4px solid #2e8b57; }
ul.replies li.wrong { border-left: 4px solid #c0392b; }
footer { color: var(--dim); font-size: 13px; margin-top: 2rem; }
"""


def write(run: str) -> tuple[Path, Path]:
    """Write <run>/report.md (with its plots) and <run>/report.html; return their paths."""
    stages = stages_of(run)
    folder = stages[-1].folder
    record = speedrun_record(run)
    plot_losses(stages, folder / LOSS_PLOT)
    has_eval_plot = plot_evals(stages, folder / EVAL_PLOT)
    page = blocks(stages, record, has_eval_plot)
    atomic.write_text(folder / MARKDOWN, to_markdown(page))
    atomic.write_text(folder / HTML, to_html(page, folder))
    return folder / MARKDOWN, folder / HTML
