"""Typed config: presets, overrides with types, config files, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from glassgpt import config as cfg
from glassgpt.errors import UsageError


def test_flags_are_converted_to_each_fields_type():
    config = cfg.resolve(None, None, {"run": "r", "matrix_lr": "1e-3", "max_steps": "1_000", "compile": "on",
                                      "softcap": "off", "n_kv_head": "1", "qk_norm": "false", "data": "x.txt"})
    assert config.matrix_lr == 1e-3 and config.max_steps == 1000 and config.compile is True
    assert config.model == {"softcap": None, "n_kv_head": 1, "qk_norm": False}
    model = config.model_config(4096)
    assert model.softcap is None and model.n_kv_head == 1 and not model.qk_norm


def test_dashes_and_underscores_name_the_same_field():
    assert cfg.canonical_key("--max-steps") == cfg.canonical_key("max_steps") == "max_steps"


def test_precedence_is_defaults_then_preset_then_file_then_flags(tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"max_steps": 7, "seq_len": 64, "model": {"n_kv_head": 1}}))
    config = cfg.resolve("cpu-tiny", str(file), {"run": "r", "max_steps": "9"})
    assert config.max_steps == 9  # flag beats file
    assert config.seq_len == 64  # file beats preset
    assert config.depth == cfg.PRESETS["cpu-tiny"]["depth"]  # preset beats default
    assert config.model["n_kv_head"] == 1


@pytest.mark.parametrize("flags, message", [
    ({"max_stepz": "3"}, "unknown option --max-stepz; did you mean --max-steps"),
    ({"n_layer": "3"}, "the number of blocks is --depth"),
    ({"max_steps": "lots"}, "--max-steps takes an integer, not 'lots'"),
    ({"max_steps": "2.5"}, "--max-steps takes an integer"),
    ({"matrix_lr": "fast"}, "--matrix-lr takes a number"),
    ({"compile": "maybe"}, "--compile takes on/off"),
    ({"softcap": "big"}, "--softcap takes a number or off"),
    ({"optimizer": "sgd"}, "--optimizer must be one of auto, muon, adamw"),
    ({"activation": "tanh"}, "activation must be one of relu2, gelu, relu, silu"),
    ({"vocab_size": "100"}, "vocab_size must be at least 267"),
    ({"seq_len": "512", "sequence_len": "256"}, "--seq-len 512 is longer than the model's sequence_len 256"),
    ({"run": "../escape"}, "invalid run name"),
    ({"max_steps": "0"}, "--max-steps must be at least 1"),
    ({"warmdown_ratio": "1.5"}, "--warmdown-ratio must be between 0 and 1"),
])
def test_bad_values_are_one_line_usage_errors_naming_the_key(flags, message):
    with pytest.raises(UsageError) as error:
        cfg.resolve(None, None, {"run": "r", **flags})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UsageError, match="presets: cpu-tiny"):
        cfg.resolve("gpu-huge", None, {"run": "r"})


def test_config_file_errors_are_usage_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        cfg.resolve(None, str(broken), {"run": "r"})
    with pytest.raises(UsageError, match="cannot read config file"):
        cfg.resolve(None, str(tmp_path / "missing.json"), {"run": "r"})
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(UsageError, match="one object"):
        cfg.resolve(None, str(listing), {"run": "r"})


def test_every_field_has_help_text():
    for name in cfg.TRAIN_FIELDS + cfg.MODEL_FIELDS:
        assert cfg.help_for(name), f"--{name} has no docstring to show in --help"


def test_train_and_model_field_names_do_not_collide():
    assert not set(cfg.TRAIN_FIELDS) & set(cfg.MODEL_FIELDS)


def test_presets_resolve_and_build_a_model():
    for name in cfg.PRESETS:
        config = cfg.resolve(name, None, {"run": "r"})
        assert config.model_config(config.vocab_size).n_layer == config.depth
