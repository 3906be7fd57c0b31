"""Stage-1 SFT errors that the loss value alone would not reveal, each checked against an independent
computation: the teacher is the base model however far the adapter has moved; the expected exit loss
reads exits out through the final norm; every loss term sits at the position that predicts its token
and uses that token's calibration KL."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.moved import moved_model, peaked_base
from thinkaloud.data.calibrate import CalibrationRow
from thinkaloud.model.exits import exit_targets
from thinkaloud.train.sft import SFTConfig, collate, sft_loss, teacher_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")

BIG = 1e4  # a per-layer KL this large gives a target exit probability of exactly 0


def make_rows(kl_of, seed: int = 0) -> list[CalibrationRow]:
    """Three unpadded rows (prompt + completion) of different lengths; ``kl_of(i, n)`` → (n, 2) KLs."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, (length, prompt) in enumerate([(9, 4), (6, 3), (8, 2)]):
        ids = torch.randint(3, 97, (length,), generator=g)
        rows.append(CalibrationRow(f"r{i}", ids, prompt, kl_of(i, length - prompt)))
    return rows


def one_hot_kl(outcome: int, n: int, m: int = 2) -> torch.Tensor:
    """(n, m) KLs whose targets put all mass on ``outcome`` (0..m-1: that exit layer; m: no exit)."""
    kl = torch.full((n, m), BIG)
    if outcome < m:
        kl[:, outcome] = 0.0  # D = 0 → q* = 1 at this layer; D = BIG before it → q* = 0
    return kl


def random_kl(i: int, n: int) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(100 + i)) * 3.0


def fresh_teacher(row: CalibrationRow, family: str = "llama") -> torch.Tensor:
    """log p_base at the positions predicting the completion tokens, from a fresh HF model, (n, V)."""
    with torch.no_grad():
        logits = peaked_base(family)(input_ids=row.input_ids[None]).logits[0]  # (T, V)
    return F.log_softmax(logits[row.prompt_length - 1 : -1].float(), -1)


def config(**kw) -> SFTConfig:
    return SFTConfig(calib="unused", out="unused", **kw)


def sft_parts(model, rows, seed: int = 0, **kw) -> dict[str, float]:
    batch = collate(rows, pad_id=0, device="cpu")
    with torch.no_grad():
        _, parts = sft_loss(
            model, teacher_logprobs(model, batch), batch, config(**kw), torch.Generator().manual_seed(seed)
        )
    return parts


def reference_parts(
    model, rows, kl_factor: float = 1.0, exit_weight: float = 1.0, distill_kl: str = "forward"
) -> dict[str, float]:
    """The Stage-1 loss row by row, unpadded, as an expectation over the m+1 outcomes.

    For outcome ℓ every predicting position exits at ℓ in one teacher-forced pass: the states at
    layers ≤ ℓ are those of a context without exits, so this is also what a sampled draw of ℓ at every
    position gives. Token means over all rows, as the loss."""
    L = model.num_layers
    outcomes = model.layers + [L]
    distill, ce = [], []
    with torch.no_grad():
        for row in rows:
            ids, pos = row.input_ids[None], slice(row.prompt_length - 1, row.input_ids.numel() - 1)
            teacher = fresh_teacher(row)  # (n, V)
            kl, logp = [], []
            for layer in outcomes:
                exits = torch.full_like(ids, L)
                exits[0, pos] = layer
                out = model(ids, exit_layers=exits)
                student = F.log_softmax(out.logits[0, pos].float(), -1)  # (n, V)
                p, q = (teacher, student) if distill_kl == "forward" else (student, teacher)
                kl.append((p.exp() * (p - q)).sum(-1))  # KL(p ‖ q)
                logp.append(out.exit_logprobs[0, pos])
            t = exit_targets(row.kl, kl_factor).exp()  # (n, m+1)
            kl, logp = torch.stack(kl, -1), torch.stack(logp, -1)  # (n, m+1) each
            distill.append((t * kl).sum(-1))
            ce.append(-(t * torch.where(t > 0, logp, torch.zeros_like(logp))).sum(-1))
    d, c = torch.cat(distill).mean().item(), torch.cat(ce).mean().item()
    return {"distill": d, "exit_ce": c, "loss": d + exit_weight * c}


def assert_parts_close(ours: dict, ref: dict) -> None:
    for key in ("distill", "exit_ce", "loss"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), (key, ours, ref)


# ------------------------------------------------------------------------------------ the teacher
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_teacher_is_the_base_model_after_the_adapter_has_moved(family):
    model = moved_model(family)
    rows = make_rows(random_kl)
    batch = collate(rows, pad_id=0, device="cpu")
    expected = torch.cat([fresh_teacher(r, family) for r in rows])  # (N, V), row-major like the batch
    with torch.no_grad():
        adapted = model(batch.input_ids, batch.attention_mask, offset=float("-inf")).logits[batch.select]
    # the adapter has moved: a teacher computed with it on would differ by far more than the tolerance
    assert (F.log_softmax(adapted.float(), -1) - expected).abs().max() > 0.1
    torch.testing.assert_close(teacher_logprobs(model, batch), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ the exits of the expected loss
@pytest.mark.parametrize("outcome", [0, 1, 2])
def test_expected_loss_of_a_certain_exit_equals_the_sampled_loss_there(outcome):
    """All target mass on one outcome: the expectation has one term, the draw always picks it, and both
    must read that exit through the final norm (as generation does)."""
    model = moved_model()
    rows = make_rows(lambda i, n: one_hot_kl(outcome, n))
    expected = sft_parts(model, rows, exit_loss="expected")
    sampled = sft_parts(model, rows, exit_loss="sample", exit_samples=2)
    assert_parts_close(expected, sampled)
    assert_parts_close(expected, reference_parts(model, rows))
    assert expected["distill"] > 0.05  # the student at this exit is not the teacher: the check has teeth


# ------------------------------------------------------------------------------- the positions
def test_expected_loss_pairs_each_token_with_its_own_targets_and_position():
    """Targets differ from token to token (random KLs): a loss whose targets, teacher or student
    logits were taken one position off would not match the per-row reference."""
    model = moved_model()
    rows = make_rows(random_kl)
    ours = sft_parts(model, rows, exit_loss="expected", exit_weight=0.7)
    assert_parts_close(ours, reference_parts(model, rows, exit_weight=0.7))


def test_sampled_loss_exits_where_the_tokens_are_predicted():
    """One certain outcome per row (exit at 2, at 4, no exit): the sampled loss is deterministic and
    equals the per-row reference only if each row's draws land on its own predicting positions."""
    model = moved_model()
    rows = make_rows(lambda i, n: one_hot_kl(i, n))
    ours = sft_parts(model, rows, exit_loss="sample", exit_samples=1, kl_factor=2.0)
    assert_parts_close(ours, reference_parts(model, rows, kl_factor=2.0))


@pytest.mark.parametrize("exit_loss", ["sample", "expected"])
def test_reverse_distillation_when_asked(exit_loss):
    """``distill_kl="reverse"`` (the prototype's KL(student ‖ teacher)) reaches both loss paths."""
    model = moved_model()
    rows = make_rows((lambda i, n: one_hot_kl(i, n)) if exit_loss == "sample" else random_kl)
    ours = sft_parts(model, rows, exit_loss=exit_loss, exit_samples=1, distill_kl="reverse")
    ref = reference_parts(model, rows, distill_kl="reverse")
    assert_parts_close(ours, ref)
    assert abs(ref["distill"] - reference_parts(model, rows)["distill"]) > 0.01  # the directions differ here


def test_sampled_loss_draws_from_its_generator():
    """With targets spread over the outcomes, the sampled loss depends on the draws: the same seed
    gives the same loss, another seed another one (and neither is the exact expectation)."""
    model = moved_model()
    rows = make_rows(random_kl)
    a, b, c = (sft_parts(model, rows, seed=seed, exit_loss="sample", exit_samples=1) for seed in (0, 0, 1))
    assert a == b
    assert a["loss"] != c["loss"]
    assert a["loss"] != sft_parts(model, rows, exit_loss="expected")["loss"]


def test_collate_selects_exactly_the_positions_that_predict_completion_tokens():
    rows = make_rows(random_kl)
    batch = collate(rows, pad_id=0, device="cpu")
    T = batch.input_ids.shape[1]
    for i, row in enumerate(rows):
        picked = batch.select[i].nonzero().squeeze(-1)  # (n,) positions in the padded row
        assert torch.equal(batch.input_ids[i, picked + 1], row.input_ids[row.prompt_length :])  # what they predict
        assert int(batch.attention_mask[i].sum()) == row.input_ids.numel()
        assert torch.equal(batch.input_ids[i, T - row.input_ids.numel() :], row.input_ids)  # left-padded
    torch.testing.assert_close(batch.kl, torch.cat([r.kl for r in rows]))


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """A greedy calibration of a peaked tiny model: (model folder, calibration folder)."""
    from safetensors.torch import load_file, save_file

    from tests.moved import UNEMBED_SCALE
    from tests.tiny import tiny_calibration, tiny_model_dir

    root = tmp_path_factory.mktemp("calib")
    model_dir = tiny_model_dir(root / "model")
    weights = load_file(f"{model_dir}/model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * UNEMBED_SCALE
    save_file(weights, f"{model_dir}/model.safetensors", metadata={"format": "pt"})
    return model_dir, tiny_calibration(root / "calib", model_dir, max_new_tokens=6)


def test_calibration_targets_and_teacher_sit_at_the_predicting_positions(calibration):
    """Greedy teacher rollouts: at every selected position the teacher's top token is the completion
    token that follows, and the stored KLs are the logit-lens KLs of exactly those positions."""
    from thinkaloud.data.calibrate import load_calibration
    from thinkaloud.model.loading import load_model

    model_dir, calib = calibration
    _, rows = load_calibration(calib)
    model = load_model(model_dir, device="cpu").model.eval()
    batch = collate(rows, pad_id=0, device="cpu")
    tokens = torch.cat([r.input_ids[r.prompt_length :] for r in rows])  # (N,) completion tokens, row-major
    teacher = teacher_logprobs(model, batch)  # (N, V)
    chosen = teacher.gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(chosen, teacher.max(-1).values, atol=1e-5, rtol=0)  # greedy: the argmax
    assert (teacher.max(-1).values - teacher.topk(2, -1).values[:, 1]).min() > 1e-3  # no near-ties
    direct = model.layer_kl(batch.input_ids, batch.attention_mask)[batch.select]  # (N, m)
    torch.testing.assert_close(batch.kl, direct, atol=1e-5, rtol=1e-4)
    # one position off, the KLs are different numbers (the check above has teeth)
    assert (batch.kl[1:] - batch.kl[:-1]).abs().max() > 1e-2
