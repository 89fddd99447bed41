"""Build it yourself: the skeleton, the grader, its diagnosis of common mistakes, and its safety."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli
from glassgpt.cli import main
from glassgpt.learn import checks as grading
from glassgpt.learn import mistakes
from glassgpt.learn.loader import import_learner
from glassgpt.learn.worker import run_check

FIXTURES = Path(__file__).parent / "fixtures"
NANOCHAT = (FIXTURES / "learner_nanochat.py").read_text()
GPT2 = (FIXTURES / "learner_gpt2.py").read_text()


# -- the skeleton ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["nanochat", "gpt2"])
def test_skeleton_imports_states_contracts_and_points_at_real_docs(tmp_path, family, capsys):
    path = tmp_path / "my_gpt.py"
    assert main(["learn", "init", str(path), "--family", family]) == 0
    source = path.read_text()
    assert "{{" not in source and "TODO 1 " in source and "TODO 14 " in source
    module = import_learner(path)  # it imports and runs
    assert module.FAMILY == family
    for name in ("c_q.weight", "c_fc.weight", "wte.weight"):
        assert name in source  # the weight names the grader loads
    with pytest.raises(NotImplementedError, match="TODO 1 "):
        module.CausalSelfAttention(grading.grading_config(family), 0)
    for doc in set(re.findall(r"docs/[\w/.-]+\.md", source)):
        assert (REPO / doc).is_file(), f"the skeleton points at {doc}, which does not exist"


def test_skeleton_formulas_come_from_the_explanation_registry(tmp_path):
    from glassgpt.see.registry import explain

    path = tmp_path / "g.py"
    main(["learn", "init", str(path)])
    source = path.read_text()
    assert explain("blocks.*.attn.scores").formula in source
    assert explain("blocks.*.attn.norm").common_bug in source


def test_init_never_overwrites_without_force(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text("# my work\n")
    assert main(["learn", "init", str(path)]) == 2
    assert "already exists; add --force" in capsys.readouterr().err
    assert path.read_text() == "# my work\n"
    assert main(["learn", "init", str(path), "--force"]) == 0
    assert "TODO 1" in path.read_text()


def grade_json(path: Path, *args: str) -> tuple[int, dict]:
    result = run_cli("learn", "check", str(path), "--json", *args, timeout=600)
    return result.returncode, json.loads(result.stdout)


def test_untouched_skeleton_fails_at_the_first_phase_with_the_first_todo(tmp_path):
    path = tmp_path / "my_gpt.py"
    main(["learn", "init", str(path)])
    code, report = grade_json(path)
    assert code == 1 and not report["passed"]
    first = report["checks"][0]
    assert (first["name"], first["phase"], first["status"]) == ("init.attention", "initialisation", "fail")
    assert first["todo"].startswith("TODO 1 ")
    assert all(c["status"] == "not_started" for c in report["checks"][1:])
    assert {"name", "phase", "status", "max_abs_error", "mistake", "hint"} <= set(first)
    assert not any(report["milestones"].values())


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["learner_nanochat.py", "learner_gpt2.py"])
def test_a_complete_correct_implementation_passes_every_check(fixture):
    code, report = grade_json(FIXTURES / fixture)
    failing = [(c["name"], c["message"]) for c in report["checks"] if c["status"] != "pass"]
    assert code == 0 and report["passed"], failing
    assert all(report["milestones"].values())
    expected = [c.name for c in grading.CHECKS if report["family"] in c.families]
    assert [c["name"] for c in report["checks"]] == expected


def test_checklist_shows_symbols_milestones_and_the_first_problem(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(NANOCHAT.replace("F.relu(self.c_fc(x)).square()", "F.relu(self.c_fc(x))"))
    assert main(["learn", "check", str(path), "--component", "mlp"]) == 1
    out = capsys.readouterr().out
    assert "✗ forward.mlp" in out and "milestones" in out and "first problem: forward.mlp" in out
    assert "looks like: relu_not_relu2" in out and "hint: Square the ReLU" in out
    assert "max abs error" in out and "within tolerance" in out and "first difference at index" in out


# -- common mistakes, each planted in a copy of the correct implementation -----------------------------

PLANTS = {
    "eps_outside_sqrt": ("forward.norm", [(
        "x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)",
        "x / (torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True)) + NORM_EPS)")]),
    "norm_over_wrong_dim": ("forward.norm", [("x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)",
                                              "x.pow(2).mean(dim=-2, keepdim=True) + NORM_EPS)")]),
    "layernorm_instead_of_rmsnorm": ("forward.norm", [(
        "return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)",
        "return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)")]),
    "rope_wrong_frequencies": ("forward.rotary_tables", [(
        "torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim",
        "torch.arange(0, head_dim // 2, dtype=torch.float32, device=device) / head_dim")]),
    "rope_cos_sin_swapped": ("forward.rotary_tables", [("return torch.cos(angles), torch.sin(angles)",
                                                         "return torch.sin(angles), torch.cos(angles)")]),
    "rope_adjacent_pairs": ("forward.apply_rotary", [
        ("a, b = x[..., :d], x[..., d:]", "a, b = x[..., 0::2], x[..., 1::2]"),
        ("torch.cat((a * c - b * s, a * s + b * c), dim=-1)", "torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)")]),
    "rope_opposite_rotation": ("forward.apply_rotary", [("(a * c - b * s, a * s + b * c)", "(a * c + b * s, -a * s + b * c)")]),
    "no_attention_scaling": ("forward.attention", [(" / math.sqrt(self.head_dim)", "")]),
    "scaled_by_d": ("forward.attention", [(" / math.sqrt(self.head_dim)", " / self.head_dim")]),
    "mask_after_softmax": ("forward.attention", [(
        'scores = scores.masked_fill(~mask, float("-inf"))\n        weights = torch.softmax(scores, dim=-1)',
        "weights = torch.softmax(scores, dim=-1).masked_fill(~mask, 0.0)")]),
    "no_causal_mask": ("forward.attention", [('scores = scores.masked_fill(~mask, float("-inf"))', "pass")]),
    "softmax_wrong_dim": ("forward.attention", [("torch.softmax(scores, dim=-1)", "torch.softmax(scores, dim=-2)")]),
    "rope_on_values": ("forward.attention", [("k = apply_rotary(k, cos, sin)",
                                              "k = apply_rotary(k, cos, sin)\n        v = apply_rotary(v, cos, sin)")]),
    "missing_qk_norm": ("forward.attention", [
        ("q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + NORM_EPS)", "pass"),
        ("k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + NORM_EPS)", "pass")]),
    "kv_heads_tiled": ("forward.attention", [("k = k.repeat_interleave(group, dim=1)", "k = k.repeat(1, group, 1, 1)"),
                                             ("v = v.repeat_interleave(group, dim=1)", "v = v.repeat(1, group, 1, 1)")]),
    "heads_merged_without_transpose": ("forward.attention", [("out.transpose(1, 2).reshape(", "out.reshape(")]),
    "relu_not_relu2": ("forward.mlp", [("F.relu(self.c_fc(x)).square()", "F.relu(self.c_fc(x))")]),
    "missing_activation": ("forward.mlp", [("F.relu(self.c_fc(x)).square()", "self.c_fc(x)")]),
    "residual_missing": ("forward.block", [("x = x + self.attn(", "x = self.attn("), ("x = x + self.mlp(", "x = self.mlp(")]),
    "residual_twice": ("forward.block", [("x = x + self.attn(", "x = x + x + self.attn("),
                                         ("x = x + self.mlp(", "x = x + x + self.mlp(")]),
    "residual_adds_normed_input": ("forward.block", [(
        "x = x + self.attn(self.norm_1(x), cos, sin)\n        x = x + self.mlp(self.norm_2(x))",
        "h = self.norm_1(x)\n        x = h + self.attn(h, cos, sin)\n        h = self.norm_2(x)\n        x = h + self.mlp(h)")]),
    "post_norm": ("forward.block", [(
        "x = x + self.attn(self.norm_1(x), cos, sin)\n        x = x + self.mlp(self.norm_2(x))",
        "x = self.norm_1(x + self.attn(x, cos, sin))\n        x = self.norm_2(x + self.mlp(x))")]),
    "softcap_missing_divide": ("forward.gpt", [("cap * torch.tanh(logits / cap)", "cap * torch.tanh(logits)")]),
    "softcap_missing_multiply": ("forward.gpt", [("cap * torch.tanh(logits / cap)", "torch.tanh(logits / cap)")]),
    "softcap_missing": ("forward.gpt", [("logits = cap * torch.tanh(logits / cap)", "pass")]),
    "labels_not_shifted": ("forward.gpt", [(
        'return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction="sum") \\\n'
        '            / (targets != -1).sum().clamp(min=1)',
        "return F.cross_entropy(logits.view(-1, logits.size(-1)), idx.view(-1))")]),
    "last_position_only": ("forward.gpt", [(
        'return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction="sum") \\\n'
        '            / (targets != -1).sum().clamp(min=1)',
        "return F.cross_entropy(logits[:, -1], targets[:, -1], ignore_index=-1)")]),
    "ignored_targets_counted": ("forward.gpt", [("/ (targets != -1).sum().clamp(min=1)", "/ targets.numel()")]),
    "weights_tied": ("init.gpt", [("self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)",
                                   "self.lm_head = None")]),
}
GPT2_PLANTS = {
    "rmsnorm_instead_of_layernorm": ("forward.norm", [(
        "mean = x.mean(dim=-1, keepdim=True)\n        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)\n"
        "        return (x - mean) / torch.sqrt(var + NORM_EPS) * self.weight + self.bias",
        "return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.weight + self.bias")]),
    "unbiased_variance": ("forward.norm", [("var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)",
                                            "var = x.var(dim=-1, keepdim=True, unbiased=True)")]),
    "gelu_exact_not_tanh": ("forward.mlp", [('F.gelu(self.c_fc(x), approximate="tanh")', "F.gelu(self.c_fc(x))")]),
    "weights_not_tied": ("init.gpt", [("self.lm_head = None", "self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)")]),
}


def planted(source: str, replacements, tmp_path: Path) -> Path:
    for old, new in replacements:
        assert old in source, f"the fixture no longer contains {old!r}"
        source = source.replace(old, new)
    path = tmp_path / "planted.py"
    path.write_text(source)
    return path


def grade_one(path: Path, check_name: str) -> grading.CheckResult:
    module = import_learner(path)
    context = grading.Context(module, module.FAMILY)
    check = next(c for c in grading.CHECKS if c.name == check_name)
    return run_check(check, context, path, failed_before=False)


@pytest.mark.parametrize("mistake", sorted(PLANTS) + sorted(GPT2_PLANTS))
def test_the_grader_names_each_planted_mistake(mistake, tmp_path):
    source, (check, replacements) = (NANOCHAT, PLANTS[mistake]) if mistake in PLANTS else (GPT2, GPT2_PLANTS[mistake])
    result = grade_one(planted(source, replacements, tmp_path), check)
    assert result.status == "fail", result
    assert result.mistake == mistake, result.message
    assert result.hint == mistakes.BY_ID[mistake].hint


def test_every_catalogued_mistake_is_planted_in_a_test():
    assert set(mistakes.BY_ID) - {"wrong_activation"} <= set(PLANTS) | set(GPT2_PLANTS)
    assert len(set(PLANTS) | set(GPT2_PLANTS)) >= 12


@pytest.mark.parametrize("family", ["nanochat", "gpt2"])
def test_mistake_variants_with_default_options_reproduce_the_reference(family):
    context = grading.Context(None, family)
    block = context.reference.blocks[0]
    x, h = context.cached("blocks.0.resid.pre"), context.cached("blocks.0.attn.norm")
    with torch.no_grad():
        assert torch.allclose(mistakes.attention_variant(block.attn, h, context.cos, context.sin),
                              block.attn(h, context.cos, context.sin), atol=1e-5)
        assert torch.allclose(mistakes.block_variant(block, x, context.cos, context.sin),
                              block(x, context.cos, context.sin), atol=1e-5)


@pytest.mark.parametrize("check", ["forward.gpt", "backward.gpt", "optimizer.step", "training.loss_curve",
                                   "generation.greedy"])
def test_later_phases_pass_for_the_correct_implementation(check, tmp_path):
    path = tmp_path / "ok.py"
    path.write_text(NANOCHAT)
    result = grade_one(path, check)
    assert result.status == "pass", result.message


def test_first_divergent_trace_point_is_reported(tmp_path):
    path = planted(NANOCHAT, PLANTS["missing_qk_norm"][1], tmp_path)
    result = grade_one(path, "forward.gpt")
    assert result.status == "fail" and "first difference at trace point blocks.0.attn.out" in result.message


def test_property_checks_explain_an_uncatalogued_attention_bug(tmp_path):
    # an unusual bug: masking with a large negative number *after* a softmax over queries
    path = planted(NANOCHAT, [("torch.softmax(scores, dim=-1)", "torch.softmax(scores.nan_to_num(neginf=0.0), dim=-1) * 0.5")],
                   tmp_path)
    result = grade_one(path, "forward.attention")
    assert result.status == "fail" and "should sum to 1 over the keys" in result.message


def test_rows_sum_property_reads_the_pattern_without_any_tap(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text(NANOCHAT.replace("tap(name + \"q_rot\", apply_rotary(q, cos, sin))", "apply_rotary(q, cos, sin)"))
    module = import_learner(path)
    grading._check_rows_sum_to_one(grading.Context(module, "nanochat"))  # passes: no exception


# -- bad learner files: each reported clearly, with no traceback from glassgpt ---------------------------


def only_line(report: dict) -> dict:
    failing = [c for c in report["checks"] if c["status"] != "pass"]
    return failing[0]


def test_syntax_error_shows_the_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(NANOCHAT.replace("def forward(self, x):\n        return x / torch", "def forward(self x):\n        return x / torch"))
    code, report = grade_json(path)
    problem = only_line(report)
    assert code == 1 and problem["name"] == "import" and problem["status"] == "fail"
    assert re.search(r"broken.py line \d+: .*def forward\(self x\):", problem["message"])


def test_missing_class_lists_what_the_grader_needs(tmp_path):
    path = tmp_path / "partial.py"
    path.write_text(NANOCHAT.replace("class MLP(nn.Module):", "class FeedForward(nn.Module):"))
    code, report = grade_json(path)
    assert "has no MLP" in only_line(report)["message"]


def test_wrong_constructor_signature_is_an_error_with_a_hint(tmp_path):
    path = tmp_path / "sig.py"
    path.write_text(NANOCHAT.replace("class MLP(nn.Module):\n    def __init__(self, config, layer_idx):",
                                     "class MLP(nn.Module):\n    def __init__(self, config):"))
    code, report = grade_json(path, "--component", "init.mlp")
    problem = only_line(report)
    assert problem["status"] == "error" and "positional argument" in problem["message"]
    assert "keep the skeleton's signatures" in problem["hint"]


def test_a_hanging_check_times_out_and_the_rest_still_run(tmp_path):
    path = tmp_path / "hang.py"
    path.write_text(NANOCHAT.replace("        h = F.relu(self.c_fc(x)).square()", "        while True:\n            pass"))
    code, report = grade_json(path, "--time-limit", "3")
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    mlp = next(c for c in report["checks"] if c["name"] == "forward.mlp")
    assert mlp["status"] == "timeout" and "did not finish within 3 s" in mlp["message"]
    assert statuses["forward.attention"] == "pass"  # checked after the hang, by a fresh worker
    assert statuses["forward.block"] == "not_started"


def test_a_module_that_prints_a_lot_is_summarised(tmp_path, capsys):
    path = tmp_path / "chatty.py"
    path.write_text(NANOCHAT.replace("        h = F.relu(self.c_fc(x)).square()",
                                     "        print('debug', x.shape)\n        h = F.relu(self.c_fc(x)).square()")
                    + "\nfor i in range(5000):\n    print('hello', i)\n")
    assert main(["learn", "check", str(path), "--component", "mlp"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"your module printed 5,0\d\d line\(s\)", out) and "hello 0" in out
    assert out.count("hello") <= 3  # summarised, not flooded


def test_an_import_that_crashes_shows_the_learners_line(tmp_path):
    path = tmp_path / "crash.py"
    path.write_text(NANOCHAT + "\nundefined_name + 1\n")
    code, report = grade_json(path)
    message = only_line(report)["message"]
    assert "crash.py line" in message and "NameError" in message and "glassgpt/" not in message


def test_unknown_component_is_a_usage_error(tmp_path):
    path = tmp_path / "x.py"
    path.write_text(NANOCHAT)
    result = run_cli("learn", "check", str(path), "--component", "attenton")
    assert result.returncode == 2 and "is not a check; checks: init.attention" in result.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    result = run_cli("learn", "check", str(tmp_path / "nope.py"))
    assert result.returncode == 1 and "create it with: glassgpt learn init nope.py" in result.stderr


# -- your model in the real pipeline ------------------------------------------------------------------


def test_train_with_your_model_uses_the_real_loop_and_lists_missing_trace_points(glass_home, capsys):
    from conftest import TINY_TRAIN

    fixture = str(FIXTURES / "learner_nanochat.py")
    assert main(["train", *TINY_TRAIN, "--run", "mine", "--model", fixture, "--max-steps", "3",
                 "--eval-every", "0", "--checkpoint-every", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"emits 3 of \d+ trace points; not emitted: embed.norm", out)
    saved = json.loads((glass_home / "runs" / "mine" / "config.json").read_text())
    assert saved["train"]["model_file"] == str(Path(fixture).resolve()) and saved["model_file_sha256"]
    # sampling and resuming rebuild *your* class from the saved config
    assert main(["sample", "--run", "mine", "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert main(["train", "--run", "mine", "--resume", "--max-steps", "4"]) == 0


def test_train_with_a_broken_model_file_fails_clearly(glass_home, tmp_path, capsys):
    from conftest import TINY_TRAIN

    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    assert main(["train", *TINY_TRAIN, "--run", "b", "--model", str(broken), "--max-steps", "1"]) == 1
    assert "broken.py line 1" in capsys.readouterr().err


@pytest.mark.slow
def test_learn_compare_trains_both_and_finds_them_matching(glass_home, capsys):
    assert main(["learn", "compare", str(FIXTURES / "learner_nanochat.py"), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "verdict: matches" in out and "final val bits/byte" in out and "peak memory" in out
    assert "loss at step 3" in out


@pytest.mark.slow
def test_learn_compare_points_at_the_step_where_curves_part(glass_home, tmp_path, capsys):
    planted_file = planted(NANOCHAT, PLANTS["softcap_missing_divide"][1], tmp_path)
    assert main(["learn", "compare", str(planted_file), "--steps", "3"]) == 1
    # a zero-initialised head makes step 1 uniform for both (tanh(0) = 0); the curves part from step 2
    assert "the loss curves part at step 2" in capsys.readouterr().out


def test_watch_rechecks_when_the_file_changes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "mine.py"
    path.write_text(NANOCHAT.replace("F.relu(self.c_fc(x)).square()", "F.relu(self.c_fc(x))"))
    process = subprocess.Popen([sys.executable, "-m", "glassgpt", "learn", "check", str(path), "--watch",
                                "--component", "mlp"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "NO_COLOR": "1"})
    seen, deadline = [], time.time() + 240
    for line in process.stdout:
        seen.append(line)
        if "watching" in line:
            if sum("watching" in s for s in seen) == 1:
                time.sleep(0.2)
                path.write_text(NANOCHAT)  # the learner fixes the bug and saves
            else:
                process.send_signal(signal.SIGINT)
                break
        assert time.time() < deadline, "".join(seen)
    process.wait(timeout=60)
    text = "".join(seen)
    assert process.returncode == 0
    assert text.index("looks like: relu_not_relu2") < text.index("every check passes")


def test_a_run_of_your_model_is_reopened_from_anywhere_and_notices_edits(glass_home, tmp_path, capsys, monkeypatch):
    from conftest import TINY_TRAIN

    mine = tmp_path / "work" / "my_gpt.py"
    mine.parent.mkdir()
    mine.write_text(NANOCHAT)
    monkeypatch.chdir(mine.parent)
    assert main(["train", *TINY_TRAIN, "--run", "rel", "--model", "my_gpt.py", "--max-steps", "1", "--eval-every", "0"]) == 0
    monkeypatch.chdir(tmp_path)  # elsewhere: the saved absolute path still finds the file
    capsys.readouterr()
    mine.write_text(NANOCHAT + "\n# an edit\n")
    assert main(["sample", "--run", "rel", "--max-new-tokens", "3", "--seed", "0"]) == 0
    assert "my_gpt.py changed since run 'rel' was trained" in capsys.readouterr().err
    mine.unlink()
    assert main(["sample", "--run", "rel", "--max-new-tokens", "3"]) == 1
    assert "which no longer exists; put the file back" in capsys.readouterr().err
