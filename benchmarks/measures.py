"""Cost of the externalisation and load-bearing measures inside ``thinkaloud eval``.

    python -m benchmarks.measures                                  # SmolLM2-135M, tom, n=32, 64 and 128 tokens
    python -m benchmarks.measures --n 8 --max-new-tokens 48        # a quick run
    python -m benchmarks.measures --device cuda

Per generation budget, the eval is run twice through ``thinkaloud.eval.run.evaluate`` (the product's own
path, nothing re-implemented): once with ``measures=[]``, whose wall time is the eval's own time
(loading, generation, scoring, writing), and once with every measure of ``MEASURES``, whose summary gives
each measure's seconds and the generation's (tokens / ``tokens_per_s``). Ratios over the eval's
generation alone (strict) and over the eval's own wall time (what the measures add to an eval), for
reliance + lens (goal ≤ 1× the eval's own time) and for the four load-bearing measures, filler + mistakes
+ paraphrase + decodability (goal ≤ 1.5×).

Where the time goes: early answering reads each response's prompt + reasoning once
(``thinkaloud.model.generate.prefill``) and answers all its cuts from those keys and values, stopping
each answer at the end of its first line; the future lens is one teacher-forced pass, the ridge fits
and the held-out readouts, most of them settled on the logits of the texts' own tokens
(``thinkaloud.measures.lens.top1``). The load-bearing measures force or continue from the keys and
values of one full-depth read per context (``reliance.model_answerer``); decodability is one
teacher-forced pass with hooks on every layer and L-BFGS on all the probes at once, in their dual form.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from thinkaloud.eval.run import evaluate
from thinkaloud.measures.config import MEASURES, EvalConfig

EXTERNALISATION = ("reliance", "lens")
LOADBEARING = ("filler", "mistakes", "paraphrase", "decodability")


def run_eval(args: argparse.Namespace, max_new_tokens: int, measures: list[str]) -> tuple[dict[str, Any], float]:
    """One quiet ``evaluate`` → (its summary, its wall seconds)."""
    with tempfile.TemporaryDirectory() as out, open(os.devnull, "w") as null:
        config = EvalConfig(
            model=args.model,
            out=out,
            task=args.task,
            n=args.n,
            seed=args.seed,
            offset=args.offset,
            max_new_tokens=max_new_tokens,
            batch_size=args.batch_size,
            speed_baseline=False,
            measures=measures,
            show=0,
            device=args.device,
        )
        with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            t0 = time.perf_counter()
            summary = evaluate(config)
            return summary, time.perf_counter() - t0


def measure(args: argparse.Namespace, max_new_tokens: int) -> dict[str, Any]:
    """Seconds of the eval without measures (wall), and of the generation and each measure of the eval with them."""
    _, eval_wall = run_eval(args, max_new_tokens, [])
    s, _ = run_eval(args, max_new_tokens, list(MEASURES))
    tokens = round(s["n"] * s["mean_length"])
    return {
        "T": max_new_tokens,
        "tokens": tokens,
        "eval": eval_wall,
        "gen": tokens / s["tokens_per_s"],
        **{name: s[name]["seconds"] for name in MEASURES},
        "summary": s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="alias, HF folder or thinkaloud run")
    p.add_argument("--task", default="tom")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-new-tokens", default="64,128", help="generation budgets, comma-separated")
    p.add_argument("--batch-size", type=int, default=16, help="the eval's --batch-size")
    p.add_argument("--offset", type=float, default=None, help="the eval's --offset (default: its own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    console = Console(width=max(Console().width, 200))
    rows = [measure(args, int(t)) for t in str(args.max_new_tokens).split(",")]

    first = rows[0]["summary"]
    table = Table(
        title=f"Measures vs eval: {args.model} on {args.task}, n={first['n']}, {args.device}, threads "
        f"{torch.get_num_threads()}, offset {first['offset']}. Seconds; eval = `thinkaloud eval --measures ''` "
        "wall time, generation = its generate calls; ÷ = (reliance + lens) and (the four load-bearing) / eval"
    )
    columns = ["budget", "tokens", "eval", "generation", *MEASURES, "R+L ÷ gen", "R+L ÷ eval", "4 ÷ gen", "4 ÷ eval"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        both = sum(r[k] for k in EXTERNALISATION)
        four = sum(r[k] for k in LOADBEARING)
        table.add_row(
            str(r["T"]),
            str(r["tokens"]),
            *(f"{r[k]:.1f}" for k in ("eval", "gen", *MEASURES)),
            f"{both / r['gen']:.2f}",
            f"[bold]{both / r['eval']:.2f}",
            f"{four / r['gen']:.2f}",
            f"[bold]{four / r['eval']:.2f}",
        )
    console.print(table)
    for r in rows:
        rel, lens, flu = (r["summary"][name] for name in ("reliance", "lens", "fluency"))
        curve = ", ".join(f"{f:g}: {a:.2f}" for f, a in zip(rel["fractions"], rel["agreement"] or []))
        aoc = rel["aoc"] if rel["aoc"] is None else round(rel["aoc"], 3)
        console.print(
            f"[{r['T']} tokens] early answering: agreement {{{curve}}}, AOC {aoc}, accuracy f=0 "
            f"{rel['accuracy_f0']}, f=1 {rel['accuracy_f1']} ({rel['n_skipped']} without an answer); future lens "
            f"top-1 k=1,2,3 at layers {lens.get('layers')}: "
            + "; ".join(" ".join(f"{v:.2f}" for v in row) for row in lens.get("accuracy") or [])
            + f"; fluency: base NLL {flu['base_nll']:.3f}, rep-4 {flu['rep4']:.3f}, distinct-2 {flu['distinct2']:.3f}"
        )
        s = r["summary"]
        filler, mistakes, para, dec = (s[name] for name in LOADBEARING)
        console.print(
            f"[{r['T']} tokens] filler agreement {filler['agreement']} (n={filler['n']}); mistakes changed "
            f"{mistakes['changed_rate']}, follows {mistakes['follow_rate']} (n={mistakes['n']}, implied "
            f"{mistakes['n_implied']}); paraphrase {para['agreement_original']} → {para['agreement_paraphrased']}; "
            + (
                f"decodability best at f=0 {dec['best'][0]:.2f} (chance {dec['best_chance'][0]:.2f}), f=1 "
                f"{dec['best'][-1]:.2f} (chance {dec['best_chance'][-1]:.2f}), n={dec['n']}"
                if "best" in dec
                else f"decodability {dec}"
            )
        )


if __name__ == "__main__":
    main()
