"""Peak memory and throughput of one SFT step and one RL step, DDP vs FSDP, per process.

    python -m benchmarks.fsdp_memory                                   # small shape, 2 CPU processes (gloo)
    python -m benchmarks.fsdp_memory --shape qwen1.5b --device cuda --nproc 1 --prompt 128 --new-tokens 400
    python -m benchmarks.fsdp_memory --shape qwen1.5b --device cuda --nproc 8 --batch 4 --new-tokens 400

For each layout the script launches ``--nproc`` processes with ``torch.distributed.run`` (this same file with
``--worker``); each builds the early-exit model on random weights of the shape (LoRA r=8 on q/k/v/o, the
default exit layers), then times one step of each kind after a warm-up step:

- SFT: ``--batch`` rows per process of ``--prompt`` + ``--new-tokens`` tokens, the teacher pass (adapter off)
  and one sampled-exit student pass (``exit_samples=1``), backward, AdamW (``thinkaloud.train.sft``);
- RL: ``--batch`` completions per process of exactly ``--new-tokens`` tokens (no stop token) sampled with
  exits (weights gathered under FSDP), the reference pass, the teacher-forced pass with gradients,
  backward, AdamW (``thinkaloud.train.rl``'s step without the reward).

DDP is accelerate's ``prepare`` (a whole copy per process); FSDP is ``thinkaloud.train.dist.fsdp.shard``
(FSDP2, a unit per decoder layer). Columns: the weights a process holds between steps (its shards under
FSDP), the peak memory during the step, the largest over the processes (CUDA: ``max_memory_allocated``;
CPU: the peak resident set, sampled every 2 ms, above the process's resident set before the model was
built — Python, torch, the process group —, with glibc made to return large blocks at once), tokens/s
over all processes (SFT: every token of the batch; RL: generated tokens, over the whole step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.decode import RANDOM_CONFIGS

SHAPES = {
    # A small Qwen2 for CPUs: 8 layers of width 512, 32k vocabulary (~60M parameters).
    "small": dict(
        model_type="qwen2",
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
    "qwen1.5b": RANDOM_CONFIGS["deepseek-r1-distill-qwen-1.5b"],
}


def resident() -> int:
    """This process's resident set, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of this process during a block: CUDA's allocator, or the resident set above ``baseline``
    sampled on CPU."""

    def __init__(self, device: torch.device, baseline: int = 0):
        self.device, self.baseline, self.peak = device, baseline, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.stop = threading.Event()

        def sample():
            while not self.stop.is_set():
                self.peak = max(self.peak, resident() - self.baseline)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()


def held_bytes(model) -> int:
    """Bytes of the parameters this process holds (its shards under FSDP)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total


def worker(args) -> None:
    from accelerate import Accelerator
    from transformers import AutoConfig, AutoModelForCausalLM

    from thinkaloud.config import ExitConfig
    from thinkaloud.data.env import Prompt
    from thinkaloud.model.early_exit import EarlyExitModel
    from thinkaloud.train.common import make_optimizer
    from thinkaloud.train.dist.fsdp import clip_grad_norm, gathered, is_sharded, shard
    from thinkaloud.train.rloo import policy_loss
    from thinkaloud.train.rollouts import policy_logprobs, reference_logprobs, sample_rollouts
    from thinkaloud.train.sft import Batch, SFTConfig, sft_loss, teacher_logprobs

    cuda = args.device == "cuda"
    accelerator = Accelerator(cpu=not cuda)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if not cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    baseline = 0 if cuda else resident()
    spec = dict(SHAPES[args.shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    base = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    model = EarlyExitModel.from_base(base, ExitConfig(head_init_bias=-2.0)).to(device)
    sharded = shard(model, accelerator)
    assert sharded == (args.layout == "fsdp"), "FSDP expected" if sharded else "DDP expected"
    optimizer = make_optimizer(model, head_lr=1e-3, lora_lr=1e-4)
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    core = model if is_sharded(model) else accelerator.unwrap_model(model)
    g = torch.Generator().manual_seed(rank)
    B, P, N, V = args.batch, args.prompt, args.new_tokens, config.vocab_size
    m = len(core.layers)

    def sft_step():
        model.train()
        T = P + N
        ids = torch.randint(3, V, (B, T), generator=g).to(device)
        select = torch.zeros(B, T, dtype=torch.bool, device=device)
        select[:, P - 1 : T - 1] = True
        batch = Batch(ids, torch.ones_like(ids), select, torch.rand(B * N, m, generator=g).to(device))
        cfg = SFTConfig(calib="-", out="-", exit_samples=1)
        with accelerator.autocast():
            loss, _ = sft_loss(model, teacher_logprobs(core, batch), batch, cfg, g)
        accelerator.backward(loss)
        clip_grad_norm(accelerator, model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return B * T

    class Env:  # random prompts, no stop token: every completion has exactly N tokens
        pad_token_id, stop_token_ids = 0, []

    def rl_step():
        model.eval()
        prompts = [Prompt(torch.randint(3, V, (P,), generator=g).tolist()) for _ in range(B)]
        with gathered(core):
            out = sample_rollouts(core, prompts, Env(), max_new_tokens=N, offset=0.0)  # type: ignore[arg-type]
        reference_logprobs(core, out)
        token_lp, exit_lp = policy_logprobs(model, out, 0.0)
        loss = policy_loss(token_lp, exit_lp, out.completion_mask, torch.randn(B, generator=g).to(device))
        accelerator.backward(loss)
        clip_grad_norm(accelerator, model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(out.completion_mask.sum())

    result = {"layout": args.layout, "processes": world, "held": held_bytes(model)}
    for kind, step in (("sft", sft_step), ("rl", rl_step)):
        step()  # warm-up: the optimiser's moments, the allocator's pools
        accelerator.wait_for_everyone()
        with PeakMemory(device, baseline) as peak:
            t0 = time.perf_counter()
            tokens = step()
            accelerator.wait_for_everyone()
            seconds = time.perf_counter() - t0
        total = accelerator.reduce(torch.tensor([tokens], device=device), "sum").item()
        peaks = accelerator.gather(torch.tensor([peak.peak], device=device)).tolist()
        result[kind] = {"peak": max(peaks), "tokens_per_s": total / seconds, "seconds": seconds}
    if accelerator.is_main_process:
        Path(args.out).write_text(json.dumps(result))


def launch(args, layout: str, out: Path) -> dict:
    import socket

    with socket.socket() as s:  # a port no one listens on
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'src'}", "MALLOC_MMAP_THRESHOLD_": "65536"}
    if layout == "fsdp":  # what `accelerate launch --config_file examples/fsdp.yaml` sets
        env |= {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc)]
    cmd += ["--master_port", port, __file__, "--worker", "--layout", layout, "--out", str(out)]
    for name in ("shape", "device", "batch", "prompt", "new_tokens"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    subprocess.run(cmd, env=env, check=True, capture_output=not args.verbose)
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--nproc", type=int, default=2, help="processes per layout (GPUs with --device cuda)")
    p.add_argument("--batch", type=int, default=2, help="rows (SFT) or completions (RL) per process")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=32, help="completion tokens (RL: generated, exactly)")
    p.add_argument("--layouts", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--layout", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        results = [launch(args, layout, Path(tmp) / f"{layout}.json") for layout in args.layouts]
    gib = lambda b: f"{b / 2**30:.2f}" if b >= 2**30 else f"{b / 2**20:.0f} MiB"
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    table = Table(
        title=f"One step per process: shape {args.shape}, {args.nproc} × {device}, batch {args.batch}/process, "
        f"prompt {args.prompt} + {args.new_tokens} tokens"
    )
    for col in ("step", "layout", "weights held", "peak memory", "tokens/s", "seconds"):
        table.add_column(col, justify="left" if col in ("step", "layout") else "right")
    for kind in ("sft", "rl"):
        for r in results:
            row = r[kind]
            table.add_row(
                kind.upper(), r["layout"].upper(), gib(r["held"]), gib(row["peak"]),
                f"{row['tokens_per_s']:.0f}" if math.isfinite(row["tokens_per_s"]) else "-", f"{row['seconds']:.2f}",
            )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
