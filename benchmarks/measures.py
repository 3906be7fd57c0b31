"""Cost of the externalisation measures next to the eval generation they follow.

    python -m benchmarks.measures                                  # SmolLM2-135M, tom, n=32, 64 and 128 tokens
    python -m benchmarks.measures --n 8 --max-new-tokens 48        # a quick run
    python -m benchmarks.measures --device cuda

Generates like ``thinkaloud eval`` (greedy tokens, exits sampled with the offset; a base model runs
with offset −∞, no exits), then times each measure on those responses: early answering (6 fractions ×
n short greedy answers through ``model.generate``), the future lens (one teacher-forced pass per
response with its exits, ridge fits, held-out readouts) and the fluency proxies (one pass with the
adapter off). Two denominators, per generation budget: the eval's generation alone (strict), and the
wall time of ``thinkaloud eval --measures ''`` (what the measures add to an eval: loading, generation,
scoring, writing). The goal: reliance + lens ≤ 1× the eval's own time.

Where the time goes: early answering reads each response's prompt + reasoning once
(``thinkaloud.model.generate.prefill``) and answers all its cuts from those keys and values, stopping
each answer at the end of its first line; the future lens is one teacher-forced pass, the ridge fits
and the held-out readouts, most of them settled on the logits of the texts' own tokens
(``thinkaloud.eval.lens.top1``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.tasks import get_task
from thinkaloud.eval.fluency import fluency
from thinkaloud.eval.lens import future_lens
from thinkaloud.eval.reliance import ANSWER_TOKENS, early_answering, model_answerer
from thinkaloud.eval.responses import from_generation
from thinkaloud.eval.run import EvalConfig, evaluate
from thinkaloud.model.loading import load_model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def measure(args, model, tokenizer, task, items, offset: float, max_new_tokens: int) -> dict:
    """Seconds of: the eval without measures (wall), its generation alone, and each measure."""
    with tempfile.TemporaryDirectory() as out, open(os.devnull, "w") as null:
        config = EvalConfig(
            model=args.model,
            out=out,
            task=args.task,
            n=args.n,
            seed=args.seed,
            max_new_tokens=max_new_tokens,
            batch_size=args.batch_size,
            speed_baseline=False,
            measures=[],
            show=0,
            device=args.device,
        )
        with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            _, eval_wall = timed(args.device, lambda: evaluate(config))

    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    responses, t_gen = [], 0.0
    for s in range(0, len(items), args.batch_size):
        chunk = items[s : s + args.batch_size]
        ids, mask = encode_prompts(tokenizer, [task.prompt(item, tokenizer) for item in chunk], args.device)
        gen, seconds = timed(
            args.device,
            lambda ids=ids, mask=mask: model.generate(
                ids,
                mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                offset=offset,
                pad_token_id=tokenizer.pad_token_id,
                generator=generator,
            ),
        )
        t_gen += seconds
        responses += from_generation(gen, chunk)
    answerer = model_answerer(
        model, tokenizer, offset=offset, max_new_tokens=args.answer_tokens, batch_size=args.batch_size, seed=args.seed
    )
    (rel, _), t_rel = timed(args.device, lambda: early_answering(task, responses, tokenizer, answerer))
    (lens, _), t_lens = timed(args.device, lambda: future_lens(model, responses))
    (flu, _), t_flu = timed(args.device, lambda: fluency(model, responses))
    tokens = sum(len(r.response_ids) for r in responses)
    return dict(
        T=max_new_tokens,
        tokens=tokens,
        eval=eval_wall,
        gen=t_gen,
        rel=t_rel,
        lens=t_lens,
        flu=t_flu,
        reliance=rel,
        lens_summary=lens,
        fluency=flu,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="alias, HF folder or thinkaloud run")
    p.add_argument("--task", default="tom")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-new-tokens", default="64,128", help="generation budgets, comma-separated")
    p.add_argument("--batch-size", type=int, default=16, help="as the eval's --batch-size (also for early answering)")
    p.add_argument("--offset", type=float, default=0.0, help="exit offset for a trained model (a base model: −∞)")
    p.add_argument("--answer-tokens", type=int, default=ANSWER_TOKENS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    console = Console(width=max(Console().width, 120))

    loaded = load_model(args.model, device=args.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    offset = -math.inf if loaded.is_base else args.offset
    task = get_task(args.task)
    items = task.items(args.n, seed=args.seed, split="test")
    budgets = [int(t) for t in str(args.max_new_tokens).split(",")]
    rows = [measure(args, model, tokenizer, task, items, offset, t) for t in budgets]

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    table = Table(
        title=f"Measures vs eval: {args.model} on {args.task}, n={len(items)}, {args.device} {dtype}, "
        f"threads {torch.get_num_threads()}, offset {offset:g}. Seconds; eval = `thinkaloud eval --measures ''` wall "
        "time, generation = its generate calls, ÷ = (reliance + lens) / that"
    )
    columns = ["budget", "tokens", "eval", "generation", "reliance", "lens", "fluency", "÷ generation", "÷ eval"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        both = r["rel"] + r["lens"]
        table.add_row(
            str(r["T"]),
            str(r["tokens"]),
            *(f"{r[k]:.1f}" for k in ("eval", "gen", "rel", "lens", "flu")),
            f"[bold]{both / r['gen']:.2f}",
            f"[bold]{both / r['eval']:.2f}",
        )
    console.print(table)
    for r in rows:
        rel, lens, flu = r["reliance"], r["lens_summary"], r["fluency"]
        curve = ", ".join(f"{f:g}: {a:.2f}" for f, a in zip(rel["fractions"], rel["agreement"] or []))
        aoc = rel["aoc"] if rel["aoc"] is None else round(rel["aoc"], 3)
        console.print(
            f"[{r['T']} tokens] early answering: agreement {{{curve}}}, AOC {aoc}, accuracy f=0 "
            f"{rel['accuracy_f0']}, f=1 {rel['accuracy_f1']} ({rel['n_skipped']} without an answer); future lens "
            f"top-1 k=1,2,3 at layers {lens['layers']}: "
            + "; ".join(" ".join(f"{v:.2f}" for v in row) for row in lens["accuracy"] or [])
            + f"; fluency: base NLL {flu['base_nll']:.3f}, rep-4 {flu['rep4']:.3f}, distinct-2 {flu['distinct2']:.3f}"
        )


if __name__ == "__main__":
    main()
