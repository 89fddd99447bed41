"""`glassgpt <command>`: one entry point, thin; the work happens in the modules it calls.

Errors a user can cause (bad flags, missing runs, no network...) print one line and exit non-zero
(2 for usage errors); they never show a traceback.
"""

from __future__ import annotations

import argparse
import codecs
import sys
import time
from pathlib import Path

from glassgpt import __version__
from glassgpt.errors import GlassError, UsageError

DESCRIPTION = """\
glassgpt: train your own ChatGPT-style model on a laptop CPU, and see through every tensor of it.

Start here:
  glassgpt quickstart                                 tokenizer + a small GPT on Shakespeare, ~2 min on 2 cores
  glassgpt speedrun --run mychat                      your own ChatGPT: base, mid, SFT, evals, report (~30 min)
  glassgpt sample --run quickstart --prompt "ROMEO:"  talk to what you trained

Everything is cached under $GLASSGPT_HOME (default ~/.cache/glassgpt). Offline? Point
$GLASSGPT_DATA_MIRROR at a local copy of the data.
"""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit code 2) instead of usage + message."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def run() -> None:
    """The `glassgpt` console script and `python -m glassgpt`: `main()`, then `exit_quickly`."""
    exit_quickly(main())


def exit_quickly(code: int) -> None:
    """End the process without the interpreter's teardown of every imported module.

    Once PyTorch is imported, that teardown (deleting a thousand modules and collecting their
    objects) takes about 0.3 s and writes nothing: a tenth of a 20-step run's time outside its
    training steps. Whatever does write still runs: the atexit handlers (temporary folders,
    logging, multiprocessing's children), then the flush of stdout and stderr. It is a normal
    exit when PyTorch is not imported, when a thread other than this one still runs (a normal exit
    waits for it), and when something acts after the command returns: a profiler or tracer
    (`python -m cProfile -o ...`, coverage) or `python -i`.
    """
    import threading

    watched = sys.getprofile() is not None or sys.gettrace() is not None or sys.flags.inspect
    if "torch" not in sys.modules or threading.active_count() > 1 or watched:
        sys.exit(code)
    import atexit
    import os

    atexit._run_exitfuncs()  # the hooks a normal exit runs, in the same order
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the process was started with that descriptor closed
                stream.flush()
        except (OSError, ValueError):  # a reader that went away, a closed stream: nothing to keep
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        if unknown:
            if args.handler is _run_train and unknown[0].startswith("--"):
                from glassgpt.config import canonical_key

                canonical_key(unknown[0])  # raises "unknown option --x; did you mean --y?"
            raise UsageError(f"unknown argument {unknown[0]!r}; see the command's --help")
        from glassgpt.allocator import tune_allocator

        tune_allocator()
        return args.handler(args) or 0
    except GlassError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `glassgpt ... | head`: the reader has what it wanted
        return 0
    except OSError as error:  # the machine said no: a full disk, a file limit, a vanished folder
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where} (check the free disk space and the permissions there)",
              file=sys.stderr)
        return 1


def build_parser() -> Parser:
    parser = Parser(prog="glassgpt", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"glassgpt {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="<command>")
    _add_quickstart(commands)
    _add_train(commands)
    _add_sample(commands)
    _add_chat(commands)
    _add_serve(commands)
    _add_eval(commands)
    _add_report(commands)
    _add_speedrun(commands)
    _add_tokenizer(commands)
    _add_data(commands)
    _add_bench(commands)
    _add_scale(commands)
    _add_attention(commands)
    _add_trace(commands)
    _add_learn(commands)
    _add_experiment(commands)
    return parser


def _sub(commands, name: str, help: str, description: str) -> Parser:
    return commands.add_parser(name, help=help, description=description,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


# -- train / quickstart ---------------------------------------------------------------------------

TRAIN_DESCRIPTION = """\
Train a GPT. The model, data, tokenizer, optimiser and schedule all come from one typed config:

  defaults  <  --preset NAME  <  --config FILE.json  <  --FIELD VALUE flags

Any training field or model switch below can be given as a flag; underscores and dashes are both
fine (--max-steps, --max_steps). The run is saved in $GLASSGPT_HOME/runs/NAME: config.json,
metrics.jsonl, samples.txt, plots/loss.svg and checkpoints/step-NNNNNN/. Ctrl-C saves a checkpoint;
--resume continues exactly where it stopped.

Stages turn a base model into a chat model, each one a run of its own with the same loop:

  --stage base   (default) pretrain on --data
  --stage mid    midtrain --from a run on a conversation mixture, packed into full rows
  --stage sft    fine-tune --from a run on whole conversations, one or more per row, padded

A chat stage starts from the --from run's final weights and tokenizer (a fresh optimiser), keeps
its architecture, and trains only on assistant tokens (the loss mask). Its own defaults:
{stage_defaults}

examples:
  glassgpt train --preset cpu-tiny --run shakespeare
  glassgpt train --preset cpu-tiny --run mqa --n-kv-head 1 --max-steps 300
  glassgpt train --run mine --data "notes/*.txt" --depth 2 --vocab-size 1024 --max-steps 200
  glassgpt train --run shakespeare --resume
  glassgpt train --stage mid --from quickstart --run quickstart-mid
  glassgpt train --stage sft --from quickstart-mid --run quickstart-sft --mixture "sft,my_chats.jsonl:3"
  torchrun --standalone --nproc-per-node 2 -m glassgpt train --preset cpu-tiny --run-name ddp
"""


def _stage_defaults() -> str:
    from glassgpt.config import STAGE_DEFAULTS, STAGE_SEQ_LEN

    lines = [f"  {stage}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in fields.items())
             for stage, fields in STAGE_DEFAULTS.items() if fields]
    lines.append(f"  both: --seq-len max(the --from run's, {STAGE_SEQ_LEN}) (the --from run's if its positions are learned)")
    return "\n".join(lines)


def _add_train(commands) -> None:
    from glassgpt import config as cfg
    from glassgpt.model.config import GPTConfig

    parser = _sub(commands, "train", "train a GPT (any config field as --field value); chat stages: --stage mid|sft",
                  TRAIN_DESCRIPTION.format(stage_defaults=_stage_defaults()))
    parser.add_argument("--preset", choices=sorted(cfg.PRESETS), help="start from a named preset")
    parser.add_argument("--config", metavar="FILE", help="a JSON (or TOML) file of config fields")
    parser.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    defaults = cfg.TrainConfig()
    groups = {
        "run": ("run", "seed"),
        "stage (a chat model from a base run)": ("stage", "from_run", "mixture", "identity_name",
                                                 "model_name"),
        "data": ("data", "vocab_size", "tokenizer"),
        "model size": ("model_file", "init", "family", "depth", "head_dim", "seq_len"),
        "optimisation": ("device_batch_size", "total_batch_size", "max_steps", "optimizer", "matrix_lr",
                         "embedding_lr", "unembedding_lr", "scalar_lr", "adamw_lr", "weight_decay", "beta1",
                         "beta2", "warmup_steps", "warmdown_ratio", "final_lr_frac", "muon_momentum_warmup",
                         "grad_clip"),
        "evaluation, samples, checkpoints": ("eval_every", "eval_batch_size", "sample_tokens", "checkpoint_every",
                                             "keep_checkpoints", "log_every"),
        "hardware": ("device", "dtype", "compile"),
    }
    assert sorted(sum(groups.values(), ())) == sorted(cfg.TRAIN_FIELDS), "a train field has no help group"
    for title, names in groups.items():
        group = parser.add_argument_group(title)
        for name in names:
            _add_field(group, name, cfg.help_for(name), getattr(defaults, name), cfg.field_type(name))
    nanochat = GPTConfig.from_depth(4, 4096, "nanochat")
    gpt2 = GPTConfig.from_depth(4, 4096, "gpt2")
    group = parser.add_argument_group("model switches (defaults follow --family: nanochat | gpt2)")
    for name in cfg.MODEL_FIELDS:
        a, b = getattr(nanochat, name), getattr(gpt2, name)
        default = f"{_show(a)}" if a == b else f"{_show(a)} | {_show(b)}"
        if name in ("n_embd", "n_head", "n_kv_head", "sequence_len"):
            default = "derived from --depth" if name != "sequence_len" else "--seq-len"
        _add_field(group, name, cfg.help_for(name), default, cfg.field_type(name), show_raw=True)
    parser.set_defaults(handler=_run_train)


def _show(value) -> str:
    if value == "":
        return "none"
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _add_field(group, name: str, help: str, default, kind, show_raw: bool = False) -> None:
    dashed = name.replace("_", "-")
    flags = [f"--{dashed}"] + ([f"--{name}"] if dashed != name else [])
    metavar = {int: "N", float: "X", bool: "on|off", str: "TEXT"}.get(kind, "VALUE")
    if name == "run":
        # torchrun's own parser reads `--run` as an ambiguous abbreviation of its --run-path and
        # stops; `--run-name` passes through it untouched.
        flags.append("--run-name")
        help += " Under torchrun, spell it --run-name."
    elif name == "model_file":
        flags, metavar = ["--model", *flags], "FILE.py"
    elif name == "from_run":
        flags, metavar = ["--from", *flags], "RUN"
    elif name == "stage":
        metavar = "base|mid|sft"
    elif name == "softcap":
        metavar = "X|off"
    shown = default if show_raw else ("required" if name == "run" else _show(default))
    text = f"{help} (default: {shown})" if help else f"(default: {shown})"
    extra = dict(nargs="?", const="on") if kind is bool else {}
    group.add_argument(*flags, dest=f"field__{name}", metavar=metavar, default=argparse.SUPPRESS,
                       help=text.replace("%", "%%"), **extra)


def _field_flags(args) -> dict:
    return {key[len("field__"):]: value for key, value in vars(args).items() if key.startswith("field__")}


def _run_train(args) -> int:
    from glassgpt import config as cfg
    from glassgpt.train import loop

    flags = _field_flags(args)
    if "run" not in flags or not flags["run"]:
        raise UsageError("glassgpt train needs --run NAME (the run's folder name)")
    if args.resume:
        implied, implied_by = {}, []
        if args.preset:
            implied.update(cfg.preset(args.preset))
            implied_by.append(f"--preset {args.preset}")
        if args.config:
            implied.update(cfg.load_config_file(args.config))
            implied_by.append(f"--config {args.config}")
        config = loop.resumed_config(flags["run"], flags, implied, " and ".join(implied_by))
    else:
        config = cfg.resolve(args.preset, args.config, flags)
    result = loop.train(config, resume=args.resume)
    return 0 if result.val_bpb is not None or result.interrupted else 1


QUICKSTART_DESCRIPTION = """\
The whole pipeline in one command, sized for a laptop CPU (about 1.5-2.5 minutes on 2 cores):
downloads tinyshakespeare, trains a 4,096-token BPE tokenizer, trains a small nanochat-style GPT
(preset cpu-tiny) with a progress bar, prints validation bits per byte and samples, and saves the
run as 'quickstart'. Running it again shows the saved result; --fresh trains again.
"""


def _add_quickstart(commands) -> None:
    parser = _sub(commands, "quickstart", "train a tokenizer and a small GPT on Shakespeare (~2 min on a 2-core CPU)",
                  QUICKSTART_DESCRIPTION)
    parser.add_argument("--run", default="quickstart", help="run name (default: quickstart)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="override the preset's step count")
    parser.add_argument("--fresh", action="store_true", help="delete an existing run of this name and retrain")
    parser.set_defaults(handler=_run_quickstart)


def _run_quickstart(args) -> int:
    from glassgpt import config as cfg, paths, ui
    from glassgpt.runs import read_run_config, remove_run_files, run_lock
    from glassgpt.train import checkpoint, loop

    out = ui.console()
    run_dir = paths.run_dir(args.run)
    flags = {"run": args.run, **({"max_steps": args.max_steps} if args.max_steps else {})}
    if (run_dir / "config.json").exists():
        if args.fresh:
            with run_lock(run_dir, args.run):  # never under a process still training it
                remove_run_files(run_dir)
        elif checkpoint.latest(run_dir) is not None:
            state = checkpoint.read_state(checkpoint.latest(run_dir), verify=False)
            saved = read_run_config(run_dir)["train"]
            if state["step"] >= saved["max_steps"]:
                out.print(f"run [bold]{args.run}[/] is already trained ({state['step']} steps, val bits/byte "
                          f"{state.get('val_bpb') or float('nan'):.4f}); --fresh retrains it")
                _print_next_steps(args.run)
                return 0
            out.print(f"continuing the interrupted run [bold]{args.run}[/]")
            loop.train(loop.resumed_config(args.run, {}), resume=True)
            _print_next_steps(args.run)
            return 0
        # A folder without a checkpoint holds nothing to keep: loop.train starts it afresh.
    started = time.perf_counter()
    result = loop.train(cfg.resolve("cpu-tiny", None, flags))
    if not result.interrupted:
        out.print(f"quickstart finished in {ui.format_duration(time.perf_counter() - started)} (wall time); "
                  f"nanoGPT's char-level CPU recipe reaches 2.72 bits/byte on the same val split")
        _print_next_steps(args.run)
    return 0


def _print_next_steps(run: str) -> None:
    from glassgpt import paths, ui

    ui.console().print(
        "next:\n"
        f"  glassgpt sample --run {run} --prompt \"ROMEO:\"             generate text\n"
        f"  glassgpt trace --run {run} --text \"ROMEO: Is the day so young?\"   watch it think, tensor by tensor\n"
        f"  glassgpt learn init my_gpt.py                            write your own GPT\n"
        f"  the loss curve: {paths.run_dir(run) / 'plots' / 'loss.svg'}")


# -- sample ---------------------------------------------------------------------------------------------


def _add_sample(commands) -> None:
    parser = _sub(commands, "sample", "generate text from a trained run (KV-cache engine, streamed)",
                  "Generate a continuation of --prompt with a trained run, token by token.\n\n"
                  "  temperature 0 = always the likeliest token; higher = more varied\n"
                  "  --top-k K keeps the K likeliest tokens; --top-p P the smallest set holding P of the probability\n\n"
                  "example:\n  glassgpt sample --run quickstart --prompt \"ROMEO:\" --max-new-tokens 200 --temperature 0.8 --top-k 50")
    parser.add_argument("--run", required=True, help="the run to sample from")
    parser.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=200, metavar="N", help="tokens to generate (default 200)")
    parser.add_argument("--temperature", type=_non_negative_float, default=0.8, metavar="T", help="sampling temperature (default 0.8)")
    parser.add_argument("--top-k", type=_positive_int, default=None, metavar="K", help="sample only among the K likeliest tokens")
    parser.add_argument("--top-p", type=_probability, default=None, metavar="P", help="nucleus sampling: smallest set with probability ≥ P")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="random seed, for a repeatable sample")
    parser.add_argument("--num-samples", type=_positive_int, default=1, metavar="N", help="how many samples (default 1)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end the sample just before TEXT would appear (repeatable); TEXT is not printed")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="use this step's checkpoint (default: newest)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole context every token (slow; for comparison)")
    parser.set_defaults(handler=_run_sample)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {text!r}")
    return value


def _run_sample(args) -> int:
    from glassgpt import device as devices, ui
    from glassgpt.engine import Engine
    from glassgpt.runs import load_run

    out = ui.console()
    runtime_device = devices.resolve_device(args.device)
    run = load_run(args.run, args.checkpoint, runtime_device)
    tokenizer, config = run.tokenizer, run.model.config
    prompt_ids = tokenizer.encode(args.prompt, bos=True)
    if len(prompt_ids) > config.sequence_len:
        ui.err_console().print(f"[yellow]note[/]: the prompt has {len(prompt_ids)} tokens; the model reads at most "
                               f"{config.sequence_len}, so only the last {config.sequence_len} are used")
    engine = Engine(run.model, tokenizer=tokenizer)
    stops = set(tokenizer.special_ids.values())  # any special token ends a plain-text document
    for index in range(args.num_samples):
        if args.num_samples > 1:
            ui.err_console().print(f"[dim]--- sample {index + 1} ---[/]")
        seed = None if args.seed is None else args.seed + index
        out.print(args.prompt, end="", style="bold", soft_wrap=True, markup=False, highlight=False)
        started, count = time.perf_counter(), 0
        # The engine applies every stopping rule (stop ids, --stop texts, length): one place for them.
        for event in engine.stream(prompt_ids, 1, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                   seed, stop_ids=stops, stop_texts=args.stop, tools=False,
                                   use_cache=not args.no_cache):
            count += event.token >= 0
            out.print(event.text, end="", soft_wrap=True, markup=False, highlight=False)
        elapsed = time.perf_counter() - started
        out.print()
        ui.err_console().print(f"[dim]{count} tokens in {elapsed:.2f}s ({count / max(elapsed, 1e-9):.0f} tok/s), "
                               f"run {args.run} step {run.step}[/]")
    return 0


# -- chat -----------------------------------------------------------------------------------------------

CHAT_DESCRIPTION = """\
Talk to a trained run in the terminal: replies stream token by token, the history is kept across
turns (the oldest turns are dropped, with a note, when the model's context would overflow), and the
calculator's work is shown inline as [calculator: 37 + 48 → 85]. Commands: /clear, /temperature X,
/top-k K, /system TEXT, /help, /quit. A base run (not chat-trained) only continues text: train
--stage mid and --stage sft from it first.

  -p "PROMPT"   print one reply and exit
  stdin         when it is not a terminal, every line is one message: echo "hi" | glassgpt chat --run x

examples:
  glassgpt chat --run quickstart-sft
  glassgpt chat --run quickstart-sft -p "What is 37 + 48?" --temperature 0 
  glassgpt chat render chats.jsonl --run quickstart-sft --html chats.html
"""

CHAT_RENDER_DESCRIPTION = """\
Show conversations as the model sees them: every token, the special tokens that mark each turn, and
which tokens training learns (the loss mask: the assistant's words, its tool calls and
<|assistant_end|>) and which it only reads (everything else). FILE holds one conversation per line:
{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
(see docs/reference/conversations.md). The tokenizer is --run's, --tokenizer NAME's, or the default
one (tinyshakespeare-4096, trained on first use); with --run, a conversation longer than the run's
context is an error.

examples:
  glassgpt chat render chats.jsonl
  glassgpt chat render chats.jsonl --run quickstart-sft --html chats.html
"""


def compile_decode_help(when: str) -> str:
    """--compile's help for chat and serve, which compile the decode step `when`."""
    return (f"torch.compile the decode step {when}: about 2x the tokens per second, after about 10 s per graph "
            "the first time (4 graphs for a 512-token context; seconds once torch's compile cache has them). "
            "On a CPU it needs a C++ compiler")


def _add_chat(commands) -> None:
    parser = _sub(commands, "chat", "talk to a trained run (streaming, tools, history); chat render: see conversations "
                  "as the model does", CHAT_DESCRIPTION)
    parser.add_argument("--run", help="the run to talk to (a chat-trained one: --stage sft)")
    parser.add_argument("-p", "--prompt", default=None, metavar="TEXT", help="print one reply to TEXT and exit")
    parser.add_argument("--system", default="", metavar="TEXT", help="a system message for the conversation")
    parser.add_argument("--temperature", type=_non_negative_float, default=0.6, metavar="T", help="sampling temperature (default 0.6)")
    parser.add_argument("--top-k", type=int, default=50, metavar="K", help="sample among the K likeliest tokens (default 50; 0 = all)")
    parser.add_argument("--max-tokens", type=_positive_int, default=256, metavar="N", help="longest reply (default 256)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="random seed, for repeatable replies")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="use this step's checkpoint (default: newest)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--compile", action="store_true", help=compile_decode_help("before the first reply"))
    parser.set_defaults(handler=_run_chat)
    sub = parser.add_subparsers(title="subcommands", metavar="<subcommand>")
    render = _sub(sub, "render", "show conversations token by token, with the loss mask", CHAT_RENDER_DESCRIPTION)
    render.add_argument("file", help="a .jsonl file of conversations")
    source = render.add_mutually_exclusive_group()
    source.add_argument("--run", dest="render_run", metavar="NAME", help="use this run's tokenizer (and check its context)")
    source.add_argument("--tokenizer", metavar="NAME", help="use this trained tokenizer")
    render.add_argument("--html", metavar="FILE", help="also write one self-contained HTML page")
    render.add_argument("--max-tokens-shown", type=_positive_int, default=400, metavar="N",
                        help="terminal only: tokens shown per conversation (default 400; the HTML shows all)")
    render.set_defaults(handler=_run_chat_render)


def _run_chat(args) -> int:
    from glassgpt.chat import terminal

    if not args.run:
        raise UsageError("glassgpt chat needs --run NAME (or: glassgpt chat render FILE.jsonl)")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be 0 or more, not {args.top_k}")
    return terminal.run(args)


def _run_chat_render(args) -> int:
    from glassgpt import atomic, paths, ui
    from glassgpt.chat import view
    from glassgpt.chat.conversation import read_conversations
    from glassgpt.chat.render import ConversationTooLong, missing_chat_tokens

    conversations = list(read_conversations(args.file, complete=False))  # a bad line: one error naming it
    context = None
    if args.render_run:
        from glassgpt.runs import read_run_config
        from glassgpt.tokenizer import Tokenizer

        saved = read_run_config(paths.run_dir(args.render_run))
        tokenizer = Tokenizer.load(paths.run_dir(args.render_run) / "tokenizer.json")
        context = saved["model"]["sequence_len"] + 1
    else:
        tokenizer = _named_or_default_tokenizer(args.tokenizer)
    missing = missing_chat_tokens(tokenizer)
    if missing:
        raise UsageError(f"this tokenizer has no {', '.join(missing)}: it cannot render conversations")
    rendered = view.render_all(conversations, tokenizer)
    if context is not None:
        for item in rendered:
            if len(item.ids) > context:
                raise UsageError(f"{args.file}:{item.line}: {ConversationTooLong(len(item.ids), context)}")
    view.print_terminal(rendered, tokenizer, ui.console(), args.max_tokens_shown)
    if args.html:
        atomic.write_text(args.html, view.to_html(rendered, tokenizer, title=f"{Path(args.file).name}: as the model sees it"))
        ui.console().print(f"wrote {args.html}")
    return 0


# -- serve ----------------------------------------------------------------------------------------------

SERVE_DESCRIPTION = """\
Serve a trained run over HTTP: an OpenAI-compatible chat API and a chat page in the browser. The
model is loaded once; replies are generated by --workers threads, with up to --queue requests
waiting (one more gets HTTP 503 with Retry-After). It listens on 127.0.0.1 only (this machine)
unless --host says otherwise; --host 0.0.0.0 lets every machine that can reach this one use it,
with no authentication. Ctrl-C stops it.

endpoints:
  GET  /                      the chat page (streamed replies, Stop, Regenerate, calculator chips)
  POST /v1/chat/completions   OpenAI chat completions: messages, temperature, top_p, top_k, max_tokens,
                              n, stop, seed, stream (server-sent events)
  GET  /v1/models             this run, as the one model (its id is the run's name)
  GET  /health                {"status": "ok", ...} with the workers' and the queue's state
  (fields, ranges, errors: docs/reference/api.md)

examples:
  glassgpt serve --run quickstart-sft
  glassgpt serve --run quickstart-sft --port 0          any free port (printed)
  curl -s http://127.0.0.1:8000/v1/chat/completions -H "Content-Type: application/json" \\
       -d '{"messages": [{"role": "user", "content": "What is 37 + 48?"}], "max_tokens": 64}'

from Python, with the openai client (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
  reply = client.chat.completions.create(model="quickstart-sft",
                                         messages=[{"role": "user", "content": "Hello!"}])
  print(reply.choices[0].message.content)
"""


def _add_serve(commands) -> None:
    parser = _sub(commands, "serve", "serve a run: OpenAI-compatible chat API + a chat page in the browser",
                  SERVE_DESCRIPTION)
    parser.add_argument("--run", required=True, help="the run to serve (a chat-trained one: --stage sft)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                        help="generation threads (default 1: one per device; more only split a CPU's cores)")
    parser.add_argument("--queue", type=_non_negative_int, default=8, metavar="N",
                        help="requests that may wait for a worker (default 8); beyond that: 503")
    parser.add_argument("--max-tokens", type=_positive_int, default=None, metavar="N",
                        help="the longest reply a request may ask for, and the default (default 256, as glassgpt chat)")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="use this step's checkpoint (default: newest)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--compile", action="store_true",
                        help=compile_decode_help("before serving") + "; replies asking for n > 1 choices "
                             "decode eagerly")
    parser.set_defaults(handler=_run_serve)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}")
    return value


def _run_serve(args) -> int:
    from glassgpt.serve import server

    return server.run(args)


def _named_or_default_tokenizer(name: str | None):
    """A trained tokenizer by name, or the default corpus's default one (trained if missing)."""
    from glassgpt import config as cfg
    from glassgpt.data import sources
    from glassgpt.data.prepare import prepare_tokenizer
    from glassgpt.tokenizer import Tokenizer, tokenizer_path

    if name:
        if not tokenizer_path(name).exists():
            raise UsageError(f"no tokenizer named {name!r}; train one with glassgpt tokenizer train --name {name}")
        return Tokenizer.load(tokenizer_path(name))
    defaults = cfg.TrainConfig()
    corpus = sources.resolve(defaults.data)
    corpus.prepare()
    return prepare_tokenizer(defaults, corpus, say=lambda *a, **k: None)


# -- eval -----------------------------------------------------------------------------------------------

EVAL_DESCRIPTION = """\
Evaluate a saved run on benchmark tasks. Results go to the run's folder (eval.json, rewritten
after every task) and are shown as a table; --json prints the same document on stdout instead.

Base-model tasks (CORE-style, group "core"; scored by likelihood after few-shot examples):
{core}
Chat tasks (group "chat"; questions in the chat format the model was trained on):
{chat}
Accuracy is centred by each task's chance (guessing among the options): (accuracy - chance) /
(1 - chance), so 0 is chance and 1 perfect. CORE is the mean centred accuracy of the core tasks,
ChatCORE that of ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval and spelling. HumanEval runs the
model's code in a sandboxed subprocess (time and memory limits, a scrubbed environment, no network
where the OS allows), never in this process. Under torchrun the items are split across processes.

examples:
  glassgpt eval --run quickstart                                   CORE tasks (a base run's default)
  glassgpt eval --run quickstart-sft --tasks chat --max-per-task 100
  glassgpt eval --run quickstart-sft --tasks arithmetic,identity --json
  torchrun --standalone --nproc-per-node 2 -m glassgpt eval --run-name quickstart-sft
"""


def _add_eval(commands) -> None:
    from glassgpt.evals import chat as chat_evals, core as core_evals

    core = "\n".join(f"  {t.label:<34}{t.what}" for t in core_evals.CORE_TASKS)
    chat = "\n".join(f"  {t.name:<34}{t.what}" for t in chat_evals.CHAT_TASKS)
    parser = _sub(commands, "eval", "evaluate a run: CORE-style base tasks, chat tasks (ARC, MMLU, GSM8K, HumanEval...)",
                  EVAL_DESCRIPTION.format(core=core, chat=chat))
    parser.add_argument("--run", "--run-name", dest="run", required=True, help="the run to evaluate")
    parser.add_argument("--tasks", default=None, metavar="LIST",
                        help="comma list of tasks and groups (core, chat, all); default: core for a base run, "
                             "chat for a chat run")
    parser.add_argument("--max-per-task", type=_positive_int, default=None, metavar="N",
                        help="score a fixed random subset of N items per task (default: every item)")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="use this step's checkpoint (default: newest)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    parser.set_defaults(handler=_run_eval)


def _run_eval(args) -> int:
    import json
    import os

    from glassgpt import ui
    from glassgpt.evals import runner
    from glassgpt.runs import read_run_config
    from glassgpt import paths

    saved = read_run_config(paths.run_dir(args.run))  # "no run named …" before any work
    runner.task_names(args.tasks, saved["train"].get("stage", "base"))  # a bad --tasks: before loading
    document = runner.evaluate(runner.EvalOptions(args.run, args.tasks, args.max_per_task, args.checkpoint,
                                                  args.device))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the group
        return 0
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        runner.render(document, ui.console())
        ui.console().print(f"results: {runner.results_path(args.run)}")
    return 0


# -- report ---------------------------------------------------------------------------------------------

REPORT_DESCRIPTION = """\
Write a report of a run and the runs it grew from (a chat run's --from chain: BASE → MID → SFT):
<run>/report.md (plots in <run>/plots/) and <run>/report.html (one self-contained page).

  summary      every metric by stage: parameters, tokens, time, val bits/byte, CORE, each task, ChatCORE
  training     the loss curves of every stage on one figure; steps, tokens, wall time, peak memory, config
  evaluations  eval.json of each stage (glassgpt eval) as a table and as bars of centred accuracy
  replies      the last samples of each stage and a few evaluation replies, right or wrong
  system       CPU, cores, memory, GPU, torch; the size of glassgpt's code

examples:
  glassgpt report --run quickstart
  glassgpt report --run quickstart-sft
"""


def _add_report(commands) -> None:
    parser = _sub(commands, "report", "write report.md and report.html: every stage's training and evaluations",
                  REPORT_DESCRIPTION)
    parser.add_argument("--run", required=True, help="the run to report (with the runs it grew from)")
    parser.set_defaults(handler=_run_report)


def _run_report(args) -> int:
    from glassgpt import report, ui

    markdown, page = report.write(args.run)
    ui.console().print(f"wrote {markdown} and {page}")
    return 0


# -- speedrun -------------------------------------------------------------------------------------------

SPEEDRUN_DESCRIPTION = """\
Your own ChatGPT in one command: every stage in order, with one progress view and ETA.

  tokenizer → base (NAME-base) → base-eval → mid (NAME-mid) → mid-eval → sft (NAME) → sft-eval → report

A finished stage is skipped, so after an interruption (Ctrl-C, a crash, even kill -9) the same
command continues from the last checkpoint of the stage it was in. It ends by printing where the
report is and how to talk to the model (glassgpt chat --run NAME) and serve it.

presets:
{presets}

examples:
  glassgpt speedrun --run mychat
  glassgpt speedrun --run try --max-steps 20 --max-per-task 10     a quick look at every stage
  torchrun --standalone --nproc-per-node 8 -m glassgpt speedrun --run-name d20 --preset gpu
"""


def _add_speedrun(commands) -> None:
    from glassgpt.speedrun import PRESETS

    presets = "\n".join(f"  {name:<6}{preset.description}" for name, preset in PRESETS.items())
    parser = _sub(commands, "speedrun", "tokenizer → base → mid → SFT → eval → report in one resumable command",
                  SPEEDRUN_DESCRIPTION.format(presets=presets))
    parser.add_argument("--run", "--run-name", dest="run", required=True,
                        help="name of the chat model (its runs: NAME-base, NAME-mid, NAME)")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="what to size it for (default cpu)")
    parser.add_argument("--max-steps", type=_positive_int, default=None, metavar="N",
                        help="cap every training stage at N steps (a quick trial of the whole pipeline)")
    parser.add_argument("--max-per-task", type=_positive_int, default=None, metavar="N",
                        help="cap every evaluation task at N items")
    parser.add_argument("--identity-name", default="", metavar="NAME",
                        help="who trained the model, as it will say (default: your user name)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.set_defaults(handler=_run_speedrun)


def _run_speedrun(args) -> int:
    from glassgpt import speedrun

    return speedrun.run(speedrun.Options(args.run, args.preset, args.max_steps, args.max_per_task,
                                         args.identity_name, args.device))


# -- tokenizer ------------------------------------------------------------------------------------------


def _add_tokenizer(commands) -> None:
    parser = _sub(commands, "tokenizer", "train, inspect and evaluate BPE tokenizers",
                  "Byte-level BPE tokenizers (rustbpe to train, tiktoken to encode).\n\n"
                  "examples:\n"
                  "  glassgpt tokenizer train --data tinyshakespeare --vocab-size 4096\n"
                  "  glassgpt tokenizer encode --name tinyshakespeare-4096 --text \"To be, or not to be\"\n"
                  "  glassgpt tokenizer eval --name tinyshakespeare-4096 --data tinyshakespeare")
    sub = parser.add_subparsers(title="subcommands", metavar="<subcommand>")
    train = _sub(sub, "train", "train a tokenizer on a corpus's train split",
                 "Train a byte-level BPE tokenizer on the train split of --data and save it under\n"
                 "$GLASSGPT_HOME/tokenizers/NAME (default NAME: <corpus>-<vocab-size>, the name\n"
                 "`glassgpt train` looks for). The first 256 ids are the raw bytes, so any UTF-8 text\n"
                 "round-trips; the last 11 are special tokens reserved for chat (<|bos|>, <|user_start|>...).\n\n"
                 "examples:\n"
                 "  glassgpt tokenizer train --data tinyshakespeare --vocab-size 4096\n"
                 "  glassgpt tokenizer train --data \"notes/*.txt\" --vocab-size 2048 --name notes-2048")
    train.add_argument("--data", default="tinyshakespeare", help="corpus name or path (default tinyshakespeare)")
    train.add_argument("--vocab-size", type=int, default=4096, metavar="N", help="vocabulary size incl. special tokens (default 4096)")
    train.add_argument("--name", default=None, help="tokenizer name (default <corpus>-<vocab-size>)")
    train.add_argument("--force", action="store_true", help="overwrite an existing tokenizer of that name")
    train.set_defaults(handler=_run_tokenizer_train)
    examples = {
        "encode": "Each token is shown in its own colour, then its id; pieces that end inside a UTF-8\n"
                  "character show their bytes (b'\\xe2').\n\nexamples:\n"
                  "  glassgpt tokenizer encode --name tinyshakespeare-4096 --text \"To be, or not to be\"\n"
                  "  echo \"O Romeo, Romeo\" | glassgpt tokenizer encode --run quickstart --text -",
        "eval": "Bytes per token on the train and val splits: how much text one token carries\n"
                "(higher is better compression; the model then sees more text per step).\n\nexamples:\n"
                "  glassgpt tokenizer eval --name tinyshakespeare-4096\n"
                "  glassgpt tokenizer eval --run quickstart --data \"notes/*.txt\"",
    }
    for name, help, handler in (("encode", "show how a text is split into tokens", _run_tokenizer_encode),
                                ("eval", "bytes per token on a corpus's val split", _run_tokenizer_eval)):
        command = _sub(sub, name, help, help[0].upper() + help[1:] + ".\n" + examples[name])
        source = command.add_mutually_exclusive_group(required=True)
        source.add_argument("--name", help="a trained tokenizer's name")
        source.add_argument("--run", help="use the tokenizer of this run")
        if name == "encode":
            command.add_argument("--text", required=True, help="text to encode ('-' reads standard input)")
        else:
            command.add_argument("--data", default="tinyshakespeare", help="corpus to measure on (default tinyshakespeare)")
        command.set_defaults(handler=handler)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _load_tokenizer(args):
    from glassgpt import paths
    from glassgpt.tokenizer import Tokenizer, tokenizer_path

    if args.run:
        path = paths.run_dir(args.run) / "tokenizer.json"
        if not path.exists():
            from glassgpt.runs import read_run_config

            read_run_config(paths.run_dir(args.run))  # raises "no run named …" with the list of runs
        return Tokenizer.load(path)
    path = tokenizer_path(args.name)
    if not path.exists():
        from glassgpt import paths as p

        names = sorted(d.name for d in p.tokenizers_dir().glob("*") if (d / "tokenizer.json").exists())
        raise GlassError(f"no tokenizer named {args.name!r}" + (f"; trained tokenizers: {', '.join(names)}" if names
                         else "; train one with glassgpt tokenizer train"))
    return Tokenizer.load(path)


def _run_tokenizer_train(args) -> int:
    from glassgpt import ui
    from glassgpt.data import sources
    from glassgpt.tokenizer import check_vocab_size, tokenizer_path, train_and_save
    from glassgpt.data.prepare import default_tokenizer_name

    check_vocab_size(args.vocab_size)
    corpus = sources.resolve(args.data)
    name = args.name or default_tokenizer_name(corpus, args.vocab_size)
    path = tokenizer_path(name)
    if path.exists() and not args.force:
        raise UsageError(f"tokenizer {name!r} already exists ({path}); add --force to retrain it")
    corpus.prepare()
    started = time.perf_counter()
    train_text_bytes = sum(len(t.encode()) for t in corpus.train())
    tokenizer = train_and_save(name, corpus.train(), args.vocab_size)
    elapsed = time.perf_counter() - started
    ui.console().print(f"trained [bold]{name}[/]: vocab {tokenizer.vocab_size:,} on {train_text_bytes:,} bytes "
                       f"in {elapsed:.2f}s ({train_text_bytes / 1e6 / max(elapsed, 1e-9):.1f} MB/s) → {path}")
    return 0


def _run_tokenizer_encode(args) -> int:
    from rich.text import Text

    from glassgpt import ui

    tokenizer = _load_tokenizer(args)
    text = sys.stdin.read() if args.text == "-" else args.text
    ids = tokenizer.encode(text)
    out = ui.console()
    colours = ["on grey23", "on dark_blue", "on dark_green", "on dark_red", "on purple4"]
    # A character can span tokens (é is two bytes, and BPE may cut between them): the coloured
    # text gives it to the token that completes it; the pieces line shows each token's own bytes.
    decoder, pieces = codecs.getincrementaldecoder("utf-8")(errors="replace"), Text()
    for i, token_id in enumerate(ids):
        pieces.append(decoder.decode(tokenizer.token_piece(token_id)), style=colours[i % len(colours)])
    pieces.append(decoder.decode(b"", final=True))
    out.print(pieces)
    out.print("pieces: " + " | ".join(_show_piece(tokenizer.token_piece(i)) for i in ids), markup=False)
    out.print(f"ids: {ids}")
    n_bytes = len(text.encode("utf-8"))
    out.print(f"{len(ids)} tokens for {n_bytes} bytes ({n_bytes / max(len(ids), 1):.2f} bytes/token); "
              f"round trip exact: {tokenizer.decode(ids) == text}")
    return 0


def _show_piece(piece: bytes) -> str:
    """'llo' for a piece that is whole text, b'\\xc3' for one that ends inside a character."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


def _run_tokenizer_eval(args) -> int:
    from rich.table import Table

    from glassgpt import ui
    from glassgpt.data import sources

    tokenizer = _load_tokenizer(args)
    corpus = sources.resolve(args.data)
    corpus.prepare()
    table = Table(title=f"tokenizer on {corpus.key} (vocab {tokenizer.vocab_size:,})")
    for column in ("split", "bytes", "tokens", "bytes/token"):
        table.add_column(column, justify="right")
    for split, documents in (("train", corpus.train()), ("val", corpus.val())):
        texts = list(documents)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
        table.add_row(split, f"{n_bytes:,}", f"{n_tokens:,}", f"{n_bytes / max(n_tokens, 1):.3f}")
    ui.console().print(table)
    return 0


# -- data --------------------------------------------------------------------------------------------------


def _add_data(commands) -> None:
    parser = _sub(commands, "data", "list and download corpora, chat tasks and mixtures",
                  "Named corpora are downloaded on demand into $GLASSGPT_HOME/data (sha256-checked where a\n"
                  "checksum is known, resumable). Set $GLASSGPT_DATA_MIRROR to a folder or base URL laid out\n"
                  "like that cache to work offline.\n\n"
                  "examples:\n  glassgpt data list\n  glassgpt data download tinyshakespeare\n"
                  "  glassgpt data download fineweb-edu --shards 2")
    sub = parser.add_subparsers(title="subcommands", metavar="<subcommand>")
    listing = _sub(sub, "list", "registered corpora, chat tasks and mixtures",
                   "Registered corpora, where each comes from, and what is already in the cache; then the chat\n"
                   "tasks (conversations, with their split sizes and provenance) and the named mixtures that\n"
                   "glassgpt train --stage mid|sft --mixture NAME builds from them.\n\n"
                   "examples:\n  glassgpt data list")
    listing.set_defaults(handler=_run_data_list)
    download = _sub(sub, "download", "download a registered corpus",
                    "Download a registered corpus into $GLASSGPT_HOME/data: resumable (a .part file is\n"
                    "continued), checked against its sha256 where one is known, and renamed into place\n"
                    "only when complete. `glassgpt train` downloads on demand; this fetches ahead of time.\n\n"
                    "examples:\n  glassgpt data download tinyshakespeare\n"
                    "  glassgpt data download fineweb-edu --shards 2\n"
                    "  GLASSGPT_DATA_MIRROR=/mnt/usb/glassgpt-data glassgpt data download tinyshakespeare")
    download.add_argument("name", help="corpus name (see glassgpt data list)")
    download.add_argument("--shards", type=_positive_int, default=1, metavar="N", help="fineweb-edu: train shards to fetch (default 1)")
    download.set_defaults(handler=_run_data_download)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _run_data_list(args) -> int:
    from rich.table import Table

    from glassgpt import paths, ui
    from glassgpt.data import download, sources

    table = Table(title=f"corpora (cache: {paths.data_dir()})")
    for column in ("name", "what", "cached"):
        table.add_column(column)
    for name, description in sources.REGISTRY.items():
        files = sources.registered_files(name)
        if name == "fineweb-edu":
            cached = sorted((paths.data_dir() / "fineweb-edu").glob("shard_*.parquet"))
            status = f"{len(cached)} shard(s)" if cached else "no"
        else:
            present = [(paths.data_dir() / f.relpath) for f in files if (paths.data_dir() / f.relpath).exists()]
            status = f"yes ({sum(p.stat().st_size for p in present):,} bytes)" if len(present) == len(files) else "no"
        table.add_row(name, description, status)
    out = ui.console()
    out.print(table)
    mirror = download.mirror()
    out.print(f"mirror: {mirror} ({download.MIRROR_ENV})" if mirror else f"mirror: none (set {download.MIRROR_ENV} to work offline)")
    out.print("your own data: --data path/to/file.txt | file.jsonl ({\"text\": ...} per line) | file.parquet (text column) | folder | 'glob*'")
    _print_tasks_and_mixtures(out)
    return 0


def _print_tasks_and_mixtures(out) -> None:
    """The chat stages' data: tasks (conversations) and the named mixtures built from them."""
    from rich.table import Table

    from glassgpt.tasks import mixtures

    rows = mixtures.describe()
    tasks = Table(title="chat tasks (conversations for --stage mid/sft; evaluation = never trained on)")
    for column in ("name", "what", "train", "val", "test", "evaluation", "provenance"):
        tasks.add_column(column, overflow="fold")
    for row in rows["tasks"]:
        tasks.add_row(*(row[c] for c in ("name", "what", "train", "val", "test", "evaluation", "provenance")))
    out.print(tasks)
    table = Table(title="mixtures (--mixture NAME, or your own: \"mid,my_chats.jsonl:3\")")
    for column in ("name", "what", "entries (task:epochs)"):
        table.add_column(column, overflow="fold")
    for row in rows["mixtures"]:
        table.add_row(row["name"], row["what"], row["entries"])
    out.print(table)


def _run_data_download(args) -> int:
    from glassgpt import ui
    from glassgpt.data import sources

    files = sources.registered_files(args.name, args.shards)
    paths_ = sources.fetch_all(files)
    for path in paths_:
        ui.console().print(f"{path} ({path.stat().st_size:,} bytes)")
    return 0


# -- bench --------------------------------------------------------------------------------------------------


def _add_bench(commands) -> None:
    parser = _sub(commands, "bench", "measure training and decoding speed, and MFU",
                  "Measure on this machine: matmul peak (GFLOP/s), training throughput (tokens/s, ms/step,\n"
                  "model FLOPs utilisation (MFU) against the measured peak) and decoding speed with and without\n"
                  "the KV cache. Uses random tokens and a fresh model: nothing is downloaded or saved.\n\n"
                  "examples:\n  glassgpt bench\n  glassgpt bench --depth 4 --vocab-size 4096 --seq-len 512 --batch-size 8 --dtype fp32,bf16")
    parser.add_argument("--what", default="matmul,train,decode", help="comma list of: matmul, train, decode (default all)")
    parser.add_argument("--depth", type=_positive_int, default=4, metavar="N", help="model depth (default 4)")
    parser.add_argument("--family", default="nanochat", choices=("nanochat", "gpt2"), help="architecture (default nanochat)")
    parser.add_argument("--head-dim", type=_positive_int, default=None, metavar="N",
                        help="attention head size (default: the family's, 128 for nanochat)")
    parser.add_argument("--vocab-size", type=_positive_int, default=4096, metavar="N", help="vocabulary (default 4096)")
    parser.add_argument("--seq-len", type=_positive_int, default=512, metavar="N", help="tokens per sequence (default 512)")
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="N", help="sequences per step (default 8)")
    parser.add_argument("--steps", type=_positive_int, default=10, metavar="N", help="timed training steps (default 10)")
    parser.add_argument("--decode-tokens", type=_positive_int, default=256, metavar="N", help="tokens to decode (default 256)")
    parser.add_argument("--dtype", default="auto",
                        help="comma list of fp32, bf16; auto (default) = fp32, and bf16 too where "
                             "`glassgpt train --dtype auto` would use it on this machine")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="default: the best available")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd model")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(handler=_run_bench)


def _run_bench(args) -> int:
    from glassgpt import bench

    return bench.run(args)


# -- scale --------------------------------------------------------------------------------------------------

SCALE_DESCRIPTION = """\
How big is a model, and what does training it cost? Counted from the model's config, with no
weights made (so any depth takes a moment). --verify also builds the real model on PyTorch's meta
device (shapes, no storage) and checks every tensor's name and shape against it:

  parameters  per component, grouped by the model's named_parameters() (one block in
              detail, then all layers, the head, the total), with percentages of the total
  compute     training FLOPs per token (6 x matmul params + attention), forward FLOPs (a third),
              and per step with --batch-tokens
  memory      to train in fp32 and in bf16 mixed precision: weights, gradients, optimiser state
              (Muon / AdamW, split as training splits it) and a rough activation estimate

examples:
  glassgpt scale --depth 20                                              nanochat d20: 560,988,160
  glassgpt scale --depth 12 --family gpt2 --vocab 50257 --seq-len 1024   GPT-2 small: 124,439,808
  glassgpt scale --depth 8 --n-kv-head 1 --batch-size 16 --batch-tokens 524288 --json d8.json
  glassgpt scale --depth 32 --verify
"""


def _add_scale(commands) -> None:
    parser = _sub(commands, "scale", "parameters, FLOPs and training memory of a model size (no weights)",
                  SCALE_DESCRIPTION)
    parser.add_argument("--depth", type=_positive_int, required=True, metavar="N", help="number of blocks (width = 64 x depth)")
    parser.add_argument("--vocab", "--vocab-size", dest="vocab", type=_positive_int, default=65536, metavar="N",
                        help="vocabulary size (default 65,536, nanochat's)")
    parser.add_argument("--family", default="nanochat", choices=("nanochat", "gpt2"), help="architecture family (default nanochat)")
    parser.add_argument("--seq-len", type=_positive_int, default=2048, metavar="N",
                        help="the model's sequence_len (default 2048, nanochat's pretraining context)")
    parser.add_argument("--n-kv-head", type=_positive_int, default=None, metavar="N",
                        help="key/value heads (default: as many as query heads); must divide the query heads")
    parser.add_argument("--head-dim", type=_positive_int, default=None, metavar="N",
                        help="target head size (default: nanochat 128, gpt2 64)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                        help="sequences per pass, for the activation memory estimate (default 1)")
    parser.add_argument("--batch-tokens", type=_positive_int, default=None, metavar="N",
                        help="tokens per optimiser step: also print the FLOPs of one step")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write every number as JSON")
    parser.add_argument("--verify", action="store_true",
                        help="also build the model on the meta device and check every count against it (~2 s: torch)")
    parser.set_defaults(handler=_run_scale)


def _run_scale(args) -> int:
    import json

    from glassgpt import atomic, ui
    from glassgpt.model import scaling
    from glassgpt.model.config import GPTConfig

    fields = {"sequence_len": args.seq_len}
    if args.n_kv_head is not None:
        fields["n_kv_head"] = args.n_kv_head
    config = GPTConfig.from_depth(args.depth, args.vocab, args.family, head_dim=args.head_dim, **fields)
    report = scaling.analyse(config, args.batch_size, args.batch_tokens)
    out = ui.console()
    scaling.render(report, out)
    if args.verify:
        difference = scaling.verify(config)
        if difference:  # a bug in glassgpt, not a user mistake: say so plainly
            raise GlassError(f"the counts disagree with the model built on the meta device: {difference}; "
                             "please report this")
        out.print(f"verified: the model built on the meta device has these {len(scaling.parameter_shapes(config))} "
                  f"parameter tensors, names and shapes, {report.parameters.total:,} parameters in all")
    if args.json_out:
        atomic.write_text(args.json_out, json.dumps(report.to_dict(), indent=2))
        out.print(f"wrote {args.json_out}")
    return 0


# -- attention ------------------------------------------------------------------------------------------------

ATTENTION_DESCRIPTION = """\
Where does each head look? Runs the model once on --text (eval mode, no gradients) with a tracer on
blocks.*.attn.pattern, prints the attention entropy of every layer and head, and saves:

  heatmaps.png  rows = layers, columns = heads; row i of a map is how query token i spreads its
                attention over the tokens before it (token labels on the axes up to 40 tokens)
  entropy.png   mean attention entropy (nats) per layer, one line per head, and uniform attention

Low entropy: the head looks at a few tokens. Near the uniform line: it averages everything it sees.
The text is encoded with the model's tokenizer after a <|bos|> token, as training documents start.
Text longer than the model's sequence_len is truncated to its FIRST sequence_len tokens (a notice
says so). Without --run, a fresh (untrained) nanochat model of --depth is used, with the default
4,096-token tinyshakespeare tokenizer (trained on first use): a baseline for a trained run.

examples:
  glassgpt attention --run quickstart --text "ROMEO: Is the day so young?"
  glassgpt attention --run quickstart --checkpoint 500 --text "To be, or not to be" --out maps/
  glassgpt attention --depth 2 --text "the cat sat on the mat"
"""


def _add_attention(commands) -> None:
    parser = _sub(commands, "attention", "attention heatmaps and entropy per layer and head, for a text",
                  ATTENTION_DESCRIPTION)
    parser.add_argument("--text", required=True, help="the text to run through the model")
    parser.add_argument("--run", default=None, help="a trained run (default: a fresh model of --depth)")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="the run's checkpoint at this step (default: newest)")
    parser.add_argument("--depth", type=_positive_int, default=None, metavar="N", help="fresh model only: blocks (default 4)")
    parser.add_argument("--seed", type=int, default=1337, metavar="N", help="fresh model only: initialisation seed (default 1337)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the PNGs (default: <run>/plots/attention, or ./attention for a fresh model)")
    parser.set_defaults(handler=_run_attention)


def _run_attention(args) -> int:
    from glassgpt.see import attention

    attention.run(args.run, args.text, args.out, args.checkpoint, args.depth, args.seed)
    return 0


# -- trace ---------------------------------------------------------------------------------------------

TRACE_DESCRIPTION = """\
Watch real training iterations of the reference model, every operation, with explanations.

By default: a fresh nanochat-family model (depth 4, seq 1024, batch 1, the default 4,096-token
tokenizer) on real tinyshakespeare text, for 3 iterations of forward, backward and optimiser step.
Iteration 1 is shown in full for the chosen blocks (default: the first three and the last), the
others summarised; all iterations are summarised at the end (loss, gradient norm, update ratios).

Trace points are named like blocks.0.attn.pattern; patterns use * (blocks.*.attn.*).
--text longer than the model's context is cut to its sequence_len, with a notice.

examples:
  glassgpt trace
  glassgpt trace --blocks 0,last --html trace.html --json trace.json
  glassgpt trace --only 'blocks.*.attn.*' --seq-len 16 --text "To be, or not to be"
  glassgpt trace --run quickstart --text "ROMEO:"
  glassgpt trace --run quickstart-sft --conversation chats.jsonl
  glassgpt trace --list
"""


def _add_trace(commands) -> None:
    parser = _sub(commands, "trace", "watch a real training step, tensor by tensor, with explanations",
                  TRACE_DESCRIPTION)
    parser.add_argument("--run", help="trace a trained run: its newest checkpoint and optimiser state, continuing its "
                                      "learning-rate schedule where it stopped")
    parser.add_argument("--depth", type=_positive_int, default=None, metavar="N", help="depth of a fresh model (default 4)")
    parser.add_argument("--family", default=None, choices=("nanochat", "gpt2"),
                        help="family of a fresh model (default nanochat)")
    parser.add_argument("--n-kv-head", type=_positive_int, default=None, metavar="N",
                        help="key/value heads of a fresh model (default: one per query head); fewer shows grouped-query "
                             "attention, 1 multi-query; must divide the query heads")
    parser.add_argument("--head-dim", type=_positive_int, default=None, metavar="N",
                        help="target head size of a fresh model (default: nanochat 128, gpt2 64); smaller means more heads")
    parser.add_argument("--seq-len", type=_positive_int, default=None, metavar="N",
                        help="tokens per sequence (default 1024; a run's sequence_len with --run)")
    parser.add_argument("--steps", type=_positive_int, default=3, metavar="N", help="training iterations (default 3)")
    parser.add_argument("--blocks", metavar="LIST", help="blocks shown in full: e.g. 0,1,last or all (default: first three and last)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="show only trace points matching PATTERN (repeatable), e.g. 'blocks.*.attn.*'; "
                             "'grad:PATTERN' shows only their gradients")
    parser.add_argument("--text", help="trace this text instead of corpus data")
    parser.add_argument("--conversation", metavar="FILE.jsonl",
                        help="trace the first conversation of FILE, rendered as training renders it: the loss "
                             "section shows its loss mask (a chat run without --text traces an example one)")
    parser.add_argument("--html", metavar="FILE", help="also write one self-contained HTML page")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write every statistic as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the walk-through as markdown")
    parser.add_argument("--no-color", action="store_true", help="plain text, no colours")
    parser.add_argument("--seed", type=int, default=1337, help="seed for weights and data (default 1337)")
    parser.add_argument("--list", action="store_true", help="list every trace point with its meaning, then exit")
    parser.set_defaults(handler=_run_trace)


def _run_trace(args) -> int:
    from rich.console import Console

    from glassgpt import atomic, ui
    from glassgpt.see import export, walkthrough
    from glassgpt.see.registry import ENTRIES
    from glassgpt.see.terminal import render
    from glassgpt.see.trace import TraceOptions, run_trace

    console = Console(color_system=None, highlight=False, soft_wrap=True) if args.no_color else ui.console()
    if args.list:
        for entry in ENTRIES:
            if not entry.key.startswith("topic:"):
                console.print(f"[cyan]{entry.key:<28}[/] {entry.title}: {entry.meaning}", highlight=False)
        return 0
    started = time.perf_counter()
    report = run_trace(TraceOptions(run=args.run, depth=args.depth, family=args.family, n_kv_head=args.n_kv_head,
                                    head_dim=args.head_dim, seq_len=args.seq_len, steps=args.steps,
                                    blocks=args.blocks, only=args.only, text=args.text,
                                    conversation=args.conversation, seed=args.seed))
    sections = walkthrough.build(report, args.only)
    header = (f"{report.source}; {report.config.family} family, {report.config.n_layer} blocks, "
              f"{len(report.token_ids):,} tokens; blocks shown in full: {', '.join(map(str, report.traced_blocks))}")
    render(sections, console, header, len(report.steps))
    if args.json_out:
        atomic.write_text(args.json_out, export.to_json(report))
    if args.markdown:
        atomic.write_text(args.markdown, export.to_markdown(sections, header, len(report.steps)))
    if args.html:
        from glassgpt.see import html

        atomic.write_text(args.html, html.to_html(report, sections, header))
    written = [f for f in (args.json_out, args.markdown, args.html) if f]
    console.print(f"traced {len(report.steps)} iteration(s) in {time.perf_counter() - started:.1f}s"
                  + (f"; wrote {', '.join(written)}" if written else ""), highlight=False)
    return 0


# -- learn -----------------------------------------------------------------------------------------------

LEARN_DESCRIPTION = """\
Build a GPT yourself and have it checked against the reference, component by component.

  glassgpt learn init my_gpt.py                  a skeleton: every class and function, bodies as TODOs
  glassgpt learn check my_gpt.py                 the checklist: ✓ done, ✗ failing, · not started
  glassgpt learn check my_gpt.py --watch         re-check every time you save
  glassgpt learn compare my_gpt.py               train yours and the reference side by side
  glassgpt train --model my_gpt.py --preset cpu-tiny --run mine
"""


def _add_learn(commands) -> None:
    parser = _sub(commands, "learn", "write your own GPT and have it graded against the reference", LEARN_DESCRIPTION)
    sub = parser.add_subparsers(title="subcommands", metavar="<subcommand>")
    init = _sub(sub, "init", "write a GPT skeleton to fill in",
                "Write a skeleton with the reference's classes and signatures; each body is a TODO that\n"
                "states its contract (shapes, formula, weight names, where to read more). Never overwrites\n"
                "an existing file unless --force.\n\nexample:\n  glassgpt learn init my_gpt.py --family nanochat")
    init.add_argument("file", help="the .py file to write")
    init.add_argument("--family", default="nanochat", choices=("nanochat", "gpt2"), help="which GPT to build (default nanochat)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=_run_learn_init)
    check = _sub(sub, "check", "grade your implementation against the reference",
                 "Run the checks in the order you build (initialisation, weight init, forward components,\n"
                 "full forward, backward, optimiser step, training, generation). Each component gets the\n"
                 "reference's weights and inputs; a failure shows what was compared, the shapes, the errors,\n"
                 "the first differing position, the mistake it looks like and a hint. Exit code 0 only when\n"
                 "every check passes.\n\nexamples:\n  glassgpt learn check my_gpt.py\n"
                 "  glassgpt learn check my_gpt.py --component attention --json")
    check.add_argument("file", help="your implementation (written by glassgpt learn init)")
    check.add_argument("--component", metavar="NAME",
                       help="run only this component's checks: e.g. attention (init and forward), mlp, norm, or one "
                            "check by its full name, e.g. forward.attention")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of the checklist")
    check.add_argument("--watch", action="store_true", help="re-run whenever the file changes (Ctrl-C to stop)")
    check.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS", help="per check (default 60)")
    check.set_defaults(handler=_run_learn_check)
    compare = _sub(sub, "compare", "train your model and the reference side by side",
                   "Train your implementation and the reference with the same seed, initial weights, data and\n"
                   "config, then compare: loss at steps 10/25/50, final val bits per byte, tokens/s and peak\n"
                   "memory, and a verdict (matches, or where the loss curves part).\n\n"
                   "example:\n  glassgpt learn compare my_gpt.py --steps 50")
    compare.add_argument("file", help="your implementation")
    compare.add_argument("--steps", type=_positive_int, default=50, metavar="N", help="training steps (default 50)")
    compare.add_argument("--preset", default=None, help="training preset (default: cpu-tiny, or cpu-tiny-gpt2)")
    compare.set_defaults(handler=_run_learn_compare)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _run_learn_init(args) -> int:
    from glassgpt import ui
    from glassgpt.learn.skeleton import write_skeleton

    path = write_skeleton(args.file, args.family, args.force)
    ui.console().print(f"wrote {path} ({args.family} family). Next: open it, do TODO 1, then run: "
                       f"glassgpt learn check {path}")
    return 0


def _run_learn_check(args) -> int:
    from glassgpt import ui
    from glassgpt.learn import grader

    grader.check_names(grader._family_of(Path(args.file)) if Path(args.file).is_file() else "nanochat", args.component)

    def once() -> int:
        report = grader.grade(args.file, args.component, args.time_limit)
        if args.json:
            print(report.to_json())
        else:
            grader.render(report, ui.console())
        return 0 if report.passed else 1

    if args.watch:
        if not Path(args.file).is_file():  # a typo would otherwise wait forever for a file to appear
            raise UsageError(f"{args.file} does not exist; glassgpt learn init {args.file} writes one")
        return grader.watch(args.file, once)
    return once()


def _run_learn_compare(args) -> int:
    from glassgpt.learn import versus

    return versus.run(args.file, args.steps, args.preset)


# -- experiment ------------------------------------------------------------------------------------------

EXPERIMENT_DESCRIPTION = """\
Break the model on purpose, one switch at a time, and see why each design choice exists.

Each experiment states its prediction, trains a baseline and variants that flip one config switch
(same data, seed and budget), prints a table (train/val loss, tokens/s, parameters, the judge's figure),
says whether the predicted symptom appeared and why, and draws plots into
$GLASSGPT_HOME/experiments/NAME/. Finished runs are cached by their config: running an experiment
again only renders it (--fresh trains again), and experiments that share a run (the baseline) train it
once. Ctrl-C keeps every finished run.

  glassgpt experiment list                               the experiments and their questions
  glassgpt experiment run no-causal-mask                 one experiment (about a minute on 2 cores)
  glassgpt experiment run positions --html positions.html
  glassgpt experiment all --html experiments.html        all eleven, about 8 minutes on 2 quiet cores
"""


def _add_experiment(commands) -> None:
    parser = _sub(commands, "experiment", "break the model one switch at a time: predicted symptoms, checked",
                  EXPERIMENT_DESCRIPTION)
    sub = parser.add_subparsers(title="subcommands", metavar="<subcommand>")
    listing = _sub(sub, "list", "the experiments and the question each one answers",
                   "List the experiments: name, question, runs.\n\nexample:\n  glassgpt experiment list")
    listing.set_defaults(handler=_run_experiment, action="list")
    one = _sub(sub, "run", "run one experiment (cached runs are reused)",
               "Run one experiment: its prediction, its runs (trained or from the cache), the table, the\n"
               "verdict, the explanation and the plots.\n\nexamples:\n  glassgpt experiment run no-causal-mask\n"
               "  glassgpt experiment run gqa --steps 100 --html gqa.html\n  glassgpt experiment run no-norm --fresh")
    one.add_argument("name", help="the experiment (see glassgpt experiment list)")
    every = _sub(sub, "all", "run every experiment, then a summary of which symptoms appeared",
                 "Run all the experiments in order (shared runs are trained once), then print which predicted\n"
                 "symptoms appeared. About 8 minutes on a quiet 2-core CPU the first time; afterwards\n"
                 "it only renders.\n\nexample:\n  glassgpt experiment all --html experiments.html")
    for command in (one, every):
        command.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                             help="training steps per run (default 200; fewer is quicker, but a symptom may not show)")
        command.add_argument("--html", metavar="FILE", help="also write one self-contained HTML page")
        command.add_argument("--fresh", action="store_true", help="train again even if the runs are cached")
    one.set_defaults(handler=_run_experiment, action="run")
    every.set_defaults(handler=_run_experiment, action="all")
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _run_experiment(args) -> int:
    from glassgpt.experiments import declarations, suite

    if args.action == "list":
        return suite.list_experiments()
    names = [args.name] if args.action == "run" else [e.name for e in declarations.EXPERIMENTS]
    suite.run(names, args.steps, args.fresh, args.html)
    return 0
