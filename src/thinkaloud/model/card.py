"""The model card: a ``README.md`` in the Hugging Face format beside the saved weights.

``EarlyExitModel.save_pretrained`` writes it with every save, and ``thinkaloud card`` rewrites it for
a saved folder (e.g. to add an eval's metrics). The card has YAML front matter that a hub reads
(``library_name: peft``, ``base_model`` with ``base_model_relation: adapter``, ``pipeline_tag``,
``tags``) and a body that says:

- the base model and its unembedding hash (the fingerprint ``from_pretrained`` checks), its depth;
- the exit layers and the exit heads' rule (exit = freeze, offset added to every exit logit);
- the LoRA settings (rank, alpha, dropout, target modules);
- the training stage and its key settings, read from the run's ``config.yaml`` beside ``model/``
  (an SFT run: ``calib`` and ``kl_factor``; an RL run: ``lam`` and ``model``; as in
  ``thinkaloud.eval.lineage``); "untrained" when no run config is there;
- the offset recorded by ``thinkaloud risk --save`` and how it was chosen, when there is one;
- the last eval's metrics when known: the ``summary.json`` of the eval folders given to ``thinkaloud
  card``, else the newest one found one folder below the run (where ``thinkaloud sweep`` puts it);
- how to use it: chat, lm-evaluation-harness, Python.

``base_model`` must be a hub id for a hub to link it: an alias is mapped to its hub id (``HUB_IDS``),
a hub id is kept, and a local folder is named in the body only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from thinkaloud.io import atomic_write_text
from thinkaloud.model.recorded import META_FILE, RISK_KEY, describe_record, read_meta

CARD_FILE = "README.md"
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*")
RUN_CONFIG = "config.yaml"
SFT_KEYS = (
    "calib",
    "model",
    "kl_factor",
    "exit_loss",
    "distill_kl",
    "steps",
    "batch_size",
    "head_lr",
    "lora_lr",
    "seed",
)
RL_KEYS = (
    "model",
    "task",
    "lam",
    "beta",
    "kl_target",
    "kl_horizon",
    "k",
    "prompts_per_step",
    "steps",
    "offset",
    "max_new_tokens",
    "head_lr",
    "lora_lr",
    "runs",
    "seed",
)
EVAL_KEYS = (
    ("task", "task"),
    ("split", "split"),
    ("n", "items"),
    ("offset", "offset"),
    ("accuracy", "accuracy"),
    ("early_exit_rate", "early-exit rate"),
    ("als", "ALS (average layer savings)"),
    ("flop_savings", "FLOP savings"),
    ("tokens_per_s", "tokens/s"),
    ("speedup_vs_base", "decode speedup vs base"),
)


@dataclass
class CardConfig:
    """Write (or rewrite) the model card README.md of a saved model, with an eval's metrics."""

    model: str = field(metadata={"help": "a run folder or a saved early-exit model folder"})
    evals: list[str] = field(
        default_factory=list,
        metadata={
            "help": "eval folders (summary.json); the last one given goes on the card (default: the newest found in "
            "the run folder)",
            "positional": True,
        },
    )


def hub_base_model(source: str) -> str | None:
    """The hub id of a base model name (alias → its hub id, hub id kept); None for a local folder."""
    if source in HUB_IDS:
        return HUB_IDS[source]
    return source if _HUB_ID.fullmatch(source) and not Path(source).exists() else None


def run_folder(model_dir: Path) -> Path:
    """The run a saved model belongs to: ``RUN`` for ``RUN/model``, else the folder itself."""
    return model_dir.parent if model_dir.name == "model" else model_dir


def training_info(model_dir: Path) -> dict[str, Any]:
    """{"stage": "sft" | "rl" | "untrained", "config": path or None, "settings": {key: value}}."""
    run = run_folder(model_dir)
    for candidate in (run / RUN_CONFIG, run.parent / RUN_CONFIG if re.fullmatch(r"run-\d+", run.name) else None):
        if candidate is None or not candidate.is_file():
            continue
        try:
            cfg = yaml.safe_load(candidate.read_text()) or {}
        except yaml.YAMLError:
            continue
        if isinstance(cfg, dict) and "calib" in cfg and "kl_factor" in cfg:
            return {"stage": "sft", "config": str(candidate), "settings": {k: cfg[k] for k in SFT_KEYS if k in cfg}}
        if isinstance(cfg, dict) and "lam" in cfg and "model" in cfg:
            return {"stage": "rl", "config": str(candidate), "settings": {k: cfg[k] for k in RL_KEYS if k in cfg}}
    return {"stage": "untrained", "config": None, "settings": {}}


def last_eval(model_dir: Path, evals: list[str] | None = None) -> dict[str, Any] | None:
    """The summary.json of the last eval folder given, else the newest readable one below the run; None if none."""
    if evals:
        path = Path(evals[-1]) / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"no summary.json in {evals[-1]}: not an eval folder")
        return {**json.loads(path.read_text()), "eval_dir": evals[-1]}
    for path in sorted(run_folder(model_dir).glob("*/summary.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a half-written or foreign file never stops a save
        if isinstance(summary, dict):
            return {**summary, "eval_dir": str(path.parent)}
    return None


def front_matter(meta: dict[str, Any], stage: str) -> dict[str, Any]:
    """The card's YAML metadata."""
    out: dict[str, Any] = {"library_name": "peft"}
    base = hub_base_model(str(meta["base_model"]))
    if base is not None:
        out["base_model"] = base
        out["base_model_relation"] = "adapter"
    out["pipeline_tag"] = "text-generation"
    out["tags"] = ["thinkaloud", "early-exit", "lora", str(meta.get("model_type", "")), stage]
    return out


def _value(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:g}"
    return "—" if x is None else str(x)


def _metric(key: str, x: Any) -> str:
    if x is None:
        return "—"
    if key in ("accuracy", "early_exit_rate", "als", "flop_savings"):
        return f"{100 * x:.1f}%"
    if key == "tokens_per_s":
        return f"{x:.1f}"
    if key == "speedup_vs_base":
        return f"{x:.2f}×"
    return _value(x)


def render_card(
    meta: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any] | None, name: str = "this model"
) -> str:
    """The whole README.md."""
    ec = meta.get("exit_config", {})
    L = meta["num_layers"]
    base = str(meta["base_model"])
    hub = hub_base_model(base)
    lines = [
        "---",
        yaml.safe_dump(front_matter(meta, training["stage"]), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {name}: early exits for {hub or base}",
        "",
        (
            f"An early-exit adapter made with thinkaloud {meta.get('thinkaloud_version', '')}: LoRA on the base "
            "model plus one scalar exit head per exit layer. A token that exits at layer ℓ freezes its residual "
            "stream there (exit = freeze): the layers above skip it and the model's own final norm and unembedding "
            "read it out, so the answer itself shows the reasoning."
        ),
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}`" + (f" (hub: `{hub}`)" if hub and hub != base else "") + " |",
        f"| base model hash (unembedding) | `{meta.get('unembedding_hash')}` |",
        f"| decoder layers L | {L} |",
        f"| exit layers | {', '.join(str(x) for x in meta['exit_layers'])} (no exit = {L}) |",
        (
            f"| LoRA | r={ec.get('lora_r')}, alpha={ec.get('lora_alpha')}, dropout={_value(ec.get('lora_dropout'))}, "
            f"targets {', '.join(ec.get('lora_target_modules') or [])} |"
        ),
        f"| training stage | {training['stage']} |",
    ]
    for key, value in training["settings"].items():
        lines.append(f"| {training['stage']}: {key} | {_value(value)} |")
    risk = meta.get(RISK_KEY)
    if isinstance(risk, dict):
        offset = "−∞ (exits off)" if risk.get("offset") is None else _value(risk["offset"])
        lines.append(f"| recorded offset | {offset}: {describe_record(risk)} |")
    if evaluation is not None:
        lines += ["", f"## Last evaluation ({evaluation.get('eval_dir', '')})", "", "| metric | value |", "|---|---|"]
        lines += [f"| {label} | {_metric(key, evaluation.get(key))} |" for key, label in EVAL_KEYS]
        coherence = evaluation.get("coherence") or {}
        if coherence.get("mean") is not None:
            lines.append(f"| coherence (judge overall, 1–10) | {coherence['mean']:.2f} |")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        "thinkaloud chat --model PATH                      # streamed, coloured by exit layer",
        'thinkaloud generate --model PATH "Why is the sky blue?" --json',
        "python -m thinkaloud.serve.harness --model thinkaloud --model_args model=PATH --tasks TASK",
        "```",
        "",
        "```python",
        "from thinkaloud import EarlyExitModel",
        "",
        'model = EarlyExitModel.from_pretrained("PATH")  # loads the base model, then heads + adapter',
        "out = model.generate(input_ids, attention_mask, max_new_tokens=64, offset=0.0)",
        "```",
        "",
        (
            f"Files: `{META_FILE}` (base model, hash, exit layers, settings), `exit_heads.safetensors`, "
            "`adapter/` (peft LoRA)."
        ),
        "",
    ]
    return "\n".join(lines)


def write_card(
    directory: Path, meta: dict[str, Any] | None = None, home: Path | None = None, evals: list[str] | None = None
) -> Path:
    """Write ``directory/README.md``; ``home`` is where the folder will live (its run config and evals are read
    there; default ``directory``), ``meta`` its ``thinkaloud.json`` (default: read from ``directory``)."""
    directory = Path(directory)
    home = Path(home) if home is not None else directory
    meta = meta if meta is not None else read_meta(directory)
    if not meta:
        raise FileNotFoundError(f"{directory} holds no {META_FILE}: not a thinkaloud model folder")
    run = run_folder(home)
    text = render_card(meta, training_info(home), last_eval(home, evals), name=run.name or "model")
    return atomic_write_text(directory / CARD_FILE, text)


def card(config: CardConfig) -> Path:
    """The ``card`` verb: rewrite the model card of a saved model or run folder."""
    from thinkaloud.model.recorded import saved_model_dir

    saved = saved_model_dir(config.model)
    if saved is None:
        raise FileNotFoundError(f"{config.model} holds no {META_FILE}: not a thinkaloud run or model folder")
    path = write_card(saved, evals=config.evals or None)
    print(f"Wrote {path}")
    return path
