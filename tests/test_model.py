"""The reference model: exact sizes, every switch, and the properties attention must have."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config, tiny_model
from glassgpt.errors import UsageError
from glassgpt.model import gpt as gpt_module
from glassgpt.model import taps
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT, KVCache, apply_rotary, rotary_tables


def count_on_meta(config: GPTConfig) -> int:
    with torch.device("meta"):
        model = GPT(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth, vocab, expected", [(20, 65536, 560_988_160), (4, 65536, 36_700_160)])
def test_nanochat_parameter_counts_are_exact(depth, vocab, expected):
    assert count_on_meta(GPTConfig.from_depth(depth, vocab, "nanochat")) == expected


def test_from_depth_derives_width_and_heads_like_nanochat():
    config = GPTConfig.from_depth(20, 65536)
    assert (config.n_embd, config.n_head, config.head_dim, config.n_kv_head) == (1280, 10, 128, 10)
    gpt2 = GPTConfig.from_depth(12, 50257, "gpt2")
    assert (gpt2.n_embd, gpt2.n_head, gpt2.head_dim) == (768, 12, 64)  # GPT-2 small
    assert (gpt2.position, gpt2.norm, gpt2.activation, gpt2.tie_embeddings) == ("learned", "layer", "gelu", True)


def test_gpt2_small_has_gpt2_small_parameter_count():
    # GPT-2 small with its 1024 positions: 124,439,808 parameters (tied head counted once).
    config = GPTConfig.from_depth(12, 50257, "gpt2", sequence_len=1024)
    assert count_on_meta(config) == 124_439_808


@pytest.mark.parametrize("depth", [1, 3, 5, 7])
def test_from_depth_always_gives_even_heads_that_divide_the_width(depth):
    config = GPTConfig.from_depth(depth, 512)
    assert config.n_embd == 64 * depth and config.n_embd % config.n_head == 0 and config.head_dim % 2 == 0


@pytest.mark.parametrize("fields, message", [
    (dict(n_head=3), "divisible by n_head"),
    (dict(n_kv_head=3), "multiple of n_kv_head"),
    (dict(position="alibi"), "position must be one of"),
    (dict(activation="swish"), "activation must be one of"),
    (dict(softcap=-1.0), "softcap"),
    (dict(dropout=1.5), "dropout"),
])
def test_invalid_architecture_is_a_usage_error_naming_the_field(fields, message):
    with pytest.raises(UsageError, match=message):
        tiny_config(**fields)


def test_init_weights_docstring_names_every_parameter():
    doc = GPT.init_weights.__doc__

    def covering_words(name: str) -> str:  # the words of the docstring that cover parameter `name`
        if "norm" in name:
            return "norm biases" if name.endswith("bias") else "norm gains"
        if name.endswith("bias"):
            return "biases"
        return name.split(".")[-2]  # wte, wpe, c_q, c_k, c_v, c_fc, c_proj, lm_head

    model = tiny_model(tiny_config(position="learned", norm_affine=True, bias=True, norm="layer"))
    for name, _ in model.named_parameters():
        assert covering_words(name) in doc, f"init_weights docstring does not describe {name}"


def test_nanochat_init_starts_uniform_and_each_block_as_identity():
    model = GPT.build(tiny_config())
    idx = torch.randint(0, 97, (2, 8))
    logits = model(idx)
    assert torch.allclose(logits, torch.zeros_like(logits))  # zero head → uniform prediction
    loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(97), rel=1e-6)


def test_forward_returns_logits_and_mean_loss():
    model = tiny_model()
    idx = torch.randint(0, 97, (3, 10))
    assert model(idx).shape == (3, 10, 97)
    targets = torch.randint(0, 97, (3, 10))
    per_token = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten(), reduction="none")
    assert model(idx, targets).item() == pytest.approx(per_token.mean().item(), rel=1e-6)


def test_ignored_targets_do_not_count_and_all_ignored_is_zero_not_nan():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 6))
    targets = torch.randint(0, 97, (2, 6))
    masked = targets.clone()
    masked[:, :3] = -1
    per_token = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten(), reduction="none")
    assert model(idx, masked).item() == pytest.approx(per_token.view(2, 6)[:, 3:].mean().item(), rel=1e-6)
    all_masked = model(idx, torch.full_like(targets, -1))
    all_masked.backward()
    assert all_masked.item() == 0.0 and not torch.isnan(all_masked)



@pytest.fixture
def small_head_blocks(monkeypatch) -> list[int]:
    """Head blocks of 7 rows (so 48 rows make 7 blocks, the last one short); returns a list that
    counts the blockwise path's calls, so a test knows which path it ran."""
    monkeypatch.setattr(gpt_module, "HEAD_BLOCK_BYTES", 7 * 4 * 97)
    calls, apply = [], gpt_module.BlockwiseHeadLoss.apply
    monkeypatch.setattr(gpt_module.BlockwiseHeadLoss, "apply", lambda *args: calls.append(1) or apply(*args))
    return calls


def _loss_and_grads(model, idx, targets, plain: bool, calls: list[int]):
    """The loss and every parameter's gradient; plain=True makes the model take its plain head path
    (a tracer that wants the per-token losses), plain=False the blockwise one."""
    model.zero_grad()
    before = len(calls)
    with taps.Tracer("loss.per_token") if plain else contextlib.nullcontext():
        loss = model(idx, targets)
    loss.backward()
    assert len(calls) == before + (0 if plain else 1)
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("fields", [dict(), dict(softcap=None), dict(tie_embeddings=True), dict(family="gpt2")])
def test_blockwise_head_loss_equals_the_plain_path_in_loss_and_gradients(fields, small_head_blocks):
    model = tiny_model(tiny_config(**fields))
    idx, targets = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    targets[0, :5] = -1  # ignored targets span a block boundary
    blockwise, blockwise_grads = _loss_and_grads(model, idx, targets, plain=False, calls=small_head_blocks)
    plain, plain_grads = _loss_and_grads(model, idx, targets, plain=True, calls=small_head_blocks)
    assert torch.allclose(blockwise, plain, rtol=1e-6, atol=0)
    largest = max(grad.abs().max() for grad in plain_grads.values())  # some true gradients are 0 (c_k's bias)
    for name, grad in plain_grads.items():
        assert (blockwise_grads[name] - grad).abs().max() <= 1e-5 * max(grad.abs().max(), 1e-3 * largest), name
    with torch.no_grad():  # evaluation with targets: the blockwise path without gradients
        assert torch.allclose(model(idx, targets), plain, rtol=1e-6, atol=0)
    assert len(small_head_blocks) == 2
    small = torch.randint(0, 97, (1, 7))  # one block's worth of rows: the plain path, bit for bit as traced
    model(small, small)
    assert len(small_head_blocks) == 2


def test_blockwise_head_loss_under_bf16_autocast_stays_close_to_the_plain_path(small_head_blocks):
    model = tiny_model()
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blockwise, blockwise_grads = _loss_and_grads(model, idx, targets, plain=False, calls=small_head_blocks)
        plain, plain_grads = _loss_and_grads(model, idx, targets, plain=True, calls=small_head_blocks)
    assert abs(blockwise.item() - plain.item()) < 1e-2 * plain.item()
    head = plain_grads["lm_head.weight"]
    assert (blockwise_grads["lm_head.weight"] - head).abs().max() < 0.05 * head.abs().max()
    assert blockwise_grads["lm_head.weight"].dtype == torch.float32


def test_a_built_model_does_not_import_the_compiler_stack():
    """Building on a real device allocates directly (materialising meta tensors imports sympy:
    0.3 s and 46 MB of a quickstart); building on meta still works and holds no memory."""
    code = ("import sys\nfrom glassgpt.model.gpt import GPT\nfrom glassgpt.model.config import GPTConfig\n"
            "GPT.build(GPTConfig.from_depth(2, 97, 'nanochat'))\n"
            "assert GPT.build(GPTConfig.from_depth(2, 97, 'nanochat'), 'meta').wte.weight.is_meta\n"
            "print('sympy' in sys.modules, 'torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]

SWITCHES = [
    dict(position="learned"), dict(position="none"), dict(norm="layer"), dict(norm="none"),
    dict(norm_placement="post"), dict(norm_affine=True), dict(activation="gelu"), dict(activation="relu"),
    dict(activation="silu"), dict(tie_embeddings=True), dict(softcap=None), dict(qk_norm=False),
    dict(n_kv_head=1), dict(n_kv_head=2), dict(causal=False), dict(residual=False),
    dict(attn_temperature=2.0), dict(bias=True), dict(dropout=0.1), dict(embed_norm=False),
    dict(zero_init_out=False), dict(family="gpt2"),
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_switch_builds_trains_and_changes_the_output(switch):
    reference = tiny_model(tiny_config(), seed=0)
    fields = dict(switch)
    family = fields.pop("family", "nanochat")
    model = tiny_model(tiny_config(family, **fields), seed=0)
    idx = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters()), "a parameter got no gradient"
    if set(switch) == {"zero_init_out"}:  # a switch of the initialisation: the weights differ
        assert not torch.allclose(GPT.build(model.config).blocks[0].mlp.c_proj.weight, torch.zeros(1))
        return
    # Give the switched model the reference's weights wherever the two have the same tensor, so
    # that only the switch itself can make the outputs differ (not a shifted random stream).
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if k in own and own[k].shape == v.shape},
                          strict=False)
    reference.eval()
    if set(switch) == {"dropout"}:  # dropout acts only in training mode
        model.train()
        assert not torch.allclose(model(idx), reference(idx)), "dropout 0.1 changed nothing in training"
        model.eval()
        assert torch.allclose(model(idx), reference(idx)), "dropout must be off at evaluation"
        return
    model.eval()
    assert not torch.allclose(model(idx), reference(idx)), f"{switch} changed nothing"


def test_tied_embeddings_share_one_matrix_counted_once():
    untied = tiny_config()
    tied = tiny_config(tie_embeddings=True)
    assert count_on_meta(untied) - count_on_meta(tied) == 97 * 32
    model = tiny_model(tied)
    assert model.lm_head is None and "lm_head.weight" not in model.state_dict()


def test_learned_positions_exist_only_when_chosen():
    assert tiny_model(tiny_config(position="learned")).wpe.weight.shape == (32, 32)
    assert tiny_model(tiny_config()).wpe is None


def test_causal_model_output_at_a_position_ignores_later_tokens():
    model = tiny_model().eval()
    idx = torch.randint(0, 97, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 97
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_non_causal_model_sees_the_future():
    model = tiny_model(tiny_config(causal=False)).eval()
    idx = torch.randint(0, 97, (1, 12))
    changed = idx.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 97
    assert not torch.allclose(model(idx)[:, 0], model(changed)[:, 0])


def test_rotary_scores_depend_only_on_relative_position():
    cos, sin = rotary_tables(64, 16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i: int, j: int) -> float:
        qi = apply_rotary(q, cos[i:i + 1], sin[i:i + 1])
        kj = apply_rotary(k, cos[j:j + 1], sin[j:j + 1])
        return (qi * kj).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_rotary_preserves_vector_length():
    cos, sin = rotary_tables(16, 8)
    x = torch.randn(2, 16, 3, 8)
    assert torch.allclose(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_grouped_query_attention_equals_full_attention_with_duplicated_kv_heads():
    gqa = tiny_model(tiny_config(n_kv_head=2)).eval()
    full = tiny_model(tiny_config(n_kv_head=4)).eval()
    state = dict(gqa.state_dict())
    for i in range(len(gqa.blocks)):
        for name in ("c_k", "c_v"):
            weight = state[f"blocks.{i}.attn.{name}.weight"]  # (Hkv * D, C)
            heads = weight.view(2, 8, 32).repeat_interleave(2, dim=0)  # query head h reads kv head h // 2
            state[f"blocks.{i}.attn.{name}.weight"] = heads.reshape(4 * 8, 32)
    full.load_state_dict(state)
    idx = torch.randint(0, 97, (2, 10))
    assert torch.allclose(gqa(idx), full(idx), atol=1e-5)


@pytest.mark.parametrize("fields", [{}, dict(n_kv_head=1), dict(causal=False), dict(attn_temperature=0.5)])
def test_explicit_attention_path_equals_scaled_dot_product_attention(fields):
    model = tiny_model(tiny_config(**fields)).eval()
    idx = torch.randint(0, 97, (2, 16))
    fast = model(idx)
    with taps.RecordingTracer("blocks.*.attn.pattern") as tracer:
        explicit = model(idx)
    assert "blocks.0.attn.pattern" in tracer.tensors, "the tracer did not switch to the explicit path"
    assert torch.allclose(explicit, fast, atol=1e-5)


def test_attention_rows_sum_to_one_and_respect_the_mask():
    model = tiny_model().eval()
    with taps.RecordingTracer("blocks.0.attn.pattern") as tracer:
        model(torch.randint(0, 97, (1, 9)))
    pattern = tracer.tensors["blocks.0.attn.pattern"]  # (B, H, T, T)
    assert torch.allclose(pattern.sum(-1), torch.ones(1, 4, 9), atol=1e-6)
    assert (pattern.triu(diagonal=1) == 0).all()


@pytest.mark.parametrize("static", [False, True], ids=["growing-cache", "static-cache"])
@pytest.mark.parametrize("fields", [{}, dict(family_gpt2=True), dict(n_kv_head=1)])
def test_cached_decoding_gives_the_same_logits_as_a_full_forward(fields, static):
    config = tiny_config("gpt2") if fields.pop("family_gpt2", False) else tiny_config(**fields)
    model = tiny_model(config).eval()
    idx = torch.randint(0, 97, (2, 20))
    full = model(idx)
    cache = KVCache(config, 2, config.sequence_len, "cpu", static=static)
    pieces = [model(idx[:, :7], kv_cache=cache)]  # prefill
    pieces += [model(idx[:, 7:12], kv_cache=cache)]  # a chunk with the cache already filled
    pieces += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(12, 20)]  # one token at a time
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    assert cache.pos == 20
    cache.reset()  # what the Engine does when its window slides: the old keys must not be seen
    assert torch.allclose(model(idx[:, 10:15], kv_cache=cache), model(idx[:, 10:15]), atol=1e-5)


def test_a_static_cache_keeps_its_shapes_and_says_which_slots_each_token_sees():
    config = tiny_config()
    cache = KVCache(config, 1, 8, "cpu", static=True)
    k = torch.ones(1, config.n_kv_head, 3, config.head_dim)
    keys, values, visible = cache.update(0, k, 2 * k)
    assert keys.shape == values.shape == (1, config.n_kv_head, 8, config.head_dim)  # every slot, always
    assert visible.tolist() == [[j <= i for j in range(8)] for i in range(3)]  # causal, unwritten hidden
    cache.advance(3)
    _, _, visible = cache.update(0, k[:, :, :1], k[:, :, :1])
    assert visible.tolist() == [[j <= 3 for j in range(8)]]
    assert torch.equal(values[:, :, :3], 2 * k)  # written where the positions said
    rows = cache.repeat(2)
    rows.advance(1)
    assert (rows.pos, cache.pos, rows.keys[0].shape[0]) == (4, 3, 2)  # a copy: advancing it leaves this one


def test_a_full_growing_cache_is_refused():
    config = tiny_config()
    cache = KVCache(config, 1, 4, "cpu")
    with pytest.raises(ValueError, match="KV cache full"):
        tiny_model(config)(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_sequence_longer_than_the_model_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds the model's sequence_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_taps_cost_nothing_and_change_nothing_without_a_tracer():
    model = tiny_model().eval()
    idx = torch.randint(0, 97, (2, 8))
    with taps.Tracer("embed.*"):  # watching taps (not attention internals) computes the same bits
        traced = model(idx)
    assert torch.equal(traced, model(idx))
    assert taps.active() is None


def test_the_softcap_squashes_the_same_in_place_without_autograd_and_leaves_traced_raw_logits_raw():
    model = tiny_model(tiny_config(softcap=0.5)).eval()  # a small cap: every logit is squashed
    idx = torch.randint(0, 97, (2, 8))
    with_autograd = model(idx)
    with torch.no_grad():
        without = model(idx)  # squashed in place
        with taps.RecordingTracer("lm_head.*") as tracer:  # not attention internals: their path differs in bits
            traced = model(idx)
    with torch.inference_mode():
        inference = model(idx)
    assert torch.equal(with_autograd, without) and torch.equal(without, traced) and torch.equal(without, inference)
    raw = tracer.tensors["lm_head.logits_raw"]
    assert raw.abs().max() > 0.5 and torch.equal(traced, 0.5 * torch.tanh(raw / 0.5))


def test_recording_tracer_sees_forward_and_gradients_in_order():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 8))
    with taps.RecordingTracer(grads=True) as tracer:
        model(idx, idx).backward()
    assert tracer.order[0] == "embed.tok" and tracer.order[-1] == "loss"
    assert "blocks.1.mlp.act" in tracer.grads and tracer.grads["blocks.1.mlp.act"].shape == (2, 8, 128)
    # the traced residual stream recomposes: mid = pre + attn.out, post = mid + mlp.out
    t = tracer.tensors
    assert torch.allclose(t["blocks.0.resid.mid"], t["blocks.0.resid.pre"] + t["blocks.0.attn.out"], atol=1e-6)
    assert torch.allclose(t["blocks.0.resid.post"], t["blocks.0.resid.mid"] + t["blocks.0.mlp.out"], atol=1e-6)


def test_tracers_do_not_nest():
    with taps.Tracer():
        with pytest.raises(RuntimeError, match="already active"):
            taps.Tracer().__enter__()
