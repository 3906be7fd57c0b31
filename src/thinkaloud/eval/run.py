"""The ``eval`` job: generate with exits, score, measure, write an eval directory.

``evaluate(EvalConfig)`` runs one model on ``n`` items of a task and writes the eval directory that
``thinkaloud.report.build`` reads (its docstring is the contract):

1. the model's lineage (``thinkaloud.eval.lineage``): base model, SFT run or RL run, with the KL
   factor of its Stage-1 run, its training task and calibration. The task defaults to the lineage's
   (else ``DEFAULT_TASK``); the items must not overlap the calibration the model was trained on
   (``check_no_leakage``: the job stops before loading the model and names the overlapping items).
   A data file is used as named (``thinkaloud.data.gsm8k``): ``summary.json``'s ``data`` and the
   terminal say which file and how many of its rows the items were drawn from;
2. load the model (``thinkaloud.model.loading.load_model``). A base model has fresh heads that never
   fire; it is evaluated with offset = −∞ (no exits) and labelled "base". Otherwise the offset is
   ``--offset`` if given, else the one recorded with the model by ``thinkaloud risk --save`` (with a
   note when the task or generation length differ from its guarantee's), else 0: ``eval_offset`` in
   ``thinkaloud.eval.offset``; the terminal and ``summary.json`` (``offset_source``) say which;
3. render the prompts, generate in batches (KV cache, real layer skipping). Exits are always sampled
   (Bernoulli at each exit layer, docs/method.md §1); ``do_sample`` only chooses between greedy and sampled
   *tokens*. The wall time of generation gives ``tokens_per_s`` (prefill included); the engine's
   prefill/decode split gives the speed fields (``thinkaloud.eval.speed``);
4. decode each generated token to the exact text it adds, score the completion with the task
   (strict answer extraction unless ``lenient_answers``);
5. metrics over every generated token (the stop token included): early-exit rate, ALS, exit
   histogram, FLOP savings (analytic, with each token's real context length);
6. the measures, in the order of ``measures_for(config)`` (``thinkaloud.measures.base`` says what a
   measure is): the calibration target and its TV distance, the measured speed against the base
   model, the coherence judge, then the externalisation measures named in ``--measures``
   (``thinkaloud.measures.externalisation``: reliance on the written reasoning, future lens, fluency
   proxies; all three by default: reliance + lens cost about 0.5–0.6× an eval's own time on a CPU), then
   the load-bearing ones (``thinkaloud.measures.loadbearing``: filler, mistakes, paraphrase, decodability;
   off by default);
7. ``records.jsonl``, ``summary.json``, ``config.json`` (this config and what was resolved from the
   lineage) and ``tokens.html`` (first record), all written atomically; a summary table and coloured
   responses in the terminal.

The calibration target's KL factor: ``kl_factor`` if given, else the lineage's (the SFT run's, also
through RL runs on top of it), else 1.0 with a note (a base model or an unknown lineage);
``summary.json`` says which (``"target": {"kl_factor", "source"}``). ``--no-target`` skips it.

Defaults that differ from the write-up: it evaluated 50 GSM8K prompts (here ``n=32`` on
``rg:chain_sum`` unless the lineage names a task) and generated up to 400 new tokens (here 128); its
judge was GPT-5 with its own rubric (``--rubric paper`` restates it; ours is the default).
``summary.json`` stores ``offset: null`` when no exits can happen (offset = −∞), as JSON has no infinity.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.task import Item, Task
from thinkaloud.data.tasks import DEFAULT_TASK, load_items
from thinkaloud.eval.decode import token_strings
from thinkaloud.eval.lineage import Lineage, check_no_leakage, lineage
from thinkaloud.eval.offset import eval_offset
from thinkaloud.eval.speed import speed_measure, warm_up
from thinkaloud.io import atomic_write_json, atomic_write_text
from thinkaloud.measures import metrics
from thinkaloud.measures.base import EvalContext, GenBatch, Measure, apply_measure, progress
from thinkaloud.measures.config import EvalConfig
from thinkaloud.measures.core import judge_measure, target_measure
from thinkaloud.measures.externalisation import EXTERNALISATION_MEASURES
from thinkaloud.measures.loadbearing.eval_measures import LOADBEARING_MEASURES
from thinkaloud.model.loading import Loaded, default_device, load_model
from thinkaloud.model.merging import merged_adapter
from thinkaloud.model.recorded import RUN_MODEL_DIR
from thinkaloud.report import viz
from thinkaloud.report.terminal import describe_target, print_results

BASE_LABEL = "base"
DEFAULT_KL_FACTOR = 1.0
DEFAULT_SOURCE = "the default"  # how a target's source begins when no KL factor was given or found


def resolve_target(config: EvalConfig, origin: Lineage) -> dict[str, Any] | None:
    """The calibration target to compare with: {"kl_factor", "source"}, or None when it is off."""
    if not config.target:
        return None
    if config.kl_factor is not None:
        return {"kl_factor": float(config.kl_factor), "source": "kl_factor given"}
    if origin.kl_factor is not None:
        return {"kl_factor": origin.kl_factor, "source": origin.source}
    return {
        "kl_factor": DEFAULT_KL_FACTOR,
        "source": f"{DEFAULT_SOURCE}, since the lineage has no KL factor ({origin.source})",
    }


def measures_for(config: EvalConfig) -> list[Measure]:
    """The measures of an eval, in the order they run (each returns its fields, null when off)."""
    return [target_measure, speed_measure, judge_measure, *EXTERNALISATION_MEASURES, *LOADBEARING_MEASURES]


# ---------------------------------------------------------------------------------------------------
# Generation


def _generate_all(
    loaded: Loaded, task: Task, items: list[Item], config: EvalConfig, offset: float, device: str, console: Console
) -> tuple[list[GenBatch], float]:
    """Generate every item in batches → (batches, seconds spent inside generate)."""
    tokenizer = loaded.tokenizer
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batches, seconds = [], 0.0
    merged = merged_adapter(loaded.model.peft) if config.merge_adapter else contextlib.nullcontext()
    with progress(console) as bars, merged:
        bar = bars.add_task("generating", total=len(items))
        for s in range(0, len(items), config.batch_size):
            chunk = items[s : s + config.batch_size]
            prompts = [task.prompt(item, tokenizer) for item in chunk]
            ids, mask = encode_prompts(tokenizer, prompts, device)  # (b, P) each
            if s == 0 and device.startswith("cuda"):
                warm_up(loaded.model, ids, mask, tokenizer.pad_token_id)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen = loaded.model.generate(
                ids,
                mask,
                max_new_tokens=config.max_new_tokens,
                do_sample=config.do_sample,
                temperature=config.temperature,
                top_p=config.top_p,
                offset=offset,
                pad_token_id=tokenizer.pad_token_id,
                generator=generator,
            )
            seconds += time.perf_counter() - t0  # generate ends synchronised (its last timestamp)
            batches.append(GenBatch(chunk, prompts, gen, mask.sum(-1).cpu()))
            bars.advance(bar, len(chunk))
    return batches, seconds


def _records(
    loaded: Loaded, task: Task, batches: list[GenBatch]
) -> tuple[list[dict], list[list[int]], list[list[int]]]:
    """(records, exit layers per record, attended context length per token per record)."""
    tokenizer = loaded.tokenizer
    records, layers_per_record, context_per_record = [], [], []
    for b in batches:
        for i, item in enumerate(b.items):
            n = int(b.gen.lengths[i])
            ids = b.gen.new_tokens[i, :n].tolist()
            layers = b.gen.exit_layers[i, :n].tolist()
            completion: str = tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[assignment]  # one sequence: a str
            records.append(
                {
                    "id": item.id,
                    "prompt": b.prompts[i],
                    "completion": completion,
                    "tokens": token_strings(tokenizer, ids),
                    "exit_layers": layers,
                    "score": float(task.score(item, completion)),
                }
            )
            layers_per_record.append(layers)
            context_per_record.append([int(b.prompt_lengths[i]) + k for k in range(n)])  # positions attended
    return records, layers_per_record, context_per_record


def _run_name(spec: str) -> str:
    """The name of a run folder: ``runs/sft-kl1`` and ``runs/sft-kl1/model`` are both "sft-kl1"."""
    path = Path(spec).resolve()
    return path.parent.name if path.name == RUN_MODEL_DIR else path.name


# ---------------------------------------------------------------------------------------------------
# The job


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation described in the module docstring; returns the summary (as in summary.json)."""
    console = Console()
    out = Path(config.out)
    device = config.device or default_device()
    origin = lineage(config.model)
    for note in origin.notes:
        console.print(f"[yellow]{note}")
    task_spec = config.task or origin.task or DEFAULT_TASK
    task, items = load_items(task_spec, config.n, seed=config.seed, split=config.split, lenient=config.lenient_answers)
    unchecked = check_no_leakage(origin.calib, items, what=f"{config.model} was trained on")
    if unchecked:
        console.print(f"[yellow]{unchecked}")
    target = resolve_target(config, origin)
    if target is not None and target["source"].startswith(DEFAULT_SOURCE):
        console.print(f"[yellow]target: {describe_target(target)}")

    with console.status(f"loading {config.model}…"):
        loaded = load_model(config.model, device=device)
    model = loaded.model
    offset, offset_source, notes = eval_offset(config.offset, loaded, task_spec, config.max_new_tokens)
    console.print(f"offset {offset:g}: {offset_source}")
    for note in notes:
        console.print(f"[yellow]{note}")
    label = config.label or (BASE_LABEL if loaded.is_base else _run_name(config.model))
    L, E = model.num_layers, list(model.layers)

    batches, seconds = _generate_all(loaded, task, items, config, offset, device, console)
    records, layers, context = _records(loaded, task, batches)
    n_tokens = sum(len(x) for x in layers)
    summary: dict[str, Any] = {
        "model": config.model,
        "label": label,
        "stage": origin.stage,
        "task": task_spec,
        "split": config.split,
        "data": task.data_source(config.split),
        "n": len(records),
        "num_layers": L,
        "exit_layers": E,
        "offset": None if offset == -math.inf else offset,
        "offset_source": offset_source,
        "kl_factor": None if target is None else target["kl_factor"],
        "target": target,
        "accuracy": sum(r["score"] for r in records) / len(records),
        "early_exit_rate": metrics.early_exit_rate(layers, L),
        "als": metrics.average_layer_savings(layers, L),
        "mean_length": n_tokens / len(records),
        "tokens_per_s": n_tokens / seconds if seconds > 0 else None,
        "flop_savings": metrics.flop_savings(layers, context=context, **metrics.model_dims(model.hf_config)),
        "exit_hist": {str(k): v for k, v in metrics.exit_histogram(layers, E, num_layers=L).items()},
    }
    ctx = EvalContext(config, loaded, task, items, batches, records, layers, target, device, console, offset=offset)
    for measure in measures_for(config):
        apply_measure(measure, ctx, summary)

    atomic_write_text(out / "records.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_json(
        out / "config.json",
        {
            **asdict(config),
            "offset": summary["offset"],
            "device": device,
            "exit_sampling": "sampled (Bernoulli per exit layer)",
            "resolved": {"task": task_spec, "target": target, "lineage": origin.as_dict()},
        },
    )
    atomic_write_json(out / "summary.json", summary)
    first = records[0]
    atomic_write_text(
        out / "tokens.html",
        viz.tokens_html(first["tokens"], first["exit_layers"], E, L, title=f"{label} · {first['id']}"),
    )
    print_results(console, summary, records, items, config, out)
    return summary
