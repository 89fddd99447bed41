"""Conversations: the format's rules, rendering with its loss mask, and the round trip back."""

from __future__ import annotations

import json

import pytest

from glassgpt.chat.conversation import ConversationError, read_conversations, validate
from glassgpt.chat.render import (ConversationTooLong, decode_conversation, render_conversation,
                                  render_for_completion)

TOOL_CONVERSATION = {"messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 37 + 48?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me add. "},
        {"type": "tool_call", "text": "37 + 48"},
        {"type": "tool_result", "text": "85"},
        {"type": "text", "text": "It is 85."},
    ]},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome, good sir."},
]}


def spans(ids, mask, tokenizer):
    """(name of each special token or 'text', mask) runs, to read the render at a glance."""
    names = {i: n for n, i in tokenizer.special_ids.items()}
    return [(names.get(i, "text"), m) for i, m in zip(ids, mask)]


def test_the_mask_is_one_exactly_on_assistant_text_tool_calls_and_assistant_end(tokenizer_512):
    ids, mask = render_conversation(TOOL_CONVERSATION, tokenizer_512)
    assert len(ids) == len(mask)
    special = tokenizer_512.special_ids
    inside, learned_text, masked_text = None, [], []
    for token, (name, m) in zip(ids, spans(ids, mask, tokenizer_512)):
        if name in ("<|bos|>", "<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
                    "<|assistant_start|>", "<|tool_result_start|>", "<|tool_result_end|>"):
            assert m == 0, name
        if name in ("<|assistant_end|>", "<|tool_call_start|>", "<|tool_call_end|>"):
            assert m == 1, name
        if name.endswith("_start|>"):
            inside = name
        elif name.endswith("_end|>"):
            inside = "<|assistant_start|>" if name.startswith("<|tool") else None
        elif name == "text":
            (learned_text if m else masked_text).append((inside, token))
    assert {where for where, _ in learned_text} == {"<|assistant_start|>", "<|tool_call_start|>"}
    assert {where for where, _ in masked_text} == {"<|system_start|>", "<|user_start|>", "<|tool_result_start|>"}
    assert tokenizer_512.decode([t for w, t in learned_text if w == "<|tool_call_start|>"]) == "37 + 48"
    assert ids[0] == tokenizer_512.bos_id and ids[-1] == special["<|assistant_end|>"]


def test_decoding_the_ids_gives_back_every_message(tokenizer_512):
    conversations = [
        TOOL_CONVERSATION,
        {"messages": [{"role": "user", "content": "héllo — ünïcode ✓"}, {"role": "assistant", "content": "  spaced  "}]},
        {"messages": [{"role": "user", "content": "How many r in strawberry?"},
                      {"role": "assistant", "content": [{"type": "tool_call", "text": "'strawberry'.count('r')"},
                                                        {"type": "tool_result", "text": "3"},
                                                        {"type": "text", "text": "3"}]}]},
    ]
    for conversation in conversations:
        ids, _ = render_conversation(conversation, tokenizer_512)
        assert decode_conversation(ids, tokenizer_512) == conversation


def test_a_prompt_for_completion_ends_with_assistant_start_and_leaves_out_a_final_answer(tokenizer_512):
    special = tokenizer_512.special_ids
    full, _ = render_conversation(TOOL_CONVERSATION, tokenizer_512)
    prompt = render_for_completion(TOOL_CONVERSATION, tokenizer_512)
    assert prompt[-1] == special["<|assistant_start|>"]
    # the prompt is the training render up to the last reply: what the model sees is what it learned on
    assert full[:len(prompt)] == prompt
    asking = {"messages": TOOL_CONVERSATION["messages"][:-1]}
    assert render_for_completion(asking, tokenizer_512) == prompt
    with pytest.raises(ConversationError, match="ends with the user"):
        render_conversation(asking, tokenizer_512)  # a training conversation needs its answer


def test_a_conversation_longer_than_the_context_is_refused_with_both_numbers(tokenizer_512):
    ids, _ = render_conversation(TOOL_CONVERSATION, tokenizer_512)
    with pytest.raises(ConversationTooLong, match=f"{len(ids)} tokens long, more than the {len(ids) - 1}"):
        render_conversation(TOOL_CONVERSATION, tokenizer_512, max_tokens=len(ids) - 1)
    assert render_conversation(TOOL_CONVERSATION, tokenizer_512, max_tokens=len(ids))[0] == ids
    with pytest.raises(ConversationTooLong):
        render_for_completion(TOOL_CONVERSATION, tokenizer_512, max_tokens=5)


@pytest.mark.parametrize("conversation, fragment", [
    ([{"role": "user", "content": "hi"}], "is an object"),
    ({"messages": []}, "has no messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "should be from the assistant"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "should be from the user"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "only the first message"),
    ({"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "b"}]}, "empty content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": []}]}, "empty content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 7}]}, "string or a list of parts"),
    ({"messages": [{"role": "user", "content": "a"},
                   {"role": "assistant", "content": [{"type": "tool_result", "text": "3"}]}]}, "does not follow a tool_call"),
    ({"messages": [{"role": "user", "content": "a"},
                   {"role": "assistant", "content": [{"type": "image", "text": "3"}]}]}, "type 'image'"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_call", "text": "1+1"}]},
                   {"role": "assistant", "content": "2"}]}, "type 'tool_call'"),
    ({"messages": [{"role": "system", "content": "be nice"}]}, "only a system message"),
])
def test_malformed_conversations_are_refused_saying_what_is_wrong(conversation, fragment):
    with pytest.raises(ConversationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        validate(conversation)


def test_a_conversation_file_error_names_the_file_and_line(tmp_path):
    good = json.dumps(TOOL_CONVERSATION)
    path = tmp_path / "chats.jsonl"
    path.write_text(good + "\n\n" + '{"messages": [}\n', encoding="utf-8")
    with pytest.raises(ConversationError, match=r"chats.jsonl:3: invalid JSON"):
        list(read_conversations(path))
    path.write_text(good + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n", encoding="utf-8")
    with pytest.raises(ConversationError, match=r"chats.jsonl:2: .*unknown role 'bot'"):
        list(read_conversations(path))
    path.write_bytes(b'{"messages": "\xff"}\n')
    with pytest.raises(ConversationError, match="not UTF-8"):
        list(read_conversations(path))
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConversationError, match="holds no conversations"):
        list(read_conversations(path))
    path.write_text(good + "\n", encoding="utf-8")
    assert [(line, c) for line, c in read_conversations(path)] == [(1, TOOL_CONVERSATION)]
