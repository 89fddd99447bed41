"""The chat view: conversations shown token by token, trained and masked tokens told apart, in a
terminal (with and without colour) and as one self-contained HTML page."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pytest
from rich.console import Console

from glassgpt.chat import view
from glassgpt.chat.conversation import ConversationError
from glassgpt.chat.render import render_conversation

TOOL_CONVERSATION = {"messages": [
    {"role": "system", "content": "You are glassgpt."},
    {"role": "user", "content": "What is 37 + 48? [x] | a\\b <|user_end|> ends <"},
    {"role": "assistant", "content": [
        {"type": "tool_call", "text": "37 + 48"},
        {"type": "tool_result", "text": "85"},
        {"type": "text", "text": "37 + 48 = 85.\nDone [ok] | <"}]}]}

MULTIBYTE_CONVERSATION = {"messages": [
    {"role": "user", "content": "Café? 漢字 😀"},
    {"role": "assistant", "content": "Oui: café, 漢字, 🎉!"}]}

SCRIPT_CONVERSATION = {"messages": [
    {"role": "user", "content": "<script>alert(1)</script>"},
    {"role": "assistant", "content": "I will not run that."}]}


def plain_console() -> Console:
    return Console(record=True, width=120, color_system=None, file=io.StringIO())


def colour_console() -> Console:
    # no_color=False: the test environment sets NO_COLOR, which would otherwise win.
    return Console(record=True, width=120, color_system="truecolor", no_color=False, file=io.StringIO())


def terminal_text(rendered, tokenizer, console: Console, **options) -> str:
    view.print_terminal(rendered, tokenizer, console, **options)
    return console.export_text(clear=False)


def body_of(text: str, number: int) -> str:
    """The token lines of conversation `number`: from after its header to the next blank line."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"conversation {number} (line"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == "")
    return "\n".join(lines[start + 1:end])


def parse_plain(body: str) -> list[tuple[str, bool]]:
    """(text, trained) for every token of a no-colour body, read back by the documented rules:
    [..] trained, | between masked tokens, <|name|> special, \\ before a literal character, ⏎ newline."""
    tokens, text, trained, i = [], None, False, 0

    def close() -> None:
        nonlocal text
        if text is not None:
            tokens.append((text, trained))
        text = None

    while i < len(body):
        if body[i] == "\\":
            text, i = (text or "") + body[i + 1], i + 2
        elif body.startswith("<|", i):
            close()
            end = body.index("|>", i) + 2
            tokens.append((body[i:end], trained))
            i = end
        elif body[i] == "[":
            close()
            trained, i = True, i + 1
        elif body[i] == "]":
            close()
            trained, i = False, i + 1
        elif body[i] == "|":
            close()
            i += 1
        elif body.startswith("⏎\n", i):
            text, i = (text or "") + "\n", i + 2
        else:
            text, i = (text or "") + body[i], i + 1
    close()
    return tokens


def expected_tokens(conversation: dict, tokenizer) -> list[tuple[str, bool]]:
    """(text, trained) per token straight from render_conversation (every token whole text here)."""
    ids, mask = render_conversation(conversation, tokenizer)
    names = {token_id: name for name, token_id in tokenizer.special_ids.items()}
    return [(names.get(token_id) or tokenizer.decode([token_id]), bool(m)) for token_id, m in zip(ids, mask)]


# -- terminal ------------------------------------------------------------------------------------------


def test_plain_terminal_marks_exactly_the_trained_tokens_in_order(tokenizer_512):
    rendered = view.render_all([(3, TOOL_CONVERSATION)], tokenizer_512)
    text = terminal_text(rendered, tokenizer_512, plain_console())
    assert "\x1b[" not in text
    parsed = parse_plain(body_of(text, 1))
    expected = expected_tokens(TOOL_CONVERSATION, tokenizer_512)
    assert parsed == expected  # every token, in order, marked trained exactly where the mask is 1
    assert [t for t, trained in parsed if trained] == [t for t, trained in expected if trained]
    # the user's text "<|user_end|>" is ordinary tokens, and cannot pass for the special token
    assert sum(t == "<|user_end|>" for t, _ in parsed) == 1


def test_terminal_shows_legend_special_tokens_by_name_and_the_counts(tokenizer_512):
    ids, mask = render_conversation(TOOL_CONVERSATION, tokenizer_512)
    rendered = view.render_all([(3, TOOL_CONVERSATION), (7, TOOL_CONVERSATION)], tokenizer_512)
    for console in (plain_console(), colour_console()):
        text = terminal_text(rendered, tokenizer_512, console)
        assert text.startswith("legend:") and "trained" in text.split("\n")[0] and "masked" in text.split("\n")[0]
        for name in ("<|bos|>", "<|system_start|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>",
                     "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_result_start|>", "<|tool_result_end|>",
                     "<|assistant_end|>"):
            assert name in text
        assert f"conversation 1 (line 3): {len(ids)} tokens, {sum(mask)} trained" in text
        assert f"conversation 2 (line 7): {len(ids)} tokens, {sum(mask)} trained" in text
        share = f"{100 * sum(mask) / len(ids):.1f}%"
        assert text.rstrip().endswith(f"2 conversations, {2 * len(ids)} tokens, {2 * sum(mask)} trained "
                                      f"({share} trained)")
        assert "⏎\n" in text  # the newline in the reply: a mark, then a real line break


class _StyledText(HTMLParser):
    """Every character of rich's export_html(inline_styles=True), with the style it is drawn in."""

    def __init__(self):
        super().__init__()
        self.chars: list[tuple[str, str | None]] = []
        self.style: str | None = None
        self.in_code = False

    def handle_starttag(self, tag, attrs):
        if tag == "code":
            self.in_code = True
        if tag == "span":
            self.style = dict(attrs).get("style")

    def handle_endtag(self, tag):
        if tag == "span":
            self.style = None
        if tag == "code":
            self.in_code = False

    def handle_data(self, data):
        if self.in_code:
            self.chars += [(ch, self.style) for ch in data]


def test_colour_terminal_styles_trained_and_masked_tokens_apart(tokenizer_512):
    conversation = {"messages": [{"role": "user", "content": "Hello there, who are you?"},
                                 {"role": "assistant", "content": "I am a small model, nice to meet you."}]}
    [item] = view.render_all([(1, conversation)], tokenizer_512)
    console = colour_console()
    view.print_terminal([item], tokenizer_512, console)
    styled = _StyledText()
    styled.feed(console.export_html(inline_styles=True, clear=False))
    text = "".join(ch for ch, _ in styled.chars)
    position = text.index("\n", text.index("conversation 1 (line 1)")) + 1
    styles = []
    for token_text in item.texts:  # plain ASCII: every token shows as its own text
        chunk = styled.chars[position:position + len(token_text)]
        assert "".join(ch for ch, _ in chunk) == token_text
        assert len({style for _, style in chunk}) == 1, "a token is drawn in one style"
        styles.append(chunk[0][1])
        position += len(token_text)
    background = [re.search(r"background-color: (#\w+)", style).group(1) for style in styles]
    trained = {b for b, m in zip(background, item.mask) if m}
    masked = {b for b, m in zip(background, item.mask) if not m}
    assert trained and masked and not trained & masked
    # neighbouring tokens of the same class are shaded apart, so token boundaries stay visible
    for i in range(1, len(styles)):
        if item.mask[i] == item.mask[i - 1]:
            assert background[i] != background[i - 1]
    special_colours = {re.search(r"(?<!-)color: (#\w+)", s).group(1) for s, sp in zip(styles, item.special) if sp}
    text_colours = {re.search(r"(?<!-)color: (#\w+)", s).group(1) for s, sp in zip(styles, item.special) if not sp}
    assert special_colours and not special_colours & text_colours


def test_terminal_caps_tokens_per_conversation_and_says_how_many_were_cut(tokenizer_512):
    rendered = view.render_all([(1, TOOL_CONVERSATION)], tokenizer_512)
    total = rendered[0].n_tokens
    text = terminal_text(rendered, tokenizer_512, plain_console(), max_tokens_shown=6)
    assert len(parse_plain(body_of(text, 1).split("\n…")[0])) == 6
    assert f"{total - 6} more tokens not shown" in text
    assert f"1 conversation, {total} tokens" in text  # the summary still counts every token


def test_a_prompt_ending_with_the_user_shows_as_the_model_reads_it_all_masked(tokenizer_512):
    prompt = {"messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    [item] = view.render_all([(4, prompt)], tokenizer_512)
    assert not item.complete and item.n_trained == 0
    assert item.texts[-1] == "<|assistant_start|>"
    text = terminal_text([item], tokenizer_512, plain_console())
    assert "conversation 1 (line 4)" in text and "a prompt" in text and "[" not in body_of(text, 1)


def test_a_bad_conversation_is_reported_with_its_line(tokenizer_512):
    with pytest.raises(ConversationError, match="line 9"):
        view.render_all([(9, {"messages": [{"role": "assistant", "content": "hi"}]})], tokenizer_512)


# -- segments and odd bytes ------------------------------------------------------------------------------


def test_every_token_is_labelled_with_the_part_of_the_conversation_it_belongs_to(tokenizer_512):
    [item] = view.render_all([(1, TOOL_CONVERSATION)], tokenizer_512)
    by_name = dict(zip(item.texts, item.segments))
    assert item.segments[0] == "bos"
    assert by_name["<|system_start|>"] == "system" and by_name["<|user_end|>"] == "user"
    assert by_name["<|tool_call_start|>"] == "tool_call" and by_name["<|tool_result_end|>"] == "tool_result"
    assert by_name["<|assistant_end|>"] == "assistant"
    assert item.segments[item.texts.index("85") if "85" in item.texts else -1] in ("tool_result", "assistant")
    assert set(item.segments) == {"bos", "system", "user", "assistant", "tool_call", "tool_result"}


def test_bytes_that_are_not_utf8_never_crash_the_view(tokenizer_512):
    byte = {token: i for i, token in enumerate(tokenizer_512.ranked_tokens) if len(token) == 1}
    end = tokenizer_512.special_ids["<|user_end|>"]
    ids = [byte[b"\xa9"], byte[b"\xc3"], end, byte[b"\xe6"]]  # a lone continuation, cut characters
    texts, special = view.token_texts(ids, tokenizer_512)
    assert special == [False, False, True, False]
    assert texts[0] == "\ufffd" and texts[1] == "\ufffd" and texts[2] == "<|user_end|>" and texts[3] == "\ufffd"


# -- multi-byte text --------------------------------------------------------------------------------------


def test_multibyte_characters_show_whole_in_both_terminal_renderings(tokenizer_512):
    rendered = view.render_all([(1, MULTIBYTE_CONVERSATION)], tokenizer_512)
    user, reply = (m["content"] for m in MULTIBYTE_CONVERSATION["messages"])
    for console in (plain_console(), colour_console()):
        text = terminal_text(rendered, tokenizer_512, console)
        assert "\ufffd" not in text
        for word in ("é", "漢", "字", "😀", "🎉"):
            assert word in text
    parsed = parse_plain(body_of(terminal_text(rendered, tokenizer_512, plain_console()), 1))
    assert len(parsed) == rendered[0].n_tokens
    # a character split across tokens goes to the token that completes it; the others show ∅
    shown = "".join(t for t, _ in parsed if not t.startswith("<|")).replace(view.PARTIAL, "")
    assert shown == user + reply
    assert "".join(t for t, trained in parsed if trained and not t.startswith("<|")).replace(view.PARTIAL, "") == reply


# -- HTML -------------------------------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}


class _Page(HTMLParser):
    """Checks nesting as it reads, and collects what the tests look at."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.tokens: list[dict] = []  # a token span's attributes, plus its text
        self.roles: list[str] = []
        self.texts_by_id: dict[str, str] = {}
        self._collect: list[tuple[str, str]] = []  # (what, key) being collected

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in VOID:
            self.stack.append(tag)
        classes = (attrs.get("class") or "").split()
        if tag == "span" and "data-pos" in attrs:
            self.tokens.append({**attrs, "classes": classes, "text": ""})
            self._collect.append(("token", ""))
        elif "role" in classes:
            self.roles.append("")
            self._collect.append(("role", ""))
        elif attrs.get("id"):
            self.texts_by_id[attrs["id"]] = ""
            self._collect.append(("id", attrs["id"]))
        elif tag not in VOID:
            self._collect.append(("", ""))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        self._collect.pop()

    def handle_data(self, data):
        for what, key in self._collect:
            if what == "id":
                self.texts_by_id[key] += data
        if self._collect and self._collect[-1][0] == "token":
            self.tokens[-1]["text"] += data
        if self._collect and self._collect[-1][0] == "role":
            self.roles[-1] += data


def parse_page(page: str) -> _Page:
    parsed = _Page()
    parsed._collect.append(("", ""))
    parsed.feed(page)
    parsed.close()
    assert parsed.stack == [], f"unclosed tags: {parsed.stack}"
    return parsed


def test_html_is_one_self_contained_page_with_every_token_classed_by_its_mask(tokenizer_512):
    conversations = [(2, TOOL_CONVERSATION), (5, SCRIPT_CONVERSATION)]
    rendered = view.render_all(conversations, tokenizer_512)
    page = view.to_html(rendered, tokenizer_512, title="chats.jsonl <b>as the model sees it</b>")
    parsed = parse_page(page)

    # nothing external: no <link>, no script, no src/href to anywhere
    assert not [tag for tag, _ in parsed.tags if tag in ("link", "script", "img", "iframe")]
    assert not [a for _, attrs in parsed.tags for name, a in attrs.items() if name in ("src", "href")]
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "<b>" not in page  # the title is escaped too

    # user data is text: the <script> message shows as characters, never as a tag
    assert "<script" not in page.lower()
    user_text = "".join(t["text"] for t in parsed.tokens[rendered[0].n_tokens:] if "special" not in t["classes"])
    assert "<script>alert(1)</script>" in user_text

    # every token has a span, in order, classed trained or masked exactly as its mask says
    ids = [i for item in rendered for i in item.ids]
    mask = [m for item in rendered for m in item.mask]
    assert [int(t["data-id"]) for t in parsed.tokens] == ids
    for token, m in zip(parsed.tokens, mask):
        assert ("trained" in token["classes"], "masked" in token["classes"]) == (m == 1, m == 0)
        assert ("trained (mask 1)" if m else "masked (mask 0)") in token["title"]
    positions = [int(t["data-pos"]) for t in parsed.tokens]
    assert positions == [p for item in rendered for p in range(item.n_tokens)]
    names = {token_id: name for name, token_id in tokenizer_512.special_ids.items()}
    assert [t["text"] for t in parsed.tokens if "special" in t["classes"]] == [names[i] for i in ids if i in names]

    # legend, role labels, per-conversation headers and totals
    legend = parsed.texts_by_id["legend"]
    assert "trained" in legend and "masked" in legend and "special token" in legend
    assert {"bos", "system", "user", "assistant", "tool call", "tool result"} <= set(parsed.roles)
    for number, item in enumerate(rendered, start=1):
        assert f"conversation {number} (line {item.line}): {item.n_tokens} tokens, {item.n_trained} trained" in \
            parsed.texts_by_id[f"conversation-{number}"]
    share = f"{100 * sum(mask) / len(ids):.1f}%"
    assert parsed.texts_by_id["totals"] == f"2 conversations, {len(ids)} tokens, {sum(mask)} trained ({share} trained)"


def test_html_shows_every_token_even_when_the_terminal_caps_them(tokenizer_512):
    rendered = view.render_all([(1, TOOL_CONVERSATION)], tokenizer_512)
    parsed = parse_page(view.to_html(rendered, tokenizer_512, title="t"))
    assert len(parsed.tokens) == rendered[0].n_tokens


def test_html_shows_multibyte_characters_whole(tokenizer_512):
    rendered = view.render_all([(1, MULTIBYTE_CONVERSATION)], tokenizer_512)
    page = view.to_html(rendered, tokenizer_512, title="漢字")
    assert '<meta charset="utf-8">' in page and "\ufffd" not in page
    parsed = parse_page(page)
    user, reply = (m["content"] for m in MULTIBYTE_CONVERSATION["messages"])
    shown = "".join(t["text"] for t in parsed.tokens if "special" not in t["classes"]).replace(view.PARTIAL, "")
    assert shown == user + reply
    trained = "".join(t["text"] for t in parsed.tokens if "trained" in t["classes"] and "special" not in t["classes"])
    assert trained.replace(view.PARTIAL, "") == reply
