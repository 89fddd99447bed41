"""Where glassgpt keeps what it makes: one cache root, with data, tokenizers, shards and runs under it.

    $GLASSGPT_HOME (default ~/.cache/glassgpt)/
      data/<corpus>/...        downloaded raw files (verified by sha256 where known)
      tokenizers/<name>/       trained tokenizers
      shards/<key>/            token shards (memory-mapped), one folder per (corpus, tokenizer)
      runs/<run-name>/         config.json, metrics.jsonl, samples.txt, plots/, checkpoints/
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from glassgpt.errors import UsageError

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def home() -> Path:
    root = os.environ.get("GLASSGPT_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "glassgpt"


def data_dir() -> Path:
    return home() / "data"


def tokenizers_dir() -> Path:
    return home() / "tokenizers"


def shards_dir() -> Path:
    return home() / "shards"


def runs_dir() -> Path:
    return home() / "runs"


def check_name(name: str, what: str) -> str:
    """Names become folder names, so they may not contain path separators or start with a dot."""
    if not _NAME_PATTERN.match(name or ""):
        raise UsageError(
            f"invalid {what} name {name!r}: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 100 characters)"
        )
    return name


def run_dir(name: str) -> Path:
    return runs_dir() / check_name(name, "run")
