"""The early-exit model: parity with HF, freeze semantics against a slow reference, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.tiny import build_tiny, left_padded_batch
from thinkaloud import EarlyExitModel, ExitConfig
from thinkaloud.model import arch
from thinkaloud.model.arch import UnsupportedModelError
from thinkaloud.model.early_exit import ExitHeads


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
    valid = mask.bool()
    torch.testing.assert_close(ours.logits[valid], reference[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after_lora[valid], reference[valid], atol=1e-5, rtol=1e-5)
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
    torch.testing.assert_close(ours[mask.bool()], reference[mask.bool()], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[mask.bool()], base_only[mask.bool()], atol=1e-3)
    with torch.no_grad(), model.disable_adapter():
        disabled = model(ids, mask, offset=-math.inf).logits
    torch.testing.assert_close(disabled[mask.bool()], base_only[mask.bool()], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- freeze semantics
def reference_forward(model: EarlyExitModel, ids: list[int], exits: list[int]) -> torch.Tensor:
    """Slow, independent freeze semantics: one token at a time, one layer at a time, explicit K/V.

    ids: one unpadded row; exits[t]: exit layer of position t (L = none) → logits (T, V).
    """
    hf = model.base
    cfg = hf.config
    L = cfg.num_hidden_layers
    layers = arch.decoder_layers(hf)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
    rope = arch.rotary(hf)
    keys = [[] for _ in range(L)]
    values = [[] for _ in range(L)]

    def rotate(x, cos, sin):  # x (H, D)
        x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    out = []
    for t, token in enumerate(ids):
        h = arch.embed(hf)(torch.tensor([token]))[0]  # (C,)
        cos, sin = rope(h[None, None], torch.tensor([[t]]))
        cos, sin = cos[0, 0], sin[0, 0]  # (D,)
        for j, layer in enumerate(layers, start=1):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            k = attn.k_proj(x).view(-1, head_dim)
            v = attn.v_proj(x).view(-1, head_dim)
            if hasattr(attn, "k_norm"):
                k = attn.k_norm(k)
            keys[j - 1].append(rotate(k, cos, sin))
            values[j - 1].append(v)
            if exits[t] < j:  # frozen: K/V from the frozen state only, no attention, no MLP
                continue
            q = attn.q_proj(x).view(-1, head_dim)
            if hasattr(attn, "q_norm"):
                q = attn.q_norm(q)
            q = rotate(q, cos, sin)  # (H, D)
            K = torch.stack(keys[j - 1]).repeat_interleave(n_rep, dim=1)  # (t+1, H, D)
            V = torch.stack(values[j - 1]).repeat_interleave(n_rep, dim=1)
            scores = torch.einsum("hd,thd->ht", q, K) / math.sqrt(head_dim)
            a = torch.einsum("ht,thd->hd", scores.softmax(-1), V).reshape(-1)
            h = h + attn.o_proj(a)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        out.append(arch.unembed(hf)(arch.final_norm(hf)(h)))
    return torch.stack(out)


def test_prescribed_exits_match_slow_reference(family):
    model = wrap(family)
    randomise_lora(model)
    randomise_heads(model)
    L = model.num_layers  # 6, exit layers 2 and 4
    ids, mask = left_padded_batch([7, 5], seed=3)
    exits = torch.tensor([[L, 2, 4, 2, L, 4, 2],
                          [L, L, 2, 2, 4, L, 4]])  # earlier neighbours exit before later tokens
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
    randomise_heads(model)
    with torch.no_grad():
        model.heads.bias.fill_(0.0)  # q ≈ 1/2: many exits at every layer
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
        per_row = model(ids, mask, exit_layers="sample", generator=torch.Generator().manual_seed(1),
                        exits_from=torch.tensor([2, 7, 8]))
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
    assert torch.equal(full.exit_logprobs[:, :P - 1], torch.zeros(2, P - 1))
    with torch.no_grad():  # without exits_from the real prompt positions carry log P(no exit) < 0
        default = model(out.sequences, out.attention_mask, exit_layers=out.full_exit_layers())
    prompt = out.attention_mask[:, :P - 1].bool()  # (B, P-1)
    assert (default.exit_logprobs[:, :P - 1][prompt] < 0).all()


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
    with pytest.raises(UnsupportedModelError, match="llama, qwen2, qwen3, mistral"):
        EarlyExitModel.from_base(gpt2)


def test_default_exit_layers():
    assert ExitConfig().resolve_layers(30) == [5, 10, 15, 20, 25]
    assert ExitConfig().resolve_layers(28) == [5, 10, 15, 20, 25]
    assert ExitConfig(exit_every=4).resolve_layers(12) == [4, 8]


# --------------------------------------------------------------------------------- layer KL
def test_layer_kl_matches_direct_computation():
    model = wrap("qwen2")
    ids, mask = left_padded_batch([6, 4], seed=6)
    with torch.no_grad():
        kl = model.layer_kl(ids, mask, chunk_size=3)  # chunks smaller than the number of positions
        out = model.base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    p_final = F.log_softmax(out.logits, -1)
    norm, head = arch.final_norm(model.base), arch.unembed(model.base)
    assert torch.isnan(kl[~mask.bool()]).all()
    for k, e in enumerate(model.layers):
        logp = F.log_softmax(head(norm(out.hidden_states[e])), -1)
        expected = (p_final.exp() * (p_final - logp)).sum(-1)
        torch.testing.assert_close(kl[..., k][mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-4)
    assert (kl[mask.bool()] >= -1e-6).all()


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
