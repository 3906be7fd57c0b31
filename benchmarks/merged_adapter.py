"""Generation with the LoRA adapter merged into the weights vs through peft's LoRA layers, A/B in one run.

    python -m benchmarks.merged_adapter                  # SmolLM2-135M-Instruct, 16 tom prompts, 48 tokens, CPU
    python -m benchmarks.merged_adapter --device cuda --batch 1 16

The adapter gets random B (a trained-looking adapter; a fresh one has B = 0, which costs the same). The
two arms alternate ``--repeats`` times on the same prompts, greedy, no exits, so load on the machine hits
both alike; the table shows each arm's tokens/s (median), the ratio, what merging and restoring cost per block
(the first one on a freshly loaded model apart: its weights are memory-mapped until first written) and how many
generated tokens it takes to earn that back. Eval generates merged by default
(``thinkaloud.model.merging``; ``--no-merge-adapter`` turns it off).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.tasks import get_task
from thinkaloud.model.loading import load_model
from thinkaloud.model.merging import merged_adapter


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(model, ids, mask, new_tokens: int, merge: bool, device: str) -> tuple[float, float]:
    """One greedy generation of ``new_tokens`` per row (stop tokens ignored) → (its tokens per second, the
    seconds of merging the adapter and restoring the base around it: 0 unmerged)."""
    _sync(device)
    t_merge = time.perf_counter()
    with merged_adapter(model.peft) if merge else contextlib.nullcontext():
        _sync(device)
        t0 = time.perf_counter()
        gen = model.generate(ids, mask, max_new_tokens=new_tokens, do_sample=False, offset=-math.inf, stop_token_ids=[])
        _sync(device)
        t1 = time.perf_counter()
    _sync(device)
    return gen.new_tokens.numel() / (t1 - t0), (time.perf_counter() - t_merge) - (t1 - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, nargs="+", default=[16])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    loaded = load_model(args.model, device=args.device)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.01)
    task = get_task("tom")
    table = Table(
        title=f"Merged LoRA vs peft's LoRA layers: {args.model}, {args.device}, threads {torch.get_num_threads()}, "
        f"{args.new_tokens} new tokens, no exits; tokens/s, median of {args.repeats} alternating runs"
    )
    columns = ("batch", "LoRA layers", "merged", "merged ÷ LoRA layers", "merge + restore (s)", "break-even tokens")
    for col in columns:
        table.add_column(col, justify="right")
    for batch in args.batch:
        prompts = [task.prompt(item, tokenizer) for item in task.items(batch, seed=0, split="test")]
        ids, mask = encode_prompts(tokenizer, prompts, args.device)
        run(model, ids, mask, 4, False, args.device)  # warm-up
        speeds: dict[bool, list[float]] = {False: [], True: []}
        costs: list[float] = []  # the first merge of a freshly loaded model included (memory-mapped weights)
        for _ in range(args.repeats):
            for merge in (False, True):
                speed, cost = run(model, ids, mask, args.new_tokens, merge, args.device)
                speeds[merge].append(speed)
                costs += [cost] if merge else []
        plain, merged = statistics.median(speeds[False]), statistics.median(speeds[True])
        saved = 1 / plain - 1 / merged  # seconds saved per token merged
        even = f"{statistics.median(costs) / saved:,.0f}" if saved > 0 else "never"
        cost = f"{statistics.median(costs):.2f} (first {costs[0]:.2f})"
        table.add_row(str(batch), f"{plain:.1f}", f"{merged:.1f}", f"[bold]{merged / plain:.2f}×", cost, even)
    Console().print(table)


if __name__ == "__main__":
    main()
