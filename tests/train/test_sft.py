"""Stage-1 SFT: what changes, exact resume, 2-process DDP, and the loss maths."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import free_port, tiny_calibration, tiny_model_dir
from thinkaloud.cli import main as cli_main
from thinkaloud.model.exits import exit_log_distribution, exit_targets
from thinkaloud.model.loading import load_model
from thinkaloud.train import losses
from thinkaloud.train.common import CheckpointError, latest_checkpoint, read_state
from thinkaloud.train.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return tiny_calibration(root / "calib", tiny_model_dir(root / "model"), n=8, max_new_tokens=8, shard_size=8)


def sft_config(calib, out, **kw):
    base = dict(
        calib=str(calib), out=str(out), steps=4, batch_size=2, save_every=2, device="cpu", head_lr=1e-2, lora_lr=1e-2
    )
    base.update(kw)
    return SFTConfig(**base)


def test_one_step_changes_only_lora_and_heads(calib, tmp_path):
    out = train_sft(sft_config(calib, tmp_path / "run", steps=1))
    trained = load_model(str(out), device="cpu").model
    fresh = load_model(trained.source, device="cpu").model
    t_params, f_params = dict(trained.named_parameters()), dict(fresh.named_parameters())
    changed_lora = 0
    for name, p in t_params.items():
        if "lora_" in name:
            changed_lora += not torch.equal(p, f_params[name])
        elif name.startswith("heads."):
            continue
        else:  # base weights: bit-identical
            assert torch.equal(p, f_params[name]), name
    assert changed_lora > 0
    assert not torch.equal(trained.heads.weight, torch.zeros_like(trained.heads.weight))


@pytest.mark.parametrize("exit_loss", ["sample", "expected"])
def test_resume_after_kill_equals_uninterrupted(calib, tmp_path, exit_loss):
    full = train_sft(sft_config(calib, tmp_path / "full", exit_loss=exit_loss))

    def kill(step, model):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sft(sft_config(calib, tmp_path / "killed", exit_loss=exit_loss), on_step=kill)
    assert not (tmp_path / "killed" / "model").exists()
    train_sft(sft_config(calib, tmp_path / "killed", exit_loss=exit_loss, resume=True))
    a = load_file(str(full / "model" / "exit_heads.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "exit_heads.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = load_file(str(full / "model" / "adapter" / "adapter_model.safetensors"))
    lb = load_file(str(tmp_path / "killed" / "model" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(la[k], lb[k]) for k in la)
    logs = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logs] == [1, 2, 3, 4]


class _TouchOnLoad:
    """Pickled, it asks the unpickler to create ``marker``: what a malicious ``state.pt`` would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_state_pt_that_would_run_code(calib, tmp_path, capsys):
    out = tmp_path / "run"
    train_sft(sft_config(calib, out, steps=2))
    ckpt = latest_checkpoint(out)
    assert ckpt is not None
    state = torch.load(ckpt / "state.pt", weights_only=True)  # what thinkaloud writes loads safely
    marker = tmp_path / "created-by-the-checkpoint"
    torch.save({**state, "extra": _TouchOnLoad(marker)}, ckpt / "state.pt")
    before = sorted(tmp_path.rglob("*"))
    argv = ["sft", "--calib", str(calib), "--out", str(out), "--steps", "4", "--device", "cpu", "--resume"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the model's loading progress: one line, no traceback
    assert last.startswith("thinkaloud sft: error: refused to load ") and "Traceback" not in err, err
    assert f"{ckpt / 'state.pt'}" in last and "could run code" in last
    assert not marker.exists() and sorted(tmp_path.rglob("*")) == before  # nothing created
    with pytest.raises(CheckpointError, match="refused to load"):
        read_state(ckpt)

    (ckpt / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="unreadable|refused"):
        read_state(ckpt)
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"step": 2, "path": "../../elsewhere"}))
    with pytest.raises(CheckpointError, match="not to a step-<n> folder"):
        latest_checkpoint(out)


def test_two_process_ddp_ends_with_identical_weights(calib, tmp_path):
    script = Path(__file__).with_name("ddp_sft_entry.py")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(str(Path(__file__).parents[2] / p) for p in (".", "src")),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        str(script),
        str(calib),
        str(tmp_path / "ddp"),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    r1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    assert r0.keys() == r1.keys() and len(r0) > 0
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    fresh = load_model(str(tmp_path / "ddp"), device="cpu").model
    assert not torch.equal(fresh.heads.weight, torch.zeros_like(fresh.heads.weight))


def test_expected_exit_loss_hand_values():
    log_t = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]))
    student = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.4, 0.4, 0.2]]))
    per = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    d, ce = losses.expected_exit_loss(log_t, student, per)
    torch.testing.assert_close(d, torch.tensor([0.5 + 0.5 + 0.75, 4.0]))
    expected_ce = torch.tensor([-(0.5 * math.log(0.2) + 0.25 * math.log(0.3) + 0.25 * math.log(0.5)), -math.log(0.4)])
    torch.testing.assert_close(ce, expected_ce)
    # A student that cannot reach an outcome of zero target mass gives no NaN.
    d, ce = losses.expected_exit_loss(log_t[1:], torch.tensor([[0.0, -math.inf, -math.inf]]), per[1:])
    assert torch.isfinite(ce).all() and ce.item() == 0.0


def test_hazard_init_reproduces_mean_target():
    target = torch.tensor([0.3, 0.2, 0.1, 0.4])
    bias = losses.hazard_bias_init(target)
    torch.testing.assert_close(exit_log_distribution(bias).exp(), target, atol=1e-5, rtol=0)


def test_distill_kl_directions():
    t = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0]]), -1)
    s = torch.tensor([[0.0, 1.0, 0.0]])
    sp = torch.log_softmax(s, -1)
    torch.testing.assert_close(losses.distill_kl(t, s), (t.exp() * (t - sp)).sum(-1))
    torch.testing.assert_close(losses.distill_kl(t, s, "reverse"), (sp.exp() * (sp - t)).sum(-1))
    assert losses.distill_kl(t, t).abs().item() < 1e-6


def test_sampled_exits_follow_targets():
    log_t = exit_targets(torch.tensor([[0.3, 0.1, 2.0]]), 1.0)
    draws = losses.sample_exit_index(log_t.expand(1, -1), 20000, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws.flatten(), minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, log_t.exp()[0], atol=0.015, rtol=0)


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_kl_factor_must_be_positive(bad):
    with pytest.raises(ValueError, match="kl_factor must be > 0"):
        SFTConfig(calib="calib", out="out", kl_factor=bad)


@pytest.mark.parametrize("resume", [False, True])
def test_run_removes_stale_checkpoint_temporaries(calib, tmp_path, resume):
    """A run killed while writing a checkpoint leaves temporaries behind; the next run of the folder
    (restarted or resumed) removes them, and only them."""
    out, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    if resume:
        train_sft(sft_config(calib, out, steps=2))
    (root / ".step-000007.tmp").mkdir(parents=True)  # a step this run never writes
    (root / ".step-000007.tmp" / "state.pt").write_bytes(b"partial")
    (root / ".latest.json.k3j2h1ab.tmp").write_text('{"step": 7')  # thinkaloud.io's temporary name
    (root / "notes.txt").write_text("kept")
    (root / ".other.tmp").write_text("kept: not a name a checkpoint write creates")
    train_sft(sft_config(calib, out, steps=4, resume=resume))
    assert sorted(p.name for p in root.iterdir()) == [
        ".other.tmp",
        "latest.json",
        "notes.txt",
        "step-000002",
        "step-000004",
    ]


def test_help_says_where_defaults_differ_from_the_paper(capsys):
    def help_text(verb: str) -> str:
        with pytest.raises(SystemExit):
            cli_main([verb, "--help"])
        return " ".join(capsys.readouterr().out.split())  # argparse wraps lines

    sft = help_text("sft")
    for text in (
        "(paper: 1e-5;",
        "(paper: 1e-4)",
        "(paper: 8, on q/k/v/o)",
        "(paper: 16)",
        "(paper: 0.05)",
        "(paper: 0.25–4, standard 1)",
    ):
        assert text in sft, text
    assert "(paper: up to 400)" in help_text("calibrate")
