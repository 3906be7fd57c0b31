"""RLOO maths against hand-worked examples: rewards, leave-one-out advantages, KL estimate, loss."""

from __future__ import annotations

import pytest
import torch

from thinkaloud.train.rloo import (
    completion_rewards,
    depth_fraction,
    depth_penalty,
    kl_estimate,
    masked_mean,
    policy_loss,
    rloo_advantages,
)


def test_advantages_match_hand_worked_example():
    rewards = torch.tensor([[1.0, 0.0, 0.5], [3.0, 0.0, 0.0]])
    # A_i = R_i − mean_{j≠i} R_j:
    #   group 0: 1 − (0 + 0.5)/2 = 0.75,  0 − (1 + 0.5)/2 = −0.75,  0.5 − (1 + 0)/2 = 0
    #   group 1: 3 − 0 = 3,                0 − (3 + 0)/2 = −1.5,    −1.5
    expected = torch.tensor([[0.75, -0.75, 0.0], [3.0, -1.5, -1.5]])
    torch.testing.assert_close(rloo_advantages(rewards), expected)


def test_advantages_sum_to_zero_in_each_group():
    rewards = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    for normalize in (False, True):
        a = rloo_advantages(rewards, normalize=normalize)
        torch.testing.assert_close(a.sum(-1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(rloo_advantages(rewards, normalize=True).std(), torch.tensor(1.0))
    # equal rewards in a group carry no signal
    torch.testing.assert_close(rloo_advantages(torch.full((2, 3), 0.7)), torch.zeros(2, 3))


def test_advantages_need_two_completions():
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.zeros(3, 1))


def test_rewards_depth_and_kl_by_hand():
    L = 30
    exit_layers = torch.tensor([[5, 30, 30], [10, 20, 30]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    depth = depth_fraction(exit_layers, mask, L)
    torch.testing.assert_close(depth, torch.tensor([(5 / 30 + 1) / 2, (10 + 20 + 30) / 90]))
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -1.0, -0.6]])
    kl = kl_estimate(logp, ref, mask)
    torch.testing.assert_close(kl, torch.tensor([(0.5 - 1.0) / 2, (0.0 + 0.5 + 0.1) / 3]))
    r = completion_rewards(
        torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.9]), torch.tensor([0.2, -0.1]), lam=1.5, beta=0.25
    )
    torch.testing.assert_close(r, torch.tensor([1 - 0.75 - 0.05, 0 - 1.35 + 0.025]))


def test_depth_penalty_shapes_by_hand():
    L = 30
    exit_layers = torch.tensor([[6, 30, 15, 30], [12, 3, 30, 30], [30, 30, 30, 30]])  # (B=3, N=4)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False], [False] * 4])  # row 2: empty
    # row 0: 0.2, 1.0, 0.5 (the masked 30 ignored); row 1: 0.4, 0.1 (two masked 30s ignored); row 2: nothing
    expected = {"mean": [1.7 / 3, 0.25, 0.0], "sum": [1.7, 0.5, 0.0], "max": [1.0, 0.4, 0.0]}
    for shape, values in expected.items():
        torch.testing.assert_close(depth_penalty(exit_layers, mask, L, shape), torch.tensor(values), msg=shape)
    torch.testing.assert_close(depth_penalty(exit_layers, mask, L, "mean"), depth_fraction(exit_layers, mask, L))


def test_shallow_padding_lowers_only_the_mean_penalty():
    L = 30
    answer = torch.tensor([[20, 30, 25]])  # (1, 3)
    padded = torch.cat([answer, torch.full((1, 5), 5)], 1)  # (1, 8): five shallow filler tokens after it
    short, long = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 8, dtype=torch.bool)
    charge = lambda shape: (depth_penalty(answer, short, L, shape), depth_penalty(padded, long, L, shape))
    before, after = charge("mean")
    assert after < before  # the paper's penalty pays for filler
    before, after = charge("sum")
    assert after > before  # every token costs
    before, after = charge("max")
    assert after == before == 1.0  # the deepest token is still there


def test_depth_penalty_rejects_an_unknown_shape():
    with pytest.raises(ValueError, match="mean, sum, max|'mean', 'sum', 'max'"):
        depth_penalty(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), 30, "median")


def test_masked_mean_of_an_empty_row_is_zero():
    assert masked_mean(torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_policy_loss_by_hand():
    token = torch.tensor([[-1.0, -2.0, -7.0], [-3.0, -7.0, -7.0]])
    exits = torch.tensor([[-0.5, 0.0, -7.0], [-1.0, -7.0, -7.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # per-token means: (−1.5 − 2)/2 = −1.75 and −4; loss = −mean(1·(−1.75), −1·(−4)) = −1.125
    loss = policy_loss(token, exits, mask, torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(loss, torch.tensor(-1.125))


def test_loss_gradient_raises_good_completions_and_lowers_bad_ones():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 11, generator=g).requires_grad_()  # (B, N, V)
    exit_logits = torch.randn(4, 6, generator=g).requires_grad_()  # (B, N): log P(ℓ) = logsigmoid
    tokens = torch.randint(0, 11, (4, 6), generator=g)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False

    def logp():
        tok = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
        ex = torch.nn.functional.logsigmoid(exit_logits)
        return tok, ex

    advantages = rloo_advantages(torch.tensor([[1.0, 0.0], [0.2, 0.6]])).flatten()  # [+, −, −, +]
    before = masked_mean(sum(logp()), mask).detach()
    policy_loss(*logp(), mask, advantages).backward()
    with torch.no_grad():
        logits -= 0.1 * logits.grad
        exit_logits -= 0.1 * exit_logits.grad
    change = masked_mean(sum(logp()), mask).detach() - before
    assert torch.equal(change > 0, advantages > 0), (change, advantages)
    # padding gets no gradient
    assert torch.equal(logits.grad[1, 4:], torch.zeros_like(logits.grad[1, 4:]))
