"""`glassgpt chat`: one reply with -p, a conversation from piped stdin, slash commands, history
trimming, tool calls shown apart from the words, and bad input."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from rich.console import Console

from conftest import train_once
from glassgpt.chat.session import ChatModel, collect
from glassgpt.chat.terminal import _Printer
from glassgpt.cli import main
from glassgpt.engine import Event


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A tiny base run (its tokenizer has the chat tokens), trained once for the module."""
    return train_once(tmp_path_factory, "tiny", "--max-steps", "2", "--eval-every", "0")


@pytest.fixture
def tiny(glass_home, trained_runs):
    shutil.copytree(trained_runs, glass_home / "runs", dirs_exist_ok=True)
    return "tiny"


def chat(*args: str) -> int:
    return main(["chat", "--run", "tiny", "--max-tokens", "6", "--seed", "1", *args])


def test_one_reply_with_p_is_seeded_and_says_a_base_run_only_continues_text(tiny, capsys):
    assert chat("-p", "hello there") == 0
    first = capsys.readouterr()
    assert "is a base model" in first.err and "--stage mid --from tiny" in first.err
    assert chat("-p", "hello there") == 0
    assert capsys.readouterr().out == first.out  # the same seed, the same reply
    assert first.out.strip()


def test_the_reply_is_what_the_session_generates_for_the_same_conversation(tiny, capsys):
    from glassgpt.runs import load_run

    assert chat("-p", "hi", "--temperature", "0") == 0
    printed = capsys.readouterr().out
    session = ChatModel(load_run("tiny"))
    reply, = collect(session.reply([{"role": "user", "content": "hi"}], max_tokens=6, temperature=0))
    assert reply.text.strip() and printed.strip() == reply.text.strip()


def test_an_empty_prompt_is_refused_before_anything_compiles(tiny, capsys, monkeypatch):
    from glassgpt.engine import Engine

    def must_not_compile(self, on_graph=None):
        raise AssertionError("compiled before the usage check")

    monkeypatch.setattr(Engine, "compile_now", must_not_compile)
    assert chat("-p", "   ", "--compile") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: -p is empty: give the message to reply to"


@pytest.mark.slow  # compiling the decode step takes ~15 s
def test_a_compiled_decode_step_gives_the_same_reply(tiny, capsys):
    assert chat("-p", "hi", "--temperature", "0") == 0
    eager = capsys.readouterr().out
    assert chat("-p", "hi", "--temperature", "0", "--compile") == 0
    out, err = capsys.readouterr()
    assert out == eager and eager.strip()
    assert "compiled the decode step: 1 graph in" in err  # the tiny run's context reads one span


def test_piped_lines_are_a_multi_turn_conversation_with_commands(tiny, capsys, monkeypatch):
    lines = ["first message", "/temperature 0", "/top-k 5", "/temperature hot", "/system Be brief.",
             "second message", "/frobnicate", "/help", "/clear", "third", "/quit", "never read"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert chat() == 0
    out, err = capsys.readouterr()
    assert "(temperature 0, top-k 5)" in err
    assert "/temperature takes a number ≥ 0, e.g. 0.6, not 'hot'" in err
    assert "(system message set; a new conversation)" in err
    assert "unknown command /frobnicate" in err and "/system TEXT" in err  # /help lists the commands
    assert "(a new conversation)" in err
    assert len([line for line in out.splitlines() if line.strip()]) <= 3  # three replies, nothing after /quit


def test_the_oldest_turns_are_dropped_when_the_context_is_full_and_it_says_so(tiny, capsys, monkeypatch):
    # the tiny run's context is 32 tokens: a few turns fill it
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"message number {i} is here\n" for i in range(6))))
    assert chat("--max-tokens", "4") == 0
    err = capsys.readouterr().err
    assert "oldest message(s) no longer fit in the model's 32-token context and were dropped" in err


def test_a_message_longer_than_the_context_is_refused(tiny, capsys, monkeypatch):
    assert chat("-p", "word " * 200) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].startswith("error: ") and "context holds 32" in err[-1]
    # in a conversation, the one message is refused and the next is answered
    monkeypatch.setattr("sys.stdin", io.StringIO("word " * 200 + "\nhi\n"))
    assert chat() == 0
    out, err = capsys.readouterr()
    assert "context holds 32: send a shorter one" in err and out.strip()


@pytest.mark.parametrize("args, code, fragment", [
    (["chat"], 2, "glassgpt chat needs --run NAME"),
    (["chat", "--run", "nobody", "-p", "hi"], 1, "no run named 'nobody'"),
    (["chat", "--run", "tiny", "-p", "  "], 2, "-p is empty"),
    (["chat", "--run", "tiny", "--top-k", "-3", "-p", "x"], 2, "--top-k must be 0 or more"),
    (["chat", "--run", "tiny", "--temperature", "-1", "-p", "x"], 2, "--temperature"),
])
def test_bad_chat_input_is_one_clear_line(tiny, capsys, args, code, fragment):
    assert main(args) == code
    err = capsys.readouterr().err
    assert fragment in err.strip().splitlines()[-1] and "Traceback" not in err


def test_tool_calls_and_results_print_apart_from_the_words():
    buffer = io.StringIO()
    printer = _Printer(Console(file=buffer, width=200, color_system=None))
    events = [Event(0, 1, text="Let me add. "), Event(0, 2, kind="special"), Event(0, 3, kind="tool_call", text="37 + 48"),
              Event(0, 4, kind="special"), Event(0, 5, True, "tool_result", "85"), Event(0, 6, True, "special"),
              Event(0, 7, text="It is 85.", finish="stop")]
    for event in events:
        printer.show(event)
    printer.end()
    assert buffer.getvalue() == "Let me add. [calculator: 37 + 48 → 85]It is 85.\n"


def test_chat_render_shows_a_file_token_by_token_and_writes_html(tiny, tmp_path, capsys):
    conversation = {"messages": [{"role": "user", "content": "What is 37 + 48?"},
                                 {"role": "assistant", "content": [{"type": "tool_call", "text": "37 + 48"},
                                                                   {"type": "tool_result", "text": "85"},
                                                                   {"type": "text", "text": "85"}]}]}
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps(conversation) + "\n", encoding="utf-8")
    page = tmp_path / "out" / "chats.html"
    page.parent.mkdir()
    assert main(["chat", "render", str(chats), "--run", "tiny", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "<|assistant_end|>" in out and "trained" in out
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "http" not in html.split("<body", 1)[0].lower().replace("http-equiv", "")
    assert main(["chat", "render", str(tmp_path / "missing.jsonl")]) == 2
    assert "no conversation file" in capsys.readouterr().err
