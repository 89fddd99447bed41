"""`glassgpt <command>`: one entry point, thin; the work happens in the modules it calls.

Errors a user can cause (bad flags, missing runs, no network...) print one line and exit non-zero
(2 for usage errors); they never show a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from glassgpt import __version__
from glassgpt.errors import GlassError, UsageError

DESCRIPTION = """\
glassgpt: train your own ChatGPT-style model on a laptop CPU, and see through every tensor of it.

Start here:
  glassgpt quickstart                                 tokenizer + a small GPT on Shakespeare, ~5 min on 2 cores
  glassgpt sample --run quickstart --prompt "ROMEO:"  talk to what you trained

Everything is cached under $GLASSGPT_HOME (default ~/.cache/glassgpt). Offline? Point
$GLASSGPT_DATA_MIRROR at a local copy of the data.
"""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit code 2) instead of usage + message."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


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
        from glassgpt.device import tune_allocator

        tune_allocator()
        return args.handler(args) or 0
    except GlassError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `glassgpt ... | head`
        return 0


def build_parser() -> Parser:
    parser = Parser(prog="glassgpt", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"glassgpt {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="<command>")
    _add_quickstart(commands)
    _add_train(commands)
    _add_sample(commands)
    _add_tokenizer(commands)
    _add_data(commands)
    _add_bench(commands)
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
metrics.jsonl, samples.txt, plots/loss.png and checkpoints/step-NNNNNN/. Ctrl-C saves a checkpoint;
--resume continues exactly where it stopped.

examples:
  glassgpt train --preset cpu-tiny --run shakespeare
  glassgpt train --preset cpu-tiny --run mqa --n-kv-head 1 --max-steps 300
  glassgpt train --run mine --data notes/*.txt --depth 2 --vocab-size 1024 --max-steps 200
  glassgpt train --run shakespeare --resume
  torchrun --standalone --nproc-per-node 2 -m glassgpt train --preset cpu-tiny --run-name ddp
"""


def _add_train(commands) -> None:
    from glassgpt import config as cfg
    from glassgpt.model.config import GPTConfig

    parser = _sub(commands, "train", "train a GPT (any config field as --field value)", TRAIN_DESCRIPTION)
    parser.add_argument("--preset", choices=sorted(cfg.PRESETS), help="start from a named preset")
    parser.add_argument("--config", metavar="FILE", help="a JSON (or TOML) file of config fields")
    parser.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    parser.add_argument("--model", dest="model_file", metavar="FILE.py",
                        help=argparse.SUPPRESS)  # the learner's implementation (see `glassgpt learn`)
    defaults = cfg.TrainConfig()
    groups = {
        "run": ("run", "seed"),
        "data": ("data", "vocab_size", "tokenizer"),
        "model size": ("family", "depth", "head_dim", "seq_len"),
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
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _add_field(group, name: str, help: str, default, kind, show_raw: bool = False) -> None:
    dashed = name.replace("_", "-")
    flags = [f"--{dashed}"] + ([f"--{name}"] if dashed != name else [])
    if name == "run":
        # torchrun's own parser reads `--run` as an ambiguous abbreviation of its --run-path and
        # stops; `--run-name` passes through it untouched.
        flags.append("--run-name")
        help += " Under torchrun, spell it --run-name."
    metavar = {int: "N", float: "X", bool: "on|off", str: "TEXT"}.get(kind, "VALUE")
    if name == "softcap":
        metavar = "X|off"
    shown = default if show_raw else _show(default)
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
        if args.preset or args.config:
            raise UsageError("--resume uses the run's saved config; drop --preset/--config")
        config = loop.resumed_config(flags["run"], flags)
    else:
        config = cfg.resolve(args.preset, args.config, flags)
    model_class = _learner_model(args.model_file) if args.model_file else None
    result = loop.train(config, resume=args.resume, **({"model_class": model_class} if model_class else {}))
    return 0 if result.val_bpb is not None or result.interrupted else 1


def _learner_model(path: str):
    raise UsageError("--model FILE.py needs the learn module, which is not available in this version")


QUICKSTART_DESCRIPTION = """\
The whole pipeline in one command, sized for a 2-core laptop CPU (about 5 minutes):
downloads tinyshakespeare, trains a 4,096-token BPE tokenizer, trains a small nanochat-style GPT
(preset cpu-tiny) with a progress bar, prints validation bits per byte and samples, and saves the
run as 'quickstart'. Running it again shows the saved result; --fresh trains again.
"""


def _add_quickstart(commands) -> None:
    parser = _sub(commands, "quickstart", "train a tokenizer and a small GPT on Shakespeare (~5 min on CPU)",
                  QUICKSTART_DESCRIPTION)
    parser.add_argument("--run", default="quickstart", help="run name (default: quickstart)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="override the preset's step count")
    parser.add_argument("--fresh", action="store_true", help="delete an existing run of this name and retrain")
    parser.set_defaults(handler=_run_quickstart)


def _run_quickstart(args) -> int:
    import shutil

    from glassgpt import config as cfg, paths, ui
    from glassgpt.train import checkpoint, loop

    out = ui.console()
    run_dir = paths.run_dir(args.run)
    flags = {"run": args.run, **({"max_steps": args.max_steps} if args.max_steps else {})}
    if (run_dir / "config.json").exists():
        if args.fresh:
            shutil.rmtree(run_dir)
        elif checkpoint.latest(run_dir) is not None:
            state = checkpoint.read_state(checkpoint.latest(run_dir), verify=False)
            saved = loop.read_run_config(run_dir)["train"]
            if state["step"] >= saved["max_steps"]:
                out.print(f"run [bold]{args.run}[/] is already trained ({state['step']} steps, val bits/byte "
                          f"{state.get('val_bpb') or float('nan'):.4f}); --fresh retrains it")
                _print_next_steps(args.run)
                return 0
            out.print(f"continuing the interrupted run [bold]{args.run}[/]")
            result = loop.train(loop.resumed_config(args.run, {}), resume=True)
            _print_next_steps(args.run)
            return 0 if not result.interrupted else 0
        else:
            shutil.rmtree(run_dir)  # a run that never reached its first checkpoint holds nothing to keep
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
        f"  glassgpt sample --run {run} --prompt \"ROMEO:\"     generate text\n"
        f"  glassgpt train --run {run} --resume --max-steps 1200   train longer\n"
        f"  open {paths.run_dir(run) / 'plots' / 'loss.png'}")


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
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop when the output contains TEXT (repeatable)")
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
    from glassgpt.engine import Engine, TextStream
    from glassgpt.runs import load_run

    out = ui.console()
    runtime_device = devices.resolve_device(args.device)
    run = load_run(args.run, args.checkpoint, runtime_device)
    tokenizer, config = run.tokenizer, run.model.config
    prompt_ids = tokenizer.encode(args.prompt, bos=True)
    if len(prompt_ids) > config.sequence_len:
        ui.err_console().print(f"[yellow]note[/]: the prompt has {len(prompt_ids)} tokens; the model reads at most "
                               f"{config.sequence_len}, so only the last {config.sequence_len} are used")
    engine = Engine(run.model)
    stops = set(tokenizer.special_ids.values())  # any special token ends a plain-text document
    for index in range(args.num_samples):
        if args.num_samples > 1:
            ui.err_console().print(f"[dim]--- sample {index + 1} ---[/]")
        seed = None if args.seed is None else args.seed + index
        stream, text = TextStream(tokenizer), ""
        out.print(args.prompt, end="", style="bold", soft_wrap=True, markup=False, highlight=False)
        started, count = time.perf_counter(), 0
        for token_id in engine.generate(prompt_ids, args.max_new_tokens, args.temperature, args.top_k,
                                        args.top_p, seed, stop_ids=stops, use_cache=not args.no_cache):
            count += 1
            if token_id in stops:
                break
            piece = stream.push(token_id)
            text += piece
            hit = next((s for s in args.stop if s in text), None)
            if hit:  # print up to and including the stop text, then end
                piece = piece[: len(piece) - (len(text) - text.index(hit) - len(hit))]
                out.print(piece, end="", soft_wrap=True, markup=False, highlight=False)
                break
            out.print(piece, end="", soft_wrap=True, markup=False, highlight=False)
        else:
            out.print(stream.flush(), end="", soft_wrap=True, markup=False, highlight=False)
        elapsed = time.perf_counter() - started
        out.print()
        ui.err_console().print(f"[dim]{count} tokens in {elapsed:.2f}s ({count / max(elapsed, 1e-9):.0f} tok/s), "
                               f"run {args.run} step {run.step}[/]")
    return 0


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
                 "`glassgpt train` looks for).")
    train.add_argument("--data", default="tinyshakespeare", help="corpus name or path (default tinyshakespeare)")
    train.add_argument("--vocab-size", type=int, default=4096, metavar="N", help="vocabulary size incl. special tokens (default 4096)")
    train.add_argument("--name", default=None, help="tokenizer name (default <corpus>-<vocab-size>)")
    train.add_argument("--force", action="store_true", help="overwrite an existing tokenizer of that name")
    train.set_defaults(handler=_run_tokenizer_train)
    for name, help, handler in (("encode", "show how a text is split into tokens", _run_tokenizer_encode),
                                ("eval", "bytes per token on a corpus's val split", _run_tokenizer_eval)):
        command = _sub(sub, name, help, help[0].upper() + help[1:] + ".")
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
            from glassgpt.train.loop import read_run_config

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
    from glassgpt.train.loop import default_tokenizer_name

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
    pieces = Text()
    for i, token_id in enumerate(ids):
        pieces.append(tokenizer.token_piece(token_id).decode("utf-8", errors="replace"), style=colours[i % len(colours)])
    out.print(pieces)
    out.print(f"ids: {ids}")
    n_bytes = len(text.encode("utf-8"))
    out.print(f"{len(ids)} tokens for {n_bytes} bytes ({n_bytes / max(len(ids), 1):.2f} bytes/token); "
              f"round trip exact: {tokenizer.decode(ids) == text}")
    return 0


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
    parser = _sub(commands, "data", "list and download corpora",
                  "Named corpora are downloaded on demand into $GLASSGPT_HOME/data (sha256-checked where a\n"
                  "checksum is known, resumable). Set $GLASSGPT_DATA_MIRROR to a folder or base URL laid out\n"
                  "like that cache to work offline.\n\n"
                  "examples:\n  glassgpt data list\n  glassgpt data download tinyshakespeare\n"
                  "  glassgpt data download fineweb-edu --shards 2")
    sub = parser.add_subparsers(title="subcommands", metavar="<subcommand>")
    listing = _sub(sub, "list", "registered corpora and what is cached", "Registered corpora and what is cached.")
    listing.set_defaults(handler=_run_data_list)
    download = _sub(sub, "download", "download a registered corpus", "Download a registered corpus into the cache.")
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
    return 0


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
    parser.add_argument("--depth", type=_positive_int, default=4, metavar="N")
    parser.add_argument("--family", default="nanochat", choices=("nanochat", "gpt2"))
    parser.add_argument("--head-dim", type=_positive_int, default=None, metavar="N")
    parser.add_argument("--vocab-size", type=_positive_int, default=4096, metavar="N")
    parser.add_argument("--seq-len", type=_positive_int, default=512, metavar="N")
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="N")
    parser.add_argument("--steps", type=_positive_int, default=10, metavar="N", help="timed training steps (default 10)")
    parser.add_argument("--decode-tokens", type=_positive_int, default=200, metavar="N", help="tokens to decode (default 200)")
    parser.add_argument("--dtype", default="fp32", help="comma list of fp32, bf16 (default fp32)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd model")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(handler=_run_bench)


def _run_bench(args) -> int:
    from glassgpt import bench

    return bench.run(args)
