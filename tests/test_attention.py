"""`glassgpt attention`: patterns from the reference model, their entropy, the two PNGs, and the
errors a user can run into."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_TRAIN, run_cli, tiny_config, tiny_model
from glassgpt.cli import main
from glassgpt.see.attention import attention_entropy, capture_patterns, uniform_entropy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def causal_uniform(T: int) -> torch.Tensor:
    pattern = torch.tril(torch.ones(T, T, dtype=torch.float64))
    return pattern / pattern.sum(dim=-1, keepdim=True)  # row i: 1/(i+1) on keys 0..i


def test_uniform_rows_have_entropy_ln_of_the_allowed_keys():
    entropy = attention_entropy(causal_uniform(7))
    assert torch.allclose(entropy, torch.log(torch.arange(1, 8, dtype=torch.float64)))
    assert torch.allclose(entropy, uniform_entropy(7, 7, causal=True))
    full = torch.full((3, 5), 1 / 5, dtype=torch.float64)  # not causal: every row sees 5 keys
    assert torch.allclose(attention_entropy(full), torch.full((3,), math.log(5), dtype=torch.float64))
    assert torch.allclose(uniform_entropy(3, 5, causal=False), torch.full((3,), math.log(5), dtype=torch.float64))


def test_one_hot_rows_have_zero_entropy():
    keys = torch.tensor([0, 0, 1, 3, 2])
    pattern = torch.nn.functional.one_hot(keys, 5).float()  # (T, Tk), a single 1 per row
    assert torch.equal(attention_entropy(pattern), torch.zeros(5))


def test_entropy_is_per_head_and_query_and_between_zero_and_uniform():
    torch.manual_seed(0)
    B, H, T = 2, 3, 9
    scores = torch.randn(B, H, T, T) * 3
    scores = scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
    entropy = attention_entropy(scores.softmax(dim=-1))
    assert entropy.shape == (B, H, T)
    assert (entropy >= -1e-6).all() and (entropy <= uniform_entropy(T, T, True) + 1e-5).all()
    assert torch.allclose(entropy[..., 0], torch.zeros(B, H), atol=1e-6)  # row 0 can only see itself


def test_patterns_are_the_models_causal_softmax_rows():
    config = tiny_config("nanochat", n_kv_head=2, depth=3)
    model = tiny_model(config)
    patterns = capture_patterns(model, [1, 5, 7, 2, 9, 4])
    assert patterns.shape == (3, config.n_head, 6, 6)
    assert torch.allclose(patterns.sum(dim=-1), torch.ones(3, config.n_head, 6))
    assert (patterns.triu(diagonal=1) == 0).all()  # no query sees a later key
    assert not model.training


def test_the_entropy_table_of_many_heads_fits_80_columns_with_no_number_cut():
    from rich.console import Console

    from glassgpt.see.attention import AttentionMaps, entropy_table

    torch.manual_seed(0)
    L, H, T = 3, 12, 9
    scores = torch.randn(L, H, T, T).masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
    patterns = scores.softmax(-1)
    maps = AttentionMaps("a test", list(range(T)), [str(t) for t in range(T)], patterns, attention_entropy(patterns),
                         uniform_entropy(T, T, True).float())
    console = Console(width=80, color_system=None, soft_wrap=True)
    with console.capture() as captured:
        console.print(entropy_table(maps, console.width))
    table = [line for line in captured.get().splitlines() if line[:1] in "┏┃┡│└"]
    assert "…" not in captured.get() and max(map(len, table)) <= 80
    assert any(line.startswith("┃ layer") and "uniform" in line for line in table)  # turned: heads are rows
    assert sum(line.startswith("│ head ") for line in table) == H


def test_fresh_model_writes_both_pngs_and_prints_the_entropy_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["attention", "--depth", "1", "--text", "ROMEO: Is the day so young?"]) == 0
    for name in ("heatmaps.png", "entropy.png"):
        assert (tmp_path / "attention" / name).read_bytes().startswith(PNG_MAGIC)
    out = capsys.readouterr().out
    for fragment in ("attention entropy (nats", "head 0", "uniform", "ln(i+1)", "heatmaps.png"):
        assert fragment in out, fragment
    assert not list((tmp_path / "attention").glob(".*"))  # no temp files left behind


def test_text_longer_than_sequence_len_is_truncated_with_a_notice(tmp_path, capsys):
    text = "To be, or not to be, that is the question. " * 80  # far more than 256 tokens
    assert main(["attention", "--depth", "1", "--text", text, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "only the first 256 are used" in captured.err
    assert "256 tokens" in captured.out and "no token labels" in captured.err
    assert (tmp_path / "heatmaps.png").read_bytes().startswith(PNG_MAGIC)


def test_a_trained_run_draws_into_its_plots_folder(glass_home, capsys):
    assert main(["train", *TINY_TRAIN, "--run", "tiny", "--max-steps", "2", "--eval-every", "0"]) == 0
    capsys.readouterr()
    assert main(["attention", "--run", "tiny", "--text", "First Citizen: speak, speak."]) == 0
    assert "run 'tiny' at step 2" in capsys.readouterr().out
    folder = glass_home / "runs" / "tiny" / "plots" / "attention"
    assert (folder / "heatmaps.png").read_bytes().startswith(PNG_MAGIC)
    assert (folder / "entropy.png").read_bytes().startswith(PNG_MAGIC)
    result = run_cli("attention", "--run", "tiny", "--checkpoint", "999", "--text", "hi")
    assert result.returncode == 1 and "no checkpoint at step 999" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_unknown_run_is_a_one_line_error():
    result = run_cli("attention", "--run", "nope", "--text", "hello")
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no run named 'nope'" in lines[0], result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--depth", "1", "--text", ""], "--text is empty"),
    (["--depth", "1", "--checkpoint", "5", "--text", "hi"], "--checkpoint needs --run"),
    (["--run", "x", "--depth", "2", "--text", "hi"], "--depth is for a fresh model"),
    (["--depth", "0", "--text", "hi"], "--depth"),
    (["--depth", "1"], "--text"),
])
def test_usage_mistakes_exit_2_with_one_line(args, fragment, capsys):
    assert main(["attention", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_help_teaches_with_examples_and_documents_truncation():
    result = run_cli("attention", "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and "glassgpt attention --run quickstart" in result.stdout
    assert "truncated" in result.stdout
