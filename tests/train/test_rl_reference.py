"""The RL reference is the base model (adapter disabled, no exits), checked against a fresh HF model,
so the KL penalty measures how far the adapter has moved the policy and not the policy against itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.moved import moved_model, peaked_base
from tests.tiny import left_padded_batch, tolerance
from thinkaloud.train.rloo import kl_estimate
from thinkaloud.train.rollouts import reference_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")


def rollouts(model, offset: float = 0.0):
    ids, mask = left_padded_batch([7, 3, 5, 6], seed=4)
    return model.generate(ids, mask, max_new_tokens=10, offset=offset, seed=0, stop_token_ids=[])


def base_logprobs(out, family: str = "llama") -> torch.Tensor:
    """(B, N) log p of the generated tokens under a fresh copy of the base model (HF forward)."""
    position_ids = (out.attention_mask.cumsum(-1) - 1).clamp_min(0)  # as HF generate, for left padding
    with torch.no_grad():
        logits = peaked_base(family)(
            input_ids=out.sequences, attention_mask=out.attention_mask, position_ids=position_ids
        ).logits
    logp = F.log_softmax(logits[:, out.predicting_positions()].float(), -1)
    return logp.gather(-1, out.new_tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_reference_is_the_base_model_whatever_the_adapter_and_exits(family):
    model = moved_model(family)
    out = rollouts(model)
    done = out.completion_mask
    assert len(set(out.exit_layers[done].tolist())) == 3, "the rollouts should exit at 2, at 4 and not at all"
    ref = reference_logprobs(model, out)
    torch.testing.assert_close(ref[done], base_logprobs(out, family)[done], atol=1e-4, rtol=0)
    with torch.no_grad():  # the adapter-on, no-exit distribution is far from it: the check has teeth
        adapted = model(out.sequences, out.attention_mask, offset=-math.inf).logits[:, out.predicting_positions()]
    adapted = F.log_softmax(adapted.float(), -1).gather(-1, out.new_tokens[..., None]).squeeze(-1)
    assert (adapted - ref)[done].abs().max() > 0.1


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_prompt_shared_by_its_rows_is_read_once(family, monkeypatch):
    """K completions of each prompt (prompt-major): the grouped reference equals the whole pass, and runs the
    prompts' columns once per prompt, not once per row."""
    model = moved_model(family)
    ids, mask = left_padded_batch([7, 3], seed=4)
    K = 3
    out = model.generate(ids.repeat_interleave(K, 0), mask.repeat_interleave(K, 0), max_new_tokens=6, seed=0)
    whole = reference_logprobs(model, out)
    rows = []
    prefix_cache = model.prefix_cache
    monkeypatch.setattr(model, "prefix_cache", lambda i, m: rows.append(i.shape[0]) or prefix_cache(i, m))
    grouped = reference_logprobs(model, out, group=K)
    assert rows == [2]
    done = out.completion_mask
    torch.testing.assert_close(grouped[done], whole[done], atol=tolerance(family), rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_rollouts_of_a_shared_prompt_read_it_once_and_sample_the_same(family, monkeypatch):
    """K completions per prompt: with ``group=K`` the prompts are read once each, and the same seed samples the
    same tokens and exits as from the whole prompts, with the same log-probabilities."""
    from thinkaloud.data.env import Prompt
    from thinkaloud.model import generate as generate_module
    from thinkaloud.train import rollouts as rollouts_module

    model = moved_model(family)
    K = 3
    prompts = [Prompt(list(range(5, 12))), Prompt(list(range(20, 24)))]
    rows = [p for p in prompts for _ in range(K)]

    class Env:
        pad_token_id, stop_token_ids = 0, []

    def sample(group):
        return rollouts_module.sample_rollouts(
            model, rows, Env(), max_new_tokens=8, offset=0.0, generator=torch.Generator().manual_seed(3), group=group
        )

    whole = sample(1)
    read = []
    prefill = generate_module.prefill
    monkeypatch.setattr(rollouts_module, "prefill", lambda m, i, mask: read.append(i.shape) or prefill(m, i, mask))
    shared = sample(K)
    assert read == [(2, 6)]  # two prompts, padded to 7 tokens, less the last
    assert torch.equal(shared.sequences, whole.sequences) and shared.prompt_length == whole.prompt_length
    assert torch.equal(shared.attention_mask, whole.attention_mask)
    assert torch.equal(shared.exit_layers, whole.exit_layers) and (whole.exit_layers < model.num_layers).any()
    torch.testing.assert_close(shared.token_logprobs, whole.token_logprobs, atol=tolerance(family), rtol=1e-5)


def test_kl_penalty_grows_with_the_adapter_and_vanishes_without_it():
    """No exits (heads at z = −30), so the only difference between policy and reference is the adapter."""
    kls = []
    for lora_scale in (0.0, 0.2):
        model = moved_model(lora_scale=lora_scale, head_scale=0.0, head_bias=-30.0)
        out = rollouts(model)
        assert (out.exit_layers[out.completion_mask] == model.num_layers).all()
        kls.append(kl_estimate(out.token_logprobs, reference_logprobs(model, out), out.completion_mask))
    assert kls[0].abs().max() < 1e-5  # B = 0: the adapter is the identity
    assert kls[1].min() > 1.0, kls[1]  # a moved adapter: a clearly positive KL estimate in every row
