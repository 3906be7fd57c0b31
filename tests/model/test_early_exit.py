"""The early-exit model: parity with HF, freeze semantics against a slow reference, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.tiny import build_tiny, build_tiny_gemma3_multimodal, left_padded_batch, tolerance
from thinkaloud.config import ExitConfig
from thinkaloud.model import arch
from thinkaloud.model.arch import UnsupportedModelError
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.exit_run import ExitHeads


def wrap(family: str, **cfg) -> EarlyExitModel:
    model = EarlyExitModel.from_base(build_tiny(family), ExitConfig(exit_every=2, **cfg))
    return model.eval()


def randomise_heads(model: EarlyExitModel, seed: int = 1, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.heads.weight.copy_(torch.randn(model.heads.weight.shape, generator=g) * scale)
        model.heads.bias.copy_(torch.randn(model.heads.bias.shape, generator=g))


def randomise_lora(model: EarlyExitModel, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_no_exit_logits_match_hf(family, padding):
    base = build_tiny(family)
    lengths = [9, 9, 9] if padding == "none" else [9, 5, 7]
    ids, mask = left_padded_batch(lengths)
    if padding == "right":
        ids, mask = ids.flip(1), mask.flip(1)
    with torch.no_grad():
        reference = base(input_ids=ids, attention_mask=mask).logits  # before LoRA is attached
    model = EarlyExitModel.from_base(base, ExitConfig(exit_every=2)).eval()
    with torch.no_grad():
        after_lora = base(input_ids=ids, attention_mask=mask).logits  # HF's own forward, LoRA attached
        ours = model(ids, mask, exit_layers=None, offset=-math.inf)
    valid, tol = mask.bool(), tolerance(family)
    torch.testing.assert_close(ours.logits[valid], reference[valid], atol=tol, rtol=tol)
    torch.testing.assert_close(after_lora[valid], reference[valid], atol=tol, rtol=tol)
    assert (ours.exit_layers == model.num_layers).all()
    assert torch.equal(ours.exit_logprobs, torch.zeros_like(ours.exit_logprobs))


def test_parity_with_trained_lora_follows_hf(family):
    """With non-zero LoRA weights our no-exit forward still equals the peft model's own forward."""
    model = wrap(family)
    randomise_lora(model)
    ids, mask = left_padded_batch([8, 6])
    with torch.no_grad():
        reference = model.peft(input_ids=ids, attention_mask=mask).logits
        ours = model(ids, mask, offset=-math.inf).logits
        base_only = build_tiny(family)(input_ids=ids, attention_mask=mask).logits
    tol = tolerance(family)
    torch.testing.assert_close(ours[mask.bool()], reference[mask.bool()], atol=tol, rtol=tol)
    assert not torch.allclose(ours[mask.bool()], base_only[mask.bool()], atol=1e-3)
    with torch.no_grad(), model.disable_adapter():
        disabled = model(ids, mask, offset=-math.inf).logits
    torch.testing.assert_close(disabled[mask.bool()], base_only[mask.bool()], atol=tol, rtol=tol)


# ------------------------------------------------------------------------- freeze semantics
def reference_forward(model: EarlyExitModel, ids: list[int], exits: list[int]) -> torch.Tensor:
    """Slow, independent freeze semantics: one token at a time, one layer at a time, explicit K/V and
    attention, each family's variant spelled out here (norms, fused projections, key norms, rotary
    bases and styles, NoPE layers, windows, score scaling and soft-capping, sinks, sandwich norms).

    ids: one unpadded row; exits[t]: exit layer of position t (L = none) → logits (T, V).
    """
    hf = model.base
    cfg = hf.config
    family, L = cfg.model_type, cfg.num_hidden_layers
    layers = arch.decoder_layers(hf)
    D = layers[0].self_attn.head_dim
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    rope = hf.model.rotary_emb
    layer_types = getattr(cfg, "layer_types", None) or ["full_attention"] * L
    every_layer_window = family in ("mistral", "phi3", "qwen3_moe")
    window = [cfg.sliding_window if every_layer_window or kind == "sliding_attention" else None for kind in layer_types]
    keys = [[] for _ in range(L)]
    values = [[] for _ in range(L)]

    def rotate(x, cos, sin):  # x (H, D); cos/sin (R,): the first R dims of each head rotate (R < D: Phi-3)
        if family == "gpt_oss":  # one frequency per pair (d, d + D/2)
            cos, sin = torch.cat([cos, cos]), torch.cat([sin, sin])
        R = cos.shape[-1]
        rot, rest = x[..., :R], x[..., R:]
        half = torch.cat([-rot[..., R // 2 :], rot[..., : R // 2]], dim=-1)
        return torch.cat([rot * cos + half * sin, rest], dim=-1)

    def rotary_at(t, i):  # layer i's (cos, sin) at position t
        args = (layer_types[i],) if family in ("gemma3_text", "olmo3") else ()  # a base per layer type
        cos, sin = rope(torch.zeros(1, 1, cfg.hidden_size), torch.tensor([[t]]), *args)
        return cos[0, 0], sin[0, 0]

    def qkv(attn, x):  # x (C,) → q (H, D), k, v (H_kv, D) before rotary
        if family == "phi3":
            q, k, v = attn.qkv_proj(x).split([n_q * D, n_kv * D, n_kv * D])
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        if family in ("olmo2", "olmo3"):  # norm over the whole projection
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.view(n_q, D), k.view(n_kv, D), v.view(n_kv, D)
        if family in ("qwen3", "qwen3_moe", "gemma3_text"):  # norm per head
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q, k, v

    out = []
    for t, token in enumerate(ids):
        h = hf.model.embed_tokens(torch.tensor([token]))[0]  # (C,), scaled by the module where the family scales
        for j, layer in enumerate(layers, start=1):
            i, attn = j - 1, layer.self_attn
            x = layer.input_layernorm(h) if hasattr(layer, "input_layernorm") else h  # OLMo: no input norm
            q, k, v = qkv(attn, x)
            cos, sin = rotary_at(t, i)
            rotates = not (family == "smollm3" and not cfg.no_rope_layers[i])  # SmolLM3's NoPE layers
            keys[i].append(rotate(k, cos, sin) if rotates else k)
            values[i].append(v)
            if exits[t] < j:  # frozen: K/V from the frozen state only, no attention, no MLP
                continue
            if rotates:
                q = rotate(q, cos, sin)  # (H, D)
            first = 0 if window[i] is None else max(0, t + 1 - window[i])
            K = torch.stack(keys[i][first:]).repeat_interleave(n_q // n_kv, dim=1)  # (t', H, D)
            V = torch.stack(values[i][first:]).repeat_interleave(n_q // n_kv, dim=1)
            scale = getattr(cfg, "query_pre_attn_scalar", None) or D
            scores = torch.einsum("hd,thd->ht", q, K) / math.sqrt(scale)  # (H, t')
            cap = getattr(cfg, "attn_logit_softcapping", None)
            if cap is not None:
                scores = torch.tanh(scores / cap) * cap
            if family == "gpt_oss":  # a sink logit per head joins the softmax, then is dropped
                probs = torch.cat([scores, attn.sinks[:, None]], dim=-1).softmax(-1)[:, :-1]
            else:
                probs = scores.softmax(-1)
            a = attn.o_proj(torch.einsum("ht,thd->hd", probs, V).reshape(-1))  # (C,)
            mlp = lambda y, block=layer.mlp: (lambda o: o[0] if isinstance(o, tuple) else o)(block(y[None, None]))[0, 0]
            if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma: norms before and after each block
                h = h + layer.post_attention_layernorm(a)
                h = h + layer.post_feedforward_layernorm(mlp(layer.pre_feedforward_layernorm(h)))
            elif not hasattr(layer, "input_layernorm"):  # OLMo: norms after each block
                h = h + layer.post_attention_layernorm(a)
                h = h + layer.post_feedforward_layernorm(mlp(h))
            else:
                h = h + a
                h = h + mlp(layer.post_attention_layernorm(h))
        logits = hf.lm_head(hf.model.norm(h))
        cap = getattr(cfg, "final_logit_softcapping", None)
        out.append(logits if cap is None else torch.tanh(logits / cap) * cap)
    return torch.stack(out)


def test_prescribed_exits_match_slow_reference(family):
    model = wrap(family)
    randomise_lora(model)
    randomise_heads(model)
    L = model.num_layers  # 6, exit layers 2 and 4
    ids, mask = left_padded_batch([7, 5], seed=3)
    exits = torch.tensor([[L, 2, 4, 2, L, 4, 2], [L, L, 2, 2, 4, L, 4]])  # earlier neighbours exit before later tokens
    exits = torch.where(mask.bool(), exits, L)
    with torch.no_grad():
        ours = model(ids, mask, exit_layers=exits)
        for b in range(2):
            valid = mask[b].bool()
            ref = reference_forward(model, ids[b][valid].tolist(), exits[b][valid].tolist())
            torch.testing.assert_close(ours.logits[b][valid], ref, atol=1e-5, rtol=1e-4)
    assert torch.equal(ours.exit_layers, exits)


def test_exit_logprobs_are_stick_breaking_of_heads(family):
    model = wrap(family)
    randomise_heads(model, scale=3.0)
    ids, mask = left_padded_batch([6, 6], seed=4)
    L = model.num_layers
    exits = torch.tensor([[2, 4, L, 2, 4, L], [L, 4, 2, L, 2, 4]])
    with torch.no_grad():
        full = model.exit_logprobs(ids, mask)  # (B, T, m+1), context without exits
        assert torch.allclose(full.exp().sum(-1), torch.ones(2, 6), atol=1e-6)
        # A position's own exit distribution depends only on its context; with no exits before
        # position 0 of each row, the prescribed pass must agree with the full distribution there.
        out = model(ids, mask, exit_layers=exits)
        idx = {2: 0, 4: 1, L: 2}
        for b in range(2):
            col = idx[int(exits[b, 0])]
            assert torch.allclose(out.exit_logprobs[b, 0], full[b, 0, col], atol=1e-6)
        # No exits anywhere: every position's log P(no exit) equals the last column.
        none = model(ids, mask, exit_layers=None)
        torch.testing.assert_close(none.exit_logprobs, full[..., -1], atol=1e-6, rtol=1e-6)


def test_sampled_exits_are_reproduced_when_prescribed(family):
    model = wrap(family)
    randomise_heads(model, scale=0.1)  # small weights whatever the family's stream scale: q ≈ 1/2
    with torch.no_grad():
        model.heads.bias.fill_(0.0)  # many exits at every layer
    ids, mask = left_padded_batch([8, 5, 6], seed=5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sampled = model(ids, mask, exit_layers="sample", generator=g)
        again = model(ids, mask, exit_layers=sampled.exit_layers)
    assert set(sampled.exit_layers[mask.bool()].tolist()) >= {2, 4}
    torch.testing.assert_close(again.logits, sampled.logits)
    torch.testing.assert_close(again.exit_logprobs, sampled.exit_logprobs)


def test_offset_limits_have_no_nans():
    model = wrap("llama")
    randomise_heads(model)
    ids, mask = left_padded_batch([5, 4])
    with torch.no_grad():
        low = model.exit_logprobs(ids, mask, offset=-math.inf)
        high = model.exit_logprobs(ids, mask, offset=math.inf)
        big = model.exit_logprobs(ids, mask, offset=1e4)
        always = model(ids, mask, exit_layers="sample", offset=math.inf)
    for x in (low, high, big):
        assert not torch.isnan(x).any()
        assert torch.allclose(x.exp().sum(-1), torch.ones(2, 5))
    assert torch.equal(low.exp()[..., -1], torch.ones(2, 5))  # never exit
    assert torch.equal(high.exp()[..., 0], torch.ones(2, 5))  # always exit at the first layer
    assert (always.exit_layers[mask.bool()] == model.layers[0]).all()
    assert torch.equal(always.exit_logprobs, torch.zeros(2, 5))


# ------------------------------------------------------------------ where exits may happen
def half_heads(model: EarlyExitModel) -> EarlyExitModel:
    """Exit heads with q = 1/2 at every exit layer: every live position has a log-probability < 0."""
    with torch.no_grad():
        model.heads.weight.zero_()
        model.heads.bias.zero_()
    return model


def test_exits_from_confines_sampled_exits():
    model = half_heads(wrap("llama"))
    ids, mask = left_padded_batch([8, 5, 6], seed=5)
    L, valid = model.num_layers, mask.bool()
    with torch.no_grad():
        always = model(ids, mask, exit_layers="sample", offset=math.inf, exits_from=5)
        anywhere = model(ids, mask, exit_layers="sample", offset=math.inf)  # default: every real position
        sampled = model(ids, mask, exit_layers="sample", generator=torch.Generator().manual_seed(0), exits_from=5)
        per_row = model(
            ids,
            mask,
            exit_layers="sample",
            generator=torch.Generator().manual_seed(1),
            exits_from=torch.tensor([2, 7, 8]),
        )
    assert (always.exit_layers[:, :5] == L).all() and (always.exit_layers[:, 5:] == model.layers[0]).all()
    assert (anywhere.exit_layers[valid] == model.layers[0]).all()
    # before exits_from: no exit and exactly 0 log-probability; from it on: exits drawn with q = 1/2
    assert (sampled.exit_layers[:, :5] == L).all() and torch.equal(sampled.exit_logprobs[:, :5], torch.zeros(3, 5))
    assert (sampled.exit_logprobs[:, 5:] < 0).all()
    inside = valid & (torch.arange(8)[None, :] >= torch.tensor([2, 7, 8])[:, None])  # (B, T)
    assert (per_row.exit_layers[~inside] == L).all() and (per_row.exit_logprobs[~inside] == 0).all()
    assert (per_row.exit_logprobs[inside] < 0).all() and not inside[2].any()


def test_exits_from_puts_exit_logprobs_where_generation_does():
    """exits_from = P - 1: the teacher-forced exit log-probabilities of a rollout are those generation
    recorded, at the same positions, and the prompt positions before contribute nothing."""
    model = half_heads(wrap("qwen2"))
    ids, mask = left_padded_batch([6, 4], seed=3)
    out = model.generate(ids, mask, max_new_tokens=5, seed=0, stop_token_ids=[])
    P = out.prompt_length
    with torch.no_grad():
        full = model(out.sequences, out.attention_mask, exit_layers=out.full_exit_layers(), exits_from=P - 1)
    torch.testing.assert_close(full.exit_logprobs[:, out.predicting_positions()], out.exit_logprobs)
    assert torch.equal(full.exit_logprobs[:, : P - 1], torch.zeros(2, P - 1))
    with torch.no_grad():  # without exits_from the real prompt positions carry log P(no exit) < 0
        default = model(out.sequences, out.attention_mask, exit_layers=out.full_exit_layers())
    prompt = out.attention_mask[:, : P - 1].bool()  # (B, P-1)
    assert (default.exit_logprobs[:, : P - 1][prompt] < 0).all()


def test_exits_from_bad_values_raise():
    model = wrap("llama")
    ids, mask = left_padded_batch([5, 5])
    exits = torch.full_like(ids, model.num_layers)
    exits[:, 1] = 2
    with pytest.raises(ValueError, match="before exits_from"):
        model(ids, mask, exit_layers=exits, exits_from=3)
    for bad in (-1, 6, 1.5, torch.tensor([1]), torch.tensor([1.0, 2.0])):
        with pytest.raises(ValueError, match="exits_from"):
            model(ids, mask, exit_layers="sample", exits_from=bad)


# ----------------------------------------------------------------------------- fp32 exit heads
def test_exit_heads_stay_float32_under_bf16_autocast():
    heads = ExitHeads(64, [2, 4])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        heads.weight.copy_(torch.randn(2, 64, generator=g))
        heads.bias.fill_(0.3)
    hidden = torch.randn(3, 5, 64, generator=g) * 10  # (B, T, C)
    with torch.no_grad():
        exact = hidden @ heads.weight[1] + heads.bias[1]  # fp32, outside autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = heads(hidden, 1)
            z_bf16_input = heads(hidden.bfloat16(), 1)  # a bf16 model's hidden state
            plain = hidden @ heads.weight[1] + heads.bias[1]  # what autocast makes of an unguarded readout
    assert z.dtype == z_bf16_input.dtype == torch.float32
    torch.testing.assert_close(z, exact, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(z_bf16_input, hidden.bfloat16().float() @ heads.weight[1] + 0.3, atol=1e-5, rtol=1e-6)
    assert plain.dtype == torch.bfloat16 and (plain.float() - exact).abs().max() > 1e-2  # bf16 would differ


def test_bad_inputs_raise():
    model = wrap("llama")
    ids, mask = left_padded_batch([4])
    with pytest.raises(ValueError, match="not exit layers"):
        model(ids, mask, exit_layers=torch.full_like(ids, 3))
    with pytest.raises(ValueError, match="shape"):
        model(ids, mask, exit_layers=torch.full((1, 2), 6))
    with pytest.raises(ValueError, match="empty"):
        model(ids[:, :0])
    with pytest.raises(ValueError, match="1..5"):
        EarlyExitModel.from_base(build_tiny("llama"), ExitConfig(exit_layers=[2, 6]))


def test_unsupported_family_names_supported_ones():
    from transformers import AutoModelForCausalLM, GPT2Config

    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(
        UnsupportedModelError,
        match="llama, qwen2, qwen3, mistral, phi3, gemma2, gemma3_text, olmo2, "
        "olmo3, qwen3_moe, smollm3, gpt_oss .and gemma3 through its text",
    ):
        EarlyExitModel.from_base(gpt2)


def test_a_module_that_is_not_a_transformers_model_is_refused():
    """from_base and the arch accessors take a transformers PreTrainedModel (peft-wrapped or not) and say
    so for anything else, instead of failing on a missing attribute."""
    with pytest.raises(TypeError, match="PreTrainedModel.*got a Linear"):
        EarlyExitModel.from_base(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="PreTrainedModel.*got Linear"):
        arch.decoder_layers(torch.nn.Linear(4, 4))
    base = build_tiny("llama")
    base.model.norm = torch.nn.Parameter(torch.ones(4))  # not a module where the family has its final norm
    with pytest.raises(TypeError, match="LlamaModel.norm is a Parameter, not a Module"):
        arch.final_norm(base)


def test_multimodal_gemma3_is_used_through_its_text_model():
    """A Gemma 3 checkpoint with a vision tower: wrapped through its text model (the same modules), with
    the multimodal model's own logits (its head does not soft-cap) and its own greedy generation."""
    multimodal = build_tiny_gemma3_multimodal()
    assert arch.check_supported(multimodal.config) == "gemma3_text"
    ids, mask = left_padded_batch([9, 5, 7])
    with torch.no_grad():
        reference = multimodal(input_ids=ids, attention_mask=mask).logits
    model = EarlyExitModel.from_base(multimodal, ExitConfig(exit_every=2)).eval()
    assert model.base.model is multimodal.model.language_model and model.base.lm_head is multimodal.lm_head
    with torch.no_grad():
        ours = model(ids, mask, offset=-math.inf).logits
    torch.testing.assert_close(ours[mask.bool()], reference[mask.bool()], atol=1e-5, rtol=1e-5)
    out = model.generate(ids, mask, max_new_tokens=8, do_sample=False, offset=-math.inf)
    hf = multimodal.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=2
    )
    assert torch.equal(out.sequences, hf)


def test_bidirectional_gemma3_is_refused():
    from tests.tiny import tiny_config

    config = tiny_config("gemma3_text")
    config.use_bidirectional_attention = True
    with pytest.raises(UnsupportedModelError, match="bidirectional"):
        arch.check_supported(config)


def test_lora_targets_follow_the_family():
    """Phi-3's fused qkv_proj stands in for q/k/v_proj; other families keep the names."""
    for family, expected in (("phi3", {"qkv_proj", "o_proj"}), ("gemma2", {"q_proj", "k_proj", "v_proj", "o_proj"})):
        model = wrap(family)
        names = [name for name, _ in model.peft.named_parameters() if ".lora_A." in name]
        wrapped = {name.split(".lora_A.")[0].split(".")[-1] for name in names}
        assert wrapped == expected, (family, wrapped)


def test_default_exit_layers():
    assert ExitConfig().resolve_layers(30) == [5, 10, 15, 20, 25]
    assert ExitConfig().resolve_layers(28) == [5, 10, 15, 20, 25]
    assert ExitConfig(exit_every=4).resolve_layers(12) == [4, 8]


# --------------------------------------------------------------------------------- layer KL
def test_layer_kl_matches_direct_computation(family):
    """p_L is HF's own output distribution and the lens reads out as the model does (final norm,
    unembedding, logit soft-capping): the KL of the last layer's state is 0."""
    model = wrap(family)
    ids, mask = left_padded_batch([6, 4], seed=6)
    valid = mask.bool()
    with torch.no_grad():
        kl = model.layer_kl(ids, mask, chunk_size=3)  # chunks smaller than the number of positions
        out = model.base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        _, last = model.exit_states(ids, mask)  # the last layer's state, before the final norm
    p_final = F.log_softmax(out.logits, -1)
    cap = getattr(model.hf_config, "final_logit_softcapping", None)

    def lens(h):  # written out: final norm, unembedding, soft-capping
        z = model.base.lm_head(model.base.model.norm(h))
        return F.log_softmax(z if cap is None else torch.tanh(z / cap) * cap, -1)

    def kl_from(logp):
        return (p_final.exp() * (p_final - logp)).sum(-1)

    assert torch.isnan(kl[~valid]).all()
    assert kl_from(lens(last))[valid].abs().max() < 1e-6  # layer L
    for k, e in enumerate(model.layers):
        torch.testing.assert_close(kl[..., k][valid], kl_from(lens(out.hidden_states[e]))[valid], atol=1e-5, rtol=1e-4)
    assert (kl[valid] >= -1e-6).all()


# ------------------------------------------------------------------------------ save / load
def test_save_and_load_roundtrip(tmp_path):
    model = wrap("llama")
    randomise_heads(model)
    randomise_lora(model)
    ids, mask = left_padded_batch([5, 3])
    with torch.no_grad():
        before = model(ids, mask, exit_layers=torch.tensor([[6, 2, 4, 6, 2], [6, 6, 2, 4, 6]]))
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "exit_heads.safetensors").exists()
    assert (tmp_path / "ckpt" / "adapter" / "adapter_config.json").exists()
    loaded = EarlyExitModel.from_pretrained(tmp_path / "ckpt", base=build_tiny("llama")).eval()
    with torch.no_grad():
        after = loaded(ids, mask, exit_layers=before.exit_layers)
    torch.testing.assert_close(after.logits, before.logits)
    torch.testing.assert_close(after.exit_logprobs, before.exit_logprobs)


def test_loading_onto_another_base_is_refused(tmp_path):
    model = wrap("llama")
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="trained on base model"):
        EarlyExitModel.from_pretrained(tmp_path / "ckpt", base=build_tiny("llama", seed=7))
