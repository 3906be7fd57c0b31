"""Generation: parity with HF generate, teacher-forcing consistency, real skipping, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tiny import MOE_FAMILIES, build_tiny, left_padded_batch
from thinkaloud.config import ExitConfig
from thinkaloud.model import arch
from thinkaloud.model.early_exit import EarlyExitModel


def wrap(family: str) -> EarlyExitModel:
    return EarlyExitModel.from_base(build_tiny(family), ExitConfig(exit_every=2)).eval()


@pytest.mark.parametrize("lengths", [[7], [7, 3, 5, 6]])
def test_greedy_without_exits_matches_hf_generate(family, lengths):
    model = wrap(family)
    ids, mask = left_padded_batch(lengths, seed=11)
    ours = model.generate(ids, mask, max_new_tokens=12, do_sample=False, offset=-math.inf)
    hf = model.base.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=2
    )
    assert torch.equal(ours.sequences, hf)
    assert (ours.exit_layers == model.num_layers).all()
    assert torch.equal(ours.exit_logprobs, torch.zeros_like(ours.exit_logprobs))


def test_sliding_window_generation_matches_hf():
    from transformers import AutoModelForCausalLM

    from tests.tiny import tiny_config

    config = tiny_config("mistral")
    config.sliding_window = 4  # much shorter than prompt + generation
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).eval()
    model = EarlyExitModel.from_base(base, ExitConfig(exit_every=2)).eval()
    ids, mask = left_padded_batch([9, 6], seed=13)
    ours = model.generate(ids, mask, max_new_tokens=10, do_sample=False, offset=-math.inf)
    hf = base.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=2
    )
    assert torch.equal(ours.sequences, hf)
    with torch.no_grad():
        full = model(ours.sequences, ours.attention_mask, offset=-math.inf).logits
    logp = torch.log_softmax(full[:, ours.predicting_positions()], -1).gather(-1, ours.new_tokens[..., None])
    done = ours.completion_mask
    torch.testing.assert_close(logp.squeeze(-1)[done], ours.token_logprobs[done], atol=1e-4, rtol=0)


def tf_logprobs(model, out):
    """Teacher-forced token and exit log-probabilities at the positions that predicted new tokens."""
    full = model(out.sequences, out.attention_mask, exit_layers=out.full_exit_layers())
    pos = out.predicting_positions()
    logp = torch.log_softmax(full.logits[:, pos].float(), -1)  # (B, N, V)
    token = logp.gather(-1, out.new_tokens[..., None]).squeeze(-1)
    return token, full.exit_logprobs[:, pos]


def test_sampled_generation_is_reproduced_by_teacher_forcing(family):
    model = wrap(family)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # heads that exit often, at different layers; a non-trivial adapter
        model.heads.weight.copy_(torch.randn(model.heads.weight.shape, generator=g))
        model.heads.bias.fill_(-0.5)
        for name, p in model.peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    ids, mask = left_padded_batch([9, 2, 6, 4, 8], seed=12)
    stops = list(range(3, 13))  # frequent stop tokens: rows finish at different steps
    out = model.generate(ids, mask, max_new_tokens=16, do_sample=True, seed=3, stop_token_ids=stops)
    assert len(set(out.lengths.tolist())) > 1, "rows should finish independently"
    done = out.completion_mask
    assert len(set(out.exit_layers[done].tolist())) >= 3, "exits at several layers expected"
    with torch.no_grad():
        token, exit_lp = tf_logprobs(model, out)
    torch.testing.assert_close(token[done], out.token_logprobs[done], atol=1e-4, rtol=0)
    torch.testing.assert_close(exit_lp[done], out.exit_logprobs[done], atol=1e-4, rtol=0)
    # After a row's stop token nothing follows.
    assert (out.sequences[:, out.prompt_length :][~done] == 0).all()


def test_seed_makes_generation_reproducible():
    model = wrap("qwen3")
    with torch.no_grad():
        model.heads.bias.fill_(-1.0)
    ids, mask = left_padded_batch([5, 3], seed=2)
    a = model.generate(ids, mask, max_new_tokens=8, seed=5)
    b = model.generate(ids, mask, max_new_tokens=8, seed=5)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.exit_layers, b.exit_layers)


def counted_parts(layer) -> dict[str, torch.nn.Module]:
    """Attention, MLP and, in mixture-of-experts layers, the router and the experts."""
    parts = {"attention": layer.self_attn, "mlp": layer.mlp}
    for name in ("gate", "router", "experts"):
        if isinstance(getattr(layer.mlp, name, None), torch.nn.Module):
            parts[name] = getattr(layer.mlp, name)
    return parts


def test_exited_rows_run_nothing_above_their_exit(family):
    """Every token that each attention, MLP, router and expert module processes is counted: above a row's
    exit layer none of that row's tokens reaches them."""
    model = wrap(family)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # heads that exit often, at both exit layers
        model.heads.weight.copy_(torch.randn(model.heads.weight.shape, generator=g) * 0.1)
        model.heads.bias.copy_(torch.tensor([-0.5, 0.5]))
    tokens, hooks = {}, []
    for j, layer in enumerate(arch.decoder_layers(model.peft), start=1):
        for part, module in counted_parts(layer).items():
            tokens[j, part] = 0

            def count(module, args, kwargs, key=(j, part)):
                x = args[0] if args else kwargs["hidden_states"]
                tokens[key] += x.numel() // x.shape[-1]

            hooks.append(module.register_forward_pre_hook(count, with_kwargs=True))
    ids, mask = left_padded_batch([5, 3, 4], seed=1)
    out = model.generate(ids, mask, max_new_tokens=6, seed=2, stop_token_ids=[])
    for h in hooks:
        h.remove()
    assert {2, 4, model.num_layers} <= set(out.exit_layers.flatten().tolist()), "mixed exits expected"
    if family in MOE_FAMILIES:
        assert any(part == "experts" for _, part in tokens)
    prefill = ids.shape[0] * (ids.shape[1] - 1)  # every prompt position but the last runs every layer
    for (j, part), n in tokens.items():  # decode: a row's token reaches layer j iff it exits at j or above
        assert n == prefill + int((out.exit_layers >= j).sum()), (j, part, n)


def test_bad_generation_input():
    model = wrap("llama")
    ids, mask = left_padded_batch([4, 3])
    with pytest.raises(ValueError, match="empty"):
        model.generate(ids[:, :0], mask[:, :0], max_new_tokens=4)
    with pytest.raises(ValueError, match="empty prompt"):
        model.generate(ids, torch.cat([mask[:1], torch.zeros_like(mask[:1])]), max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, mask, max_new_tokens=0)
    long_ids = torch.randint(3, 90, (1, 120))
    with pytest.raises(ValueError, match="context"):
        model.generate(long_ids, max_new_tokens=20)
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(ids.flip(1), mask.flip(1), max_new_tokens=2)


@pytest.mark.parametrize("lengths", [[1], [6, 3]])
def test_prefill_and_decode_times_are_recorded(lengths):
    import time

    model = wrap("llama")
    ids, mask = left_padded_batch(lengths, seed=4)
    t0 = time.perf_counter()
    out = model.generate(ids, mask, max_new_tokens=6, do_sample=False, stop_token_ids=[])
    total = time.perf_counter() - t0
    assert out.prefill_seconds > 0 and out.decode_seconds > 0
    assert out.prefill_seconds + out.decode_seconds <= total
    assert out.decode_tokens == len(lengths) * 5  # every row's tokens after its first


def test_stop_when_ends_the_rows_it_names_and_changes_nothing_else():
    model = wrap("llama")
    ids, mask = left_padded_batch([7, 3, 5, 6, 4], seed=11)
    kw = dict(max_new_tokens=8, do_sample=False, offset=-math.inf, stop_token_ids=[])  # no random draws
    free = model.generate(ids, mask, **kw)
    calls = []

    def stop_when(rows, tokens):  # (b,), (b, n): row 1 after 2 tokens, row 2 after 5
        calls.append(rows.tolist())
        assert torch.equal(tokens, free.new_tokens[rows, : tokens.shape[1]])
        return ((rows == 1) & (tokens.shape[1] >= 2)) | ((rows == 2) & (tokens.shape[1] >= 5))

    out = model.generate(ids, mask, stop_when=stop_when, **kw)
    assert out.lengths.tolist() == [8, 2, 5, 8, 8]
    # row 1 rides along unrecorded (4 of 5 rows still going); row 2's end compacts the batch (3 of 5)
    assert calls[:2] == [[0, 1, 2, 3, 4]] * 2 and calls[2] == [0, 2, 3, 4] and calls[5] == [0, 3, 4]
    for b, n in enumerate(out.lengths.tolist()):
        assert torch.equal(out.new_tokens[b, :n], free.new_tokens[b, :n])
        assert (out.new_tokens[b, n:] == 0).all() and (out.exit_layers[b, n:] == model.num_layers).all()
