"""What each stage trains on. A stage is a data source and defaults on top of the one training loop:

    base  a corpus's token stream (TokenLoader); val: bits per byte over the whole val split;
          samples: continuations of the corpus's prompts
    mid   a conversation mixture, rendered and packed into full rows (ConversationLoader, pack);
          starts from the --from run's weights
    sft   the same, one or more whole conversations per row, padded; conversations longer than a
          row are skipped and counted (never cut inside an assistant turn)

For mid and sft, val is the loss and bits per byte of the assistant tokens (the ones the loss mask
counts) of the mixture's val split, and samples are chat replies to fixed prompts, tools on.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from glassgpt import device as devices
from glassgpt import paths
from glassgpt.config import TrainConfig
from glassgpt.data.loader import ConversationLoader, TokenLoader, conversation_batches, sequential_windows
from glassgpt.data.prepare import default_tokenizer_name, prepare_data
from glassgpt.errors import UsageError
from glassgpt.tokenizer import Tokenizer

# The fixed prompts a chat stage answers at each evaluation: who it is, a sum, a letter count.
CHAT_SAMPLE_PROMPTS = ("Who are you?", "What is 37 + 48?", "How many r are in strawberry?")


@dataclass
class StageData:
    tokenizer: Tokenizer
    tokenizer_name: str
    loader: TokenLoader | ConversationLoader
    val_batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # a fresh pass each evaluation
    samples: Callable[[torch.nn.Module, Callable], list[tuple[str, str]]]  # (prompt, reply) pairs
    summary: list[str]  # printed at the start: what the run trains on
    record: dict  # config.json's "data"
    parent: dict | None = None  # {"run", "step", "stage"}: the run whose weights a chat stage starts from
    facts: dict | None = field(default=None)  # what the identity task told the model


def prepare(config: TrainConfig, runtime: devices.Runtime, eval_batch: int, say=print,
            saved: dict | None = None) -> StageData:
    """The stage's data. `saved` is the run's config.json when resuming: a chat stage then rebuilds
    exactly the mixture it started with (the same identity facts), without needing its parent."""
    if config.stage == "base":
        return _base(config, runtime, eval_batch, say)
    return _chat(config, runtime, eval_batch, say, saved)


def _base(config: TrainConfig, runtime, eval_batch: int, say) -> StageData:
    from glassgpt.engine import Engine, complete

    corpus, tokenizer, data = prepare_data(config, runtime, say)
    loader = TokenLoader(data.train, config.device_batch_size, config.seq_len, config.seed,
                         runtime.rank, runtime.world_size, runtime.device)

    def samples(model, autocast) -> list[tuple[str, str]]:
        engine = Engine(model, autocast)
        return [(prompt, complete(engine, tokenizer, prompt, config.sample_tokens, temperature=0.8, top_k=50,
                                  seed=config.seed + i)) for i, prompt in enumerate(corpus.sample_prompts)]

    meta = data.meta
    return StageData(
        tokenizer, config.tokenizer or default_tokenizer_name(corpus, config.vocab_size), loader,
        val_batches=lambda: sequential_windows(data.val, config.seq_len, eval_batch, runtime.rank, runtime.world_size),
        samples=samples,
        summary=[f"data: {corpus.key}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
                 f"({meta['train_bytes'] / max(1, meta['train_tokens']):.2f} bytes/token)"],
        record={"corpus": corpus.key, **{k: meta[k] for k in ("train_tokens", "val_tokens", "train_bytes", "val_bytes")}})


def _chat(config: TrainConfig, runtime, eval_batch: int, say, saved: dict | None) -> StageData:
    from glassgpt.chat.render import missing_chat_tokens, render_conversation
    from glassgpt.model.scaling import count_parameters
    from glassgpt.runs import checkpoint_of, read_run_config
    from glassgpt.tasks import mixtures
    from glassgpt.tasks.base import Facts

    if saved is not None:  # a resumed run: its own tokenizer copy and the facts it started with
        tokenizer = Tokenizer.load(paths.run_dir(config.run) / "tokenizer.json")
        parent, facts = saved.get("parent"), Facts(**saved["identity"])
    else:
        parent_dir = paths.run_dir(config.from_run)
        parent_config = read_run_config(parent_dir)
        tokenizer = Tokenizer.load(parent_dir / "tokenizer.json")
        missing = missing_chat_tokens(tokenizer)
        if missing:
            raise UsageError(f"--from {config.from_run}: its tokenizer has no {', '.join(missing)} token(s), so it "
                             "cannot render conversations; train the base run with a glassgpt tokenizer "
                             "(glassgpt tokenizer train reserves them)")
        step = int(checkpoint_of(config.from_run).name.split("-")[1])
        parent = {"run": config.from_run, "step": step, "stage": parent_config["train"].get("stage", "base")}
        facts = Facts(run=config.model_name or config.run, parameters=count_parameters(config.model_config(tokenizer.vocab_size)).total,
                      trainer=config.identity_name or _user_name(), pretraining=_pretraining(parent_config),
                      chat_data=mixtures.describe_spec(config.mixture), context=config.seq_len)
    mixture = mixtures.parse_mixture(config.mixture)
    train = mixtures.build(mixture, "train", facts, config.seed)
    val = mixtures.build(mixture, "val", facts, config.seed)

    row = config.seq_len + 1  # a row holds seq_len inputs and their targets: seq_len + 1 tokens
    pack = config.stage == "mid"

    def render(built, what: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
        rendered, too_long = [], 0
        for conversation, source in zip(built.conversations, built.sources):
            ids, mask = render_conversation(conversation, tokenizer)
            if len(ids) > row and not pack and what == "train":
                if mixtures.is_user_file(source):  # the user's own conversations: say which, don't drop it
                    raise UsageError(_too_long_in_file(source, tokenizer, config.seq_len))
                too_long += 1
                continue
            rendered.append((np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=np.uint8)))
        return rendered, too_long

    train_rows, skipped = render(train, "train")
    val_rows, _ = render(val, "val")
    if not any(mask[1:].any() for _, mask in val_rows):
        raise UsageError(f"mixture {config.mixture!r} has no val conversations with an assistant reply to "
                         "evaluate on; add a task to it (see glassgpt data list)")
    pad_id = tokenizer.bos_id
    loader = ConversationLoader(train_rows, config.device_batch_size, config.seq_len, config.seed, runtime.rank,
                                runtime.world_size, runtime.device, pack=pack, pad_id=pad_id)
    train_tokens = sum(len(ids) for ids, _ in train_rows)
    learned = sum(int(mask.sum()) for _, mask in train_rows)
    epoch_rows, placed = loader.epoch_plan()
    epoch_steps = epoch_rows / (config.device_batch_size * runtime.world_size)
    how = (f"packing leaves out {1 - placed / train_tokens:.0%} of the tokens: the ends of conversations cut "
           "at a row's end" if pack else f"padding fills {1 - placed / (epoch_rows * row):.0%} of the rows")
    summary = [
        f"from: run {parent['run']} at step {parent['step']} ({parent['stage']}); mixture {config.mixture!r}: "
        + ", ".join(f"{name} {count:,}" for name, count in train.counts.items()),
        f"data: {len(train_rows):,} conversations, {train_tokens:,} tokens ({learned:,} learned: assistant "
        f"replies and tool calls); val {len(val_rows):,} conversations",
        f"one epoch is {_steps(epoch_steps)}; {how}",
    ]
    if skipped:
        summary.append(f"skipped {skipped:,} conversations longer than a row of {row} tokens (SFT never cuts one)")
    if sum(train.dropped.values()):
        summary.append("contamination guard: left out " + ", ".join(
            f"{n} {name}" for name, n in train.dropped.items() if n) + " (their questions are in an evaluation split)")

    def samples(model, autocast) -> list[tuple[str, str]]:
        return [(f"user: {prompt}\nassistant: ", reply) for prompt, reply in
                chat_replies(model, tokenizer, CHAT_SAMPLE_PROMPTS, config.sample_tokens, autocast, config.seed)]

    record = {"mixture": config.mixture, "conversations": dict(train.counts), "guard_dropped": dict(train.dropped),
              "too_long_skipped": skipped, "train_conversations": len(train_rows), "train_tokens": train_tokens,
              "learned_tokens": learned, "val_conversations": len(val_rows)}
    return StageData(
        tokenizer, config.tokenizer, loader,
        val_batches=lambda: conversation_batches(val_rows, config.seq_len, eval_batch, pad_id, runtime.rank,
                                                 runtime.world_size),
        samples=samples, summary=summary, record=record, parent=parent, facts=facts.__dict__)


def _steps(steps: float) -> str:
    if steps < 1:
        return "less than one step"
    return f"{steps:,.0f} steps" if steps >= 10 else f"{steps:.1f} steps"


def _too_long_in_file(path: str, tokenizer: Tokenizer, seq_len: int) -> str:
    """Which conversation of a user's file does not fit a row, by its line (read again: only on error)."""
    from glassgpt.chat.conversation import read_conversations
    from glassgpt.chat.render import render_conversation

    row = seq_len + 1
    for line, conversation in read_conversations(path):
        length = len(render_conversation(conversation, tokenizer)[0])
        if length > row:
            return (f"{path}:{line}: the conversation is {length:,} tokens, longer than a training row of {row:,} "
                    f"(--seq-len {seq_len} + 1); SFT never cuts a conversation: shorten it or raise --seq-len")
    return f"{path}: a conversation is longer than a training row of {row:,} tokens (--seq-len {seq_len} + 1)"


def chat_replies(model, tokenizer: Tokenizer, prompts, max_tokens: int, autocast=None, seed: int = 0,
                 temperature: float = 0.8) -> list[tuple[str, str]]:
    """(prompt, reply) for each prompt, tools on; tool calls shown as [calculator: 37 + 48 → 85]."""
    import contextlib

    from glassgpt.chat.render import render_for_completion
    from glassgpt.engine import Engine

    engine = Engine(model, autocast or contextlib.nullcontext, tokenizer)
    stops = {tokenizer.special_ids["<|assistant_end|>"], tokenizer.bos_id}
    replies = []
    for i, prompt in enumerate(prompts):
        ids = render_for_completion({"messages": [{"role": "user", "content": prompt}]}, tokenizer)
        replies.append((prompt, reply_text(engine.stream(ids, 1, max_tokens, temperature, top_k=50, seed=seed + i,
                                                         stop_ids=stops))))
    return replies


def reply_text(events) -> str:
    """A reply as one line of text, tool calls and results shown inline."""
    pieces, call, result = [], None, None

    def close_call() -> None:
        nonlocal call, result
        if call is not None:
            pieces.append(f"[calculator: {call.strip()} → {result.strip()}]" if result is not None
                          else f"[calculator: {call.strip()} …]")
        call = result = None

    for event in events:
        if event.kind == "special" and not event.text:
            continue  # a delimiter: the next token's kind says where the reply is
        if event.kind == "tool_call":
            if result is not None:
                close_call()  # a second call right after the first's result
            call = (call or "") + event.text
        elif event.kind == "tool_result":
            result = (result or "") + event.text  # a result may take several tokens
        else:
            close_call()
            pieces.append(event.text)
    close_call()
    return "".join(pieces)


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user database entry (some containers)
        return "a glassgpt user"


def _pretraining(parent_config: dict) -> str:
    """What the base model was pretrained on, in words: a base run's corpus, or what a chat run's
    own identity facts already say (they were taken from its base run)."""
    if "identity" in parent_config:
        return parent_config["identity"]["pretraining"]
    from glassgpt.data.sources import describe_corpus

    return describe_corpus(parent_config.get("data", {}).get("corpus", parent_config["train"].get("data", "text")))
