"""`glassgpt chat --run NAME`: talk to a trained run in the terminal.

Replies stream token by token; the calculator's work is shown inline and apart from the words,
as `[calculator: 37 + 48 → 85]`. The history is kept across turns and cut from its oldest turns
when the model's context would overflow (a note says so). Commands start with a slash (/help).
With -p the command prints one reply and exits; when standard input is not a terminal, every
line read from it is one user message (so `echo "hi" | glassgpt chat --run x` works).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rich.markup import escape

from glassgpt.chat.session import (DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, ChatModel, Reply,
                                   add_event, assistant_message)
from glassgpt.engine import compiled_summary
from glassgpt.errors import UsageError

HELP = """\
commands:
  /clear              start a new conversation (the system message stays)
  /temperature X      sampling temperature, e.g. 0.6 (0 = always the likeliest token)
  /top-k K            sample among the K likeliest tokens (0 = all)
  /system TEXT        set the system message (/system alone removes it); starts a new conversation
  /help               this list
  /quit               leave (Ctrl-D too)"""


@dataclass
class Settings:
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int | None = DEFAULT_TOP_K
    max_tokens: int = DEFAULT_MAX_TOKENS
    system: str = ""
    seed: int | None = None


class Conversation:
    """The terminal conversation: history, settings, commands, printing replies."""

    def __init__(self, chat: ChatModel, settings: Settings, out, notes):
        self.chat, self.settings, self.out, self.notes = chat, settings, out, notes
        self.messages: list[dict] = []
        self.turn = 0

    def history(self) -> list[dict]:
        system = [{"role": "system", "content": self.settings.system}] if self.settings.system.strip() else []
        return system + self.messages

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, value = line[1:].partition(" ")
        value = value.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.notes.print(HELP, markup=False)
        elif name == "clear":
            self.messages.clear()
            self.notes.print("[dim](a new conversation)[/]")
        elif name == "system":
            self.settings.system, self.messages = value, []
            self.notes.print(f"[dim](system message {'set' if value else 'removed'}; a new conversation)[/]")
        elif name in ("temperature", "top-k", "top_k"):
            try:
                number = float(value) if name == "temperature" else int(value)
                if number < 0 or number != number or number == float("inf"):
                    raise ValueError
            except ValueError:
                kind = "a number ≥ 0, e.g. 0.6" if name == "temperature" else "a whole number ≥ 0 (0 = all tokens)"
                self.notes.print(f"[yellow]/{name} takes {kind}, not {value!r}[/]")
                return True
            if name == "temperature":
                self.settings.temperature = number
            else:
                self.settings.top_k = number or None
            self.notes.print(f"[dim](temperature {self.settings.temperature:g}, top-k {self.settings.top_k or 'all'})[/]")
        else:
            self.notes.print(f"[yellow]unknown command /{name}[/]; /help lists them")
        return True

    def say(self, text: str) -> Reply:
        """Send a user message and print the streamed reply."""
        self.messages.append({"role": "user", "content": text})
        try:
            ids, kept, dropped = self.chat.fit(self.history(), self.settings.max_tokens)
        except UsageError:  # too long for the context: the history stays as it was
            self.messages.pop()
            raise
        if dropped:
            self.messages = kept[len(self.history()) - len(self.messages):]
            self.notes.print(f"[dim](the {dropped} oldest message(s) no longer fit in the model's "
                             f"{self.chat.context}-token context and were dropped)[/]")
        self.turn += 1
        seed = None if self.settings.seed is None else self.settings.seed + self.turn
        reply, printer = Reply(), _Printer(self.out)
        try:
            for event in self.chat.reply(self.history(), 1, self.settings.max_tokens, self.settings.temperature,
                                         self.settings.top_k, seed=seed, prompt_ids=ids):
                add_event(reply, event)
                printer.show(event)
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat
            reply.finish = "interrupted"
        printer.end()
        if reply.finish == "length":
            self.notes.print("[dim](the reply reached its token limit)[/]")
        elif reply.finish == "interrupted":
            self.notes.print("[dim](stopped)[/]")
        self.messages.append(assistant_message(reply))
        return reply


class _Printer:
    """Prints a reply's events: words as they come, calculator calls as [calculator: x → y]."""

    def __init__(self, out):
        self.out, self.kind = out, "text"

    def show(self, event) -> None:
        if event.kind == "special" and not event.text:
            return  # a delimiter: the kind of the next token says where we are
        kind = event.kind if event.kind in ("tool_call", "tool_result") else "text"
        if kind != self.kind:
            if self.kind == "text" and kind == "tool_call":
                self.out.print("[cyan]\\[calculator: [/]", end="")
            elif self.kind == "tool_call" and kind == "tool_result":
                self.out.print("[cyan] → [/]", end="")
            elif self.kind == "tool_result" or (self.kind == "tool_call" and kind == "text"):
                self.out.print("[cyan]][/]", end="")
            self.kind = kind
        if event.text:
            style = "cyan" if kind != "text" else None
            self.out.print(event.text, end="", style=style, markup=False, highlight=False, soft_wrap=True)

    def end(self) -> None:
        if self.kind != "text":
            self.out.print("[cyan]][/]", end="")
        self.out.print()


def run(args) -> int:
    from glassgpt import device as devices, ui
    from glassgpt.runs import load_run

    out, notes = ui.console(), ui.err_console()
    device = devices.resolve_device(args.device)
    run = load_run(args.run, args.checkpoint, device)
    chat = ChatModel(run, compile=args.compile)
    settings = Settings(args.temperature, args.top_k or None, args.max_tokens, args.system or "", args.seed)
    if not chat.is_chat_model:
        notes.print(f"[yellow]note[/]: run {args.run!r} is a base model (it was not trained on conversations), so "
                    f"its replies continue text rather than answer; train it further with: glassgpt train "
                    f"--stage mid --from {args.run} --run {args.run}-mid")
    if args.prompt is not None and not args.prompt.strip():  # before a compile makes the mistake wait
        raise UsageError("-p is empty: give the message to reply to")
    if args.compile:  # all at once, before the first reply, rather than pauses in the middle of replies
        started = time.perf_counter()
        with notes.status("compiling the decode step") as status:
            graphs = chat.engine.compile_now(
                lambda done, total: status.update(f"compiling the decode step: {done}/{total} graphs done"))
        notes.print(f"[dim]{compiled_summary(graphs, time.perf_counter() - started)}[/]")
    conversation = Conversation(chat, settings, out, notes)
    if args.prompt is not None:
        conversation.say(args.prompt)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        notes.print(f"[bold]chatting with {args.run}[/] (step {run.step}, {run.config['train'].get('stage', 'base')}, "
                    f"{sum(p.numel() for p in run.model.parameters()):,} parameters, context {chat.context} tokens); "
                    "/help for commands, /quit to leave")
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            if interactive:
                notes.print()
            return 0
        except KeyboardInterrupt:
            notes.print()
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not conversation.command(line):
                return 0
            continue
        if interactive:
            out.print(f"[bold]{args.run}>[/] ", end="")
        try:
            conversation.say(line)
        except UsageError as error:  # one message too long: say so, and the conversation goes on
            if interactive:
                out.print()
            notes.print(f"[yellow]{escape(str(error))}[/]")
