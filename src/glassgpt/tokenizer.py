"""Byte-level BPE: trained with rustbpe, encoded with tiktoken (both Rust), saved as plain JSON.

Text is first split by a GPT-4-style regex (words, numbers of at most two digits, punctuation runs,
whitespace), then each piece is merged byte pair by byte pair. Every byte is a token, so any UTF-8
text round-trips exactly. Special tokens for chat and tools are reserved now, at the top of the
vocabulary, so later stages (midtraining, SFT, tools) need no retraining.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from glassgpt import atomic, paths
from glassgpt.errors import GlassError, UsageError

# GPT-4's split pattern with numbers split into at most two digits (not three): with a small
# vocabulary, tokens spent on three-digit numbers are better spent on words.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

SPECIAL_TOKENS = [
    "<|bos|>",  # begins every document; generation starts here
    "<|system_start|>", "<|system_end|>",
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|tool_call_start|>", "<|tool_call_end|>",
    "<|tool_result_start|>", "<|tool_result_end|>",
]
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
FORMAT = "glassgpt-bpe-1"


class Tokenizer:
    """Encode text to token ids and back. Build with `Tokenizer.train` or `Tokenizer.load`."""

    def __init__(self, ranked_tokens: list[bytes], pattern: str = SPLIT_PATTERN,
                 special_tokens: list[str] = SPECIAL_TOKENS):
        import tiktoken  # imported here so that importing glassgpt stays fast

        self.ranked_tokens = ranked_tokens  # token bytes, index = id
        self.pattern = pattern
        # Every tokenizer glassgpt trains has all of SPECIAL_TOKENS; one saved with fewer (made
        # elsewhere, or edited) still loads for plain text, and the chat stages refuse it by name.
        self.special_tokens = list(special_tokens)
        n = len(ranked_tokens)
        self.special_ids = {name: n + i for i, name in enumerate(self.special_tokens)}
        self._encoding = tiktoken.Encoding(
            name="glassgpt",
            pat_str=pattern,
            mergeable_ranks={token: rank for rank, token in enumerate(ranked_tokens)},
            special_tokens=self.special_ids,
        )

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Learn merges from `texts` until the vocabulary (special tokens included) has
        `vocab_size` entries."""
        import rustbpe

        check_vocab_size(vocab_size)
        saw_text = False

        def checked(texts: Iterable[str]) -> Iterator[str]:
            nonlocal saw_text
            for text in texts:
                saw_text = saw_text or not text.isspace() and text != ""
                yield text

        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(checked(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        if not saw_text:
            raise GlassError("the corpus is empty (no text besides whitespace); give it some text to train on")
        ranked = sorted(trainer.get_mergeable_ranks(), key=lambda pair: pair[1])
        if len(ranked) < vocab_size - len(SPECIAL_TOKENS):
            # The corpus ran out of pairs to merge: too little text for this vocabulary.
            raise GlassError(
                f"the training text only supports a vocabulary of {len(ranked) + len(SPECIAL_TOKENS)} "
                f"tokens, fewer than the {vocab_size} asked for; use more text or a smaller --vocab-size"
            )
        return cls([bytes(token) for token, _ in ranked])

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as one JSON file (no pickle): pattern, special tokens, and every
        token's bytes in rank order (base64)."""
        atomic.write_text(path, self.to_json())

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "tokens": [base64.b64encode(token).decode("ascii") for token in self.ranked_tokens],
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            special = data["special_tokens"]
            unknown = [name for name in special if name not in SPECIAL_TOKENS]
            if unknown or "<|bos|>" not in special or len(set(special)) != len(special):
                raise ValueError(f"its special tokens ({', '.join(special)}) are not this version of glassgpt's")
            tokens = [base64.b64decode(token) for token in data["tokens"]]
            return cls(tokens, data["pattern"], special)
        except FileNotFoundError:
            raise GlassError(f"no tokenizer at {path}") from None
        except (ValueError, KeyError, TypeError) as error:
            raise GlassError(f"tokenizer file {path} is not readable ({error}); retrain it") from None

    # -- using ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.ranked_tokens) + len(self.special_tokens)

    @property
    def bos_id(self) -> int:
        return self.special_ids["<|bos|>"]

    @property
    def fingerprint(self) -> str:
        """Short content hash: token shards made with this tokenizer are filed under it."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings inside text are encoded as plain text, so
        user data can never inject control tokens."""
        ids = self._encoding.encode_ordinary(text)
        return [self.bos_id, *ids] if bos else ids

    def encode_batch(self, texts: list[str], bos: bool = False) -> list[list[int]]:
        """Encode many texts in parallel on all cores."""
        batches = self._encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
        return [[self.bos_id, *ids] for ids in batches] if bos else batches

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that do not form complete UTF-8 characters become U+FFFD."""
        return self._encoding.decode(list(ids))

    def token_piece(self, token_id: int) -> bytes:
        if token_id < len(self.ranked_tokens):
            return self.ranked_tokens[token_id]
        return self.special_tokens[token_id - len(self.ranked_tokens)].encode()

    def token_bytes(self) -> np.ndarray:
        """Bytes of text each id stands for (0 for special tokens): turns nats per token into
        bits per byte, which compares models across tokenizers."""
        lengths = [len(token) for token in self.ranked_tokens] + [0] * len(self.special_tokens)
        return np.array(lengths, dtype=np.int32)


def check_vocab_size(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise UsageError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 byte tokens + {len(SPECIAL_TOKENS)} "
            f"special tokens), not {vocab_size!r}"
        )
    if vocab_size > 2**32 - 1:
        raise UsageError(f"vocab_size {vocab_size} is too large (at most 4,294,967,295)")


def tokenizer_path(name: str) -> Path:
    return paths.tokenizers_dir() / paths.check_name(name, "tokenizer") / "tokenizer.json"


def train_and_save(name: str, texts: Iterator[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer.train(texts, vocab_size)
    tokenizer.save(tokenizer_path(name))
    return tokenizer
