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
from glassgpt.see.registry import grader_hint

FIXTURES = Path(__file__).parent / "fixtures"
NANOCHAT = (FIXTURES / "learner_nanochat.py").read_text()
GPT2 = (FIXTURES / "learner_gpt2.py").read_text()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The grader's worker computes with one thread (tiny tensors); so do these in-process checks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.mark.parametrize("family", ["nanochat", "gpt2"])
def test_every_todo_points_at_a_page_that_exists(family):
    from glassgpt.learn.skeleton import render

    todos = re.findall(r'"""TODO (\d+) · (.*?)"""', render(family, "my_gpt.py"), flags=re.DOTALL)
    expected = [n for n in range(1, 15) if family == "nanochat" or n not in (7, 8)]
    assert sorted(int(n) for n, _ in todos) == expected
    for number, text in todos:
        pages = re.findall(r"docs/[\w/.-]+\.md", text)
        assert pages, f"TODO {number} ({text.splitlines()[0]}) has no read: docs/... pointer"
        for page in pages:
            assert (REPO / page).is_file(), f"TODO {number} points at {page}, which does not exist"


def test_grader_hints_come_from_the_registry():
    """The grader writes no hint text of its own: every hint is the registry's (as the trace view's is)."""
    for path in (REPO / "src" / "glassgpt" / "learn").glob("*.py"):
        source = path.read_text()
        assert not re.search(r"hint\s*=\s*f?[\"']", source), f"{path.name} writes a hint of its own"


def test_the_tolerance_table_is_documented():
    page = (REPO / "docs" / "reference" / "learn.md").read_text()
    for check, quantities in grading.TOLERANCES.items():
        for quantity, (atol, rtol) in quantities.items():
            assert f"| `{check}` | {quantity} | {atol:g} | {rtol:g} |" in page, (check, quantity)


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
    compared = [c for c in report["checks"] if c["name"].startswith(("forward.", "backward.", "optimizer.", "training."))]
    assert all(isinstance(c["max_abs_error"], float) for c in compared), compared  # the error of a passing check too


def test_a_component_check_never_claims_the_whole_model(tmp_path, capsys):
    path = tmp_path / "mine.py"  # the MLP is right, the norm is not
    path.write_text(NANOCHAT.replace("x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)",
                                     "x.pow(2).mean(dim=-1, keepdim=True)) + NORM_EPS"))
    assert main(["learn", "check", str(path), "--component", "mlp"]) == 0
    out = capsys.readouterr().out
    assert "the selected checks pass (init.mlp, forward.mlp)" in out and "every check passes" not in out
    assert "· matches the reference" in out  # the milestone is not reached by a part of the checks


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
    "labels_shifted_twice": ("forward.gpt", [(
        'return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction="sum") \\\n'
        '            / (targets != -1).sum().clamp(min=1)',
        "return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets[:, 1:].reshape(-1), ignore_index=-1)")]),
    "wrong_activation": ("forward.mlp", [("F.relu(self.c_fc(x)).square()", "F.gelu(self.c_fc(x), approximate=\"tanh\")")]),
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
NANOGPT_TIE = "self.lm_head.weight = self.wte.weight"
# the same mistakes written another way: (mistake, family, check, replacements)
OTHER_FORMS = {
    "weights_tied-as-nanogpt": ("weights_tied", "nanochat", "init.gpt", [(
        "self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)",
        f"self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)\n        {NANOGPT_TIE}")]),
    "weights_not_tied-with-unused-head": ("weights_not_tied", "gpt2", "init.gpt", [(
        "self.lm_head = None", "self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)\n"
        "        self.lm_head.weight = nn.Parameter(self.wte.weight.detach().clone())")]),
    "wrong_activation-relu2-in-gpt2": ("wrong_activation", "gpt2", "forward.mlp", [(
        'F.gelu(self.c_fc(x), approximate="tanh")', "F.relu(self.c_fc(x)).square()")]),
}
ALL_PLANTS = {**{m: (m, "nanochat", *PLANTS[m]) for m in PLANTS}, **{m: (m, "gpt2", *GPT2_PLANTS[m]) for m in GPT2_PLANTS},
              **OTHER_FORMS}


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


@pytest.mark.parametrize("plant", sorted(ALL_PLANTS))
def test_the_grader_names_each_planted_mistake(plant, tmp_path):
    mistake, family, check, replacements = ALL_PLANTS[plant]
    result = grade_one(planted(NANOCHAT if family == "nanochat" else GPT2, replacements, tmp_path), check)
    assert result.status == "fail", result
    assert result.mistake == mistake, result.message
    assert result.hint == mistakes.BY_ID[mistake].hint


def test_every_catalogued_mistake_is_planted_in_a_test():
    assert set(mistakes.BY_ID) <= set(PLANTS) | set(GPT2_PLANTS)
    assert len(set(PLANTS) | set(GPT2_PLANTS)) >= 12


def grade_all(path: Path) -> dict[str, grading.CheckResult]:
    """Every check of the file's family, in one process and one context (cheap, no subprocess)."""
    module = import_learner(path)
    context = grading.Context(module, module.FAMILY)
    return {c.name: run_check(c, context, path, failed_before=False) for c in grading.CHECKS
            if module.FAMILY in c.families}


def test_tying_nanogpts_way_is_accepted_where_the_reference_ties(tmp_path):
    path = planted(GPT2, [("self.lm_head = None", "self.lm_head = nn.Linear(config.n_embd, config.vocab_size, "
                                                 f"bias=False)\n        {NANOGPT_TIE}"),
                          ("(self.final_norm(x) @ self.wte.weight.T)", "self.lm_head(self.final_norm(x))")], tmp_path)
    results = grade_all(path)
    assert all(r.status == "pass" for r in results.values()), {n: r.message for n, r in results.items()}


# -- failure paths beyond the catalogue: properties, weights, gradients, later phases ------------------

FAILURES = {  # name: (family, check, replacements, what the message says, hint key or None)
    "norm-sums-instead-of-averaging": ("nanochat", "forward.norm", [(
        "x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)", "x.pow(2).sum(dim=-1, keepdim=True) + NORM_EPS)")],
        "RMSNorm output should have RMS 1 per vector", "property.unit_rms"),
    "rope-half-rotated": ("nanochat", "forward.apply_rotary", [("a * s + b * c", "a * s + b")],
                          "q·k should depend on the distance only", "property.rope_relative"),
    "gqa-values-tiled-keys-not": ("nanochat", "forward.attention", [(
        "v = v.repeat_interleave(group, dim=1)", "v = v.repeat(1, group, 1, 1)")],
        "grouped-query attention (4 query heads, 2 key/value heads) should equal full attention", "property.gqa"),
    "mask-on-head-0-only": ("nanochat", "forward.attention", [(
        'scores = scores.masked_fill(~mask, float("-inf"))',
        'scores[:, :1] = scores[:, :1].masked_fill(~mask, float("-inf"))')],
        "attention is not causal: changing tokens 8", None),
    "mlp-input-detached": ("nanochat", "forward.mlp", [("F.relu(self.c_fc(x)).square()", "F.relu(self.c_fc(x.detach())).square()")],
                           "MLP: no gradient reached the input", "gradient.missing"),
    "mlp-gradient-scaled": ("nanochat", "forward.mlp", [(
        "h = F.relu(self.c_fc(x)).square()", "h = F.relu(self.c_fc(x)).square()\n        h = h + (0.5 * h - (0.5 * h).detach())")],
        "MLP: gradient of the input", "gradient.only"),
    "mlp-layer-renamed": ("nanochat", "init.mlp", [("self.c_fc = nn.Linear", "self.fc = nn.Linear"), ("self.c_fc(x)", "self.fc(x)")],
                          "MLP: weights differ from the reference: missing c_fc.weight (256, 64); unexpected fc.weight (256, 64)",
                          None),
    "mlp-too-narrow": ("nanochat", "init.mlp", [("config.mlp_hidden", "3 * config.n_embd")],
                       "wrong shape c_fc.weight: got (192, 64), expected (256, 64), c_proj.weight: got (64, 192), "
                       "expected (64, 256): your MLP is built as if config.mlp_ratio were 3 (it is 4)", "config.mlp_ratio"),
    "rotary-tables-saved": ("nanochat", "init.gpt", [('"rotary_cos", cos, persistent=False', '"rotary_cos", cos')],
                            "unexpected rotary_cos (16, 8)", "init.rotary_buffers"),
    "projection-not-zero": ("nanochat", "init.weights", [(
        "nn.init.zeros_(block.attn.c_proj.weight)", "nn.init.normal_(block.attn.c_proj.weight, 0.0, 0.02)")],
        "blocks.0.attn.c_proj.weight should start at zero", "init.zero"),
    "embedding-too-small": ("nanochat", "init.weights", [("nn.init.normal_(self.wte.weight, 0.0, 1.0)",
                                                          "nn.init.normal_(self.wte.weight, 0.0, 0.02)")],
                            "wte.weight: mean", "init.nanochat.wte"),
    "adamw-betas": ("nanochat", "optimizer.step", [("betas=(0.8, 0.95)", "betas=(0.9, 0.95)")],
                    "wte.weight after optimiser step 2", "optimizer.nanochat"),
    "muon-momentum": ("nanochat", "optimizer.step", [("momentum=0.95", "momentum=0.9")],
                      "blocks.0.attn.c_q.weight after optimiser step 2", "optimizer.nanochat"),
    "head-in-no-group": ("nanochat", "optimizer.step", [(
        ",\n                               dict(params=[model.lm_head.weight], lr=unembedding_lr * scale)", "")],
                         "1 parameter(s) are in no optimiser group", "optimizer.nanochat"),
    "learning-rate-ignored": ("gpt2", "training.loss_curve", [("lr=lr, betas", "lr=1e-3, betas")],
                              "the loss curve leaves the reference's at step 2", "training.curve"),
    "first-position-sampled": ("nanochat", "generation.greedy", [("logits = model(context)[:, -1, :]",
                                                                  "logits = model(context)[:, 0, :]")],
                               "greedy generation differs from the reference's at new token 0", "generation.greedy"),
    "context-cropped-short": ("nanochat", "generation.greedy", [("idx[:, -model.config.sequence_len:]",
                                                                 "idx[:, -(model.config.sequence_len - 1):]")],
                              "your tokens are the reference's with the context cropped to the last 15 tokens; "
                              "config.sequence_len is 16", "generation.crop"),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_failures_outside_the_catalogue_are_explained(name, tmp_path):
    family, check, replacements, says, hint = FAILURES[name]
    result = grade_one(planted(NANOCHAT if family == "nanochat" else GPT2, replacements, tmp_path), check)
    assert result.status == "fail" and says in result.message, result.message
    if hint:
        assert result.hint == grader_hint(hint)


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


WITHOUT_TAPS = [('tap(name + "q_rot", apply_rotary(q, cos, sin))', "apply_rotary(q, cos, sin)"),
                ('tap(name + "out", F.dropout(self.c_proj(out), self.dropout, self.training))',
                 "F.dropout(self.c_proj(out), self.dropout, self.training)"),
                ('tap("embed.tok", self.wte(idx))', "self.wte(idx)")]


@pytest.mark.parametrize("plant, where", [
    (PLANTS["missing_qk_norm"][1], "first difference at trace point blocks.0.attn.out"),
    (PLANTS["residual_twice"][1], "first difference at trace point blocks.0.resid.mid"),
    (PLANTS["softcap_missing_divide"][1], "first difference at trace point lm_head.logits ("),
    ([("x = self.embed_norm(F.dropout(x, self.config.dropout, self.training))",
       "x = F.dropout(x, self.config.dropout, self.training)")],
     "first difference at trace point blocks.0.resid.pre"),
])
def test_the_first_divergence_needs_no_taps_of_the_learners(plant, where, tmp_path):
    source = NANOCHAT.replace("from glassgpt.model.taps import tap\n", "")
    for old, new in WITHOUT_TAPS:
        source = source.replace(old, new)
    assert "tap(" not in source
    result = grade_one(planted(source, plant, tmp_path), "forward.gpt")
    assert result.status == "fail" and where in result.message, result.message
    if "embed_norm" in plant[0][0]:
        assert "never called: embed_norm" in result.message


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
    rest = report["checks"][1:]
    assert [c["name"] for c in rest] == [c.name for c in grading.CHECKS if "nanochat" in c.families]
    assert all(c["status"] == "not_started" and c["message"] == "waits for import" for c in rest)


def test_an_unknown_family_is_rejected_at_the_import(tmp_path):
    path = tmp_path / "llama.py"
    path.write_text(NANOCHAT.replace('FAMILY = "nanochat"', 'FAMILY = "llama"'))
    code, report = grade_json(path)
    problem = only_line(report)
    assert code == 1 and (problem["name"], problem["status"]) == ("import", "fail")
    assert "llama.py sets FAMILY = 'llama', but the reference comes in 'nanochat' and 'gpt2' only" in problem["message"]
    assert report["printed_lines"] == 0  # no traceback of glassgpt's in the log either


@pytest.mark.parametrize("sabotage, says", [
    ("os._exit(3)", ["the worker stopped during this check (exit code 3"]),
    ("None()", ["the grader failed: sabotage.py line", "TypeError: 'NoneType' object is not callable"]),
])
def test_a_worker_that_dies_between_checks_reports_an_error_on_the_next_one(sabotage, says, tmp_path):
    path = tmp_path / "sabotage.py"  # breaks the grader itself, after the import has passed
    path.write_text(NANOCHAT + f"\nimport os\nimport glassgpt.learn.checks\nglassgpt.learn.checks.Context = lambda *a: {sabotage}\n")
    code, report = grade_json(path)
    statuses = [(c["name"], c["status"]) for c in report["checks"]]
    assert code == 1 and statuses[0] == ("init.attention", "error")
    assert all(part in report["checks"][0]["message"] for part in says), report["checks"][0]["message"]
    assert all(status == "not_started" for _, status in statuses[1:]) and len(statuses) == 16


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
    assert problem["hint"] == grader_hint("signature") and "Keep the skeleton's signatures" in problem["hint"]


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
                 "--eval-every", "3", "--checkpoint-every", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"emits 3 of \d+ trace points; not emitted: embed.norm", out)
    # your model samples at step 0 (the reference model does not): its generation path is tried first
    assert "=== step 0 ===" in (glass_home / "runs" / "mine" / "samples.txt").read_text()
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


@pytest.mark.parametrize("case, says", [
    ("skeleton", r"your GPT \(my_gpt.py\) is not finished: GPT\(config\) reached TODO 4 \(GPT.__init__\): .*, at "
                 r"my_gpt.py line \d+ "),
    ("bad forward", r"your GPT \(my_gpt.py\) failed in its first forward pass, forward\(idx, targets\) with idx of shape "
                    r"\(1, 32\): my_gpt.py line \d+ in forward \(x = block\(x\)\): TypeError"),
    ("no loss", r"your GPT \(my_gpt.py\) returned a tensor of shape \(1, 32, 512\) from forward\(idx, targets\)"),
])
def test_train_with_an_unfinished_or_broken_model_names_the_learners_line(case, says, glass_home, tmp_path, capsys):
    from conftest import TINY_TRAIN

    mine = tmp_path / "my_gpt.py"
    if case == "skeleton":
        assert main(["learn", "init", str(mine)]) == 0
    else:
        mine.write_text(NANOCHAT.replace("x = block(x, cos, sin)", "x = block(x)") if case == "bad forward"
                        else NANOCHAT.replace("if targets is None:", "if True:  # the loss is never returned"))
    capsys.readouterr()
    assert main(["train", *TINY_TRAIN, "--run", "mine", "--model", str(mine), "--max-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert re.search(says, err) and "glassgpt learn check my_gpt.py shows what to fix" in err, err
    assert "Traceback" not in err and "glassgpt/" not in err
    assert not (glass_home / "runs" / "mine").exists()  # nothing half-written


@pytest.mark.slow
def test_learn_compare_trains_both_and_finds_them_matching(glass_home, capsys):
    assert main(["learn", "compare", str(FIXTURES / "learner_nanochat.py"), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "verdict: matches" in out and "final val bits/byte" in out and "peak memory" in out
    assert "loss at step 3" in out
    saved = [json.loads((glass_home / "runs" / f"compare-learner-nanochat-{side}" / "config.json").read_text())["train"]
             for side in ("reference", "yours")]
    assert saved[0]["dtype"] == saved[1]["dtype"] != "auto" and saved[0]["device"] == saved[1]["device"] != "auto"


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
    assert text.index("looks like: relu_not_relu2") < text.index("the selected checks pass")


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


@pytest.mark.slow
def test_a_gpt2_file_tied_nanogpts_way_trains_saves_and_resumes(glass_home, tmp_path, capsys):
    from conftest import TINY_TRAIN

    tied = planted(GPT2, [("self.lm_head = None", "self.lm_head = nn.Linear(config.n_embd, config.vocab_size, "
                           f"bias=False)\n        {NANOGPT_TIE}")], tmp_path)
    for optimizer in ("muon", "adamw"):  # Muon files the tied matrix as the head, under either name
        run = f"tied-{optimizer}"
        assert main(["train", *TINY_TRAIN, "--family", "gpt2", "--model", str(tied), "--run", run,
                     "--optimizer", optimizer, "--max-steps", "2", "--eval-every", "0"]) == 0
        assert main(["train", "--run", run, "--resume", "--max-steps", "3"]) == 0
    assert main(["sample", "--run", "tied-adamw", "--max-new-tokens", "3", "--seed", "0"]) == 0


def test_watch_keeps_watching_while_an_editor_replaces_the_file(tmp_path, capsys, monkeypatch):
    from glassgpt.errors import GlassError
    from glassgpt.learn import grader as grader_module

    path = tmp_path / "mine.py"
    path.write_text("x = 1\n")
    calls, polls = [], []

    def run():
        calls.append(path.read_text())
        if len(calls) == 2:
            raise GlassError("the file went away mid-check")

    def between_polls(seconds):  # what the editor does while watch sleeps
        polls.append(seconds)
        if len(polls) == 1:
            path.unlink()  # saved by rename: for a moment there is no file
        elif len(polls) == 2:
            path.write_text("x = 2\n")
        elif len(polls) == 3:
            path.write_text("x = 3  # a longer save, seen even within one clock tick\n")
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(grader_module.time, "sleep", between_polls)
    assert grader_module.watch(path, run, interval=0) == 0
    assert calls == ["x = 1\n", "x = 2\n", "x = 3  # a longer save, seen even within one clock tick\n"]
    assert "error: the file went away mid-check" in capsys.readouterr().out


def test_watch_on_a_missing_file_is_a_usage_error(tmp_path):
    assert main(["learn", "check", str(tmp_path / "nope.py"), "--watch"]) == 2
