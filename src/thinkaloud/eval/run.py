"""The ``eval`` and ``report`` jobs: generate with exits, score, measure, write an eval directory.

``evaluate(EvalConfig)`` runs one model on ``n`` items of a task and writes the eval directory that
``thinkaloud.eval.report`` reads (its docstring is the contract):

1. load the model (``thinkaloud.model.loading.load_model``). A base model has fresh heads that never
   fire; it is evaluated with offset = −∞ (no exits) and labelled "base";
2. render the prompts, generate in batches (KV cache, real layer skipping). Exits are always sampled
   (Bernoulli at each exit layer, METHOD.md §1); ``do_sample`` only chooses between greedy and sampled
   *tokens*. The wall time of generation alone gives tokens/s;
3. decode each generated token to the exact text it adds, score the completion with the task;
4. metrics over every generated token (the stop token included): early-exit rate, ALS, exit
   histogram, FLOP savings (analytic, with each token's real context length);
5. the calibration target of the same completions (``kl_factor``): per-layer KL to the final layer
   under the logit lens with the adapter disabled (the base model), ``exit_targets`` → mean target
   histogram, and its TV distance to the exit histogram;
6. the coherence judge, if configured;
7. ``records.jsonl``, ``summary.json``, ``config.json`` (this config) and ``tokens.html`` (first
   record), all written atomically; a summary table and coloured responses in the terminal.

Departures and choices: the KL target is computed on the evaluated model's own completions (not on
base-model rollouts as in calibration), so it answers "where would the calibration target exit on
this text"; ``summary.json`` stores ``offset: null`` when no exits can happen (offset = −∞), since
JSON has no infinity.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.tasks import DEFAULT_TASK, SPLITS, Item, Task, get_task
from thinkaloud.eval import judge as judging
from thinkaloud.eval import metrics, viz
from thinkaloud.io import atomic_write_json, atomic_write_text
from thinkaloud.model.exits import exit_targets
from thinkaloud.model.generate import GenerationOutput
from thinkaloud.model.loading import RUN_MODEL_DIR, Loaded, default_device, load_model

BASE_LABEL = "base"


@dataclass
class EvalConfig:
    """Generate with exits on a task, score, and write an eval directory (records, summary, token view)."""

    model: str = field(metadata={"help": "a run folder, a saved early-exit model, or a base model (alias such "
                                         "as smollm2-135m, local HF folder); a base model runs without exits"})
    out: str = field(metadata={"help": "output directory (records.jsonl, summary.json, config.json, tokens.html)"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task spec: gsm8k[:<path>], rg:<dataset>, tom"})
    n: int = field(default=32, metadata={"help": "number of items"})
    seed: int = field(default=0, metadata={"help": "selects the items and seeds exit and token sampling"})
    split: str = field(default="test", metadata={"help": f"item split, one of {', '.join(SPLITS)}"})
    offset: float = field(default=0.0, metadata={"help": "added to every exit logit: positive = earlier exits, "
                                                         "--offset=-inf = no exits (a base model always runs without exits)"})
    max_new_tokens: int = field(default=128, metadata={"help": "generation budget per item"})
    batch_size: int = field(default=16, metadata={"help": "items generated together"})
    do_sample: bool = field(default=False, metadata={"help": "sample tokens (else greedy tokens); exits are "
                                                             "always sampled layer by layer"})
    temperature: float = field(default=1.0, metadata={"help": "token sampling temperature (with --do-sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (with --do-sample)"})
    kl_factor: float | None = field(default=1.0, metadata={
        "help": "KL factor F of the calibration target q* = 2σ(−F·D) computed on the same completions with the "
                "adapter off (target histogram + TV distance); null in a --config YAML skips it"})
    judge: str | None = field(default=None, metadata={
        "help": "coherence judge: 'openai:<base_url>#<model>' (key from $OPENAI_API_KEY, if set) or "
                "'hf:<model path or alias>'; unset = no judge"})
    judge_concurrency: int = field(default=4, metadata={"help": "parallel requests to an openai judge"})
    label: str | None = field(default=None, metadata={"help": "name in reports (default: 'base' for a base "
                                                              "model, else the model folder's name)"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"})
    show: int = field(default=1, metadata={"help": "responses to print in the terminal, coloured by exit layer"})

    def __post_init__(self) -> None:
        for name in ("n", "batch_size", "max_new_tokens", "judge_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.kl_factor is not None and self.kl_factor < 0:
            raise ValueError(f"kl_factor must be >= 0 (or null to skip the target), got {self.kl_factor}")
        if math.isnan(self.offset) or self.offset == math.inf:
            raise ValueError(f"offset must be a number or -inf, got {self.offset}")
        if self.show < 0:
            raise ValueError(f"show must be >= 0, got {self.show}")
        if self.judge is not None:
            parse_judge_spec(self.judge)


@dataclass
class ReportConfig:
    """Build report.md and report.html from eval, sweep and RL directories."""

    dirs: list[str] = field(metadata={"help": "result directories, comma-separated (eval: summary.json, "
                                              "sweep: sweep.json, RL: log.jsonl)"})
    out: str = field(metadata={"help": "output directory for report.md, report.html, figures/, tokens/"})
    examples: int = field(default=1, metadata={"help": "token views per eval directory"})
    max_example_tokens: int = field(default=400, metadata={"help": "tokens shown per token view"})

    def __post_init__(self) -> None:
        if not self.dirs:
            raise ValueError("dirs is empty: give at least one result directory")
        missing = [d for d in self.dirs if not Path(d).is_dir()]
        if missing:
            raise ValueError(f"not a directory: {', '.join(missing)}")
        if self.examples < 0 or self.max_example_tokens < 1:
            raise ValueError("need examples >= 0 and max_example_tokens >= 1")


# ---------------------------------------------------------------------------------------------------
# Judge


def parse_judge_spec(spec: str) -> tuple[str, str, str | None]:
    """'openai:<base_url>#<model>' → ("openai", base_url, model); 'hf:<model>' → ("hf", model, None)."""
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        url, _, model = rest.partition("#")
        if url.startswith(("http://", "https://")) and model:
            return "openai", url, model
    elif kind == "hf" and rest:
        return "hf", rest, None
    raise ValueError(f"judge must be 'openai:<base_url>#<model>' (e.g. openai:http://localhost:8000/v1#qwen) "
                     f"or 'hf:<model path or alias>', got {spec!r}")


def make_judge(spec: str, concurrency: int = 4, device: str | None = None) -> judging.Judge:
    kind, where, model = parse_judge_spec(spec)
    if kind == "openai":
        return judging.OpenAIJudge(where, model, concurrency=concurrency)
    from thinkaloud.hub import load_causal_lm, load_tokenizer

    lm, _ = load_causal_lm(where, device=device)
    return judging.HFJudge(lm, load_tokenizer(where))


# ---------------------------------------------------------------------------------------------------
# Decoding


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded sequence (special tokens kept).

    Decodes growing prefixes and takes the difference, so ``"".join(result)`` is the decoded text.
    A token that ends inside a multi-byte character (the prefix ends in U+FFFD) adds "" and the token
    that completes the character carries all of it (after 4 tokens without a complete character, as
    from invalid byte sequences, the replacement characters are assigned as they are). If a tokenizer rewrites earlier text when more
    tokens follow, the token falls back to its own ``convert_tokens_to_string``.
    """
    out: list[str] = []
    done = ""  # decoded text of the tokens assigned so far
    start = 0  # first token not yet assigned text
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and i + 1 < len(ids) and i - start < 3:
            continue  # incomplete character (UTF-8: at most 4 bytes): wait for the next token
        if text.startswith(done):
            out += [""] * (i - start) + [text[len(done):]]
        else:
            pieces = tokenizer.convert_ids_to_tokens(ids[start: i + 1])
            out += [tokenizer.convert_tokens_to_string([p]) for p in pieces]
        done, start = text, i + 1
    return out


# ---------------------------------------------------------------------------------------------------
# The job


@dataclass
class _Batch:
    items: list[Item]
    prompts: list[str]
    gen: GenerationOutput
    prompt_lengths: torch.Tensor  # (b,) real prompt tokens per row


def _prompt_ids(tokenizer: Any, prompts: list[str], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (b, P) ids and mask, by the one tokenisation path of every stage."""
    return encode_prompts(tokenizer, prompts, device)


def _generate_all(loaded: Loaded, task: Task, items: list[Item], config: EvalConfig, offset: float,
                  device: str, console: Console) -> tuple[list[_Batch], float]:
    """Generate every item in batches → (batches, seconds spent inside generate)."""
    tokenizer = loaded.tokenizer
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batches, seconds = [], 0.0
    with _progress(console) as progress:
        bar = progress.add_task("generating", total=len(items))
        for s in range(0, len(items), config.batch_size):
            chunk = items[s:s + config.batch_size]
            prompts = [task.prompt(item, tokenizer) for item in chunk]
            ids, mask = _prompt_ids(tokenizer, prompts, device)  # (b, P) each
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen = loaded.model.generate(ids, mask, max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                                        temperature=config.temperature, top_p=config.top_p, offset=offset,
                                        pad_token_id=tokenizer.pad_token_id, generator=generator)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            batches.append(_Batch(chunk, prompts, gen, mask.sum(-1).cpu()))
            progress.advance(bar, len(chunk))
    return batches, seconds


def _target_log_probs(loaded: Loaded, batches: list[_Batch], kl_factor: float, console: Console) -> torch.Tensor:
    """Log calibration targets (N, m+1) of every generated token, rows in record order."""
    model = loaded.model
    parts = []
    with _progress(console) as progress:
        bar = progress.add_task("target (layer KL)", total=sum(len(b.items) for b in batches))
        for b in batches:
            gen = b.gen
            positions = torch.zeros_like(gen.attention_mask, dtype=torch.bool)  # (b, P+N)
            positions[:, gen.predicting_positions()] = gen.completion_mask  # positions that predicted new tokens
            with model.disable_adapter():
                kl = model.layer_kl(gen.sequences, gen.attention_mask, positions=positions)  # (b, P+N, m)
            parts.append(exit_targets(kl[positions], kl_factor).cpu())  # (n_tokens, m+1), row-major = record order
            progress.advance(bar, len(b.items))
    return torch.cat(parts)


def _judge_records(config: EvalConfig, records: list[dict[str, Any]], items: list[Item], device: str,
                   console: Console) -> dict[str, Any]:
    judge = make_judge(config.judge, config.judge_concurrency, device)
    with console.status(f"judging {len(records)} responses with {config.judge}…"):
        results = judging.judge_many(judge, [(item.question, r["completion"]) for item, r in zip(items, records)])
    for r, res in zip(records, results):
        r["judge"] = res.judgement.as_dict() if res.judgement else None
        r["judge_missing"] = res.missing if res.judgement is None else None
    return judging.coherence_summary(results)


def _run_name(spec: str) -> str:
    """The name of a run folder: ``runs/sft-kl1`` and ``runs/sft-kl1/model`` are both "sft-kl1"."""
    path = Path(spec).resolve()
    return path.parent.name if path.name == RUN_MODEL_DIR else path.name


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation described in the module docstring; returns the summary (as in summary.json)."""
    console = Console()
    out = Path(config.out)
    device = config.device or default_device()
    with console.status(f"loading {config.model}…"):
        loaded = load_model(config.model, device=device)
    model, tokenizer = loaded.model, loaded.tokenizer
    offset = -math.inf if loaded.is_base else float(config.offset)
    if loaded.is_base and config.offset != 0.0:
        console.print(f"[yellow]{config.model} is a base model (no trained exit heads): offset {config.offset} "
                      "is ignored, it runs without exits.")
    label = config.label or (BASE_LABEL if loaded.is_base else _run_name(config.model))
    L, E = model.num_layers, list(model.layers)

    task = get_task(config.task)
    items = task.items(config.n, seed=config.seed, split=config.split)
    batches, seconds = _generate_all(loaded, task, items, config, offset, device, console)

    records, layers_per_record, context_per_record = [], [], []
    for b in batches:
        for i, item in enumerate(b.items):
            n = int(b.gen.lengths[i])
            ids = b.gen.new_tokens[i, :n].tolist()
            layers = b.gen.exit_layers[i, :n].tolist()
            completion = tokenizer.decode(ids, skip_special_tokens=True)
            records.append({"id": item.id, "prompt": b.prompts[i], "completion": completion,
                            "tokens": token_strings(tokenizer, ids), "exit_layers": layers,
                            "score": float(task.score(item, completion)), "judge": None, "judge_missing": None})
            layers_per_record.append(layers)
            context_per_record.append([int(b.prompt_lengths[i]) + k for k in range(n)])  # positions attended
    n_tokens = sum(len(x) for x in layers_per_record)

    target_hist = tv = None
    exit_hist = metrics.exit_histogram(layers_per_record, E, num_layers=L)
    if config.kl_factor is not None:
        log_targets = _target_log_probs(loaded, batches, config.kl_factor, console)  # (N, m+1)
        target_hist = metrics.target_histogram(log_targets, E + [L])
        tv = metrics.tv_distance(exit_hist, target_hist)
    coherence = _judge_records(config, records, items, device, console) if config.judge else None

    summary = {
        "model": config.model, "label": label, "task": config.task, "n": len(records), "num_layers": L,
        "exit_layers": E, "offset": None if offset == -math.inf else offset, "kl_factor": config.kl_factor,
        "accuracy": sum(r["score"] for r in records) / len(records),
        "early_exit_rate": metrics.early_exit_rate(layers_per_record, L),
        "als": metrics.average_layer_savings(layers_per_record, L),
        "mean_length": n_tokens / len(records),
        "tokens_per_s": n_tokens / seconds if seconds > 0 else None,
        "flop_savings": metrics.flop_savings(layers_per_record, context=context_per_record,
                                             **metrics.model_dims(model.hf_config)),
        "exit_hist": {str(k): v for k, v in exit_hist.items()},
        "target_hist": None if target_hist is None else {str(k): v for k, v in target_hist.items()},
        "tv_distance": tv,
        "coherence": coherence,
    }
    atomic_write_text(out / "records.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_json(out / "config.json", {**asdict(config), "offset": summary["offset"], "device": device,
                                            "exit_sampling": "sampled (Bernoulli per exit layer)"})
    atomic_write_json(out / "summary.json", summary)
    first = records[0]
    atomic_write_text(out / "tokens.html", viz.tokens_html(first["tokens"], first["exit_layers"], E, L,
                                                           title=f"{label} · {first['id']}"))
    _print_results(console, summary, records, items, config, E, L, out)
    return summary


# ---------------------------------------------------------------------------------------------------
# Terminal output


def _print_results(console: Console, s: dict[str, Any], records: list[dict[str, Any]], items: list[Item],
                   config: EvalConfig, E: list[int], L: int, out: Path) -> None:
    for r, item in list(zip(records, items))[:config.show]:
        console.rule(f"{s['label']} · {r['id']} · reference {item.answer!r} · score {r['score']:g}")
        viz.render_terminal(r["tokens"], r["exit_layers"], E, L, console=console)
    tokens = "greedy" if not config.do_sample else f"sampled (T={config.temperature:g}, top-p={config.top_p:g})"
    exits = "none (offset −∞)" if s["offset"] is None else f"sampled, offset {s['offset']:g}"
    console.print(f"[bold]{s['label']}[/bold]: {s['model']} on {s['task']} · n={s['n']} · tokens {tokens} · "
                  f"exits {exits}", highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    coherence = s["coherence"]
    rows = [
        ("accuracy", _pct(s["accuracy"])), ("early-exit rate", _pct(s["early_exit_rate"])), ("ALS", _pct(s["als"])),
        ("FLOP savings", _pct(s["flop_savings"])), ("mean length (tokens)", f"{s['mean_length']:.1f}"),
        ("tokens/s (generation)", "—" if s["tokens_per_s"] is None else f"{s['tokens_per_s']:.1f}"),
        ("TV distance to target", "—" if s["tv_distance"] is None else f"{s['tv_distance']:.3f}"),
        ("coherence (judge overall)", "—" if not coherence or coherence["mean"] is None
         else f"{coherence['mean']:.2f} (n={coherence['n_judged']}, {coherence['n_missing']} missing)"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    hist = Table()
    hist.add_column("tokens per exit layer")
    for layer in s["exit_hist"]:
        hist.add_column(f"{layer}" + (" (none)" if int(layer) == L else ""), justify="right")
    hist.add_row("model", *(_pct(v) for v in s["exit_hist"].values()))
    if s["target_hist"] is not None:
        hist.add_row(f"target (F={s['kl_factor']:g})", *(_pct(s["target_hist"][k]) for k in s["exit_hist"]))
    console.print(hist)
    console.print(f"Wrote summary.json, records.jsonl, config.json and tokens.html to {out}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report(config: ReportConfig) -> tuple[Path, Path]:
    """Build the report of ``config.dirs`` into ``config.out``; prints and returns (report.md, report.html)."""
    from thinkaloud.eval.report import build_report

    console = Console()
    with console.status(f"building the report of {len(config.dirs)} directories…"):
        md, page = build_report(config.dirs, config.out, n_examples=config.examples,
                                max_example_tokens=config.max_example_tokens)
    console.print(f"Wrote {md}\nWrote {page}")
    return md, page
