"""From a `--data` value to what training reads: the corpus, its tokenizer and its token shards.

`glassgpt train`, the trace, the attention views and the doc tests' warm cache all prepare data
through here, so a corpus is downloaded, its tokenizer trained and its shards built the same way
whoever asks first.
"""

from __future__ import annotations

import time

from glassgpt import device as devices
from glassgpt.config import TrainConfig
from glassgpt.data import shards as token_shards
from glassgpt.data import sources
from glassgpt.errors import GlassError, UsageError
from glassgpt.tokenizer import Tokenizer, tokenizer_path, train_and_save


def default_tokenizer_name(corpus: sources.Corpus, vocab_size: int) -> str:
    return f"{corpus.key}-{vocab_size}"


def prepare_tokenizer(config: TrainConfig, corpus: sources.Corpus, say=print) -> Tokenizer:
    """The run's tokenizer: the named one, or the corpus's default one (trained if missing)."""
    name = config.tokenizer or default_tokenizer_name(corpus, config.vocab_size)
    path = tokenizer_path(name)
    if path.exists():
        tokenizer = Tokenizer.load(path)
    elif config.tokenizer:
        raise GlassError(f"no tokenizer named {name!r}; train it with: glassgpt tokenizer train "
                         f"--data {config.data} --vocab-size {config.vocab_size} --name {name}")
    else:
        started = time.perf_counter()
        tokenizer = train_and_save(name, corpus.train(), config.vocab_size)
        say(f"trained tokenizer [bold]{name}[/] (vocab {tokenizer.vocab_size:,}) in "
            f"{time.perf_counter() - started:.1f}s → {path}")
    if tokenizer.vocab_size != config.vocab_size:
        raise UsageError(f"tokenizer {name!r} has {tokenizer.vocab_size:,} tokens but --vocab-size is "
                         f"{config.vocab_size:,}; make them agree")
    return tokenizer


def prepare_data(config: TrainConfig, runtime: devices.Runtime | None = None, say=print):
    """(corpus, tokenizer, shards). Rank 0 downloads and tokenises; the others wait, then read."""
    corpus = sources.resolve(config.data)
    main = runtime is None or runtime.is_main
    if main:
        corpus.prepare()
        tokenizer = prepare_tokenizer(config, corpus, say)
        data = token_shards.load_or_build(corpus, tokenizer, on_build=lambda m: say(m + " …"))
    barrier(runtime)
    if not main:
        tokenizer = prepare_tokenizer(config, corpus, say)
        data = token_shards.load_or_build(corpus, tokenizer)
    return corpus, tokenizer, data


def barrier(runtime: devices.Runtime | None) -> None:
    """Every rank waits here until all have arrived (a no-op in a single process)."""
    if runtime is not None and runtime.distributed:
        import torch.distributed as dist

        dist.barrier()
