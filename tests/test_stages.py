"""Chat stages end to end: a base run → midtraining → SFT, the loaders that feed them, exact
resume, and every bad input refused in one line before anything is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import train_once
from glassgpt.cli import main
from glassgpt.data.loader import ConversationLoader, conversation_batches

# A chat stage on the tiny base model: a few steps over small slices of two synthetic tasks.
TINY_STAGE = ["--mixture", "identity:0.05,arithmetic:0.01", "--seq-len", "64", "--device-batch-size", "4",
              "--eval-batch-size", "16", "--sample-tokens", "8", "--dtype", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory):
    """A tiny base run, trained once for the module (copied into each test's own cache root)."""
    return train_once(tmp_path_factory, "base", "--max-steps", "2", "--eval-every", "0")


@pytest.fixture
def base(glass_home, base_runs):
    shutil.copytree(base_runs, glass_home / "runs", dirs_exist_ok=True)
    return glass_home / "runs" / "base"


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def stage(name: str, *args: str) -> int:
    return main(["train", "--stage", name, *TINY_STAGE, *args])


def test_mid_then_sft_from_a_base_run_with_the_same_loop_and_run_files(base, glass_home, capsys):
    assert stage("mid", "--from", "base", "--run", "mid", "--max-steps", "4", "--eval-every", "2") == 0
    out = capsys.readouterr().out
    mid = glass_home / "runs" / "mid"
    saved = json.loads((mid / "config.json").read_text())
    assert saved["train"]["stage"] == "mid" and saved["parent"] == {"run": "base", "step": 2, "stage": "base"}
    assert saved["model"]["sequence_len"] == 64  # the rope model's context grew to the stage's rows
    assert saved["identity"]["run"] == "mid" and saved["identity"]["context"] == 64
    assert saved["data"]["conversations"] == {"identity": 100, "arithmetic": 40}
    rows = records(mid)
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 2, 4]
    assert all(r["val_bpb"] > 0 for r in rows if "val_loss" in r)
    assert all(0 < r["counted_tokens"] < 4 * 64 for r in rows if "loss" in r)  # masked tokens are not counted
    assert "step 4: val loss" in out
    logged = (mid / "samples.txt").read_text()
    assert "=== step 0 ===" in logged  # a stage starts from a trained model: its step-0 replies are worth reading
    last = logged.split("=== step 4 ===\n")[1]
    for prompt in ("Who are you?", "What is 37 + 48?", "How many r are in strawberry?"):
        assert f"user: {prompt}\nassistant: " in last  # chat replies, not text continuations
    # the stage started from the base run's weights, not from a fresh initialisation
    parent = load_file(base / "checkpoints" / "step-000002" / "model.safetensors")
    first = load_file(mid / "checkpoints" / "step-000004" / "model.safetensors")
    assert set(parent) == set(first)
    assert (mid / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()

    assert stage("sft", "--from", "mid", "--run", "sft", "--max-steps", "2", "--eval-every", "2") == 0
    sft = json.loads((glass_home / "runs" / "sft" / "config.json").read_text())
    assert sft["parent"]["run"] == "mid" and sft["parent"]["stage"] == "mid"
    assert sft["identity"]["pretraining"] == saved["identity"]["pretraining"]  # facts carried from the base
    # rows of 65 tokens: the longer identity answers do not fit whole, so SFT skips and counts them
    assert sft["data"]["too_long_skipped"] > 0
    assert sft["data"]["too_long_skipped"] + sft["data"]["train_conversations"] == 140  # identity 100 + arithmetic 40


def test_a_stage_reads_seq_len_like_any_other_integer_flag(base):
    from glassgpt.config import resolve
    from glassgpt.errors import UsageError

    config = resolve(None, None, {"stage": "mid", "from_run": "base", "run": "m", "seq_len": "1_024"})
    assert config.seq_len == 1024 and config.model["sequence_len"] == 1024
    with pytest.raises(UsageError, match="--seq-len"):
        resolve(None, None, {"stage": "mid", "from_run": "base", "run": "m", "seq_len": "abc"})


def test_a_chat_stage_starts_from_its_parents_weights(base, glass_home):
    assert stage("mid", "--from", "base", "--run", "m0", "--max-steps", "1", "--eval-every", "0",
                 "--matrix-lr", "0", "--embedding-lr", "0", "--unembedding-lr", "0", "--scalar-lr", "0") == 0
    parent = load_file(base / "checkpoints" / "step-000002" / "model.safetensors")
    child = load_file(glass_home / "runs" / "m0" / "checkpoints" / "step-000001" / "model.safetensors")
    for name, tensor in parent.items():
        if name.startswith(("cos", "sin")):
            continue  # rotary tables are rebuilt for the longer context
        assert torch.equal(tensor, child[name]), name


def test_a_chat_stage_resumes_exactly(base, glass_home):
    assert stage("mid", "--from", "base", "--run", "whole", "--max-steps", "6", "--eval-every", "0",
                 "--checkpoint-every", "3", "--keep-checkpoints", "2") == 0
    shutil.copytree(glass_home / "runs" / "whole", glass_home / "runs" / "cut")
    shutil.rmtree(glass_home / "runs" / "cut" / "checkpoints" / "step-000006")  # as if stopped at step 3
    shutil.rmtree(glass_home / "runs" / "base")  # a resumed stage needs nothing of its parent
    assert main(["train", "--run", "cut", "--resume"]) == 0
    whole = {r["step"]: r["loss"] for r in records(glass_home / "runs" / "whole") if "loss" in r}
    cut = {r["step"]: r["loss"] for r in records(glass_home / "runs" / "cut") if "loss" in r}
    assert sorted(cut) == list(range(1, 7))
    for step in range(4, 7):
        assert cut[step] == pytest.approx(whole[step], abs=1e-6), step


def _one_line_error(capsys, fragment: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def _write(path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return str(path)


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize("name, lines, fragment", [
    ("json", [GOOD, '{"messages": [', GOOD], "bad.jsonl:2: invalid JSON"),
    ("role", [{"messages": [{"role": "wizard", "content": "x"}]}], "bad.jsonl:1: message 1 has unknown role 'wizard'"),
    ("alternation", [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}],
     "bad.jsonl:1: message 2 is from the user but should be from the assistant"),
    ("empty", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}], "empty content"),
    ("long", [{"messages": [{"role": "user", "content": "to be or not " * 40}, {"role": "assistant", "content": "yes"}]}],
     "bad.jsonl:1: the conversation is 209 tokens, longer than a training row of 65 (--seq-len 64 + 1)"),
])
def test_a_bad_conversation_file_is_one_line_exit_2_and_writes_nothing(base, glass_home, tmp_path, capsys,
                                                                      name, lines, fragment):
    chats = _write(tmp_path / "bad.jsonl", lines)
    assert stage("sft", "--from", "base", "--run", "x", "--mixture", f"identity:0.01,{chats}") == 2
    _one_line_error(capsys, fragment)
    assert not (glass_home / "runs" / "x").exists()


def _run_without_chat_tokens(glass_home) -> None:
    shutil.copytree(glass_home / "runs" / "base", glass_home / "runs" / "plain")
    path = glass_home / "runs" / "plain" / "tokenizer.json"
    saved = json.loads(path.read_text())
    saved["special_tokens"] = ["<|bos|>"]
    path.write_text(json.dumps(saved))


def _run_without_checkpoint(glass_home) -> None:
    shutil.copytree(glass_home / "runs" / "base", glass_home / "runs" / "fresh")
    shutil.rmtree(glass_home / "runs" / "fresh" / "checkpoints")


@pytest.mark.parametrize("flags, prepare, fragment", [
    (["--from", "nowhere"], None, "--from nowhere: no run named 'nowhere'"),
    (["--from", "fresh"], _run_without_checkpoint, "--from fresh: "),
    (["--from", "plain"], _run_without_chat_tokens, "--from plain: its tokenizer has no <|system_start|>"),
    (["--from", "base", "--mixture", "middle"], None, "unknown mixture or task 'middle' (did you mean 'mid'?)"),
    (["--from", "base", "--data", "tinyshakespeare"], None, "give --mixture (see glassgpt data list), not --data"),
    (["--from", "base", "--depth", "4"], None, "--depth cannot be set with --stage"),
    ([], None, "add --from RUN"),
    (["--from", "x"], None, "--from x and --run x name the same run"),
])
def test_bad_stage_flags_are_one_line_exit_2_and_write_nothing(base, glass_home, capsys, flags, prepare, fragment):
    if prepare:
        prepare(glass_home)
    assert main(["train", "--stage", "sft", "--run", "x", *flags]) == 2
    _one_line_error(capsys, fragment)
    assert not (glass_home / "runs" / "x").exists()


def _conversations(lengths, learned_every=2):
    """Synthetic rendered conversations: ids start at a 'bos' of 0, every second token learned."""
    out = []
    for n, length in enumerate(lengths):
        ids = np.concatenate([[0], np.full(length - 1, n + 1)]).astype(np.int32)
        mask = (np.arange(length) % learned_every == 1).astype(np.uint8)
        out.append((ids, mask))
    return out


def test_packed_rows_are_full_and_start_at_a_conversation():
    loader = ConversationLoader(_conversations([5, 9, 3, 20, 7, 11]), batch_size=2, seq_len=15, pack=True)
    for _ in range(5):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (2, 15)
        assert (x[:, 0] == 0).all()  # bos-aligned: every row begins a conversation
        assert ((y == -1) | (y > 0)).all()  # targets are learned ids or -1, never the bos


def test_sft_rows_hold_whole_conversations_and_mask_the_padding():
    conversations = _conversations([5, 9, 3, 16, 7, 11])
    whole = {tuple(ids.tolist()) for ids, _ in conversations}
    loader = ConversationLoader(conversations, batch_size=1, seq_len=15, pack=False, pad_id=99)
    for _ in range(12):
        encoded = loader._next_row()  # one row of seq_len + 1 ids, -1 - id where not learned
        row = np.where(encoded < 0, -1 - encoded, encoded).tolist()
        padding = row.index(99) if 99 in row else len(row)
        assert all(t == 99 for t in row[padding:]) and (encoded[padding:] < 0).all()  # padding is never learned
        starts = [i for i, t in enumerate(row[:padding]) if t == 0]
        assert starts[0] == 0
        for a, b in zip(starts, starts[1:] + [padding]):
            assert tuple(row[a:b]) in whole  # every conversation whole, never cut
    with pytest.raises(ValueError, match="whole conversations"):
        ConversationLoader(_conversations([17]), batch_size=1, seq_len=15, pack=False)


def test_a_row_reaches_ahead_for_a_conversation_that_fits_before_it_cuts_or_pads():
    # in order: 10 fills 10 of a 16-token row; 9 does not fit in the 6 left, but 6 (two ahead) does
    conversations = _conversations([10, 9, 6, 16])
    for pack in (True, False):
        loader = ConversationLoader(conversations, batch_size=1, seq_len=15, pack=pack, pad_id=99)
        loader._cursor.order = np.arange(4)  # a known order instead of the seeded shuffle
        rows = []
        for _ in range(3):
            encoded = loader._next_row()
            rows.append(np.where(encoded < 0, -1 - encoded, encoded).tolist())
        assert rows[0] == [0] + [1] * 9 + [0] + [3] * 5  # 10, then the 6 from two ahead
        assert rows[1][:9] == [0] + [2] * 8  # the skipped 9 starts the next row
        if pack:
            assert rows[1][9:] == [0] + [4] * 6  # nothing fits the 7 left: the 16 is cut there
        else:
            assert rows[1][9:] == [99] * 7 and rows[2] == [0] + [4] * 15  # padded; the 16 gets a row


def test_the_epoch_plan_counts_the_rows_the_loader_really_makes():
    conversations = _conversations([5, 9, 3, 16, 7, 11, 4, 6, 14, 2])
    for pack in (True, False):
        loader = ConversationLoader(conversations, batch_size=1, seq_len=15, seed=5, pack=pack)
        rows, placed = loader.epoch_plan()
        made = 0
        while loader.epoch == 0 and loader.position < len(conversations):
            loader._next_row()  # the epoch's last row goes on into the next epoch's conversations
            made += 1
        assert made == rows
        total = sum(len(ids) for ids, _ in conversations)
        assert placed == total if not pack else placed <= total


def test_the_conversation_loader_state_resumes_the_same_batches():
    conversations = _conversations([5, 9, 3, 16, 7, 11, 4, 6, 12, 2, 8])
    reached_ahead = False
    for pack in (True, False):
        for stopped_after in range(1, 6):
            first = ConversationLoader(conversations, 2, 15, seed=3, pack=pack)
            for _ in range(stopped_after):
                first.next_batch()
            state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint's state.json keeps it
            reached_ahead |= bool(state["taken"])
            expected = [first.next_batch() for _ in range(4)]  # crosses an epoch boundary
            second = ConversationLoader(conversations, 2, 15, seed=3, pack=pack)
            second.load_state_dict(state)
            for (x, y), (x2, y2) in zip(expected, (second.next_batch() for _ in range(4))):
                assert torch.equal(x, x2) and torch.equal(y, y2)
    assert reached_ahead  # some states held conversations taken ahead: they are part of the state


def test_validation_batches_cover_every_conversation_once_in_order():
    conversations = _conversations([5, 9, 3, 12, 4])
    batches = list(conversation_batches(conversations, seq_len=11, batch_size=2, pad_id=0))
    # rows of 12 tokens, in order: [5] (9 does not fit after it), [9 + 3], [12], [4]
    assert [x.shape[0] for x, _ in batches] == [2, 2]
    firsts = [row.tolist() for x, _ in batches for row in x]
    assert [row[0] for row in firsts] == [0, 0, 0, 0]  # every row starts at a conversation
    learned = sum(int((y >= 0).sum()) for _, y in batches)
    # every learned target counted once (each conversation's first token is never a target)
    assert learned == sum(int(mask[1:].sum()) for _, mask in conversations)
    sharded = [list(conversation_batches(conversations, 11, 1, 0, rank, 2)) for rank in (0, 1)]
    assert sum(len(b) for b in sharded) == 4 and len(sharded[0]) == 2
