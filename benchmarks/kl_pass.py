"""Throughput of the calibration KL pass against a plain forward over the same tokens.

    python benchmarks/kl_pass.py                      # SmolLM2-135M-Instruct, CPU
    python benchmarks/kl_pass.py --device cuda --random-config deepseek-r1-distill-qwen-1.5b

The KL pass (``EarlyExitModel.layer_kl``) runs the decoder once and adds, per completion token, one
unembedding per exit layer (plus the softmax bookkeeping). The analytic prediction counts matmul
FLOPs only (``thinkaloud.measures.metrics.flop_per_token`` at the mean context); the goal is a measured
ratio ≤ 1.1 × the predicted one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.decode import RANDOM_CONFIGS, load, sync
from thinkaloud.measures.metrics import flop_per_token, model_dims


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--random-config", choices=sorted(RANDOM_CONFIGS), default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    p.add_argument("--completion", type=int, default=128, help="completion tokens per row (KL computed there)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    torch.set_grad_enabled(False)
    model, _ = load(args)
    cfg = model.hf_config
    B, P, C = args.batch, args.prompt, args.completion
    T = P + C
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, cfg.vocab_size, (B, T), generator=g).to(args.device)
    mask = torch.ones_like(ids)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, P - 1 : T - 1] = True

    def timed(fn):
        fn()
        times = []
        for _ in range(args.repeats):
            sync(args.device)
            t0 = time.perf_counter()
            fn()
            sync(args.device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_fwd = timed(lambda: model.base(input_ids=ids, attention_mask=mask).logits)
    t_kl = timed(lambda: model.layer_kl(ids, mask, positions=positions))
    dims = model_dims(cfg)
    L, m = model.num_layers, len(model.layers)
    per_token = statistics.fmean(flop_per_token(**dims, context=t + 1, exit_layer=L) for t in range(T))
    unembed = 2 * dims["hidden"] * dims["vocab"]
    predicted = (B * T * per_token + B * C * m * unembed) / (B * T * per_token)

    table = Table(
        title=f"KL pass vs plain forward: {args.random_config or args.model}, {args.device} {args.dtype}, "
        f"batch {B}, {P} prompt + {C} completion tokens, {m} exit layers"
    )
    for col in ("plain forward s", "KL pass s", "measured ratio", "predicted ratio", "measured / predicted"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{t_fwd:.3f}", f"{t_kl:.3f}", f"{t_kl / t_fwd:.2f}", f"{predicted:.2f}", f"{t_kl / t_fwd / predicted:.2f}"
    )
    Console().print(table)


if __name__ == "__main__":
    main()
