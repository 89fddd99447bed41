"""Conversations as the model sees them, token by token: what training learns and what it only reads.

The view behind `glassgpt chat render FILE.jsonl [--html F]`. Every conversation is rendered by
`render_conversation` (the function training uses, so the view cannot drift from what is trained)
and shown as its tokens, each one marked trained (mask 1: it is in the loss) or masked (mask 0:
context the model reads but is not graded on). Special tokens show by name (`<|user_start|>`).

Terminal, with colour: trained tokens on green, masked tokens on grey, each in two alternating
shades so neighbouring tokens can be told apart; special tokens bold yellow on their class's colour.

Terminal, without colour (NO_COLOR, or output that is not a terminal), the marks are characters:

    <|user_start|>What| is| 3|7| +| 4|8|?<|user_end|><|assistant_start|>[<|tool_call_start|>][3][7]...

- `[text]` is a trained token; masked tokens are bare, with `|` between two neighbouring ones;
- `<|name|>` is a special token (in brackets too when trained);
- `\\` before a character means it is text, not a mark: a literal `[`, `]`, `|` or `\\` in a token is
  always written `\\[`, `\\]`, `\\|`, `\\\\`, and a `<` ending a token is written `\\<` (so text can never
  look like a special token: the text `<|user_start|>` shows as `<\\|user|_start\\|>`);
- `⏎` is a newline (followed by a real one), `⇥` a tab, `␍` a carriage return, `\\xNN` another
  control character, and `∅` a token that ends inside a multi-byte character (its bytes show with
  the token that completes the character, as `glassgpt tokenizer encode` does).

HTML (`to_html`): one self-contained page (inline CSS, no scripts, nothing fetched), the same classes
(`trained`/`masked`, `special`, alternating shades), one row per turn labelled with its role, and a
tooltip (title) on every token with its position, id, mask and bytes.

A conversation that ends with the user is a prompt, not training data: it shows as the model reads
it to reply (ending with `<|assistant_start|>`), every token masked.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from html import escape

from rich.console import Console
from rich.text import Text

from glassgpt.chat.conversation import ConversationError, validate
from glassgpt.chat.render import render_conversation, render_for_completion
from glassgpt.see.html import visible_piece

ROLES_OF_SPECIAL = ("system", "user", "assistant", "tool_call", "tool_result")
PART_SEGMENTS = ("tool_call", "tool_result")  # inside an assistant turn; after their end, back to "assistant"
PARTIAL = "∅"  # what a token shows when its bytes end inside a character

# Rich styles: two shades per class, so that adjacent tokens of one class stay distinguishable.
TRAINED_BACKGROUNDS = ("dark_green", "green4")
MASKED_BACKGROUNDS = ("grey23", "grey35")
TEXT_STYLES = {1: "white", 0: "grey85"}  # by mask
SPECIAL_STYLE = "bold yellow1"

PLAIN_ESCAPED = "\\[]|"
PLAIN_LEGEND = ("legend: [text] trained (mask 1: in the loss) · text masked (mask 0: read, not learned), "
                "| between masked tokens · <|name|> special token · \\ before a character: literal text · "
                "⏎ newline · ∅ token ending inside a character")


@dataclass
class RenderedConversation:
    """One conversation as token ids, the loss mask, and per-token labels for the views.

    segments[i] is the part of the conversation token i belongs to: "bos", "system", "user",
    "assistant", "tool_call" or "tool_result" (a turn's delimiters belong to the turn).
    texts[i] is what token i shows: its decoded text ("" when it ends inside a character), or the
    special token's name. special[i] says whether it is a special token."""

    line: int
    ids: list[int]
    mask: list[int]
    segments: list[str]
    texts: list[str]
    special: list[bool]
    complete: bool = True  # False: a prompt ending with the user (nothing to train on)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def n_trained(self) -> int:
        return sum(self.mask)


def render_all(conversations: list[tuple[int, dict]], tokenizer) -> list[RenderedConversation]:
    """Render (line number, conversation) pairs; a bad conversation raises ConversationError naming its line."""
    rendered = []
    for line, conversation in conversations:
        try:
            validate(conversation, complete=False)
            complete = conversation["messages"][-1]["role"] == "assistant"
            if complete:
                ids, mask = render_conversation(conversation, tokenizer)
            else:
                ids = render_for_completion(conversation, tokenizer)
                mask = [0] * len(ids)
        except ConversationError as error:
            raise ConversationError(f"line {line}: {error}") from None
        texts, special = token_texts(ids, tokenizer)
        rendered.append(RenderedConversation(line, ids, mask, token_segments(ids, tokenizer), texts, special,
                                             complete))
    return rendered


def token_segments(ids: list[int], tokenizer) -> list[str]:
    """Which part of the conversation each token belongs to, read from the special tokens."""
    names = {token_id: name for name, token_id in tokenizer.special_ids.items()}
    segments, current = [], None
    for token_id in ids:
        name = names.get(token_id)
        if name == "<|bos|>":
            segments.append("bos")
        elif name and name.endswith("_start|>") and name[2:-8] in ROLES_OF_SPECIAL:
            current = name[2:-8]
            segments.append(current)
        elif name and name.endswith("_end|>") and name[2:-6] in ROLES_OF_SPECIAL:
            segments.append(name[2:-6])
            current = "assistant" if current in PART_SEGMENTS else None
        else:
            segments.append(current or ("special" if name else "text"))
    return segments


def token_texts(ids: list[int], tokenizer) -> tuple[list[str], list[bool]]:
    """(text each token shows, whether it is special). A character split across tokens is given to
    the token that completes it (an incremental decoder); invalid bytes become U+FFFD, never an error."""
    special_ids = set(tokenizer.special_ids.values())
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts: list[str] = []
    special: list[bool] = []
    last_text = None  # index of the last non-special token: where bytes left in the decoder go

    def flush() -> None:
        tail = decoder.decode(b"", final=True)
        if tail and last_text is not None:
            texts[last_text] += tail

    for token_id in ids:
        if token_id in special_ids:
            flush()
            texts.append(tokenizer.token_piece(token_id).decode("utf-8", "replace"))
            special.append(True)
        else:
            texts.append(decoder.decode(tokenizer.token_piece(token_id)))
            special.append(False)
            last_text = len(texts) - 1
    flush()
    return texts, special


# -- shared wording ----------------------------------------------------------------------------------


def header_line(number: int, item: RenderedConversation) -> str:
    head = f"conversation {number} (line {item.line}): {item.n_tokens:,} tokens, {item.n_trained:,} trained"
    if not item.complete:
        head += " (ends with the user: a prompt, shown as the model reads it to reply; nothing to train on)"
    return head


def summary_line(rendered: list[RenderedConversation]) -> str:
    tokens = sum(item.n_tokens for item in rendered)
    trained = sum(item.n_trained for item in rendered)
    share = f"{100 * trained / tokens:.1f}%" if tokens else "0%"
    plural = "" if len(rendered) == 1 else "s"
    return f"{len(rendered):,} conversation{plural}, {tokens:,} tokens, {trained:,} trained ({share} trained)"


def _visible(text: str) -> str:
    """Whitespace and control characters made visible; a newline stays a newline, after ⏎."""
    return visible_piece(text, newline="⏎\n", space=" ", empty="")


def _piece_repr(piece: bytes) -> str:
    """'llo' for a piece that is whole text, b'\\xc3' for one that ends inside a character."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


# -- terminal ----------------------------------------------------------------------------------------


def print_terminal(rendered: list[RenderedConversation], tokenizer, console: Console,
                   max_tokens_shown: int | None = None) -> None:
    """The legend, every conversation (header, then its tokens), and a summary line."""
    plain = console.no_color or console.color_system is None
    console.print(PLAIN_LEGEND if plain else _colour_legend(), markup=False, highlight=False)
    for number, item in enumerate(rendered, start=1):
        console.print()
        console.print(Text(header_line(number, item), style="bold cyan"), highlight=False)
        shown = item.n_tokens if max_tokens_shown is None else min(max_tokens_shown, item.n_tokens)
        body = _plain_tokens(item, shown) if plain else _colour_tokens(item, shown)
        console.print(body, soft_wrap=True, highlight=False)  # never re-wrapped: a token is never split
        if shown < item.n_tokens:
            console.print(Text(f"… {item.n_tokens - shown:,} more tokens not shown ({shown:,} of {item.n_tokens:,}; "
                               "--max-tokens-shown N shows more, --html all)", style="yellow"), highlight=False)
    console.print()
    console.print(Text(summary_line(rendered), style="bold"), highlight=False)


def _colour_legend() -> Text:
    legend = Text("legend: ")
    legend.append(" trained ", style=_token_style(1, 0, special=False))
    legend.append(" (mask 1: in the loss)  ")
    legend.append(" masked ", style=_token_style(0, 0, special=False))
    legend.append(" (mask 0: read, not learned)  ")
    legend.append("<|name|>", style=_token_style(0, 0, special=True))
    legend.append(f" special token  · two shades per colour mark token boundaries · ⏎ newline · "
                  f"{PARTIAL} token ending inside a character")
    return legend


def _token_style(mask: int, position: int, special: bool) -> str:
    backgrounds = TRAINED_BACKGROUNDS if mask else MASKED_BACKGROUNDS
    return f"{SPECIAL_STYLE if special else TEXT_STYLES[mask]} on {backgrounds[position % 2]}"


def _colour_tokens(item: RenderedConversation, shown: int) -> Text:
    body = Text()
    for i in range(shown):
        text = item.texts[i] if item.special[i] else _visible(item.texts[i]) or PARTIAL
        body.append(text, style=_token_style(item.mask[i], i, item.special[i]))
    return body


def _plain_escape(text: str) -> str:
    escaped = "".join("\\" + ch if ch in PLAIN_ESCAPED else ch for ch in text)
    return escaped[:-1] + "\\<" if escaped.endswith("<") else escaped


def _plain_tokens(item: RenderedConversation, shown: int) -> Text:
    out, previous_bare = [], False  # previous_bare: the last token was masked, not special
    for i in range(shown):
        if item.special[i]:
            piece, bare = item.texts[i], False
        else:
            piece = _visible(_plain_escape(item.texts[i])) or PARTIAL
            bare = not item.mask[i]
            if bare and previous_bare:
                out.append("|")
        out.append(f"[{piece}]" if item.mask[i] else piece)
        previous_bare = bare
    return Text("".join(out))


# -- HTML --------------------------------------------------------------------------------------------


def _e(value) -> str:
    return escape(str(value), quote=True)


def to_html(rendered: list[RenderedConversation], tokenizer, title: str) -> str:
    """One self-contained page: legend, totals, and every conversation's tokens (all of them)."""
    blocks = [_html_conversation(number, item, tokenizer) for number, item in enumerate(rendered, start=1)]
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n",
        f"<title>{_e(title)}</title>\n<style>", CSS, "</style>\n</head>\n<body>\n<main>\n",
        f"<header><h1>{_e(title)}</h1>\n",
        f'<p class="totals" id="totals">{_e(summary_line(rendered))}</p>\n', LEGEND_HTML, "</header>\n",
        *blocks,
        "<footer>Written by glassgpt chat render. This page is self-contained: it loads nothing from the network."
        "</footer>\n</main>\n</body>\n</html>\n",
    ])


LEGEND_HTML = (
    '<div class="legend" id="legend"><span class="tok trained">trained</span> mask 1: in the loss (the model '
    'learns to write it) <span class="tok masked">masked</span> mask 0: read as context, not learned '
    '<span class="tok masked special">&lt;|name|&gt;</span> special token (by name) · two shades per colour '
    f'mark token boundaries · ⏎ newline · {PARTIAL} a token ending inside a character (the character shows '
    'with the token that completes it) · hover a token for its position, id and bytes</div>\n')


def _html_conversation(number: int, item: RenderedConversation, tokenizer) -> str:
    rows, start = [], 0
    for i in range(1, item.n_tokens + 1):  # one row per run of tokens with the same segment
        if i == item.n_tokens or item.segments[i] != item.segments[start]:
            spans = "".join(_html_token(j, item, tokenizer) for j in range(start, i))
            segment = item.segments[start]
            rows.append(f'<div class="turn seg-{_e(segment)}"><div class="role">{_e(segment.replace("_", " "))}'
                        f'</div><div class="toks">{spans}</div></div>\n')
            start = i
    return (f'<section class="conversation" id="conversation-{number}" data-line="{item.line}" '
            f'data-tokens="{item.n_tokens}" data-trained="{item.n_trained}">\n'
            f"<h2>{_e(header_line(number, item))}</h2>\n{''.join(rows)}</section>\n")


def _html_token(i: int, item: RenderedConversation, tokenizer) -> str:
    trained = item.mask[i] == 1
    classes = ["tok", "trained" if trained else "masked", f"shade{i % 2}"]
    if item.special[i]:
        classes.append("special")
        text = item.texts[i]
    else:
        text = _visible(item.texts[i]) or PARTIAL
    tip = (f"position {i} · id {item.ids[i]} · {'trained (mask 1)' if trained else 'masked (mask 0)'} · "
           f"{item.segments[i]} · bytes {_piece_repr(tokenizer.token_piece(item.ids[i]))}")
    return (f'<span class="{" ".join(classes)}" title="{_e(tip)}" data-pos="{i}" data-id="{item.ids[i]}" '
            f'data-mask="{item.mask[i]}">{_e(text)}</span>')


CSS = """
:root { color-scheme: light; --ink: #1d2430; --dim: #5d6675; --line: #d9dde4; --bg: #fbfbfa; --card: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { padding: 1.2rem 2rem 3rem; max-width: 1180px; margin: 0 auto; }
h1 { margin: 0 0 .3rem; font-size: 1.6rem; }
.totals { font-size: 1.05rem; margin: .2rem 0 .6rem; }
.legend { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .4rem .7rem;
  font-size: 13.5px; line-height: 2; }
.conversation { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .6rem .9rem;
  margin: 1rem 0; }
.conversation h2 { font-size: 1.02rem; margin: 0 0 .5rem; color: #155a75; }
.turn { display: grid; grid-template-columns: 6.5rem 1fr; gap: .6rem; border-top: 1px solid #eceef2; padding: .25rem 0; }
.role { color: var(--dim); font-size: 12.5px; text-transform: uppercase; letter-spacing: .04em; padding-top: .15rem; }
.seg-assistant .role, .seg-tool_call .role { color: #1f6b3a; font-weight: 600; }
.toks { white-space: pre-wrap; word-break: break-all; line-height: 1.9;
  font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 13.5px; }
.tok { padding: .1rem 0; border-radius: 2px; }
.tok.trained.shade0 { background: #b7e4c3; }
.tok.trained.shade1 { background: #86cf9c; }
.tok.masked.shade0 { background: #e6e8ec; color: #4a5160; }
.tok.masked.shade1 { background: #d3d7de; color: #4a5160; }
.legend .tok.trained { background: #b7e4c3; padding: .1rem .3rem; }
.legend .tok.masked { background: #e6e8ec; padding: .1rem .3rem; }
.tok.special { font-weight: 700; color: #8a4b00; }
.tok:hover { outline: 2px solid #0a84ff; }
footer { color: var(--dim); font-size: 13px; margin-top: 2rem; }
"""
