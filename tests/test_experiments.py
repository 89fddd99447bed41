"""`glassgpt experiment`: the declarations, the judges (both ways), the measurements, the cache, the CLI.

Every judge is tested both ways, twice over: on synthetic records (numbers chosen to sit on either
side of its margins) and on tiny real runs of the real declarations, where the experiment with its
switch shows the symptom and the same experiment neutralised (every variant = the baseline) does not.

The tiny runs replace SHARED with TINY (2 blocks of width 32, 16-token windows, a 512-token tokenizer)
and are trained once for the module. A few experiments need a nudge to show their symptom within a
few dozen steps, each said where it is made (TINY_ADAPTATIONS); their real sizes are in
docs/reference/experiments.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import pytest
import torch

from conftest import MIRROR, tiny_config, tiny_model
from glassgpt.cli import main
from glassgpt.experiments import declarations, heads, judges, plots, runner, suite
from glassgpt.experiments.declarations import Variant
from glassgpt.experiments.runner import RunRecord

TINY = dict(data="tinyshakespeare", vocab_size=512, family="nanochat", depth=2, n_embd=32, head_dim=8, seq_len=16,
            device_batch_size=8, eval_batch_size=64, dtype="fp32", device="cpu", seed=1337)
TINY_STEPS = 40
# experiment → (steps, SHARED overrides, replacement runs) for the tiny versions
TINY_ADAPTATIONS = {
    # copying the next token takes the tiny model a little longer to find
    "no-causal-mask": (120, {}, None),
    # a tiny model's logits stay below 15 in 60 steps: a cap of 5 shows the same thing sooner
    "softcap-qk-norm": (60, {"softcap": 5.0}, None),
    # the same block budget at tiny widths (12 C² per block: 1 x 32 and 4 x 16)
    "depth-vs-width": (100, {}, (Variant("4 x 16 (baseline)", {"depth": 4, "n_embd": 16}),
                                 Variant("1 x 32", {"depth": 1, "n_embd": 32}))),
    # heads get a job within a few hundred steps in a one-block GPT-2-family model of 16-token windows
    "head-specialisation": (400, {"family": "gpt2", "depth": 1, "adamw_lr": 0.01, "device_batch_size": 16}, None),
}


# -- pure measures --------------------------------------------------------------------------------------


def test_loss_spike_is_the_largest_rise_above_the_lowest_loss_so_far():
    assert judges.loss_spike([8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.9, 2.8, 2.7, 2.6]) == 0.0
    assert judges.loss_spike([8.0, 6.0, 5.0, 4.0, 3.0, 4.5, 3.0, 2.0, 3.2, 2.0]) == pytest.approx(1.5)
    # the first 10% of the steps (here two) may rise: the fall from ln V has not started yet
    early_rise = [8.0, 9.0] + [7.0 - 0.3 * i for i in range(18)]
    assert judges.loss_spike(early_rise) == pytest.approx(0.0)
    assert judges.loss_spike(early_rise, skip_fraction=0.0) == pytest.approx(1.0)
    assert judges.loss_spike([8.0, 6.0, float("nan")]) == math.inf
    assert judges.loss_spike([8.0, float("inf")]) == math.inf


def test_gradient_ratio_is_the_median_first_over_last_block_after_the_first_observation():
    norms = [[0.0, 1.0], [1e-4, 1.0], [2e-4, 1.0], [3e-4, 1.0]]  # the first (a zero-init step) is skipped
    assert judges.gradient_ratio(norms) == pytest.approx(2e-4)
    assert judges.gradient_ratio([[1.0, 2.0]]) == pytest.approx(0.5)  # only one observation: it is used
    assert math.isnan(judges.gradient_ratio([]))


def test_observed_steps_spread_from_first_to_last_without_repeats():
    assert runner.observed_steps(200) == [0, 20, 40, 60, 80, 100, 119, 139, 159, 179, 199]
    assert runner.observed_steps(5) == [0, 1, 2, 3, 4]
    assert runner.observed_steps(0) == []


def test_median_rate_leaves_out_the_warmup_steps():
    assert runner.median_rate(1000, [5.0, 5.0, 5.0, 0.1, 0.1, 0.2, 0.1, 0.1]) == pytest.approx(10_000)
    assert runner.median_rate(1000, [0.5, 0.5]) == pytest.approx(2000)


def test_smooth_keeps_length_and_non_finite_values():
    out = plots.smooth([1.0, 2.0, 3.0, float("nan"), 5.0], window=3)
    assert len(out) == 5 and out[1] == pytest.approx(2.0) and math.isnan(out[3])


# -- heads ----------------------------------------------------------------------------------------------


def _planted_patterns(T: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """One window, one layer, five heads: previous-token, current-token, first-token, delimiter,
    uniform; the delimiters are every third token."""
    delimiters = torch.tensor([i % 3 == 2 for i in range(T)])
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    previous = torch.zeros(T, T)
    previous[0, 0] = 1
    previous[torch.arange(1, T), torch.arange(T - 1)] = 1
    current = torch.eye(T)
    first = torch.zeros(T, T)
    first[:, 0] = 1
    delimiter = torch.zeros(T, T)
    for i in range(T):
        seen = [j for j in range(i + 1) if delimiters[j]]
        if seen:
            delimiter[i, seen[-1]] = 1  # the latest delimiter
        else:
            delimiter[i, : i + 1] = 1 / (i + 1)
    patterns = torch.stack([previous, current, first, delimiter, uniform])[None, None]  # (1, 1, 5, T, T)
    return patterns, delimiters[None]


def test_heads_are_named_by_where_their_attention_goes():
    patterns, delimiters = _planted_patterns()
    scores = heads.score_heads(patterns, delimiters)
    assert [s.name for s in scores] == ["previous-token", "current-token", "first-token", "delimiter", "broad"]
    assert scores[0].previous == pytest.approx(1.0) and scores[4].spread == pytest.approx(1.0)
    assert scores[3].delimiter == pytest.approx(1.0) and 0.2 < scores[3].delimiter_share < 0.4
    assert [s.name for s in heads.specialised(scores)] == ["previous-token", "current-token", "first-token", "delimiter"]
    assert heads.summary(scores).startswith("previous-token: L0H0; current-token: L0H1")
    assert heads.HeadScores.from_dict(scores[3].to_dict()).name == "delimiter"


def test_a_head_is_named_only_above_the_threshold():
    assert heads.name_head(previous=0.49, current=0.1, first=0.1, spread=0.5) == "mixed"
    assert heads.name_head(previous=0.5, current=0.1, first=0.1, spread=0.5) == "previous-token"
    # delimiters that take half the attention but are half the keys anyway: chance, not a role
    assert heads.name_head(0.1, 0.1, 0.1, 0.5, delimiter=0.6, delimiter_share=0.5) == "mixed"
    assert heads.name_head(0.1, 0.1, 0.1, 0.95) == "broad"


def test_delimiters_are_punctuation_and_line_breaks():
    assert all(heads.is_delimiter(p) for p in [",", ":\n", " '", "\n\n", ".\n\n", "?"])
    assert not any(heads.is_delimiter(p) for p in [" the", "A", " ", "", "ROMEO"])


# -- judges on synthetic records: both ways ---------------------------------------------------------------


def record(label: str = "baseline", **fields) -> RunRecord:
    model = dict(vocab_size=4096, n_embd=128, n_head=4, n_kv_head=4, n_layer=4, causal=True, softcap=15.0,
                 qk_norm=True, attn_temperature=1.0)
    model.update(fields.pop("model", {}))
    base = dict(label=label, key=label, steps=10, parameters=1_835_008, block_parameters=786_432, model=model,
                losses=[8.0, 7.0, 6.5, 6.0, 5.8, 5.6, 5.5, 5.4, 5.3, 5.2], train_loss=5.0, val_loss=5.2,
                causal_val_loss=5.2, layer_grad_norms=[[0.4, 0.3, 0.3, 0.3]] * 3, act_zero=[[0.6] * 4],
                act_negative=[[0.0] * 4], shuffle_kl=0.4, final_entropy=[2.6, 2.4, 2.4, 2.4], uniform_entropy=3.2,
                kv_bytes_per_token=4096, decode_tokens_per_sec=400.0, logit_max=[0.0, 10.0, 12.0],
                score_max=[[5.0] * 4, [5.2] * 4], heads=[])
    base.update(fields)
    return RunRecord(**base)


def _head(layer, head, **scores):
    return heads.HeadScores(layer, head, scores.get("previous", 0.05), scores.get("current", 0.05), 0.05,
                            scores.get("spread", 0.8), scores.get("delimiter", 0.2), 0.2).to_dict()


# judge, the baseline's fields, a variant's fields that show the symptom
SYNTHETIC = {
    "no-causal-mask": ({}, dict(train_loss=0.3, val_loss=0.35, causal_val_loss=8.0)),
    "no-residual": ({}, dict(layer_grad_norms=[[1e-5, 1e-4, 1e-2, 1.0]] * 3, val_loss=6.7)),
    "no-norm": ({}, dict(losses=[8.0, 7.0, 6.0, 30.0, float("nan")], diverged_at=5, val_loss=math.nan)),
    "activations": ({}, dict(act_zero=[[0.0] * 4], act_negative=[[0.6] * 4], val_loss=5.18)),
    "positions": ({}, dict(shuffle_kl=0.004, model={"position": "none"})),
    "attention-temperature": ({}, dict(final_entropy=[3.1] * 4, model={"attn_temperature": 4.0})),
    "tied-embeddings": ({}, dict(parameters=1_835_008 - 4096 * 128, model={"tie_embeddings": True})),
    "gqa": ({}, dict(kv_bytes_per_token=1024, model={"n_kv_head": 1}, val_loss=5.25)),
    "softcap-qk-norm": ({}, dict(logit_max=[0.0, 20.0, 28.0], model={"softcap": None})),
    "depth-vs-width": (dict(model={"n_layer": 4}), dict(model={"n_layer": 16, "n_embd": 64}, decode_tokens_per_sec=150.0,
                                                        val_loss=5.25)),
    "head-specialisation": (dict(steps=0, heads=[_head(0, h, spread=0.97) for h in range(4)]),
                            dict(heads=[_head(0, 0, delimiter=0.6), _head(0, 1), _head(0, 2, current=0.7), _head(0, 3)])),
}


def test_every_experiment_has_a_synthetic_judge_case():
    assert set(SYNTHETIC) == set(declarations.BY_NAME)


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_each_judge_sees_its_symptom_and_not_the_baseline_itself(name):
    judge = declarations.BY_NAME[name].judge
    base_fields, variant_fields = SYNTHETIC[name]
    baseline = record(**base_fields)
    verdict = judge(baseline, [record("variant", **{**base_fields, **variant_fields})])
    assert verdict.appeared, verdict.detail
    assert set(verdict.figures) == {"baseline", "variant"} and verdict.figure_name
    neutral = judge(baseline, [baseline.relabel("variant")])
    assert not neutral.appeared, f"{name}: the judge finds the symptom in the baseline itself: {neutral.detail}"


def test_judges_hold_their_margins():
    baseline = record()
    # a leak that lowers the training loss but is not worse once masked is not the symptom
    assert not judges.reads_the_answer(baseline, [record("v", train_loss=0.3, causal_val_loss=5.0)]).appeared
    # gradients that vanish while the loss does not stall are not the whole symptom
    assert not judges.gradients_vanish(baseline, [record("v", layer_grad_norms=[[1e-6, 1.0]] * 3)]).appeared
    # an unstable baseline cannot show that a variant is unstable
    shaky = record(losses=[8.0, 7.0, 6.0, 5.0, 9.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    assert not judges.unstable(shaky, [record("v", diverged_at=3, losses=[8.0, 7.0, float("nan")])]).appeared
    # a cache that shrinks at a large cost in loss
    assert not judges.cache_shrinks(baseline, [record("v", kv_bytes_per_token=1024, model={"n_kv_head": 1},
                                                      val_loss=6.5)]).appeared
    # temperatures in order but entropies that do not follow them
    assert not judges.entropy_follows_temperature(
        baseline, [record("v", final_entropy=[2.0] * 4, model={"attn_temperature": 4.0})]).appeared
    # deeper but not slower
    assert not judges.depth_sets_decode_speed(record(model={"n_layer": 4}), [
        record("v", model={"n_layer": 16}, decode_tokens_per_sec=390.0)]).appeared


# -- the declarations ----------------------------------------------------------------------------------------


def test_every_experiment_is_a_complete_declaration():
    names = [e.name for e in declarations.EXPERIMENTS]
    assert len(names) == 11 and len(set(names)) == 11
    for experiment in declarations.EXPERIMENTS:
        assert experiment.question.endswith("?") and experiment.symptom and experiment.explanation, experiment.name
        assert all(name in plots.PLOTS or name == "samples" for name in experiment.plots), experiment.name
        plans = suite.plan(experiment, None)  # every switch is a valid config
        identities = [runner.config_hash(p.identity("tok", "cpu", "fp32")) for p in plans]
        assert len(set(identities)) == len(plans), f"{experiment.name}: a variant does not change anything"
        neutral = suite.plan(declarations.neutralised(experiment), None)
        assert {runner.config_hash(p.identity("tok", "cpu", "fp32")) for p in neutral} == {identities[0]}
        for variant in experiment.variants:
            assert variant.breaks, f"{experiment.name}/{variant.label} does not say what it breaks"


def test_experiments_share_the_baseline_run():
    keys = {e.name: runner.config_hash(suite.plan(e, None)[0].identity("tok", "cpu", "fp32"))
            for e in declarations.EXPERIMENTS}
    shared = [name for name in ("no-causal-mask", "activations", "positions", "attention-temperature",
                                "tied-embeddings", "gqa", "depth-vs-width")]
    assert len({keys[name] for name in shared}) == 1
    # the trained head-specialisation run is that same baseline
    trained = suite.plan(declarations.BY_NAME["head-specialisation"], None)[1]
    assert runner.config_hash(trained.identity("tok", "cpu", "fp32")) == keys["no-causal-mask"]


def test_the_registry_break_it_lines_point_at_the_experiments():
    from glassgpt.see.registry import ENTRIES

    pointed = set()
    for entry in ENTRIES:
        if "glassgpt experiment run " in entry.experiment:
            flags, name = entry.experiment.partition(" (")[0], entry.experiment.rsplit(" ", 1)[1]
            experiment = declarations.BY_NAME[name]
            assert flags in [v.flags for v in experiment.variants], (entry.key, flags)
            pointed.add(name)
    # every experiment that breaks a trace point is pointed at; these two are about the whole model
    assert pointed == set(declarations.BY_NAME) - {"head-specialisation", "depth-vs-width"}


def test_usage_mistakes_are_one_line_before_anything_trains(tmp_path, capsys):
    assert main(["experiment", "run", "no-causal-msk"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no experiment named 'no-causal-msk'; did you mean no-causal-mask")
    assert len(err.splitlines()) == 1
    assert main(["experiment", "run", "gqa", "--steps", "0"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err
    assert main(["experiment", "all", "--html", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert main(["experiment"]) == 2  # no subcommand: the help


@pytest.mark.parametrize("command, expected", [
    (["experiment"], ["list", "run", "all", "cached", "Ctrl-C", "$GLASSGPT_HOME/experiments"]),
    (["experiment", "run"], ["--steps", "--html", "--fresh", "no-causal-mask"]),
    (["experiment", "all"], ["--html", "8 minutes"]),
])
def test_help_teaches_the_experiments(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(fragment in out for fragment in expected), out


def test_list_names_every_experiment(capsys):
    assert main(["experiment", "list"]) == 0
    out = capsys.readouterr().out
    assert all(e.name in out for e in declarations.EXPERIMENTS)


# -- measurements on tiny models -----------------------------------------------------------------------------


def test_kv_cache_bytes_per_token_is_what_a_real_cache_holds():
    from glassgpt.model.gpt import KVCache

    for kv_heads in (4, 2, 1):
        config = tiny_config(n_kv_head=kv_heads)
        cache = KVCache(config, batch_size=1, max_len=10, device="cpu")
        per_token = (cache.keys.nbytes + cache.values.nbytes) // 10
        assert runner.kv_cache_bytes_per_token(config) == per_token == 2 * 2 * kv_heads * 8 * 4


def test_a_one_block_model_without_positions_cannot_tell_a_shuffled_prefix():
    tokens = torch.randint(0, 97, (2000,)).numpy()
    blind = tiny_model(tiny_config(depth=1, position="none"))
    rotary = tiny_model(tiny_config(depth=1))
    assert runner.shuffled_prefix_kl(blind, tokens, 16, 8, "cpu") < 1e-6  # float32 summation order only
    assert runner.shuffled_prefix_kl(rotary, tokens, 16, 8, "cpu") > 1e-4


def test_the_causal_evaluation_uses_the_same_weights_with_the_mask_on():
    model = tiny_model(tiny_config(causal=False))
    masked = runner.with_causal_mask(model)
    assert masked.config.causal and not model.config.causal
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), masked.state_dict().values()))
    idx = torch.randint(0, 97, (1, 10))
    full, prefix = masked(idx), masked(idx[:, :6])
    torch.testing.assert_close(full[:, :6], prefix)  # with the mask, the future changes nothing
    assert not torch.allclose(model(idx)[:, :6], model(idx[:, :6]))  # without it, it does


def test_the_symptom_tracer_reads_named_points_during_the_training_step():
    from glassgpt.config import TrainConfig
    from glassgpt.train.optim import build_optimizers
    from glassgpt.train.step import train_step

    config = tiny_config(activation="relu")
    model = tiny_model(config)
    optimizers = build_optimizers(model, TrainConfig().optimizer_settings())
    tracer, gradients = runner.SymptomTracer(), []
    x = torch.randint(0, 97, (2, 12))
    train_step(model, optimizers, [(x, x)], watch=lambda: tracer,
               on_gradients=lambda m: gradients.extend(runner.block_gradient_norms(m, config.n_layer)))
    n = config.n_layer
    entropy = tracer.per_layer("entropy", n)
    assert all(0 < e <= math.log(12) for e in entropy)
    assert all(0.2 < z < 0.8 for z in tracer.per_layer("act_zero", n))  # ReLU: about half exactly zero
    assert tracer.per_layer("act_negative", n) == [0.0] * n
    assert all(0 < s <= math.sqrt(config.head_dim) + 1e-4 for s in tracer.per_layer("score_max", n))  # QK-norm bound
    assert 0 < tracer.values["logit_max"] < config.softcap
    assert len(gradients) == n and all(g > 0 for g in gradients)


# -- tiny real runs: each judge both ways (the real declarations on a tiny model) -------------------------------


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """A cache root of its own for the module's tiny runs."""
    home = tmp_path_factory.mktemp("experiments-home")
    settings = {"GLASSGPT_HOME": str(home), "GLASSGPT_DATA_MIRROR": str(MIRROR), "NO_COLOR": "1"}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield home
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def tiny_measurements():
    """Measurements cut to the tiny model's size (fewer evaluation, sample and decode tokens) while
    the tiny runs train, and restored afterwards for the other tests."""
    names = ("EVAL_TOKENS", "DECODE_TOKENS", "SAMPLE_TOKENS")
    before = {name: getattr(runner, name) for name in names}
    runner.EVAL_TOKENS, runner.DECODE_TOKENS, runner.SAMPLE_TOKENS = 4096, 16, 8
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(runner, name, value)


def run_tiny(experiment, steps, shared, **options):
    with tiny_measurements():
        return suite.run([experiment], steps, shared=shared, **options)[0]


def tiny_version(name: str) -> tuple[declarations.Experiment, int, dict]:
    experiment = declarations.BY_NAME[name]
    steps, overrides, runs = TINY_ADAPTATIONS.get(name, (TINY_STEPS, {}, None))
    if runs:
        experiment = dataclasses.replace(experiment, baseline=runs[0], variants=runs[1:])
    return experiment, steps, {**TINY, **overrides}


@pytest.fixture(scope="module")
def tiny_verdicts(tiny_home):
    """{experiment: (verdict with its switches, verdict neutralised)}; the neutralised runs are the
    baseline's, found in the cache."""
    verdicts = {}
    for experiment in declarations.EXPERIMENTS:
        tiny, steps, shared = tiny_version(experiment.name)
        applied = run_tiny(tiny, steps, shared, draw=False)
        neutral = run_tiny(declarations.neutralised(tiny), steps, shared, draw=False)
        assert neutral.trained == 0, "the neutralised runs are the baseline's: nothing new to train"
        verdicts[experiment.name] = (applied.verdict, neutral.verdict)
    return verdicts


@pytest.mark.slow
@pytest.mark.parametrize("name", [e.name for e in declarations.EXPERIMENTS])
def test_each_symptom_appears_with_its_switch_and_not_without_it(tiny_verdicts, name):
    applied, neutral = tiny_verdicts[name]
    assert applied.appeared, f"{name}: with the switch: {applied.detail}"
    assert not neutral.appeared, f"{name}: neutralised: {neutral.detail}"


@pytest.mark.slow
def test_a_second_run_only_renders_and_fresh_trains_again(tiny_home, tiny_verdicts, monkeypatch, capsys):
    monkeypatch.setenv("GLASSGPT_HOME", str(tiny_home))  # where the module's runs are cached
    tiny, steps, shared = tiny_version("tied-embeddings")
    again = run_tiny(tiny, steps, shared)
    assert again.trained == 0
    assert set(again.plots) == {"loss", "parameters"} and all(p.stat().st_size > 0 for p in again.plots.values())
    out = capsys.readouterr().out
    assert "predicted:" in out and "symptom appeared: yes" in out and "why:" in out
    assert out.index("predicted:") < out.index("symptom appeared")
    fresh = run_tiny(tiny, steps, shared, fresh=True, draw=False)
    assert fresh.trained == 2
    assert [r.val_loss for r in fresh.records] == pytest.approx([r.val_loss for r in again.records], abs=1e-6)


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_runs(tiny_home, tiny_verdicts, monkeypatch):
    monkeypatch.setenv("GLASSGPT_HOME", str(tiny_home))
    tiny, steps, shared = tiny_version("gqa")
    calls = []
    real = runner.train_run

    def interrupted_second(plan, *args, **kwargs):
        calls.append(plan.label)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(runner, "train_run", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tiny, steps + 1, shared, draw=False)  # a new step count: nothing cached
    monkeypatch.setattr(runner, "train_run", real)
    resumed = run_tiny(tiny, steps + 1, shared, draw=False)
    assert resumed.trained == 2, "the run finished before Ctrl-C came from the cache"


# -- the HTML page, in a real browser -------------------------------------------------------------------------

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGE_EXPERIMENTS = ("positions", "softcap-qk-norm", "head-specialisation")  # several kinds of plot


@pytest.fixture(scope="module")
def page(tiny_home, tiny_verdicts, tmp_path_factory):
    """The HTML page of three tiny experiments, rendered from the module's cached runs."""
    out = tmp_path_factory.mktemp("page") / "experiments.html"
    results, before = [], os.environ.get("GLASSGPT_HOME")
    os.environ["GLASSGPT_HOME"] = str(tiny_home)  # where the module's runs are cached
    try:
        for name in PAGE_EXPERIMENTS:
            tiny, steps, shared = tiny_version(name)
            results.append(run_tiny(tiny, steps, shared))
    finally:
        os.environ["GLASSGPT_HOME"] = before
    assert all(r.trained == 0 for r in results)
    from glassgpt.experiments import report

    out.write_text(report.to_html(results), encoding="utf-8")
    return out, results


@pytest.mark.slow
def test_the_html_page_is_one_offline_file(page):
    import re

    path, results = page
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.count("<html") == 1 and text.rstrip().endswith("</html>")
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!#|data:image/png;base64,)""", text), "only in-page links and inline images"
    for result in results:
        assert f'<section id="{result.experiment.name}">' in text
        assert text.count(f'id="{result.experiment.name}-') == len(result.plots)


@pytest.mark.slow
def test_the_html_page_in_a_real_browser(page):
    from pathlib import Path
    import shutil

    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed (/usr/bin/chromium; on Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    path, results = page
    errors, requests = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1300, "height": 900})
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.on("request", lambda request: requests.append(request.url))
            tab.goto(path.as_uri())
            tab.wait_for_load_state("load")
            # every plot decoded and drawn at its size (a broken data URI has naturalWidth 0)
            sizes = tab.locator("figure.plot img").evaluate_all(
                "images => images.map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
            assert len(sizes) == sum(len(r.plots) for r in results)
            assert all(complete and natural > 300 and shown > 100 for complete, natural, shown in sizes), sizes
            # the contents link to every experiment, the summary says what each verdict was
            toc = tab.locator("#toc a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
            assert toc == [f"#{r.experiment.name}" for r in results]
            rows = tab.locator("#summary tbody tr").all_text_contents()
            for row, result in zip(rows, results):
                assert result.experiment.name in row and ("yes" if result.verdict.appeared else "no") in row
            # each section: the prediction, a table row per run, the verdict, the why
            for result in results:
                section = tab.locator(f"section#{result.experiment.name}")
                assert result.experiment.symptom in section.locator(".prediction").text_content()
                assert section.locator("table.data tbody tr").count() == len(result.records)
                assert section.locator(".verdict").count() == 1 and section.locator(".why").is_visible()
            tab.click(f'#toc a[href="#{results[-1].experiment.name}"]')
            assert tab.locator(f"section#{results[-1].experiment.name} h2").is_visible()
        finally:
            browser.close()
    assert errors == [], f"console errors: {errors}"
    assert requests == [path.as_uri()], f"the page made network requests: {requests}"


def test_the_reference_page_is_generated_from_the_declarations():
    from conftest import REPO
    from glassgpt.experiments import report

    page = (REPO / "docs" / "reference" / "experiments.md").read_text(encoding="utf-8")
    assert page == report.reference_markdown(), \
        "regenerate: python -m glassgpt.experiments.report > docs/reference/experiments.md"
