"""Attention maps: where each head of each layer looks, and how spread out its attention is.

The reference model runs once on a text, in eval mode and without gradients, under a
`RecordingTracer("blocks.*.attn.pattern")`: asking for the pattern makes the model take its
explicit attention path (a test checks that path equals the fused kernel), so the patterns are
the model's own softmax(q·k / sqrt(D)), not a recomputation.

- `attention_entropy`: the entropy (nats) of every attention row, a pure function.
- `analyse_text`: patterns, entropies and the uniform-attention reference for one text.
- `plot_heatmaps`, `plot_entropy`: the two PNGs; `entropy_table`: the terminal table.
- `run`: what `glassgpt attention` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from glassgpt import atomic
from glassgpt.errors import UsageError
from glassgpt.model.gpt import GPT
from glassgpt.model.taps import RecordingTracer

MAX_LABELLED_TOKENS = 40  # above this, token labels on the heatmap axes would overlap


def attention_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each attention row: pattern (..., T, Tk), rows summing to 1 → (..., T).

    H = -Σ_j p_j ln p_j, with 0 · ln 0 = 0 (masked keys have p = 0 exactly). A row spread evenly
    over n keys has ln n, a row on a single key has 0.
    """
    return -torch.xlogy(pattern, pattern).sum(dim=-1)


def uniform_entropy(n_queries: int, n_keys: int, causal: bool) -> torch.Tensor:
    """Entropy of each row of uniform attention, (n_queries,): ln(i + 1) for causal row i (it may
    see keys 0..i), ln(n_keys) for every row otherwise. The most a row can have."""
    if causal:
        allowed = torch.arange(1, n_queries + 1, dtype=torch.float64)
    else:
        allowed = torch.full((n_queries,), float(n_keys), dtype=torch.float64)
    return allowed.log()  # (n_queries,) float64


@dataclass
class AttentionMaps:
    source: str  # "run 'quickstart' at step 1000" or "a fresh nanochat model (depth 4, seed 1337)"
    token_ids: list[int]
    labels: list[str]  # one per token, printable
    patterns: torch.Tensor  # (L, H, T, T) fp32, rows sum to 1
    entropy: torch.Tensor  # (L, H, T) nats
    uniform: torch.Tensor  # (T,) nats: uniform attention, the most each row can have
    notices: list[str] = field(default_factory=list)

    @property
    def mean_entropy(self) -> torch.Tensor:
        """(L, H): each head's entropy averaged over query positions."""
        return self.entropy.mean(dim=-1)

    @property
    def mean_uniform(self) -> float:
        return float(self.uniform.mean())


@torch.no_grad()
def capture_patterns(model: GPT, token_ids: list[int]) -> torch.Tensor:
    """Run `model` once on `token_ids` (one sequence) and return its patterns, (L, H, T, T)."""
    model.eval()
    idx = torch.tensor([token_ids], dtype=torch.long, device=model.wte.weight.device)  # (1, T)
    with RecordingTracer("blocks.*.attn.pattern") as tracer:
        model(idx)
    layers = [tracer.tensors[f"blocks.{i}.attn.pattern"][0] for i in range(model.config.n_layer)]  # (H, T, T) each
    return torch.stack(layers).float().cpu()  # (L, H, T, T)


def token_label(piece: bytes) -> str:
    """A token's text as an axis label: visible whitespace, no matplotlib mathtext ($)."""
    text = piece.decode("utf-8", errors="replace")
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")


def analyse_text(model: GPT, tokenizer, text: str, source: str) -> AttentionMaps:
    """Encode `text` (after <|bos|>, as documents start in training), keep the first
    sequence_len tokens, capture the patterns and measure their entropy."""
    if not text:
        raise UsageError("--text is empty: give some text to look at")
    ids = tokenizer.encode(text, bos=True)
    limit = model.config.sequence_len
    notices = []
    if len(ids) > limit:
        notices.append(f"the text is {len(ids):,} tokens (with <|bos|>); the model reads at most {limit:,}, "
                       f"so only the first {limit:,} are used")
        ids = ids[:limit]
    patterns = capture_patterns(model, ids)
    T = len(ids)
    if T > MAX_LABELLED_TOKENS:
        notices.append(f"{T} tokens: the heatmaps have no token labels (they are drawn up to "
                       f"{MAX_LABELLED_TOKENS} tokens)")
    labels = [token_label(tokenizer.token_piece(i)) for i in ids]
    return AttentionMaps(source, ids, labels, patterns, attention_entropy(patterns),
                         uniform_entropy(T, T, model.config.causal).float(), notices)


# -- views ------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmaps(maps: AttentionMaps, path: Path) -> None:
    """A grid of heatmaps: rows = layers, columns = heads; in each, row i is where query token i
    puts its attention (colour 0 to 1), column j is key token j."""
    plt = _pyplot()
    n_layer, n_head, T, _ = maps.patterns.shape
    labelled = T <= MAX_LABELLED_TOKENS
    cell = min(max(2.4, 0.17 * T + 0.8), 7.0) if labelled else 3.0  # inches per heatmap
    cell = min(cell, 60.0 / max(n_layer, n_head))  # keep big models to a sane image size
    figure, axes = plt.subplots(n_layer, n_head, figsize=(cell * n_head + 1.2, cell * n_layer + 0.8),
                                squeeze=False, layout="constrained")
    font = max(4.0, min(8.0, 160.0 / max(T, 1)))
    image = None
    for layer in range(n_layer):
        for head in range(n_head):
            axis = axes[layer][head]
            image = axis.imshow(maps.patterns[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                                interpolation="nearest")
            axis.set_title(f"layer {layer} · head {head}  ({maps.mean_entropy[layer, head]:.2f} nats)", fontsize=8)
            if labelled:
                axis.set_xticks(range(T), maps.labels, rotation=90, fontsize=font)
                axis.set_yticks(range(T), maps.labels, fontsize=font)
            else:
                axis.set_xticks([])
                axis.set_yticks([])
            if layer == n_layer - 1:
                axis.set_xlabel("key (attended to)", fontsize=8)
            if head == 0:
                axis.set_ylabel("query (attending)", fontsize=8)
    note = "" if labelled else f"\n({T} tokens > {MAX_LABELLED_TOKENS}: token labels omitted)"
    figure.suptitle(f"attention patterns of {maps.source}{note}", fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight (each row sums to 1)")
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def plot_entropy(maps: AttentionMaps, path: Path) -> None:
    """Mean entropy per layer, one line per head, with uniform attention (the ceiling) dashed."""
    plt = _pyplot()
    mean = maps.mean_entropy  # (L, H)
    n_layer, n_head = mean.shape
    figure, axis = plt.subplots(figsize=(7, 4.2))
    layers = list(range(n_layer))
    for head in range(n_head):
        axis.plot(layers, mean[:, head].tolist(), "o-", lw=1.2, ms=4, label=f"head {head}")
    axis.axhline(maps.mean_uniform, color="black", ls="--", lw=1,
                 label=f"uniform attention ({maps.mean_uniform:.2f} nats)")
    axis.axhline(0.0, color="grey", ls=":", lw=1)
    axis.set(xlabel="layer", ylabel="mean attention entropy (nats)", xticks=layers,
             title=f"attention entropy over {len(maps.token_ids)} tokens\n{maps.source}")
    axis.title.set_fontsize(9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2 if n_head > 6 else 1, loc="best")
    figure.tight_layout()
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def entropy_table(maps: AttentionMaps, width: int = 80):
    """The terminal view: layers x heads, mean entropy over query positions, with the uniform
    reference as the last row; laid out to fit `width` with no number cut (many heads: the
    table turns so that heads are rows)."""
    from rich.console import Group
    from rich.text import Text

    from glassgpt.see.terminal import fit_table

    mean = maps.mean_entropy
    n_layer, n_head = mean.shape
    rows = [[layer, *(f"{mean[layer, head]:.3f}" for head in range(n_head))] for layer in range(n_layer)]
    rows.append(["uniform", *(f"{maps.mean_uniform:.3f}" for _ in range(n_head))])
    table = fit_table(["layer", *(f"head {head}" for head in range(n_head))], rows, width, show_edge=True)
    caption = (f"A causal row i (0-based) sees i+1 tokens, so it has at most ln(i+1) nats; uniform attention over "
               f"these {len(maps.token_ids)} tokens averages {maps.mean_uniform:.3f}. 0 = every query looks at a "
               f"single token.")
    return Group(Text("attention entropy (nats, mean over query positions)"), table, Text(caption))


# -- the command ------------------------------------------------------------------------------------


def fresh_model(depth: int, seed: int, say=lambda *a, **k: None):
    """A new nanochat model of `depth` with the default tokenizer (tinyshakespeare, 4,096 tokens;
    trained on first use), sized like a default training run."""
    from glassgpt.config import TrainConfig
    from glassgpt.data import sources
    from glassgpt.data.prepare import prepare_tokenizer

    train_config = TrainConfig(run="attention", data="tinyshakespeare", vocab_size=4096, depth=depth)
    corpus = sources.resolve(train_config.data)
    corpus.prepare()
    tokenizer = prepare_tokenizer(train_config, corpus, say)
    config = train_config.model_config(tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = GPT.build(config, "cpu")
    return model, tokenizer, f"a fresh nanochat model (depth {depth}, seed {seed})"


def run(run_name: str | None, text: str, out_dir: str | None = None, checkpoint: int | None = None,
        depth: int | None = None, seed: int = 1337) -> AttentionMaps:
    """`glassgpt attention`: maps of a run's checkpoint (or of a fresh model), saved and printed."""
    from glassgpt import ui

    out = ui.console()
    if not text:
        raise UsageError("--text is empty: give some text to look at")
    if run_name is not None:
        if depth is not None:
            raise UsageError("--depth is for a fresh model; a run has its own depth (drop --depth or --run)")
        from glassgpt.runs import load_run

        loaded = load_run(run_name, checkpoint, "cpu")
        model, tokenizer = loaded.model, loaded.tokenizer
        source = f"run {run_name!r} at step {loaded.step}"
        folder = Path(out_dir) if out_dir else loaded.folder / "plots" / "attention"
    else:
        if checkpoint is not None:
            raise UsageError("--checkpoint needs --run NAME (a fresh model has no checkpoints)")
        model, tokenizer, source = fresh_model(depth or 4, seed, say=out.print)
        folder = Path(out_dir) if out_dir else Path("attention")
    maps = analyse_text(model, tokenizer, text, source)
    for notice in maps.notices:
        ui.err_console().print(f"[yellow]note[/]: {notice}")
    plot_heatmaps(maps, folder / "heatmaps.png")
    plot_entropy(maps, folder / "entropy.png")
    layers, heads = model.config.n_layer, model.config.n_head
    out.print(f"{source}: {len(maps.token_ids)} tokens, {layers} layer{'s' * (layers != 1)} x {heads} "
              f"head{'s' * (heads != 1)}")
    out.print(entropy_table(maps, out.width))
    out.print(f"wrote {folder / 'heatmaps.png'} and {folder / 'entropy.png'}")
    return maps
