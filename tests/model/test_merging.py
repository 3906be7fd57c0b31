"""Generation with the LoRA adapter merged into the weights: the same function, and the base restored exactly."""

from __future__ import annotations

import pytest
import torch

from tests.moved import moved_model
from tests.tiny import FAMILIES, tolerance
from thinkaloud.model.merging import merged_adapter

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_adapter_gives_the_same_logits_and_restores_the_base_bit_for_bit(family):
    model = moved_model(family)  # a trained-looking adapter: B != 0
    ids = torch.randint(3, model.hf_config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    adapter_on = model(ids).logits
    with model.disable_adapter():
        adapter_off = model(ids).logits
    assert not torch.allclose(adapter_on, adapter_off, atol=1e-3)  # the adapter changes the function
    with merged_adapter(model.peft) as merged:
        assert merged > 0
        inside = model(ids).logits
        assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())  # weights really merged
    torch.testing.assert_close(inside, adapter_on, rtol=1e-5, atol=tolerance(family) * 10)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # not W + BA - BA: W itself
    with model.disable_adapter():
        assert torch.equal(model(ids).logits, adapter_off)


def test_merged_adapter_generates_what_the_unmerged_model_generates():
    model = moved_model("llama")
    ids = torch.randint(3, 90, (3, 6), generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=8, do_sample=False, offset=0.0)
    plain = model.generate(ids, generator=torch.Generator().manual_seed(0), **kwargs)
    with merged_adapter(model.peft):
        merged = model.generate(ids, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(plain.sequences, merged.sequences) and torch.equal(plain.exit_layers, merged.exit_layers)


def test_nested_merge_is_a_no_op():
    model = moved_model("llama")
    with merged_adapter(model.peft) as outer:
        with merged_adapter(model.peft) as inner:
            assert (outer, inner) == (24, 0)


def test_merging_never_writes_the_base_tensors():
    """Merged into copies: the base's own tensors (memory-mapped when loaded from safetensors, where a write costs a
    page fault per page) are neither written nor replaced once the block ends."""
    model = moved_model("llama")
    weights = {n: p for n, p in model.named_parameters() if "base_layer.weight" in n}
    assert weights
    seen = {n: (p.data_ptr(), p._version) for n, p in weights.items()}
    with merged_adapter(model.peft):
        assert all(p.data_ptr() != seen[n][0] for n, p in model.named_parameters() if n in weights)
    now = {n: p for n, p in model.named_parameters() if n in weights}
    assert {n: (p.data_ptr(), p._version) for n, p in now.items()} == seen
