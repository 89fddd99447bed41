"""Trace points and the trace command: nothing unseen, nothing invented, every view from the
real computation."""

from __future__ import annotations

import json
import math

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


@pytest.mark.parametrize("spec", ["6", "x", "", "1,,9"])
def test_block_selection_out_of_range_is_a_usage_error(spec):
    with pytest.raises(UsageError):
        parse_blocks(spec, 6)


def trace(*args: str) -> int:
    return main(["trace", "--seq-len", "16", "--depth", "2", "--no-color", *args])


def test_trace_walks_through_a_real_training_step_and_writes_json_and_markdown(tmp_path, capsys):
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    assert trace("--steps", "3", "--json", str(out_json), "--markdown", str(out_md)) == 0
    text = capsys.readouterr().out
    assert "\x1b[" not in text  # --no-color
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


def _config_from(data):
    from glassgpt.model.config import GPTConfig

    return GPTConfig.from_dict(data["config"])


def test_gpt2_family_shows_position_embedding_instead_of_rope(capsys):
    assert trace("--family", "gpt2", "--steps", "1") == 0
    text = capsys.readouterr().out
    assert "Learned position embedding" in text and "embed.pos" in text
    assert "Rotary position embedding" not in text and "q_rot" not in text
    assert "gelu: " in text and "softcap is off" in text


def test_only_filters_the_walkthrough(capsys):
    assert trace("--only", "blocks.*.attn.pattern", "--steps", "1") == 0
    text = capsys.readouterr().out
    assert "blocks.0.attn.pattern" in text and "blocks.1.attn.pattern" in text
    assert "Query projection" not in text and "Token embedding" not in text


def test_text_longer_than_the_context_is_cut_with_a_notice(capsys):
    assert trace("--text", "word " * 40, "--steps", "1") == 0
    assert "so only the first 16 were traced" in capsys.readouterr().out


def test_trace_list_shows_every_point(capsys):
    assert main(["trace", "--list"]) == 0
    text = capsys.readouterr().out
    assert all(key in text for key in registry.TRACE_POINTS)


@pytest.mark.parametrize("args, code, fragment", [
    (["--only", "blocks.*.atn.q"], 2, "close matches"),
    (["--blocks", "7"], 2, "out of range: the model has 2 blocks"),
    (["--run", "missing"], 1, "no run named 'missing'"),
    (["--steps", "0"], 2, "expected a positive integer"),
    (["--text", ""], 2, "--text is empty"),
])
def test_bad_trace_input_is_one_clear_line(args, code, fragment):
    result = run_cli("trace", "--seq-len", "8", "--depth", "2", *args)
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr


def test_trace_a_trained_run_continues_its_optimiser(glass_home, capsys):
    assert main(["train", *TINY_TRAIN, "--run", "tr", "--max-steps", "2", "--eval-every", "0"]) == 0
    capsys.readouterr()
    assert main(["trace", "--run", "tr", "--text", "ROMEO: a word", "--steps", "2", "--no-color"]) == 0
    text = capsys.readouterr().out
    assert "run 'tr' at step 2" in text
    # a trained model's head is not zero: the gradient reaches block 0 in the first iteration
    assert "nothing below the head gets a gradient" not in text


def test_trace_point_reference_page_is_generated_from_the_registry():
    from conftest import REPO

    page = (REPO / "docs" / "reference" / "trace-points.md").read_text()
    assert page == registry.reference_markdown(), "regenerate: python -m glassgpt.see.registry > docs/reference/trace-points.md"
