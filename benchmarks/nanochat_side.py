"""nanochat's side of the comparison benchmarks (`decode_vs_nanochat.py`, `train_vs_nanochat.py`).

nanochat is not part of glassgpt: its code is imported at run time from a checkout the user
fetched, and its model is built as nanochat's own scripts build it. Not a benchmark itself.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch


def nanochat_model(path: str, depth: int, vocab_size: int, sequence_len: int):
    """(model, config): nanochat's GPT at its own shape for this depth (width 64 x depth, head_dim
    128), built as its scripts build it (meta device, `to_empty`, `init_weights`), fresh weights."""
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        from nanochat.gpt import GPT, GPTConfig
    except ImportError as error:
        raise SystemExit(f"could not import nanochat from {path}: {error}; pass the folder of a nanochat checkout")
    width = 64 * depth
    heads = max(1, width // 128)
    config = GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=heads,
                       n_kv_head=heads, n_embd=width)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    return model, config


@contextlib.contextmanager
def intra_op_threads(threads: int | None):
    """Run the block with `threads` intra-op threads (None: as they are), restored afterwards: nanochat
    is timed both as it ships (torch's default threads) and on one thread, faster on a busy machine."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
