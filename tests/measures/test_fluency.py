"""Fluency proxies: the base-model NLL against the HF model's own forward, and repetition by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tiny import build_tiny
from tests.tolerances import approx
from thinkaloud.config import ExitConfig
from thinkaloud.measures.fluency import (
    distinct_ngrams,
    fluency,
    repeated_ngrams,
    response_nll,
)
from thinkaloud.measures.responses import Response
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.report.measure_plots import plot_fluency

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """A tiny model whose adapter changes the outputs and whose heads would exit every token."""
    model = EarlyExitModel.from_base(build_tiny("qwen2"), ExitConfig(exit_layers=[2, 4])).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.peft.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        model.heads.bias.fill_(20.0)
    return model


def responses() -> list[Response]:
    g = torch.Generator().manual_seed(1)
    shapes = [(5, 9), (11, 4), (3, 14), (8, 1), (6, 0)]  # (prompt, response) lengths; an empty response too
    return [
        Response(
            torch.randint(3, 97, (p,), generator=g).tolist(),
            torch.randint(3, 97, (n,), generator=g).tolist(),
            exit_layers=[2] * n,
        )
        for p, n in shapes
    ]


def direct_nll(model, r: Response, adapter: bool = False) -> float:
    """Mean NLL of the response from the HF model's own forward on the unpadded row."""
    ids = torch.tensor([r.prompt_ids + r.response_ids])
    with torch.no_grad():
        if adapter:
            logits = model.base(input_ids=ids).logits
        else:
            with model.disable_adapter():
                logits = model.base(input_ids=ids).logits
    logp = torch.log_softmax(logits[0].double(), -1)  # (T, V)
    P = len(r.prompt_ids)
    targets = torch.tensor(r.response_ids)
    return float(-logp[P - 1 : -1].gather(-1, targets[:, None]).mean())


def test_nll_matches_the_base_hf_forward(model):
    rs = responses()
    summary, records = fluency(model, rs, batch_size=2)
    for r, rec in zip(rs[:-1], records):
        assert rec["base_nll"] == pytest.approx(direct_nll(model, r), abs=1e-5)
        assert abs(rec["base_nll"] - direct_nll(model, r, adapter=True)) > 1e-3  # the adapter matters here
    assert records[-1]["base_nll"] is None and records[-1]["n_tokens"] == 0
    tokens = sum(len(r.response_ids) for r in rs)
    weighted = sum(direct_nll(model, r) * len(r.response_ids) for r in rs[:-1]) / tokens
    assert summary["base_nll"] == pytest.approx(weighted, abs=1e-5)
    assert summary["base_ppl"] == pytest.approx(math.exp(summary["base_nll"]))
    assert summary["n"] == 5 and summary["n_tokens"] == tokens
    assert model.training is False


def test_nll_chunking_and_batching_agree(model):
    rs = responses()[:4]
    together = response_nll(model, rs)
    assert [n for _, n in together] == [9, 4, 14, 1]
    nll = [v for v, _ in together]
    # float32 readouts of other batch shapes: the sums agree to float32 rounding, not bit for bit
    assert [v for v, _ in response_nll(model, rs, chunk_rows=3)] == approx(nll, torch.float32)
    assert [v for r in rs for v, _ in response_nll(model, [r])] == approx(nll, torch.float32)


def test_repetition_on_hand_made_tokens():
    assert repeated_ngrams([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5)  # (1,2,3,4) twice among 5
    assert repeated_ngrams([5, 5, 5, 5, 5, 5]) == pytest.approx(2 / 3)
    assert repeated_ngrams([1, 2, 3, 4, 5, 6]) == 0.0
    assert repeated_ngrams([1, 2, 3]) is None
    assert distinct_ngrams([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(4 / 7)
    assert distinct_ngrams([5, 5, 5, 5, 5, 5]) == pytest.approx(1 / 5)
    assert distinct_ngrams([7]) is None


def test_summary_repetition_and_plot(model):
    rs = [Response([3, 4], [1, 2, 3, 4, 1, 2, 3, 4]), Response([3, 4], [5, 5, 5, 5, 5, 5]), Response([3], [9])]
    summary, records = fluency(model, rs)
    assert summary["rep4"] == pytest.approx((1 / 5 + 2 / 3) / 2)  # the 1-token response has no 4-gram
    assert summary["distinct2"] == pytest.approx((4 / 7 + 1 / 5) / 2)
    assert [r["rep4"] for r in records][-1] is None
    fig = plot_fluency({"base": summary, "sft": {**summary, "base_nll": None}})
    assert fig.axes[0].get_ylabel().startswith("base-model NLL") and fig.axes[1].get_legend() is not None
    with pytest.raises(ValueError, match="no responses"):
        fluency(model, [])
