"""FSDP2 on CPU: two gloo processes launched by ``accelerate launch --config_file examples/fsdp.yaml`` on a tiny model.

- SFT: the loss and the updated LoRA and heads of a sharded run equal the single-process run on the same global
  batch (both exit losses);
- RL: one step under FSDP samples the same rollouts, recomputes the same log-probabilities and makes the same
  update as under DDP;
- a process SIGKILLed mid-run, then ``thinkaloud sft --resume`` (the CLI, under the same launch), ends with the
  weights and log of an uninterrupted run.

Each launch gets a free port. The processes dump what they saw (tests/train/fsdp_entry.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import free_port, tiny_calibration, tiny_model_dir
from tests.tolerances import approx, tol
from tests.train.test_rl import make_tiny
from thinkaloud.train.common import latest_checkpoint, trainable_state
from thinkaloud.train.sft import SFTConfig, train_sft

ROOT = Path(__file__).parents[2]
ENTRY = Path(__file__).with_name("fsdp_entry.py")
CONFIG = ROOT / "examples" / "fsdp.yaml"
ACCELERATE = Path(sys.executable).with_name("accelerate")
MODEL_FILES = ("exit_heads.safetensors", "adapter/adapter_model.safetensors")

pytestmark = pytest.mark.usefixtures("one_thread")


def launch(*args: str, fsdp: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    """Two processes on this machine: ``accelerate launch`` with examples/fsdp.yaml, or torchrun (DDP)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    if fsdp:
        cmd = [str(ACCELERATE), "launch", "--config_file", str(CONFIG), "--main_process_port", free_port(), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
        cmd += list(args)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and len(a) > 0
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    return tiny_calibration(root / "calib", tiny_model_dir(root / "model"), n=8, max_new_tokens=8, shard_size=8)


def sft_kwargs(calib, out, **kw) -> dict:
    base = dict(
        calib=str(calib), out=str(out), steps=2, batch_size=4, save_every=2, device="cpu", head_lr=1e-2, lora_lr=1e-2
    )
    return {**base, **kw}


def test_fsdp_sft_equals_the_single_process_step(calib, tmp_path):
    # LoRA dropout off: its masks come from each process's own random stream (sft.py's docstring).
    configs = [sft_kwargs(calib, tmp_path / loss, exit_loss=loss, lora_dropout=0.0) for loss in ("sample", "expected")]
    launch(str(ENTRY), "sft", str(tmp_path), json.dumps(configs))
    for kw in configs:
        out = Path(kw["out"])
        r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
        for r in (r0, r1):  # each process held half of every layer's base weights
            assert r["layout"] == {"sharded": True, "local_numel": r["layout"]["numel"] // 2, "numel": 2048}
        assert max_diff(r0["weights"], r1["weights"]) == 0.0  # the gathered weights, the same on both
        single: dict = {}
        train_sft(
            SFTConfig(**{**kw, "out": str(tmp_path / f"single-{kw['exit_loss']}")}),
            on_step=lambda step, model, seen=single: seen.update(trainable_state(model)),
        )
        # Another summation order (two halves of the batch, gradients averaged across processes): float32 round-off
        # of the values, which are of order 1 (the heads' biases ≈ 8, LoRA ≤ 0.2).
        torch.testing.assert_close(r0["weights"], single, **tol(torch.float32))
        fresh = load_file(str(tmp_path / f"single-{kw['exit_loss']}" / "model" / "exit_heads.safetensors"))
        saved = load_file(str(out / "model" / "exit_heads.safetensors"))  # written by the sharded run
        torch.testing.assert_close(saved, fresh, **tol(torch.float32))
        log, ref = rows(out / "log.jsonl"), rows(tmp_path / f"single-{kw['exit_loss']}" / "log.jsonl")
        assert [r["step"] for r in log] == [1, 2]
        for a, b in zip(log, ref):  # the logged means over all tokens, rounded to 5 decimals
            for key in ("loss", "distill", "exit_ce"):
                assert a[key] == pytest.approx(b[key], abs=1.01e-5), (key, a, b)


def test_fsdp_rl_step_equals_ddp(tmp_path):
    launch(str(ENTRY), "rl", str(tmp_path / "fsdp"))
    launch(str(ENTRY), "rl", str(tmp_path / "ddp"), fsdp=False)
    for rank in (0, 1):
        f, d = torch.load(tmp_path / "fsdp" / f"rank{rank}.pt"), torch.load(tmp_path / "ddp" / f"rank{rank}.pt")
        assert f["layout"]["sharded"] and f["layout"]["local_numel"] == f["layout"]["numel"] // 2
        assert not d["layout"]["sharded"]
        (fr,), (dr,) = f["rollouts"], d["rollouts"]  # one step: one batch of rollouts per process
        for key in fr:  # sampled with the gathered weights: the same tokens, exits and log-probabilities
            assert torch.equal(fr[key], dr[key]), key
        exited = fr["exit_layers"][fr["completion_mask"]]
        assert (exited < 6).any() and (exited == 6).any(), "exits and full-depth tokens expected"
        (f_token, f_exit), (d_token, d_exit) = f["recomputed"][0], d["recomputed"][0]
        assert torch.equal(f_token, d_token) and torch.equal(f_exit, d_exit)  # teacher-forced, sharded
        # The update: FSDP reduce-scatters where DDP all-reduces; on CPU both give the same float32 sums here.
        torch.testing.assert_close(f["weights"], d["weights"], **tol(torch.float32))
    fsdp_log, ddp_log = rows(tmp_path / "fsdp" / "log.jsonl"), rows(tmp_path / "ddp" / "log.jsonl")
    # the logged gradient norm sums the reduce-scattered shards in another order than DDP's all-reduce
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "grad_norm")} for r in rs]
    assert strip(fsdp_log) == strip(ddp_log)
    assert [r["grad_norm"] for r in fsdp_log] == approx([r["grad_norm"] for r in ddp_log], torch.float32)
    init = trainable_state(make_tiny()())
    assert max_diff(f["weights"], init) > 1e-4  # the step moved the weights


@pytest.mark.slow
def test_fsdp_sft_resumes_after_sigkill_of_one_process(calib, tmp_path):
    kw = sft_kwargs(calib, tmp_path / "full", steps=4)  # LoRA dropout on: each process's RNG state is restored
    launch(str(ENTRY), "sft", str(tmp_path), json.dumps([kw]))
    killed = {**kw, "out": str(tmp_path / "killed")}
    result = launch(str(ENTRY), "sft", str(tmp_path), json.dumps([killed]), "1", "3", check=False)
    assert result.returncode != 0  # process 1 killed itself after step 3; the launcher stopped process 0
    assert latest_checkpoint(tmp_path / "killed").name == "step-000002"
    assert not (tmp_path / "killed" / "model").exists()
    args = ["--calib", kw["calib"], "--out", killed["out"], "--steps", "4", "--batch-size", "4"]
    args += ["--save-every", "2", "--device", "cpu", "--head-lr", "0.01", "--lora-lr", "0.01", "--resume"]
    launch("-m", "thinkaloud", "sft", *args)
    for name in MODEL_FILES:
        a, b = load_file(str(tmp_path / "full" / "model" / name)), load_file(str(tmp_path / "killed" / "model" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]
    assert strip(rows(tmp_path / "killed" / "log.jsonl")) == strip(rows(tmp_path / "full" / "log.jsonl"))
