"""Cost of the externalisation measures next to the eval generation they follow.

    python benchmarks/measures.py                                  # SmolLM2-135M, tom, n=32, this machine
    python benchmarks/measures.py --n 8 --max-new-tokens 48        # a quick run
    python benchmarks/measures.py --device cuda

Generates like ``thinkaloud eval`` (greedy tokens, exits sampled with the offset; a base model runs
with offset −∞, no exits), then times each measure on those responses: early answering (6 fractions ×
n short greedy answers through ``model.generate``), the future lens (one teacher-forced pass per
response with its exits, ridge fits, held-out readouts) and the fluency proxies (one pass with the
adapter off). The goal: (reliance + lens) / eval generation ≤ 1×.

Where the time goes: early answering reads each response's prompt + reasoning once
(``thinkaloud.model.generate.prefill``) and answers all its cuts from those keys and values, stopping
each answer at the end of its first line; the future lens is one teacher-forced pass, the ridge fits
and the held-out readouts, most of them settled on the logits of the texts' own tokens
(``thinkaloud.eval.lens.top1``).
"""

from __future__ import annotations

import argparse
import math
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="alias, HF folder or thinkaloud run")
    p.add_argument("--task", default="tom")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--offset", type=float, default=0.0, help="exit offset for a trained model (a base model: −∞)")
    p.add_argument("--answer-tokens", type=int, default=ANSWER_TOKENS)
    p.add_argument(
        "--answer-batch-size", type=int, default=16, help="responses answered together (as the eval's --batch-size)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    console = Console()

    loaded = load_model(args.model, device=args.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    offset = -math.inf if loaded.is_base else args.offset
    task = get_task(args.task)
    items = task.items(args.n, seed=args.seed, split="test")
    generator = torch.Generator(device=args.device).manual_seed(args.seed)

    responses, t_eval, n_tokens = [], 0.0, 0
    for s in range(0, len(items), args.batch_size):
        chunk = items[s : s + args.batch_size]
        ids, mask = encode_prompts(tokenizer, [task.prompt(item, tokenizer) for item in chunk], args.device)
        gen, seconds = timed(
            args.device,
            lambda ids=ids, mask=mask: model.generate(
                ids,
                mask,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                offset=offset,
                pad_token_id=tokenizer.pad_token_id,
                generator=generator,
            ),
        )
        t_eval += seconds
        n_tokens += int(gen.lengths.sum())
        responses += from_generation(gen, chunk)

    answerer = model_answerer(
        model,
        tokenizer,
        offset=offset,
        max_new_tokens=args.answer_tokens,
        batch_size=args.answer_batch_size,
        seed=args.seed,
    )
    (rel, _), t_rel = timed(args.device, lambda: early_answering(task, responses, tokenizer, answerer))
    (lens, _), t_lens = timed(args.device, lambda: future_lens(model, responses))
    (flu, _), t_flu = timed(args.device, lambda: fluency(model, responses))

    dtype = next(model.parameters()).dtype
    table = Table(
        title=f"Measures vs eval generation: {args.model} on {args.task}, n={len(responses)}, "
        f"max {args.max_new_tokens} new tokens, {args.device} {str(dtype).removeprefix('torch.')}, "
        f"threads {torch.get_num_threads()}, offset {offset:g}"
    )
    for col in ("stage", "seconds", "× eval"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    rows = [
        ("eval generation", t_eval),
        (f"reliance ({len(rel['fractions'])} fractions × {rel['n']} responses)", t_rel),
        (f"future lens ({lens['n_fit_tokens']} fit + {lens['n_test_tokens']} test tokens)", t_lens),
        ("fluency (base NLL + repetition)", t_flu),
    ]
    for name, seconds in rows:
        table.add_row(name, f"{seconds:.1f}", f"{seconds / t_eval:.2f}")
    table.add_row("[bold](reliance + lens) / eval", "", f"[bold]{(t_rel + t_lens) / t_eval:.2f}")
    console.print(table)
    curve = ", ".join(f"{f:g}: {a:.2f}" for f, a in zip(rel["fractions"], rel["agreement"] or []))
    console.print(
        f"{n_tokens} generated tokens. Early answering: agreement {{{curve}}}, AOC "
        f"{rel['aoc'] if rel['aoc'] is None else round(rel['aoc'], 3)}, accuracy f=0 {rel['accuracy_f0']}, "
        f"f=1 {rel['accuracy_f1']}, full {rel['accuracy_full']} ({rel['n_skipped']} without an answer)"
    )
    if lens["accuracy"] is not None:
        rows = [
            f"layer {e}: " + " ".join(f"{v:.2f}" for v in row) + f" | {ll:.2f}"
            for e, row, ll in zip(lens["layers"], lens["accuracy"], lens["logit_lens"])
        ]
        constant = " ".join(f"{v:.2f}" for v in lens["constant"])
        console.print(
            "Future lens top-1 (k = 1, 2, 3 | logit lens): "
            + "; ".join(rows)
            + f"; most frequent token (k = 1, 2, 3): {constant}"
        )
    console.print(
        f"Fluency proxies: base NLL {flu['base_nll']:.3f} nats/token, rep-4 {flu['rep4']:.3f}, "
        f"distinct-2 {flu['distinct2']:.3f}"
    )


if __name__ == "__main__":
    main()
