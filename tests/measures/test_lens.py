"""Future lens: the streamed ridge solver, chance on random targets, and a tiny model's own rollouts."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import build_tiny, left_padded_batch
from thinkaloud.config import ExitConfig
from thinkaloud.measures.lens import (
    ALPHAS,
    RidgeStats,
    future_lens,
    ridge_fit,
    select_and_fit,
    squared_error,
    top1,
)
from thinkaloud.measures.responses import Response, from_generation
from thinkaloud.model import arch
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.report.measure_plots import plot_lens_heatmap

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n: int, c_in: int = 12, c_out: int = 10, seed: int = 0, noise: float = 0.0):
    """x with unequal scales and a non-zero mean, y = xW* + b* (+ noise) → (x, y, W*, b*)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, generator=g) * torch.linspace(0.5, 3.0, c_in) + 2.0
    w, b = torch.randn(c_in, c_out, generator=g), torch.randn(c_out, generator=g)
    return x, x @ w + b + noise * torch.randn(n, c_out, generator=g), w, b


def streamed(x: torch.Tensor, y: torch.Tensor, chunk: int = 700) -> RidgeStats:
    stats = RidgeStats(x.shape[1], y.shape[1])
    for s in range(0, x.shape[0], chunk):
        stats.add(x[s : s + chunk], y[s : s + chunk])
    return stats


def test_ridge_recovers_planted_map():
    x, y, w_true, b_true = planted(3000, noise=1e-6)
    fit, val = streamed(x[:2400], y[:2400]), streamed(x[2400:], y[2400:])
    ((w, b, alpha),) = select_and_fit(fit, val, list(ALPHAS))
    assert alpha == min(ALPHAS)  # no noise to speak of: the least shrinkage wins
    assert (w - w_true.double()).abs().max() < 1e-3 and (b - b_true.double()).abs().max() < 1e-3
    # blocks of output columns are fitted (and their α chosen) independently
    blocks = select_and_fit(fit, val, list(ALPHAS), [slice(0, 3), slice(3, 10)])
    torch.testing.assert_close(blocks[1][0], w[:, 3:10])
    torch.testing.assert_close(blocks[1][1], b[3:10])
    w2, b2 = ridge_fit(fit + val, alpha, slice(3, 6))
    torch.testing.assert_close(w2, w[:, 3:6])
    torch.testing.assert_close(b2, b[3:6])


def test_squared_error_from_sums_matches_direct():
    x, y, _, _ = planted(500, noise=0.5, seed=1)
    stats = streamed(x, y, chunk=128)
    w, b = torch.randn(12, 10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    direct = ((y.double() - x.double() @ w - b) ** 2).sum()
    assert squared_error(stats, w, b) == pytest.approx(float(direct), rel=1e-9)
    direct_cols = ((y.double()[:, 2:5] - x.double() @ w[:, 2:5] - b[2:5]) ** 2).sum()
    assert squared_error(stats, w[:, 2:5], b[2:5], slice(2, 5)) == pytest.approx(float(direct_cols), rel=1e-9)


def test_strong_ridge_shrinks_towards_the_mean():
    x, y, _, _ = planted(400, seed=2)
    w, b = ridge_fit(streamed(x, y), alpha=1e6)
    assert w.abs().max() < 1e-3
    torch.testing.assert_close(b, y.double().mean(0), atol=1e-2, rtol=0)


def test_random_targets_give_chance_and_planted_targets_do_not():
    g = torch.Generator().manual_seed(3)
    readout_w = torch.randn(10, 4, generator=g)
    readout = lambda h: h @ readout_w  # (n, 4 "tokens")
    x, y, _, _ = planted(8000, seed=4)
    fit, val = streamed(x[:3000], y[:3000]), streamed(x[3000:4000], y[3000:4000])
    ((w, b, _),) = select_and_fit(fit, val, list(ALPHAS))
    held_x, held_y = x[4000:], y[4000:]
    planted_tokens = readout(held_y).argmax(-1)
    assert top1(readout, held_x @ w.float() + b.float(), planted_tokens).float().mean() > 0.99
    # targets and tokens unrelated to x: the held-out accuracy is chance (1/4), SE ≈ 0.007
    noise_y = torch.randn(8000, 10, generator=g)
    fit, val = streamed(x[:3000], noise_y[:3000]), streamed(x[3000:4000], noise_y[3000:4000])
    ((w, b, _),) = select_and_fit(fit, val, list(ALPHAS))
    random_tokens = torch.randint(0, 4, (4000,), generator=g)
    acc = top1(readout, held_x @ w.float() + b.float(), random_tokens, budget=40).float().mean()
    assert abs(float(acc) - 0.25) < 0.04


def test_candidates_settle_states_early_and_change_no_answer():
    """With candidates the answer is the full argmax's; a state whose token a candidate beats never gets
    the full readout."""
    g = torch.Generator().manual_seed(5)
    unembed = torch.randn(500, 16, generator=g)
    full_rows = []

    def readout(h, vocab=None):
        if vocab is None:
            full_rows.append(h.shape[0])
            return h @ unembed.T  # (n, 500)
        return h @ unembed[vocab].T  # (n, K)

    h = torch.randn(300, 16, generator=g)
    best = (h @ unembed.T).argmax(-1)
    tokens = torch.where(torch.rand(300, generator=g) < 0.4, best, torch.randint(0, 500, (300,), generator=g))
    plain = top1(readout, h, tokens, budget=5000)
    full_rows.clear()
    candidates = torch.unique(best[:150])  # the winners of half the states (and any others' tokens)
    pruned = top1(readout, h, tokens, candidates, budget=5000)
    assert torch.equal(pruned, plain) and 0.3 < plain.float().mean() < 0.6
    settled = ~plain & torch.isin(best, candidates)  # a candidate beats the token: no full readout needed
    read_fully = sum(full_rows[1:])  # the first call only asks the vocabulary size
    assert int(plain.sum()) <= read_fully <= 300 - int(settled.sum()) and settled.sum() > 100


def test_readout_of_a_vocabulary_subset_equals_those_columns(family):
    model = build_tiny(family)
    normed = torch.randn(5, model.config.hidden_size)
    ids = torch.tensor([3, 0, 41, 96, 7])
    with torch.no_grad():
        torch.testing.assert_close(arch.readout(model, normed, ids), arch.readout(model, normed)[:, ids])


@pytest.fixture(scope="module")
def rollouts():
    """A tiny model whose exits fire half the time at each exit layer, and its own greedy rollouts."""
    model = EarlyExitModel.from_base(build_tiny("llama"), ExitConfig(exit_layers=[2, 4])).eval()
    with torch.no_grad():
        model.heads.bias.zero_()  # q = 1/2 per exit layer
    ids, mask = left_padded_batch([5, 9, 7, 6, 8, 4, 9, 5], seed=1)
    gen = model.generate(ids, mask, max_new_tokens=12, do_sample=False, stop_token_ids=[], seed=0)
    assert (gen.exit_layers < model.num_layers).float().mean() > 0.3  # exits really happened
    return model, gen


def test_exit_states_reproduce_the_generation(rollouts):
    model, gen = rollouts
    states, last = model.exit_states(gen.sequences, gen.attention_mask, gen.full_exit_layers())
    assert len(states) == 2 and last.shape == (*gen.sequences.shape, model.hf_config.hidden_size)
    logits = arch.readout(model.peft, arch.final_norm(model.peft)(last))[:, gen.predicting_positions()]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, gen.new_tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(logp, gen.token_logprobs, atol=1e-4, rtol=0)
    exited = gen.full_exit_layers() == 2  # frozen above layer 2: same state at layer 4 and at the end
    assert exited.any()
    torch.testing.assert_close(states[1][exited], states[0][exited])
    torch.testing.assert_close(last[exited], states[0][exited])


def test_exit_states_match_the_exit_forward(family):
    """Every family: the pre-norm last state read out is the forward's logits under the same exits."""
    model = EarlyExitModel.from_base(build_tiny(family), ExitConfig(exit_layers=[2, 4])).eval()
    ids, mask = left_padded_batch([5, 8])
    exits = torch.full_like(ids, model.num_layers)
    exits[0, -2], exits[1, 3] = 2, 4
    states, last = model.exit_states(ids, mask, exits)
    logits = arch.readout(model.peft, arch.final_norm(model.peft)(last))
    torch.testing.assert_close(logits, model(ids, mask, exit_layers=exits).logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(states[1][0, -2], states[0][0, -2]) and torch.equal(last[0, -2], states[0][0, -2])
    assert torch.equal(last[1, 3], states[1][1, 3]) and not torch.equal(last[1, 2], states[1][1, 2])
    with pytest.raises(ValueError, match="shape"):
        model.exit_states(ids, mask, exits[:, 1:])


def test_future_lens_on_tiny_rollouts(rollouts):
    model, gen = rollouts
    responses = from_generation(gen)
    summary, records = future_lens(model, responses, batch_size=3)
    L = model.num_layers
    assert summary["layers"] == [2, 4, L] and summary["distances"] == [1, 2, 3]
    table = torch.tensor(summary["accuracy"])
    assert table.shape == (3, 3) and ((table >= 0) & (table <= 1)).all()
    assert len(summary["logit_lens"]) == 3 and summary["n_test_responses"] == 4

    def at(k, ids):  # the response token at t + k of every used position t
        return torch.tensor([responses[j].response_ids[i + k - 1] for j in ids for i in range(12 - 3 + 1)])

    for k in (1, 2, 3):  # the constant baseline: the fitted part's most frequent token at distance k
        mode = at(k, [0, 2, 4, 6]).mode().values
        assert summary["constant"][k - 1] == pytest.approx(float((at(k, [1, 3, 5, 7]) == mode).float().mean()))
    assert summary["n_test_tokens"] == 4 * (12 - 3 + 1)
    # greedy tokens read from the recorded exits' states: the last layer's own readout is the token
    assert summary["logit_lens"][-1] == 1.0 and summary["accuracy"][-1][0] == 1.0
    assert [r["split"] for r in records] == ["fit", "test", "fit", "test", "fit", "test", "validation", "test"]
    assert records[1]["n_tokens"] == 10 and len(records[1]["accuracy"]) == 3 and records[0]["accuracy"] is None
    # maps shrink towards the identity (plus a shift), not towards the mean state: regularised to
    # nothing, the last layer's k = 1 map is still exact, and the others stay far above chance (1/97)
    shrunk = future_lens(model, responses, alphas=[1e12], batch_size=3)[0]
    assert shrunk["accuracy"][-1][0] == 1.0 and min(row[0] for row in shrunk["accuracy"]) > 0.3
    # without the recorded exits the states are not the ones that produced the tokens
    no_exits = [Response(r.prompt_ids, r.response_ids, None) for r in responses]
    assert future_lens(model, no_exits, batch_size=3)[0]["logit_lens"][-1] < 1.0
    fig = plot_lens_heatmap(summary)
    assert fig.axes[0].get_ylabel() == "layer read at position t" and len(fig.axes) == 2  # heatmap + colour bar


def test_future_lens_input_checks(rollouts):
    model, gen = rollouts
    with pytest.raises(ValueError, match="at least 3 responses"):
        future_lens(model, from_generation(gen)[:2])
    with pytest.raises(ValueError, match="distances"):
        future_lens(model, from_generation(gen), distances=[0, 1])
