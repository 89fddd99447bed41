"""Batches of (input, target) token windows: seeded, resumable, and split across data-parallel ranks.

`TokenLoader` cuts a flat token stream (pretraining); `ConversationLoader` packs or pads rendered
conversations (midtraining, SFT). Both give (x, y) with y = -1 where the loss does not count.

An epoch cuts the token stream into windows of seq_len + 1 tokens (x = window[:-1],
y = window[1:]) starting at a random offset, then visits them in a random order; both come from
(seed, epoch), so the whole sequence of batches is a pure function of the seed. The cursor
(epoch, windows consumed) is all the state there is: saving it in a checkpoint makes resume exact.

With `world_size` ranks, each global batch is batch_size x world_size consecutive windows of the
permutation; rank r takes the r-th slice, so ranks never see the same window in a step.

An optimiser step of A micro-batches on W ranks therefore reads the same A x W x batch_size
consecutive windows as one of A x W micro-batches on one rank: N processes train on exactly the
batches one process would with gradient accumulation. The ragged end of an epoch is dropped a whole
optimiser step at a time (`micro_batches_per_step`), so that this holds across epochs too: with a
micro-batch at a time, one process would use windows that two processes drop.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from glassgpt.device import copies_through_pinned_memory
from glassgpt.errors import GlassError


class TokenLoader:
    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, device
        self.epoch, self.position = 0, 0  # position: windows of this epoch already consumed (all ranks)
        # Set by the training loop to its gradient accumulation steps: an epoch ends when a whole
        # optimiser step no longer fits in it (see the module's docstring).
        self.micro_batches_per_step = 1
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
        optimizer_step_windows = step_windows * self.micro_batches_per_step
        offset, order = self._order
        starts_a_step = self.position % optimizer_step_windows == 0
        if (self.position + step_windows > len(order)  # drop the ragged end, start a new epoch
                or starts_a_step and self.position + optimizer_step_windows > len(order)):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = offset, order = self._epoch_order(self.epoch)
        mine = order[self.position + self.rank * self.batch_size:][: self.batch_size]
        self.position += step_windows
        starts = offset + mine * self.seq_len
        windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)
        batch = _to_device(torch.from_numpy(windows), self.device)  # (B, T + 1)
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


# -- conversations (the chat stages) -------------------------------------------------------------


LOOKAHEAD = 256
"""How many of the next conversations a row may reach ahead for one that fits its remaining room."""


class _Cursor:
    """Where an epoch's order has been read to: everything before `position` is used, and so are
    the `taken` positions after it (conversations a row reached ahead for)."""

    def __init__(self, order: np.ndarray, position: int = 0, taken: set[int] | None = None):
        self.order, self.position, self.taken = order, position, set(taken or ())

    def done(self) -> bool:
        return self.position >= len(self.order)

    def advance(self) -> None:
        self.position += 1
        while self.position in self.taken:
            self.taken.remove(self.position)
            self.position += 1


class ConversationLoader:
    """Batches of rendered conversations for midtraining and SFT: rows that begin at a
    conversation's <|bos|>, with targets of -1 wherever the loss mask is 0 (and on padding).

    A row takes whole conversations in the epoch's order. When the next one does not fit in the
    room left, the longest of the following LOOKAHEAD conversations that does fit is taken
    instead (best fit: it fills the room with whole conversations, and the skipped one simply
    starts a later row). When none fits:

    - pack=True (midtraining): the shortest conversation in reach fills the rest of the row, cut
      there (its remainder is not used), so rows have no padding;
    - pack=False (SFT): the row is padded (targets -1) and the next row starts with it. SFT never
      cuts a conversation, so ones longer than a row must be left out before.

    As for `TokenLoader`, an epoch's order is a permutation drawn from (seed, epoch) and the cursor
    (epoch, conversations read, the ones taken ahead) is the whole state, so resume is exact; each
    global batch is batch_size x world_size consecutive rows, rank r taking the r-th slice.
    """

    def __init__(self, conversations: list[tuple[np.ndarray, np.ndarray]], batch_size: int, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 pack: bool = True, pad_id: int = 0):
        if not conversations:
            raise GlassError("no conversations to train on (the mixture is empty, or every conversation is "
                             "longer than a row: raise --seq-len)")
        if not pack and max(len(ids) for ids, _ in conversations) > seq_len + 1:
            raise ValueError("SFT rows take whole conversations: leave out the ones longer than a row first")
        self.conversations, self.batch_size, self.seq_len = conversations, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, device
        self.pack, self.pad_id = pack, pad_id
        self.lengths = np.array([len(ids) for ids, _ in conversations])
        self.epoch = 0
        # Rows run on from one epoch into the next, so N processes read what one process with N
        # times the accumulation reads without knowing the step's size; kept for a common interface.
        self.micro_batches_per_step = 1
        self._cursor = _Cursor(self._epoch_order(0))

    @property
    def position(self) -> int:
        return self._cursor.position

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.conversations))

    def _next_epoch(self) -> _Cursor:
        self.epoch += 1
        self._cursor = _Cursor(self._epoch_order(self.epoch))
        return self._cursor

    def _row_parts(self, cursor: _Cursor, next_cursor) -> list[tuple[int, int]]:
        """(conversation index, tokens of it) that make the next row; `next_cursor()` gives the
        next epoch's cursor when this one is used up (None: the row ends there)."""
        parts, room = [], self.seq_len + 1
        while room:
            if cursor.done():
                cursor = next_cursor()
                if cursor is None:
                    break
            index = int(cursor.order[cursor.position])
            length = int(self.lengths[index])
            if length <= room:
                parts.append((index, length))
                cursor.advance()
            elif (ahead := self._best_fit(cursor, room)) is not None:
                index = int(cursor.order[ahead])
                parts.append((index, int(self.lengths[index])))
                cursor.taken.add(ahead)
            elif self.pack or not parts:
                # Nothing fits: cut one at the row's end (its remainder is not used), the shortest
                # of those in reach, so that as little as possible is lost.
                cut = self._shortest(cursor)
                parts.append((int(cursor.order[cut]), room))
                cursor.advance() if cut == cursor.position else cursor.taken.add(cut)
            else:
                break  # SFT: padded; this conversation starts the next row
            room -= parts[-1][1]
        return parts

    def _best_fit(self, cursor: _Cursor, room: int) -> int | None:
        """The position, among the next LOOKAHEAD unused ones, of the longest conversation that fits."""
        best, best_length = None, 0
        for position in range(cursor.position + 1, min(cursor.position + 1 + LOOKAHEAD, len(cursor.order))):
            length = self.lengths[cursor.order[position]]
            if best_length < length <= room and position not in cursor.taken:
                best, best_length = position, length
        return best

    def _shortest(self, cursor: _Cursor) -> int:
        """The position of the shortest unused conversation among the next one and LOOKAHEAD after it."""
        reach = range(cursor.position, min(cursor.position + 1 + LOOKAHEAD, len(cursor.order)))
        return min((p for p in reach if p not in cursor.taken), key=lambda p: self.lengths[cursor.order[p]])

    def _next_row(self) -> np.ndarray:
        """One row of seq_len + 1 ids, with -1 - id where the token is not learned (decoded by
        `targets_of`): a single array keeps the row and its mask together."""
        parts = self._row_parts(self._cursor, self._next_epoch)
        row = np.concatenate([self.conversations[index][0][:n] for index, n in parts]).astype(np.int64)
        learned = np.concatenate([self.conversations[index][1][:n] for index, n in parts]).astype(bool)
        room = self.seq_len + 1 - len(row)
        if room:  # padding: never learned
            row = np.concatenate([row, np.full(room, self.pad_id, dtype=np.int64)])
            learned = np.concatenate([learned, np.zeros(room, dtype=bool)])
        return np.where(learned, row, -1 - row)

    def epoch_plan(self) -> tuple[int, int]:
        """(rows, tokens placed in them) of one epoch in epoch 0's order, by the same rules as
        the batches: what the start-of-run summary reports (a cut conversation loses its rest,
        padding leaves rows short, so tokens / row length is not the answer)."""
        cursor, rows, placed = _Cursor(self._epoch_order(0)), 0, 0
        while not cursor.done():
            parts = self._row_parts(cursor, lambda: None)
            rows, placed = rows + 1, placed + sum(n for _, n in parts)
        return rows, placed

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (batch_size, seq_len) int64 on the loader's device; y is -1 where not learned."""
        rows = [self._next_row() for _ in range(self.batch_size * self.world_size)]
        mine = np.stack(rows[self.rank * self.batch_size:][: self.batch_size])  # (B, T + 1)
        x, y = rows_to_batch(mine)
        return _to_device(torch.from_numpy(x), self.device), _to_device(torch.from_numpy(y), self.device)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self._cursor.position, "taken": sorted(self._cursor.taken),
                "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = state["seed"], state["epoch"]
        self._cursor = _Cursor(self._epoch_order(self.epoch), state["position"], set(state.get("taken", ())))


def rows_to_batch(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (B, T + 1) in the loader's encoding (-1 - id where not learned) → x, y (B, T)."""
    ids = np.where(rows < 0, -1 - rows, rows)
    x = ids[:, :-1]
    y = np.where(rows[:, 1:] < 0, -1, rows[:, 1:])
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def conversation_batches(conversations: list[tuple[np.ndarray, np.ndarray]], seq_len: int, batch_size: int,
                         pad_id: int = 0, rank: int = 0, world_size: int = 1
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every conversation once, in order: the validation batches of a chat stage, the same for
    every evaluation. Whole conversations share a row, as in SFT (most are far shorter than a row,
    so one per row would spend most of the evaluation on padding); one longer than a row has a row
    of its own, cut to it. Rank r takes every world_size-th batch."""
    width = seq_len + 1
    rows, row, room = [], [], width

    def close() -> None:
        nonlocal row, room
        if row:
            encoded = np.concatenate(row)
            rows.append(np.concatenate([encoded, np.full(room, -1 - pad_id, dtype=np.int64)]))
        row, room = [], width

    for ids, mask in conversations:
        ids, mask = ids[:width].astype(np.int64), mask[:width].astype(bool)
        if len(ids) > room:
            close()
        row.append(np.where(mask, ids, -1 - ids))
        room -= len(ids)
    close()
    for batch_index, first in enumerate(range(0, len(rows), batch_size)):
        if batch_index % world_size == rank:
            yield rows_to_batch(np.stack(rows[first:first + batch_size]))


def _to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host batch on `device`. To a GPU it goes through page-locked memory without waiting: the
    copy overlaps the work still queued on the GPU, which then uses it in order."""
    if copies_through_pinned_memory(device):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
