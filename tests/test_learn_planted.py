"""The grader generalises: every realistic mistake of tests/fixtures/planted_mistakes.py fails its
check and is named (a config field, a catalogued mistake, or the quantity in words); correct files
written differently pass; NaN, backward errors and JSON are reported as such. The same plants are
counted by benchmarks/grader_mistakes.py."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from glassgpt.errors import GlassError
from glassgpt.learn import checks as grading
from glassgpt.learn import describe
from glassgpt.learn.grader import Report
from glassgpt.learn.loader import build_learner_model, import_learner
from glassgpt.learn.settings import VARIED, default_config, varied_config
from glassgpt.learn.worker import run_check
from glassgpt.see.registry import grader_hint

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from planted_mistakes import BLIND, CONTROLS, PLANTS, named  # noqa: E402

BY_NAME = {p.name: p for p in PLANTS + BLIND + CONTROLS}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The grader's worker computes with one thread (tiny tensors); so do these in-process checks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grade(path: Path, family: str, names: list[str]) -> dict[str, grading.CheckResult]:
    module = import_learner(path)
    context = grading.Context(module, family)
    return {c.name: run_check(c, context, path, failed_before=False) for c in grading.CHECKS if c.name in names}


@pytest.mark.parametrize("name", [p.name for p in PLANTS])
def test_each_planted_mistake_fails_its_check_and_is_named(name, tmp_path):
    plant = BY_NAME[name]
    result = grade(plant.write(tmp_path), plant.family, [plant.check])[plant.check]
    assert result.status in ("fail", "error"), (plant.why, result.message)
    if plant.hard:
        return
    assert named(plant, result.message, result.hint, result.mistake, result.config_fields), \
        f"{plant.why}: the report does not name {plant.names}: {result.message} (hint: {result.hint})"


@pytest.mark.parametrize("name", [p.name for p in BLIND])
def test_mistakes_the_grader_was_not_designed_around_still_fail(name, tmp_path):
    plant = BY_NAME[name]
    result = grade(plant.write(tmp_path), plant.family, [plant.check])[plant.check]
    assert result.status in ("fail", "error"), (plant.why, result.message)


@pytest.mark.parametrize("name, checks", [
    ("manual_dropout_mask", ["forward.mlp", "forward.block", "forward.gpt"]),
    ("sdpa_attention", ["forward.attention", "forward.block", "forward.gpt", "backward.gpt"]),
])
def test_correct_files_written_differently_pass(name, checks, tmp_path):
    plant = BY_NAME[name]
    results = grade(plant.write(tmp_path), plant.family, checks)
    assert all(r.status == "pass" for r in results.values()), {n: r.message for n, r in results.items()}


# -- the settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["nanochat", "gpt2"])
def test_the_varied_setting_moves_every_field_a_learner_reads(family):
    default, varied = default_config(family), varied_config(family)
    for config in (default, varied):
        assert 1 < config.n_head and config.n_kv_head < config.n_head  # grouped-query attention in both
        assert config.bias == (family == "gpt2")  # GPT-2's biases are on (and randomised by the setting)
    assert varied.dropout > 0 == default.dropout
    assert varied.n_head // varied.n_kv_head != default.n_head // default.n_kv_head  # a hard-coded group shows
    assert varied.head_dim != default.head_dim and varied.sequence_len > default.sequence_len
    read = [f for f in VARIED if not (family == "gpt2" and f in ("rope_base", "softcap"))]
    assert all(getattr(varied, f) != getattr(default, f) for f in read)
    for field in read:  # each field can change alone (to name the one a failure depends on)
        dataclasses.replace(default, **{field: getattr(varied, field)}).validate()


def test_a_failure_under_the_varied_setting_names_each_field_it_depends_on(tmp_path):
    plant = BY_NAME["head_dim_hardcoded_in_scale"]
    result = grade(plant.write(tmp_path), plant.family, ["forward.attention"])["forward.attention"]
    assert result.config_fields == ["n_embd", "n_head"] and result.hint == grader_hint("config.head_dim")
    assert result.message.startswith("fails with config.n_embd = 96 (passes with 64) and with config.n_head = 8 "
                                     "(passes with 4): attention output")


# -- NaN and inf ---------------------------------------------------------------------------------------


def test_nan_is_located_and_its_cause_named(tmp_path):
    plant = BY_NAME["mask_hides_diagonal"]
    result = grade(plant.write(tmp_path), plant.family, ["forward.attention"])["forward.attention"]
    assert "128 NaN among 1,536 values (every sequence, position 0, every channel)" in result.message
    assert result.hint == grader_hint("nonfinite.masked_diagonal")
    assert result.nonfinite["nan"] == 128 and result.nonfinite["inf"] == 0
    assert result.max_abs_error == math.inf  # made null in JSON, see below


def test_a_property_check_says_nan_rather_than_a_wrong_softmax(tmp_path):
    path = BY_NAME["mask_hides_diagonal"].write(tmp_path)
    context = grading.Context(import_learner(path), "nanochat")
    with pytest.raises(grading.CheckFailed) as failure:
        grading._check_rows_sum_to_one(context)
    assert "NaN" in str(failure.value) and "position 0" in str(failure.value)
    assert failure.value.hint == grader_hint("nonfinite.masked_diagonal")


@pytest.mark.parametrize("rows, component, cause", [
    ([0], "forward.attention", "nonfinite.masked_diagonal"),
    ([11], "forward.block", "nonfinite.masked_inverted"),
    ([4], "forward.gpt", "nonfinite.masked_row"),
    ([3], "forward.norm", "nonfinite.zero_division"),
])
def test_the_likely_cause_of_nan_comes_from_where_it_is(rows, component, cause):
    got = torch.zeros(2, 12, 8)
    got[:, rows] = float("nan")
    info = describe.nonfinite(got, torch.zeros_like(got), ("sequence", "position", "channel"))
    assert describe.nonfinite_cause(info, component) == cause
    overflow = torch.zeros(2, 12, 8)
    overflow[0, 0, 0] = float("inf")
    info = describe.nonfinite(overflow, torch.zeros_like(overflow), ("sequence", "position", "channel"))
    assert describe.nonfinite_cause(info, component) == "nonfinite.overflow"
    assert info["where"] == "sequence 0, position 0, channel 0"


# -- errors raised during backward --------------------------------------------------------------------


def _line_of(path: Path, code: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if code in line)


def test_an_inplace_error_in_backward_names_the_learners_line_and_operation(tmp_path):
    path = BY_NAME["inplace_square"].write(tmp_path)
    result = grade(path, "nanochat", ["forward.mlp"])["forward.mlp"]
    line, saved = _line_of(path, "h.square_()"), _line_of(path, "h = F.relu(self.c_fc(x))")
    assert result.status == "error" and result.hint == grader_hint("gradient.inplace")
    assert f"{path.name} line {line} in forward (h.square_()): the in-place operation square_" in result.message
    assert f"autograd saved at line {saved} (h = F.relu(self.c_fc(x)))" in result.message


def test_inputs_are_not_leaves_so_an_inplace_residual_fails_as_in_training(tmp_path):
    path = BY_NAME["inplace_residual"].write(tmp_path)
    result = grade(path, "nanochat", ["forward.block"])["forward.block"]
    assert "leaf Variable" not in result.message
    assert f"line {_line_of(path, 'x += self.attn')} in forward" in result.message and "add_ (+=)" in result.message


def test_training_your_model_names_the_same_inplace_line(tmp_path):
    path = BY_NAME["inplace_softcap"].write(tmp_path)
    config = dataclasses.replace(default_config("nanochat"))
    with pytest.raises(GlassError) as failure:
        build_learner_model(path, config, torch.device("cpu"))
    assert re.search(rf"failed in its first backward pass, loss.backward\(\): {path.name} line "
                     rf"{_line_of(path, 'logits *= cap')} in forward \(logits \*= cap\): the in-place operation mul_",
                     str(failure.value)), str(failure.value)


# -- strict JSON -----------------------------------------------------------------------------------------


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def test_json_report_is_strict_even_with_nan(tmp_path):
    path = BY_NAME["mask_hides_diagonal"].write(tmp_path)
    result = run_cli("learn", "check", str(path), "--json", "--component", "forward.attention", timeout=600)
    report = json.loads(result.stdout, parse_constant=_no_constants)  # no NaN / Infinity literals
    check = report["checks"][0]
    assert result.returncode == 1 and check["status"] == "fail" and check["max_abs_error"] is None
    assert check["nonfinite"] == {"nan": 128, "inf": 0, "values": 1536,
                                  "where": "every sequence, position 0, every channel"}
    assert check["config_fields"] is None


def test_every_non_finite_number_becomes_null_in_the_report():
    report = Report("f.py", "nanochat", checks=[{
        "name": "forward.mlp", "phase": "forward components", "status": "fail", "max_abs_error": float("inf"),
        "message": "x", "nonfinite": {"nan": 1, "inf": 2, "values": 3, "where": "position 0", "rows": None},
        "comparison": {"max_rel_error": float("nan")}}])
    parsed = json.loads(report.to_json(), parse_constant=_no_constants)
    assert parsed["checks"][0]["max_abs_error"] is None
    assert parsed["checks"][0]["nonfinite"] == {"nan": 1, "inf": 2, "values": 3, "where": "position 0"}


# -- differences in words, computed from the tensors ----------------------------------------------------

AXES = ("sequence", "position", "channel")


def test_relations_are_found_from_the_tensors():
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))
    quantities = {"sqrt(head_dim)": 4.0, "the number of counted targets": 21.0}
    assert describe.relation(2.83 * x, x, AXES) == "yours is larger by a constant factor of 2.83 everywhere"
    assert describe.relation(x / 21, x, AXES, quantities) == \
        "yours is smaller by a constant factor of 21 (= the number of counted targets) (× 0.0476) everywhere"
    assert describe.relation(-x, x, AXES) == "yours is the reference's with the sign flipped (× -1) everywhere"
    assert describe.relation(x + 0.5, x, AXES) == "yours is the reference's + 0.5 everywhere: a constant offset"
    shifted = torch.cat([torch.randn(2, 1, 8), x[:, :-1]], dim=1)
    assert "your position t holds the reference's position t - 1: shifted by one position (later)" == \
        describe.relation(shifted, x, AXES)
    assert describe.relation(x.flip(1), x, AXES) == "yours has the reference's positions in reverse order"
    order = [2, 0, 1, 3, 5, 4]
    assert describe.relation(x[:, order], x, AXES).startswith("yours has the reference's positions in another order")
    square = torch.randn(2, 5, 5)
    assert describe.relation(square.transpose(1, 2), square, ("sequence", "query", "key")) == \
        "yours is the reference's with the query and key axes swapped: transposed"
    assert "transposed" in describe.relation(x.transpose(1, 2), x, AXES)  # another shape: axes in another order
    wrong_at_end = x.clone()
    wrong_at_end[:, 4:] += 1
    assert describe.relation(wrong_at_end, x, AXES) == "the values differ at positions 4–5 only"
    assert describe.relation(torch.tensor(5.0 * 21), torch.tensor(5.0), (), quantities) == \
        "yours is larger by a constant factor of 21 (= the number of counted targets)"
    assert describe.relation(torch.tensor(5.2), torch.tensor(5.0), ()) is None  # one number: no factor without a name
    assert describe.relation(torch.randn(2, 6, 8), x, AXES) is None


def test_sizes_in_an_error_are_named_after_the_config():
    sizes = {"n_head": 4, "n_kv_head": 2, "head_dim": 16, "sequence_len": 16}
    words, fields = describe.name_sizes("The size of tensor a (4) must match the size of tensor b (2) at "
                                        "non-singleton dimension 1", sizes)
    assert words == "4 = n_head; 2 = n_kv_head" and fields == ["n_head", "n_kv_head"]
    assert describe.name_sizes("mat1 and mat2 shapes cannot be multiplied (24x16 and 7x3)", sizes)[0] == \
        "16 = head_dim = sequence_len"
    assert describe.name_sizes("something else entirely", sizes) is None
