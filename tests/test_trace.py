"""Trace points and the trace command: nothing unseen, nothing invented, every view from the
real computation."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_TRAIN, run_cli, tiny_config, tiny_model
from glassgpt.cli import main
from glassgpt.errors import UsageError
from glassgpt.model import taps
from glassgpt.see import registry
from glassgpt.see.trace import parse_blocks


CONFIGS = {
    "nanochat": tiny_config(),
    "gpt2": tiny_config("gpt2"),
    "gqa-post-norm-nocausal": tiny_config(n_kv_head=2, norm_placement="post", causal=False, qk_norm=False),
    "learned-tied-layer": tiny_config(position="learned", tie_embeddings=True, norm="layer", softcap=None),
}


@pytest.mark.parametrize("label", CONFIGS)
def test_forward_backward_emits_exactly_the_documented_names_in_order(label):
    config = CONFIGS[label]
    model = tiny_model(config)
    idx = torch.randint(0, config.vocab_size, (2, 8))
    with taps.RecordingTracer("*", grads=True) as tracer:
        model(idx, idx).backward()
    documented = registry.names_for(config)
    assert tracer.order == documented
    assert set(tracer.grads) <= set(documented)


def test_every_documented_name_is_emitted_by_some_config_and_explained():
    emitted = set()
    for config in CONFIGS.values():
        model = tiny_model(config)
        with taps.RecordingTracer("*") as tracer:
            model(torch.randint(0, config.vocab_size, (1, 6)), torch.randint(0, config.vocab_size, (1, 6)))
        emitted |= {registry.pattern_of(n) for n in tracer.order}
    assert emitted == set(registry.TRACE_POINTS)
    for key in registry.TRACE_POINTS:
        entry = registry.REGISTRY[key]
        assert entry.title and entry.meaning and entry.formula and entry.shape and entry.look_for, key
        assert entry.common_bug and entry.experiment.startswith("--"), key


def test_every_gradient_of_a_tensor_in_the_graph_is_recorded():
    config = tiny_config()
    model = tiny_model(config)
    idx = torch.randint(0, 97, (2, 8))
    with taps.RecordingTracer("*", grads=True) as tracer:
        model(idx, idx).backward()
    # the loss is the root: everything computed from parameters gets a gradient
    assert set(tracer.grads) == set(tracer.tensors)


def test_traced_tensors_recompose_the_block_exactly():
    config = tiny_config(n_kv_head=2)
    model = tiny_model(config).eval()
    with taps.RecordingTracer("*") as tracer:
        model(torch.randint(0, 97, (2, 10)))
    t, block, D = tracer.tensors, model.blocks[0], config.head_dim
    p = "blocks.0."
    assert torch.allclose(t[p + "resid.mid"], t[p + "resid.pre"] + t[p + "attn.out"], atol=1e-6)
    assert torch.allclose(t[p + "resid.post"], t[p + "resid.mid"] + t[p + "mlp.out"], atol=1e-6)
    q = t[p + "attn.q_norm"].transpose(1, 2)  # (B, H, T, D)
    scores = q @ t[p + "attn.k_rep"].transpose(-2, -1) / math.sqrt(D)
    assert torch.allclose(scores, t[p + "attn.scores"], atol=1e-5)
    assert torch.allclose(t[p + "attn.scores_masked"].softmax(-1), t[p + "attn.pattern"], atol=1e-6)
    z = (t[p + "attn.pattern"] @ t[p + "attn.v_rep"]).transpose(1, 2)
    assert torch.allclose(z, t[p + "attn.z"], atol=1e-6)
    out = block.attn.c_proj(t[p + "attn.z"].reshape(2, 10, -1))
    assert torch.allclose(out, t[p + "attn.out"], atol=1e-6)
    assert torch.allclose(F.relu(t[p + "mlp.up"]).square(), t[p + "mlp.act"], atol=1e-6)
    assert torch.allclose(15 * torch.tanh(t["lm_head.logits_raw"] / 15), t["lm_head.logits"], atol=1e-5)


def test_unknown_pattern_names_close_matches():
    with pytest.raises(UsageError, match="close matches: blocks.*.attn.pattern"):
        registry.check_patterns(["blocks.*.attn.patern"], tiny_config())
    registry.check_patterns(["blocks.*.attn.*", "loss"], tiny_config())


@pytest.mark.parametrize("spec, expected", [(None, [0, 1, 2, 5]), ("0,last", [0, 5]), ("all", [0, 1, 2, 3, 4, 5]),
                                            ("-1", [5])])
def test_block_selection(spec, expected):
    assert parse_blocks(spec, 6) == expected


@pytest.mark.parametrize("spec, fragment", [("6", "out of range: the model has 6 blocks"), ("x", "not a block index"),
                                            ("", "is empty"), ("1,,9", "out of range"), ("0,first", "not a block index")])
def test_block_selection_mistakes_are_usage_errors_that_say_what_is_wrong(spec, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_blocks(spec, 6)


def trace(*args: str) -> int:
    return main(["trace", "--seq-len", "16", "--depth", "2", "--no-color", *args])


def test_trace_walks_through_a_real_training_step_and_writes_json_and_markdown(tmp_path, capsys):
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    assert trace("--steps", "3", "--json", str(out_json), "--markdown", str(out_md)) == 0
    text = capsys.readouterr().out
    assert "\x1b[" not in text  # --no-color
    assert "text: a random 16-token window of tinyshakespeare's training split" in text
    order = ["Token ids", "Token embedding", "Embedding norm", "Rotary position embedding", "Block 0 · attention",
             "Attention input norm", "Query projection", "Query after rotary embedding", "Query norm (QK-norm)",
             "Heads become a batch dimension", "Attention scores", "Causal mask", "Attention pattern (softmax)",
             "Weighted sum of values", "Attention output projection", "Residual stream after attention",
             "Block 0 · MLP", "MLP expansion", "MLP activation", "relu2:", "Block 1 · attention", "Final norm",
             "Logits (before softcap)", "softcap c = 15", "vs ln(4,096)", "Backward: gradient flow", "Optimizer step",
             "Update-to-weight ratio", "All iterations"]
    positions = [text.find(fragment) for fragment in order]
    assert -1 not in positions, [f for f, p in zip(order, positions) if p == -1]
    assert positions == sorted(positions), "sections are out of order"
    assert "■ ■" in text  # the causal mask drawn as a grid for T ≤ 16
    data = json.loads(out_json.read_text())
    assert [s["step"] for s in data["steps"]] == [1, 2, 3]
    losses = [s["loss"] for s in data["steps"]]
    assert len(set(losses)) == 3  # the optimiser stepped: the loss changes
    points = data["steps"][0]["trace_points"]
    assert set(points) == set(registry.names_for(_config_from(data)))
    pattern = points["blocks.0.attn.pattern"]
    assert pattern["shape"] == [1, 1, 16, 16] and pattern["dtype"] == "float32" and set(pattern["grad"]) >= {"norm", "mean"}
    markdown = out_md.read_text()
    assert markdown.startswith("# glassgpt trace") and "## Contents" in markdown and "blocks.1.mlp.act" in markdown


def test_a_fresh_nanochat_iteration_1_explains_its_zeros_and_shows_a_later_iteration(capsys):
    # nanochat zero-initialises its output projections and head: iteration 1 is mostly zeros
    assert trace("--steps", "3") == 0
    text = capsys.readouterr().out
    zeros = text.index("all 2,048 entries are exactly 0: attn.c_proj starts at zero (zero_init_out)")
    assert text.index("Why so many zeros") > zeros  # explained right where the first zero shows
    assert text.count(registry.explain("topic:zero_init").look_for) == 1  # in full once
    assert "softcap c = 15: range [0.000, 0.000] → [0.000, 0.000], nothing to cap yet: every logit is 0" in text
    assert "every entry is exactly 0: no gradient gets past the zero-initialised head" in text
    assert "Gradient norm per layer and component, iteration 3" in text
    largest = text[text.index("● Largest relative updates"):text.index("All iterations")]
    assert "0.00e+00" not in largest  # a tensor that did not move is not among the largest updates
    assert "started at zero, so no ratio; moved by ‖ΔW‖: lm_head.weight" in largest
    assert "schedule step 1 of 1,000 (a fresh model starts at the first): lr multiplier 1" in text


def test_tables_in_piped_output_are_never_cut():
    # a real pipe at 80 columns: the gpt2 family has five optimiser groups and wide headers
    result = run_cli("trace", "--family", "gpt2", "--depth", "3", "--seq-len", "16", "--blocks", "0,last",
                     "--steps", "2", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    assert "AdamW · tied embedding/head" in result.stdout and "Other blocks (summary)" in result.stdout


@pytest.mark.parametrize("width, layout", [(200, "as given"), (80, "transposed"), (40, "one line per cell")])
def test_fit_table_keeps_every_cell_whole(width, layout):
    from rich.console import Console

    from glassgpt.see.terminal import fit_table

    columns = ["iteration", "loss", "grad norm", *(f"AdamW · a long group name {g}" for g in range(5))]
    rows = [[i, f"{8 + i / 7:.4f}", f"{19.6553 / (i + 1):.4f}", *(f"{g / 9 + i:.2e}" for g in range(5))] for i in range(3)]
    console = Console(width=width, color_system=None, soft_wrap=True)
    with console.capture() as captured:
        console.print(fit_table(columns, rows, width))
    lines = captured.get().splitlines()
    assert "…" not in captured.get() and all(str(cell) in captured.get() for row in rows for cell in row)
    if layout == "one line per cell":  # too wide either way: one "column: value" line per cell
        assert "  AdamW · a long group name 4: 2.44e+00" in lines
    else:
        assert max(map(len, lines)) <= width
        assert lines[0].split()[0] == "iteration" and ("loss" in lines[0]) == (layout == "as given")


def test_a_fresh_model_with_fewer_key_value_heads_shows_grouped_query_attention(capsys):
    assert trace("--head-dim", "64", "--n-kv-head", "1", "--steps", "1") == 0
    text = capsys.readouterr().out
    assert "multi-query: 1 key/value head for 2 query heads, each shared by 2" in text
    assert "Grouped-query attention" in text and "n_head / n_kv_head = 2 / 1 = 2" in text
    assert "(1, 1, T, 64) repeated 2x along the head axis → (1, 2, T, 64)" in text


def test_every_point_of_every_layer_is_recorded_when_the_walkthrough_summarises_blocks(tmp_path, capsys):
    out_json, out_html = tmp_path / "t.json", tmp_path / "t.html"
    assert main(["trace", "--depth", "5", "--seq-len", "8", "--steps", "1", "--blocks", "0", "--no-color",
                 "--json", str(out_json), "--html", str(out_html)]) == 0
    assert "Other blocks (summary)" in capsys.readouterr().out  # the terminal still summarises 1-4
    data = json.loads(out_json.read_text())
    points = data["steps"][0]["trace_points"]
    assert list(points) == registry.names_for(_config_from(data))  # every name, every layer, in order
    assert all(set(p) >= {"shape", "dtype", "mean", "std", "min", "max", "norm", "grad"} for p in points.values())
    assert points["blocks.3.mlp.act"]["grad"] is not None and points["blocks.4.attn.pattern"]["shape"] == [1, 2, 8, 8]
    page = out_html.read_text()
    assert all(f'id="heatmap-{i}"' in page and f'id="head-select-{i}"' in page for i in range(5))
    assert 'href="#attention-3"' in page  # the summarised blocks' heatmaps are in the contents too


def _config_from(data):
    from glassgpt.model.config import GPTConfig

    return GPTConfig.from_dict(data["config"])


def test_gpt2_family_shows_position_embedding_instead_of_rope(capsys):
    assert trace("--family", "gpt2", "--steps", "1") == 0
    text = capsys.readouterr().out
    assert "Learned position embedding" in text and "embed.pos" in text
    assert "Rotary position embedding" not in text and "q_rot" not in text
    assert "softcap is off" in text
    assert re.search(r"gelu: \d+\.\d% of the units are negative \(the lowest -0\.1\d\d\)", text)
    assert "one AdamW for every parameter (gpt2 family), so one learning rate" in text
    assert "AdamW · position embedding" in text and "AdamW · tied embedding/head" in text
    assert "--activation gelu" not in text  # the explanations do not assume the nanochat family


def test_only_filters_the_walkthrough(capsys):
    assert trace("--only", "blocks.*.attn.pattern", "--only", "grad:blocks.0.attn.q", "--steps", "1") == 0
    text = capsys.readouterr().out
    assert "blocks.0.attn.pattern" in text and "blocks.1.attn.pattern" in text
    assert "Token embedding" not in text and "blocks.1.attn.q\n" not in text
    query = text[text.index("● Query projection  blocks.0.attn.q"):]
    first_lines = query.splitlines()[1:3]
    assert first_lines[0].startswith("  gradient: shape (1, 16, 1, 128)")  # grad: selects the gradient only
    assert not first_lines[1].startswith("  shape")


def test_text_longer_than_the_context_is_cut_with_a_notice(capsys):
    assert trace("--text", "word " * 40, "--steps", "1") == 0
    assert "so only the first 16 were traced" in capsys.readouterr().out


def test_trace_list_shows_every_point(capsys):
    assert main(["trace", "--list"]) == 0
    text = capsys.readouterr().out
    assert all(key in text for key in registry.TRACE_POINTS)


@pytest.mark.parametrize("args, code, fragment", [
    (["--only", "blocks.*.atn.q"], 2, "close matches: blocks.*.attn.q"),
    (["--only", "blocks.*.attn.q_rot", "--family", "gpt2"], 2, "position = learned: no RoPE"),
    (["--blocks", "7"], 2, "out of range: the model has 2 blocks"),
    (["--blocks", "x"], 2, "--blocks 'x' is not a block index"),
    (["--n-kv-head", "3"], 2, "must be a multiple of n_kv_head (3)"),
    (["--steps", "0"], 2, "expected a positive integer"),
    (["--text", ""], 2, "--text is empty"),
])
def test_bad_trace_input_is_one_clear_line(args, code, fragment, capsys):
    assert main(["trace", "--seq-len", "8", "--depth", "2", *args]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


@pytest.mark.parametrize("args, code, fragment", [
    (["--run", "missing"], 1, "no run named 'missing'"),
    (["--run", "missing", "--n-kv-head", "1"], 2, "--n-kv-head describes a fresh model"),
])
def test_a_run_has_its_own_architecture(args, code, fragment, capsys):
    assert main(["trace", *args]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines


def test_bad_input_never_shows_a_traceback():
    result = run_cli("trace", "--blocks", "first")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_trace_a_trained_run_continues_its_optimiser(glass_home, capsys):
    assert main(["train", *TINY_TRAIN, "--run", "tr", "--max-steps", "2", "--eval-every", "0"]) == 0
    capsys.readouterr()
    assert main(["trace", "--run", "tr", "--text", "ROMEO: a word", "--steps", "2", "--no-color"]) == 0
    text = capsys.readouterr().out
    assert "run 'tr' at step 2" in text
    # a trained model's head is not zero: the gradient reaches block 0 in the first iteration
    assert "the signal reaches every block from the first iteration" in text
    # it continues the run's schedule, at the learning rate the run's next step would use
    assert "schedule step 2 of 2 (the last: the run finished its schedule, so the trace repeats its last step)" in text


def test_trace_point_reference_page_is_generated_from_the_registry():
    from conftest import REPO

    page = (REPO / "docs" / "reference" / "trace-points.md").read_text()
    assert page == registry.reference_markdown(), "regenerate: python -m glassgpt.see.registry > docs/reference/trace-points.md"


# -- what the docs quote is what the commands print ------------------------------------------------

QUOTING_PAGES = ["docs/how-to/trace.md", "docs/tutorials/see-inside.md", "docs/how-to/scale.md",
                 "docs/how-to/attention-maps.md"]
QUOTE_MARK = re.compile(r"<!-- output of: (glassgpt .+?) -->")


def quoted_outputs(page: str) -> list[tuple[str, list[str]]]:
    """(command, quoted lines) for every ```text block that a page marks, on the line before it,
    with `<!-- output of: glassgpt ... -->` (an HTML comment, invisible on the page). A quote may
    show its command as a first line `$ glassgpt ...` (an example the doc tests do not run)."""
    quotes, command, lines = [], None, None
    for line in page.splitlines():
        if lines is not None:
            if line.startswith("```"):
                quotes.append((command, lines))
                command, lines = None, None
            elif line.startswith("$ ") and not lines:
                assert line[2:] == command, f"the quote shows `{line[2:]}` but is marked as the output of `{command}`"
            else:
                lines.append(line.rstrip())
        elif QUOTE_MARK.fullmatch(line.strip()):
            command = QUOTE_MARK.fullmatch(line.strip()).group(1)
        elif command and line.strip() == "```text":
            lines = []
        elif line.strip():
            command = None  # a mark applies to the block right after it
    return quotes


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?")


def same_line(quoted: str, printed: str) -> bool:
    """Equal, or equal but for numbers that agree to 1 part in 1000: after a few training
    iterations the last printed digit of a gradient norm depends on the CPU's summation order."""
    if quoted == printed:
        return True
    if _NUMBER.sub("#", quoted) != _NUMBER.sub("#", printed):
        return False
    pairs = zip(_NUMBER.findall(quoted), _NUMBER.findall(printed))
    return all(a == b or abs(float(a) - float(b)) <= 1e-3 * max(abs(float(a)), abs(float(b))) for a, b in pairs)


def appears_in_order(quote: list[str], output: list[str]) -> str | None:
    """None when every quoted line is a whole line of `output` (see same_line), in order ('...'
    skips any number of lines); else the first line that is not."""
    at = 0
    for line in quote:
        if line.strip() == "...":
            continue
        found = next((i for i in range(at, len(output)) if same_line(line, output[i])), None)
        if found is None:
            return line
        at = found + 1
    return None


@pytest.mark.parametrize("page", QUOTING_PAGES)
def test_quoted_outputs_in_the_docs_are_what_the_commands_print(page, tmp_path, monkeypatch, capsys):
    import shlex

    from conftest import REPO
    from glassgpt import ui

    quotes = quoted_outputs((REPO / page).read_text(encoding="utf-8"))
    assert quotes, f"{page} marks no quoted output"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")  # what a pipe gets: the width the quotes were made at
    monkeypatch.setattr(ui, "_console", None)
    monkeypatch.setattr(ui, "_err_console", None)
    printed: dict[str, list[str]] = {}
    for command, quote in quotes:
        if command not in printed:
            main(shlex.split(command)[1:])
            captured = capsys.readouterr()
            printed[command] = [line.rstrip() for line in (captured.out + captured.err).splitlines()]
        missing = appears_in_order(quote, printed[command])
        assert missing is None, f"{page}: `{command}` does not print this quoted line (in order):\n{missing}"


def test_same_line_forgives_only_the_last_digits_of_numbers():
    assert same_line("grad norm 0.1234", "grad norm 0.12345")
    assert not same_line("grad norm 0.1234", "grad norm 0.1300")  # a real difference
    assert not same_line("grad norm 0.1234", "grad norms 0.1234")  # the words must match exactly
    assert not same_line("3 heads", "3 heads of 64")


def test_trace_a_chat_run_on_a_conversation_shows_its_loss_mask(glass_home, tmp_path, capsys):
    import json

    assert main(["train", *TINY_TRAIN, "--run", "b", "--max-steps", "1", "--eval-every", "0"]) == 0
    assert main(["train", "--stage", "sft", "--from", "b", "--run", "chat", "--mixture", "identity:0.02",
                 "--max-steps", "1", "--eval-every", "0", "--seq-len", "128", "--device-batch-size", "2",
                 "--sample-tokens", "0", "--dtype", "fp32", "--device", "cpu"]) == 0
    conversation = {"messages": [{"role": "user", "content": "What is 2 + 2?"},
                                 {"role": "assistant", "content": [{"type": "tool_call", "text": "2 + 2"},
                                                                   {"type": "tool_result", "text": "4"},
                                                                   {"type": "text", "text": "It is 4."}]}]}
    chats = tmp_path / "one.jsonl"
    chats.write_text(json.dumps(conversation) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["trace", "--run", "chat", "--conversation", str(chats), "--no-color", "--json", str(tmp_path / "t.json")]) == 0
    text = capsys.readouterr().out
    from glassgpt.chat.render import render_conversation
    from glassgpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(glass_home / "runs" / "chat" / "tokenizer.json")
    ids, mask = render_conversation(conversation, tokenizer)
    counted = sum(mask[1:])
    assert f"{counted} of {len(ids) - 1} targets are counted" in text
    assert f"loss = sum of the counted per-token losses / {counted}" in text
    assert "✓ counted" in text and "· masked" in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    assert main(["trace", "--run", "chat", "--conversation", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
