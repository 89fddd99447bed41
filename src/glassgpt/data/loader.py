"""Batches of (input, target) token windows: seeded, resumable, and split across data-parallel ranks.

An epoch cuts the token stream into windows of seq_len + 1 tokens (x = window[:-1],
y = window[1:]) starting at a random offset, then visits them in a random order; both come from
(seed, epoch), so the whole sequence of batches is a pure function of the seed. The cursor
(epoch, windows consumed) is all the state there is: saving it in a checkpoint makes resume exact.

With `world_size` ranks, each global batch is batch_size x world_size consecutive windows of the
permutation; rank r takes the r-th slice, so ranks never see the same window in a step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from glassgpt.errors import GlassError


class TokenLoader:
    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, device
        self.epoch, self.position = 0, 0  # position: windows of this epoch already consumed (all ranks)
        windows_needed = batch_size * world_size
        if windows_in(len(tokens), seq_len, offset=seq_len - 1) < windows_needed:
            raise GlassError(
                f"the training split has {len(tokens):,} tokens, fewer than one batch needs "
                f"({windows_needed} x {seq_len + 1} = {windows_needed * (seq_len + 1):,}); "
                "use more text, or lower --device-batch-size / --seq-len"
            )
        self._order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> tuple[int, np.ndarray]:
        """(start offset, permutation of window indices) for an epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(self.seq_len))
        return offset, rng.permutation(windows_in(len(self.tokens), self.seq_len, offset))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (batch_size, seq_len) int64 on the loader's device."""
        step_windows = self.batch_size * self.world_size
        offset, order = self._order
        if self.position + step_windows > len(order):  # drop the ragged end, start a new epoch
            self.epoch, self.position = self.epoch + 1, 0
            self._order = offset, order = self._epoch_order(self.epoch)
        mine = order[self.position + self.rank * self.batch_size:][: self.batch_size]
        self.position += step_windows
        starts = offset + mine * self.seq_len
        windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)
        batch = torch.from_numpy(windows)  # (B, T + 1)
        if torch.device(self.device).type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # contiguous: .view() works on them

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._epoch_order(self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()


def windows_in(n_tokens: int, seq_len: int, offset: int = 0) -> int:
    """Whole windows of seq_len + 1 tokens, stepping by seq_len, that fit after `offset`."""
    return max(0, (n_tokens - offset - 1) // seq_len)


def sequential_windows(tokens: np.ndarray, seq_len: int, batch_size: int, rank: int = 0,
                       world_size: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every token of `tokens` (after the first) as a target exactly once, in order: batches of
    (x, y) int64 arrays. The last window is padded with target -1 (ignored). Rank r takes every
    world_size-th batch. Used to evaluate on the whole validation split."""
    n_targets = len(tokens) - 1
    n_windows = -(-n_targets // seq_len)  # ceil
    batch_index = 0
    for first in range(0, n_windows, batch_size):
        if batch_index % world_size == rank:
            count = min(batch_size, n_windows - first)
            x = np.zeros((count, seq_len), dtype=np.int64)
            y = np.full((count, seq_len), -1, dtype=np.int64)
            for row in range(count):
                start = (first + row) * seq_len
                window = np.asarray(tokens[start:start + seq_len + 1], dtype=np.int64)
                x[row, : len(window) - 1] = window[:-1]
                y[row, : len(window) - 1] = window[1:]
            yield x, y
        batch_index += 1
