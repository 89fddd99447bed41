"""The plots of an experiment, drawn from its run records (PNG, matplotlib's Agg backend).

Every experiment gets `loss` (the training loss of every run overlaid); each one adds the plots
that show its symptom, named in its declaration (CAPTIONS says what each one shows).
"""

from __future__ import annotations

import math
from pathlib import Path

from glassgpt import atomic
from glassgpt.experiments.heads import ROLES, HeadScores
from glassgpt.experiments.judges import gradient_ratio
from glassgpt.experiments.runner import RunRecord

CAPTIONS = {
    "loss": "training loss of every run, step by step (faint: each step; solid: smoothed)",
    "gradients": "gradient norm reaching each block, median over the run (log scale)",
    "pattern": "attention pattern of each run's sharpest head on a val window (rows: queries, columns: keys)",
    "activations": "share of the MLP's activations exactly 0, and below 0, per block",
    "shuffle": "KL divergence between the next-token distributions after a prefix and after the prefix shuffled",
    "entropy": "attention entropy per layer after training, with uniform attention dashed",
    "parameters": "parameters per run: the blocks, and the embedding/head tables",
    "kv_cache": "KV-cache bytes per token, val loss and decode speed per run",
    "logits": "largest output logit and largest attention score during training, with the bounds",
    "shape": "parameters in the blocks, val loss and decode speed per shape",
    "heads": "every head named by where its attention goes, per run, and the trained model's patterns",
}

COLORS = ["#3b6fb6", "#d9822b", "#2e9e6a", "#b8415b", "#7a5cc2", "#8c7a3a", "#3aa0b8", "#c25ca5"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    for axis in figure.axes:
        axis.title.set_fontsize(min(axis.title.get_fontsize(), 10))
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=96)
    _pyplot().close(figure)
    return path


def draw(experiment, records: list[RunRecord], folder: Path) -> dict[str, Path]:
    """Draw the experiment's plots into `folder`; {plot name: PNG path}."""
    drawn = {}
    for name in ("loss", *experiment.plots):
        if name in PLOTS:
            drawn[name] = _save(PLOTS[name](records, experiment), folder / f"{name}.png")
    return drawn


def smooth(values: list[float], window: int = 9) -> list[float]:
    """Centred moving average (shorter at the ends); non-finite values stay where they are."""
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - window // 2): i + window // 2 + 1] if math.isfinite(v)]
        out.append(sum(part) / len(part) if part and math.isfinite(values[i]) else values[i])
    return out


# -- the plots -----------------------------------------------------------------------------------------


def plot_loss(records, experiment):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for color, record in zip(COLORS, records):
        if not record.losses:
            axis.axhline(record.val_loss, color=color, ls=":", lw=1.2, label=f"{record.label} (untrained: val loss)")
            continue
        steps = range(1, len(record.losses) + 1)
        axis.plot(steps, record.losses, color=color, alpha=0.25, lw=0.8)
        end = f", diverged at step {record.diverged_at}" if record.diverged else f", val {record.val_loss:.3f}"
        axis.plot(steps, smooth(record.losses), color=color, lw=1.8, label=f"{record.label}{end}")
        if record.diverged:
            finite = [v for v in record.losses if math.isfinite(v)]
            axis.plot([len(finite)], [finite[-1] if finite else 0], "x", color=color, ms=10, mew=2)
    axis.set(xlabel="step", ylabel="training loss (nats)", title=f"{experiment.title}\ntraining loss")
    finite = [v for r in records for v in r.losses if math.isfinite(v)]
    if finite:
        axis.set_ylim(max(0.0, min(finite) - 0.2), min(max(finite), 12) + 0.2)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_gradients(records, experiment):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for color, record in zip(COLORS, records):
        observed = [norms for norms in record.layer_grad_norms[1:] or record.layer_grad_norms
                    if norms and all(math.isfinite(n) for n in norms)]
        if not observed:
            continue
        layers = range(len(observed[0]))
        median = [sorted(norms[i] for norms in observed)[len(observed) // 2] for i in layers]
        ratio = gradient_ratio(record.layer_grad_norms)
        axis.plot(list(layers), [max(m, 1e-12) for m in median], "o-", color=color,
                  label=f"{record.label} (first/last {ratio:.2g})")
    axis.set_yscale("log")
    axis.set(xlabel="block", ylabel="gradient norm (median over the run)",
             title=f"{experiment.title}\ngradient reaching each block")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def sharpest_head(pattern: list) -> tuple[int, int]:
    """(layer, head) of the head whose rows put the most weight on a single key, on average."""
    scores = {(layer, head): sum(max(row) for row in rows) / len(rows)
              for layer, heads_ in enumerate(pattern) for head, rows in enumerate(heads_)}
    return max(scores, key=scores.get)


def plot_pattern(records, experiment):
    plt = _pyplot()
    shown = [r for r in records if r.pattern]
    figure, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.6 * max(len(shown), 1) + 0.8, 4.0), squeeze=False)
    image = None
    for axis, record in zip(axes[0], shown):
        layer, head = sharpest_head(record.pattern)
        image = axis.imshow(record.pattern[layer][head], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(f"{record.label}\nlayer {layer} · head {head} (its sharpest)", fontsize=9)
        axis.set_xlabel("key (attended to)", fontsize=8)
        axis.set_ylabel("query (attending)", fontsize=8)
        axis.tick_params(labelsize=6)
    if image is not None:
        figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="attention weight")
    figure.suptitle(f"{experiment.title}: where the first {len(shown[0].pattern[0][0]) if shown else 0} tokens "
                    "of a val window look (above the diagonal = the future)", fontsize=10)
    return figure


def plot_activations(records, experiment):
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for color, record in zip(COLORS, records):
        if not record.act_zero:
            continue
        layers = range(len(record.act_zero[-1]))
        axes[0].plot(list(layers), [100 * v for v in record.act_zero[-1]], "o-", color=color, label=record.label)
        axes[1].plot(list(layers), [100 * v for v in record.act_negative[-1]], "o-", color=color, label=record.label)
    axes[0].set(xlabel="block", ylabel="% of MLP activations exactly 0", title="exact zeros (sparsity)", ylim=(-3, 103))
    axes[1].set(xlabel="block", ylabel="% of MLP activations below 0", title="negative values let through", ylim=(-3, 103))
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{experiment.title}: MLP activations at the last observed step", fontsize=10)
    figure.tight_layout()
    return figure


def _bars(axis, labels, values, colors, fmt="{:.3g}"):
    bars = axis.bar(range(len(values)), values, color=colors)
    axis.set_xticks(range(len(values)), labels, fontsize=8)
    for bar, value in zip(bars, values):
        axis.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                      va="bottom", fontsize=8)
    return bars


def plot_shuffle(records, experiment):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.8))
    _bars(axis, [r.label for r in records], [r.shuffle_kl for r in records], COLORS[: len(records)], "{:.4f}")
    axis.set(ylabel="KL(prefix ‖ shuffled prefix), nats",
             title=f"{experiment.title}\ndoes shuffling the prompt change the prediction?")
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return figure


def plot_entropy(records, experiment):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for color, record in zip(COLORS, records):
        if record.final_entropy:
            axis.plot(range(len(record.final_entropy)), record.final_entropy, "o-", color=color,
                      label=f"{record.label} (val {record.val_loss:.3f})")
    uniform = records[0].uniform_entropy
    if math.isfinite(uniform):
        axis.axhline(uniform, color="black", ls="--", lw=1, label=f"uniform attention ({uniform:.2f} nats)")
    axis.axhline(0, color="grey", ls=":", lw=1)
    axis.set(xlabel="layer", ylabel="mean attention entropy (nats)",
             title=f"{experiment.title}\nhow spread out attention is, per layer")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_parameters(records, experiment):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.8))
    labels = [r.label for r in records]
    blocks = [r.block_parameters for r in records]
    tables = [r.parameters - r.block_parameters for r in records]
    axis.bar(range(len(records)), blocks, color="#3b6fb6", label="blocks")
    axis.bar(range(len(records)), tables, bottom=blocks, color="#d9822b", label="embedding, head, norms")
    axis.set_xticks(range(len(records)), labels, fontsize=8)
    for i, record in enumerate(records):
        axis.annotate(f"{record.parameters:,}\nval {record.val_loss:.3f}", (i, record.parameters), ha="center",
                      va="bottom", fontsize=8)
    axis.set(ylabel="parameters", title=f"{experiment.title}\nwhere the parameters are")
    axis.set_ylim(0, max(r.parameters for r in records) * 1.25)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_kv_cache(records, experiment):
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    labels = [r.label.split(",")[0] for r in records]
    colors = COLORS[: len(records)]
    _bars(axes[0], labels, [r.kv_bytes_per_token for r in records], colors, "{:,.0f}")
    axes[0].set(title="KV cache, bytes per token (fp32)")
    _bars(axes[1], labels, [r.val_loss for r in records], colors, "{:.3f}")
    axes[1].set(title="val loss (nats)")
    axes[1].set_ylim(min(r.val_loss for r in records) * 0.95, max(r.val_loss for r in records) * 1.02)
    _bars(axes[2], labels, [r.decode_tokens_per_sec for r in records], colors, "{:,.0f}")
    axes[2].set(title="decode tokens/s (KV cache, batch 1)")
    figure.suptitle(experiment.title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_logits(records, experiment):
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.9))
    for color, record in zip(COLORS, records):
        steps = [s + 1 for s in record.observed_steps]
        axes[0].plot(steps, record.logit_max, "o-", color=color, ms=3, label=record.label)
        axes[1].plot(steps, [max(layer) for layer in record.score_max], "o-", color=color, ms=3, label=record.label)
    model = records[0].model
    if model.get("softcap"):
        axes[0].axhline(model["softcap"], color="black", ls="--", lw=1, label=f"softcap ({model['softcap']:g})")
    bound = math.sqrt(model["n_embd"] // model["n_head"]) / model.get("attn_temperature", 1.0)
    axes[1].axhline(bound, color="black", ls="--", lw=1, label=f"QK-norm bound √head_dim ({bound:.1f})")
    axes[0].set(xlabel="step", ylabel="max |logit|", title="output logits the softmax sees")
    axes[1].set(xlabel="step", ylabel="max |q·k| / √head_dim", title="attention scores (largest layer)", yscale="log")
    for axis in axes:
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    figure.suptitle(experiment.title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_shape(records, experiment):
    plt = _pyplot()
    records = sorted(records, key=lambda r: r.model["n_layer"])  # shallow to deep
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    labels = [f"{r.model['n_layer']} x {r.model['n_embd']}" for r in records]
    colors = COLORS[: len(records)]
    _bars(axes[0], labels, [r.block_parameters for r in records], colors, "{:,.0f}")
    axes[0].set(title="parameters in the blocks")
    _bars(axes[1], labels, [r.val_loss for r in records], colors, "{:.3f}")
    axes[1].set(title="val loss (nats)")
    axes[1].set_ylim(min(r.val_loss for r in records) * 0.95, max(r.val_loss for r in records) * 1.02)
    _bars(axes[2], labels, [r.decode_tokens_per_sec for r in records], colors, "{:,.0f}")
    axes[2].set(title="decode tokens/s (KV cache, batch 1)")
    figure.suptitle(f"{experiment.title} (blocks x width)", fontsize=10)
    figure.tight_layout()
    return figure


ROLE_COLORS = {"previous-token": "#b8415b", "current-token": "#d9822b", "first-token": "#7a5cc2",
               "delimiter": "#2e9e6a", "broad": "#d9dde4", "mixed": "#f4f5f7"}


def plot_heads(records, experiment):
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle

    with_heads = [r for r in records if r.heads]
    trained = with_heads[-1] if with_heads else None
    n_layer = max((h["layer"] for r in with_heads for h in r.heads), default=0) + 1
    n_head = max((h["head"] for r in with_heads for h in r.heads), default=0) + 1
    columns = len(with_heads) + (n_head if trained and trained.pattern else 0)
    figure = plt.figure(figsize=(2.2 * len(with_heads) + 1.6 * n_head + 1, 1.0 * n_layer + 1.8))
    grid = figure.add_gridspec(n_layer, max(columns, 1))
    for index, record in enumerate(with_heads):
        axis = figure.add_subplot(grid[:, index])
        for h in (HeadScores.from_dict(h) for h in record.heads):
            axis.add_patch(Rectangle((h.head, h.layer), 1, 1, color=ROLE_COLORS[h.name], ec="white"))
            short = {"previous-token": "prev", "current-token": "self", "first-token": "first",
                     "delimiter": "delim"}.get(h.name, "")
            axis.text(h.head + 0.5, h.layer + 0.5, short, ha="center", va="center", fontsize=7)
        axis.set(xlim=(0, n_head), ylim=(n_layer, 0), xticks=[i + 0.5 for i in range(n_head)],
                 yticks=[i + 0.5 for i in range(n_layer)], xlabel="head", ylabel="layer")
        axis.set_xticklabels(range(n_head), fontsize=7)
        axis.set_yticklabels(range(n_layer), fontsize=7)
        axis.set_title(record.label, fontsize=9)
    if trained and trained.pattern:
        for layer in range(n_layer):
            for head in range(n_head):
                axis = figure.add_subplot(grid[layer, len(with_heads) + head])
                axis.imshow(trained.pattern[layer][head], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
                axis.set_xticks([])
                axis.set_yticks([])
                if layer == 0:
                    axis.set_title(f"head {head}", fontsize=8)
                if head == 0:
                    axis.set_ylabel(f"layer {layer}", fontsize=8)
    figure.legend(handles=[Patch(color=ROLE_COLORS[r], label=r) for r in (*ROLES, "broad", "mixed")],
                  loc="lower center", ncol=6, fontsize=8)
    figure.suptitle(f"{experiment.title}: every head named by where its attention goes"
                    + (f"; right: the {trained.label} model's patterns on a val window" if trained and trained.pattern else ""),
                    fontsize=10)
    figure.subplots_adjust(bottom=0.18, top=0.86, wspace=0.3)
    return figure


PLOTS = {"loss": plot_loss, "gradients": plot_gradients, "pattern": plot_pattern, "activations": plot_activations,
         "shuffle": plot_shuffle, "entropy": plot_entropy, "parameters": plot_parameters, "kv_cache": plot_kv_cache,
         "logits": plot_logits, "shape": plot_shape, "heads": plot_heads}

