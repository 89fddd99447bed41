"""`glassgpt scale`: counts that are the model's own (the arithmetic is checked against the model
built on the meta device and materialised, for every switch), FLOPs, training memory, no torch on
its path unless --verify asks for the meta-device model, and one-line errors for bad input."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch

from conftest import run_cli, tiny_config
from glassgpt.cli import main
from glassgpt.config import TrainConfig
from glassgpt.model import scaling
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT
from glassgpt.train.optim import Muon, OptimizerSettings, build_optimizers


def counted(config: GPTConfig) -> scaling.ParameterCounts:
    return scaling.count_parameters(config)


def meta_model(config: GPTConfig) -> GPT:
    """The model with every parameter on the meta device: real names and shapes, no values."""
    return GPT.build(config, "meta")


def matmul_params_of(model: GPT) -> int:
    """The 2-D weights used in a matmul, read off a built model: all but the embedding lookups,
    plus the head (the embedding matrix again when tied)."""
    count = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and n not in ("wte.weight", "wpe.weight"))
    return count + (model.wte.weight.numel() if model.lm_head is None else 0)


@pytest.mark.parametrize("depth, total", [(20, 560_988_160), (4, 36_700_160)])
def test_nanochat_totals_at_vocab_65536(depth, total):
    assert counted(GPTConfig.from_depth(depth, 65536, sequence_len=2048)).total == total


def test_gpt2_small_has_its_124M_parameters():
    config = GPTConfig.from_depth(12, 50257, "gpt2", sequence_len=1024)
    assert counted(config).total == 124_439_808


def _configs():
    """Every combination of the switches that change which parameters exist, at tiny size."""
    for family, tie, position, bias, n_kv_head, affine in itertools.product(
            ("nanochat", "gpt2"), (False, True), ("rope", "learned", "none"), (False, True), (4, 2, 1),
            (False, True)):
        yield tiny_config(family, tie_embeddings=tie, position=position, bias=bias, n_kv_head=n_kv_head,
                          norm_affine=affine)
    for overrides in (dict(norm="layer", norm_affine=True, bias=True), dict(norm="none", norm_affine=True),
                      dict(norm_placement="post", norm_affine=True), dict(qk_norm=True, norm_affine=True),
                      dict(embed_norm=True, norm_affine=True), dict(mlp_ratio=3), dict(depth=3)):
        yield tiny_config("gpt2", **overrides)
        yield tiny_config("nanochat", **overrides)


def test_the_arithmetic_names_every_parameter_of_the_model_with_its_shape_for_every_switch():
    for config in _configs():
        model = GPT.build(config)  # real tensors on the CPU
        label = f"{config}"
        named = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
        assert scaling.parameter_shapes(config) == named, label  # same names, same order, same shapes
        assert scaling.meta_parameter_shapes(config) == named and scaling.verify(config) == "", label
        expected = sum(p.numel() for p in model.parameters())
        counts = counted(config)
        assert counts.total == expected == sum(g.count for g in counts.groups), label
        assert scaling.group_parameters(named, config.n_layer, model.lm_head is None).total == expected, label
        assert counts.layers_total == config.n_layer * counts.layer_total, label
        assert counts.tied == config.tie_embeddings, label
        assert scaling.matmul_params(config) == matmul_params_of(model), label
        assert round(sum(g.percent for g in counts.groups), 6) == 100.0, label


def test_the_meta_model_counts_what_the_materialised_model_holds():
    for config in (tiny_config("nanochat"), tiny_config("gpt2", n_kv_head=2, position="rope", qk_norm=True)):
        real, meta = GPT.build(config), meta_model(config)
        assert [(n, p.shape) for n, p in real.named_parameters()] == [(n, p.shape) for n, p in meta.named_parameters()]


def test_tied_head_is_counted_once_and_shown_as_zero_extra():
    counts = counted(tiny_config("gpt2"))
    head = [g for g in counts.groups if g.name.startswith("lm_head")]
    assert len(head) == 1 and head[0].count == 0 and "tied" in head[0].role
    assert any(g.name == "wte.weight" for g in counts.groups)


def test_each_block_matrix_has_its_own_row():
    names = {g.name for g in counted(tiny_config("gpt2")).groups}
    for module in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        assert f"blocks.*.{module}.weight" in names and f"blocks.*.{module}.bias" in names
    assert {"blocks.*.norm_1.weight", "blocks.*.norm_1.bias", "wpe.weight", "final_norm.weight"} <= names


@pytest.mark.parametrize("counts", [[1, 1, 1], [1, 2, 3, 4, 5, 6, 7], [83886080, 32768000, 32768000, 1, 0],
                                    [9216] * 9 + [768, 768, 7077888, 7077888]])
def test_rounded_percentages_add_up_to_exactly_100_and_stay_within_a_unit(counts):
    percentages = scaling.rounded_percentages(counts)
    assert sum(round(p * 100) for p in percentages) == 10000
    for count, percent in zip(counts, percentages):
        assert abs(percent - 100 * count / sum(counts)) < 0.01


def test_equal_counts_get_equal_percentages_when_the_rounding_allows():
    percentages = scaling.rounded_percentages([10, 10, 10, 10, 60, 3])  # equal counts, enough units
    assert len(set(percentages[:4])) == 1


def test_flops_forward_is_a_third_and_a_step_is_per_token_times_tokens():
    report = scaling.analyse(GPTConfig.from_depth(20, 65536, sequence_len=2048), batch_tokens=524288)
    assert report.train_flops_per_token == 6 * 477_102_080 + 12 * 20 * 10 * 128 * 2048 == 3_491_758_080
    assert report.forward_flops_per_token * 3 == report.train_flops_per_token
    assert report.train_flops_per_step == report.train_flops_per_token * 524288
    assert scaling.flops_per_token(report.config) == report.train_flops_per_token  # bench's entry point


@pytest.mark.parametrize("config", [tiny_config("nanochat"), tiny_config("gpt2"),
                                    tiny_config("nanochat", tie_embeddings=True, norm_affine=True),
                                    tiny_config("nanochat", bias=True, position="learned")], ids=str)
def test_optimizer_split_is_the_one_training_uses(config):
    model = GPT.build(config)
    kind = TrainConfig(family=config.family).resolved_optimizer
    optimizers = build_optimizers(model, OptimizerSettings(kind, 0.02, 0.2, 0.004, 0.5, 1e-3, 0.0, 0.8, 0.95))
    muon = sum(p.numel() for o in optimizers if isinstance(o, Muon) for g in o.param_groups for p in g["params"])
    adamw = sum(p.numel() for o in optimizers if not isinstance(o, Muon) for g in o.param_groups for p in g["params"])
    split = scaling.optimizer_split(config)
    assert (split.kind, split.muon_params, split.adamw_params) == (kind, muon, adamw)


def test_memory_is_weights_gradients_and_optimizer_state_at_their_sizes():
    report = scaling.analyse(GPTConfig.from_depth(4, 65536, sequence_len=2048), batch_size=2)
    fp32, bf16 = report.memory
    total = report.parameters.total
    assert fp32.weights == bf16.weights == fp32.gradients == bf16.gradients == 4 * total  # fp32 master weights
    assert fp32.weight_copies == 0 and bf16.weight_copies == 2 * report.matmul_params
    assert fp32.muon_state == 4 * report.optimizer.muon_params == 4 * 3_145_728  # the block matrices
    assert fp32.adamw_state == 8 * report.optimizer.adamw_params == 8 * 2 * 65536 * 256  # embedding + head
    assert fp32.tokens == 2 * 2048 and bf16.activations < fp32.activations


@pytest.mark.parametrize("config", [
    tiny_config("nanochat", n_embd=64, n_head=4, sequence_len=64, vocab_size=512, depth=2),
    tiny_config("gpt2", n_embd=64, n_head=4, sequence_len=64, vocab_size=512, depth=2),
    tiny_config("nanochat", n_embd=64, n_head=4, n_kv_head=1, sequence_len=64, vocab_size=2048, depth=3),
], ids=["nanochat", "gpt2", "mqa"])
def test_activation_estimate_is_within_10_percent_of_what_autograd_saves(config):
    model = GPT.build(config)
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    tokens = torch.randint(0, config.vocab_size, (2, config.sequence_len))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(tokens, tokens)
    elements = scaling.activation_elements_per_token(config)
    estimate = (elements["blocks"] + elements["stream"] + elements["logits"]) * 4 * tokens.numel()
    assert abs(estimate / sum(saved.values()) - 1) < 0.10


def test_scale_prints_the_total_with_thousands_separators():
    result = run_cli("scale", "--depth", "20", "--vocab", "65536")
    assert result.returncode == 0, result.stderr
    assert "560,988,160" in result.stdout
    for fragment in ("attn.c_q.weight", "mlp.c_fc.weight", "lm_head.weight", "100.00", "6 x N_matmul",
                     "bf16 mixed", "master weights", "rough formula"):
        assert fragment in result.stdout, fragment


@pytest.mark.parametrize("width", [50, 80, 140])
def test_no_number_or_name_is_cut_at_any_width(width):
    import io

    from rich.console import Console

    out = Console(file=io.StringIO(), width=width, color_system=None, soft_wrap=True)
    scaling.render(scaling.analyse(GPTConfig.from_depth(20, 65536, sequence_len=2048)), out)
    text = out.file.getvalue().replace("blocks.0 … blocks.19, each:", "")
    assert "…" not in text
    assert "560,988,160" in text and "attn.c_proj.weight" in text and "11.44 GiB" in text


def test_scale_json_holds_every_number(tmp_path, capsys):
    target = tmp_path / "out" / "d4.json"
    assert main(["scale", "--depth", "4", "--batch-tokens", "1000", "--json", str(target)]) == 0
    assert "36,700,160" in capsys.readouterr().out
    data = json.loads(target.read_text())
    assert data["parameters"]["total"] == 36_700_160
    assert data["flops"]["train_per_step"] == 1000 * data["flops"]["train_per_token"]
    assert data["memory_bytes"]["fp32"]["weights"] == 4 * 36_700_160
    assert data["config"]["sequence_len"] == 2048 and data["config"]["vocab_size"] == 65536
    assert [p.name for p in target.parent.iterdir()] == ["d4.json"]  # no temp file left behind


def test_scale_options_reach_the_config(capsys):
    assert main(["scale", "--depth", "12", "--family", "gpt2", "--vocab", "50257", "--seq-len", "1024"]) == 0
    assert "124,439,808" in capsys.readouterr().out
    assert main(["scale", "--depth", "20", "--n-kv-head", "2", "--head-dim", "64"]) == 0
    assert "20 heads of 64 (2 key/value heads)" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [
    (["--depth", "0"], "--depth"),
    (["--depth", "two"], "--depth"),
    (["--depth", "1.5"], "--depth"),
    (["--depth", "4", "--vocab", "0"], "--vocab"),
    (["--depth", "20", "--n-kv-head", "3"], "n_kv_head (3)"),
    ([], "--depth"),
])
def test_bad_input_is_a_one_line_usage_error(args, fragment):
    result = run_cli("scale", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_help_teaches_with_examples():
    result = run_cli("scale", "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and "glassgpt scale --depth 20" in result.stdout


def test_the_analysis_and_its_tables_import_no_torch():
    """What keeps `glassgpt scale --depth 32` fast and small: its work is arithmetic."""
    code = ("import io, sys, contextlib\nfrom glassgpt.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['scale', '--depth', '32']) == 0\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]


def test_verify_checks_the_counts_against_the_meta_device_model(capsys, monkeypatch):
    assert main(["scale", "--depth", "32", "--verify"]) == 0
    assert "verified: the model built on the meta device has these 194 parameter tensors" in capsys.readouterr().out
    # were the arithmetic ever to drift from the model, --verify says where, instead of printing a wrong total
    monkeypatch.setattr(scaling, "parameter_shapes", lambda config: [("wte.weight", (1, 1))])
    assert main(["scale", "--depth", "2", "--verify"]) == 1
    assert "parameter 0: counted ('wte.weight', (1, 1)), the model has ('wte.weight', (65536, 128))" in capsys.readouterr().err


def test_scale_stays_off_heavy_imports():
    """What keeps `glassgpt scale --depth 32` fast and small: no torch._dynamo or sympy (meta
    initialisers, torch optimisers), no plotting, no tokenizer, no training loop."""
    code = ("import io, sys, contextlib\nfrom glassgpt.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['scale', '--depth', '32']) == 0\n"
            "print(' '.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    for heavy in ("torch._dynamo", "sympy", "matplotlib", "tiktoken", "glassgpt.train.loop", "glassgpt.tokenizer"):
        assert heavy not in loaded, heavy
