"""Stage-1 calibration data (docs/method.md §2, steps 1–3): teacher rollouts and per-layer divergences.

1. Teacher rollouts: the base model (adapter disabled, no exits) completes the task's prompts through
   the generation engine, in batches; greedy by default, sampling as an option.
2. For every completion token and exit layer ℓ: D_ℓ = KL(p_L ‖ p_ℓ) with the logit lens
   (``EarlyExitModel.layer_kl``), at the position that predicts that token.
3. Targets are *not* stored: ``exit_targets(D, F)`` derives them for any KL factor F at training
   time, so one calibration serves a whole KL-factor sweep. Vocab-sized logits are not stored either:
   Stage 1 recomputes the exact teacher distribution with the adapter disabled.

Layout of ``out/``: ``manifest.json`` (model, its unembedding hash, task, split, seed, N, K, code version,
the items used as ``{"id", "key"}`` in item order, shards) and ``shard-00000.safetensors``, … Each shard holds, for its items, the token ids of prompt +
completion (flattened, with offsets), the prompt lengths and the (tokens, m) KL matrix. Shards and the
manifest are written atomically; a run that is interrupted resumes from its last complete shard and
ends with the same data as an uninterrupted run (rollouts are seeded per shard).

``calibration_items`` and ``overlapping_items`` compare a calibration's items with others by content
(``Item.key``, a hash of the question), e.g. to refuse an evaluation on items the model was calibrated on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.tasks import DEFAULT_TASK, load_items
from thinkaloud.errors import DataError
from thinkaloud.io import atomic_save_safetensors, atomic_write_json
from thinkaloud.model import arch
from thinkaloud.model.exits import exit_targets
from thinkaloud.model.loading import default_device, load_model
from thinkaloud.version import __version__

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class CalibrateConfig:
    out: str = field(metadata={"help": "output folder (resumes if it holds a partial run with the same settings)"})
    model: str = field(default="smollm2-135m", metadata={"help": "base model: alias, local folder or hub id"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "task spec: gsm8k[:<path>[:split]], rg:<name>, tom"})
    n: int = field(default=32, metadata={"help": "number of prompts"})
    max_new_tokens: int = field(default=128, metadata={"help": "completion length limit K (paper: up to 400)"})
    seed: int = field(default=0, metadata={"help": "seed for items and (when sampling) rollouts"})
    split: str = field(default="train", metadata={"help": "task split to draw prompts from"})
    do_sample: bool = field(default=False, metadata={"help": "sample teacher rollouts instead of greedy"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (with --do-sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (with --do-sample)"})
    batch_size: int = field(default=8, metadata={"help": "rollouts generated together"})
    shard_size: int = field(default=16, metadata={"help": "items per shard (the unit of resumption)"})
    system_prompt: str | None = field(default=None, metadata={"help": "override the task's system prompt"})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda (default: cuda if available)"})

    def __post_init__(self) -> None:
        for name in ("n", "max_new_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def identity(self) -> dict:
        """The settings that determine the data (a resumed run must match them)."""
        keys = (
            "model",
            "task",
            "n",
            "max_new_tokens",
            "seed",
            "split",
            "do_sample",
            "temperature",
            "top_p",
            "shard_size",
            "system_prompt",
        )
        return {k: getattr(self, k) for k in keys}


@dataclass
class CalibrationRow:
    item_id: str
    input_ids: torch.Tensor  # (P + N,) prompt + completion, no padding
    prompt_length: int
    kl: torch.Tensor  # (N, m) KL of each exit layer at the position predicting each completion token


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def calibrate(config: CalibrateConfig, console: Console | None = None) -> Path:
    """Run (or resume) a calibration; returns the output folder."""
    console = console or Console()
    out = Path(config.out)
    manifest_path = out / MANIFEST
    task, items = load_items(
        config.task, config.n, seed=config.seed, split=config.split, system_prompt=config.system_prompt
    )
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(config.model, device=config.device or default_device())
    model, tokenizer = loaded.model, loaded.tokenizer
    model_hash = arch.unembedding_hash(model.base)

    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "config": config.identity(),
        "model_hash": model_hash,
        "code_version": __version__,
        "num_layers": model.num_layers,
        "exit_layers": model.layers,
        "items": [{"id": it.id, "key": it.key} for it in items],
        "shards": [],
        "complete": False,
    }
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("config") != config.identity() or previous.get("model_hash") != model_hash:
            raise DataError(
                f"{out} holds a calibration with other settings ({previous.get('config')}); use a new --out folder"
            )
        if previous.get("items", manifest["items"]) != manifest["items"]:
            raise DataError(
                f"{out} holds a calibration of other items (written by another version); use a new --out folder"
            )
        manifest["shards"] = [s for s in previous["shards"] if (out / s["file"]).exists()]
        if manifest["shards"]:
            console.print(f"Resuming: {len(manifest['shards'])} complete shard(s) in {out}")

    starts = list(range(0, len(items), config.shard_size))
    done = {s["start"] for s in manifest["shards"]}
    t0 = time.perf_counter()
    with _progress(console) as progress:
        bar = progress.add_task(
            "teacher rollouts + layer KL", total=len(items), completed=sum(s["items"] for s in manifest["shards"])
        )
        for shard_index, start in enumerate(starts):
            if start in done:
                continue
            shard_items = items[start : start + config.shard_size]
            rows = _calibrate_shard(
                model,
                tokenizer,
                task,
                shard_items,
                config,
                seed=config.seed * 100_003 + shard_index,
                advance=lambda k: progress.advance(bar, k),
            )
            name = f"shard-{shard_index:05d}.safetensors"
            _write_shard(out / name, rows)
            manifest["shards"].append(
                {"file": name, "start": start, "items": len(rows), "tokens": int(sum(r.kl.shape[0] for r in rows))}
            )
            manifest["shards"].sort(key=lambda s: s["start"])
            atomic_write_json(manifest_path, manifest)
    manifest["complete"] = True
    manifest["wall_seconds_last_run"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(manifest_path, manifest)
    print_summary(out, console)
    return out


@torch.no_grad()
def _calibrate_shard(
    model, tokenizer, task, items, config: CalibrateConfig, seed: int, advance
) -> list[CalibrationRow]:
    rows: list[CalibrationRow] = []
    generator = torch.Generator(device=model.device).manual_seed(seed)
    for b in range(0, len(items), config.batch_size):
        batch = items[b : b + config.batch_size]
        ids, mask = encode_prompts(tokenizer, [task.prompt(item, tokenizer) for item in batch], model.device)
        with model.disable_adapter():
            out = model.generate(
                ids,
                mask,
                max_new_tokens=config.max_new_tokens,
                do_sample=config.do_sample,
                temperature=config.temperature,
                top_p=config.top_p,
                offset=float("-inf"),
                generator=generator,
                pad_token_id=tokenizer.pad_token_id,
            )
            positions = torch.zeros_like(out.attention_mask, dtype=torch.bool)
            positions[:, out.predicting_positions()] = out.completion_mask
            kl = model.layer_kl(out.sequences, out.attention_mask, positions=positions)  # (B, P+N, m)
        kl = kl[:, out.predicting_positions()]  # (B, N, m)
        for i, item in enumerate(batch):
            n = int(out.lengths[i])
            real = out.attention_mask[i].bool()
            prompt_len = int(mask[i].sum())
            rows.append(CalibrationRow(item.id, out.sequences[i][real].cpu(), prompt_len, kl[i, :n].float().cpu()))
        advance(len(batch))
    return rows


def _write_shard(path: Path, rows: list[CalibrationRow]) -> None:
    lengths = torch.tensor([r.input_ids.numel() for r in rows])
    tokens = torch.tensor([r.kl.shape[0] for r in rows])
    atomic_save_safetensors(
        path,
        {
            "input_ids": torch.cat([r.input_ids for r in rows]).to(torch.int64),  # (Σ P+N,)
            "row_offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),  # (rows+1,)
            "prompt_lengths": torch.tensor([r.prompt_length for r in rows]),  # (rows,)
            "kl": torch.cat([r.kl for r in rows]),  # (Σ N, m)
            "kl_offsets": torch.cat([torch.zeros(1, dtype=torch.long), tokens.cumsum(0)]),  # (rows+1,)
        },
        metadata={"item_ids": json.dumps([r.item_id for r in rows])},
    )


def calibration_manifest(directory: str | Path) -> dict:
    """The manifest of a complete calibration folder; a missing one raises FileNotFoundError, an
    unreadable or incomplete one a ``DataError``."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no {MANIFEST}: run `thinkaloud calibrate --out {directory}` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not a calibration manifest (invalid JSON)") from None
    if not isinstance(manifest, dict) or not manifest.get("complete"):
        raise DataError(
            f"{directory} holds an incomplete calibration; run the same calibrate command again to finish it"
        )
    return manifest


def load_calibration(directory: str | Path) -> tuple[dict, list[CalibrationRow]]:
    """(manifest, rows) of a complete calibration folder, rows in item order; raises what
    ``calibration_manifest`` raises, and a ``DataError`` for an unreadable shard."""
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    manifest = calibration_manifest(directory)
    rows: list[CalibrationRow] = []
    for shard in manifest["shards"]:
        try:
            with safe_open(str(directory / shard["file"]), framework="pt") as f:
                ids, offs = f.get_tensor("input_ids"), f.get_tensor("row_offsets")
                kl, kl_offs = f.get_tensor("kl"), f.get_tensor("kl_offsets")
                prompt_lengths = f.get_tensor("prompt_lengths")
                item_ids = json.loads(f.metadata()["item_ids"])
        except SafetensorError as e:
            raise DataError(f"{directory / shard['file']}: unreadable calibration shard ({e})") from None
        for i, item_id in enumerate(item_ids):
            rows.append(
                CalibrationRow(
                    item_id, ids[offs[i] : offs[i + 1]], int(prompt_lengths[i]), kl[kl_offs[i] : kl_offs[i + 1]]
                )
            )
    return manifest, rows


def calibration_items(directory: str | Path) -> list[dict]:
    """The items a calibration used, ``[{"id", "key"}, ...]`` in item order ([] for a manifest older
    than this record). Raises FileNotFoundError when `directory` holds no manifest."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {MANIFEST}: not a calibration folder")
    try:
        items = json.loads(path.read_text()).get("items", [])
    except (json.JSONDecodeError, AttributeError):
        raise DataError(f"{path} is not a calibration manifest (invalid JSON object)") from None
    return [{"id": str(it["id"]), "key": str(it["key"])} for it in items]


def overlapping_items(calib_dir: str | Path, items) -> list[str]:
    """Ids of `items` (``Item``s or dicts with "id" and "key") whose content key the calibration in
    `calib_dir` also used, in the order of `items`."""
    keys = {it["key"] for it in calibration_items(calib_dir)}
    pairs = [(it["id"], it["key"]) if isinstance(it, dict) else (it.id, it.key) for it in items]
    return [item_id for item_id, key in pairs if key in keys]


def summary_table(manifest: dict, rows: list[CalibrationRow], kl_factors=(0.25, 1.0, 4.0)) -> Table:
    """Per exit layer: mean KL and mean target exit probability at several KL factors."""
    kl = torch.cat([r.kl for r in rows])  # (tokens, m)
    layers = manifest["exit_layers"] + [manifest["num_layers"]]
    table = Table(title=f"calibration: {len(rows)} rollouts, {kl.shape[0]} completion tokens")
    table.add_column("exit layer", justify="right")
    table.add_column("mean KL", justify="right")
    for f in kl_factors:
        table.add_column(f"P(exit) F={f:g}", justify="right")
    targets = [exit_targets(kl, f).exp().mean(0) for f in kl_factors]  # each (m+1,)
    for k, layer in enumerate(layers):
        mean_kl = f"{kl[:, k].mean():.3f}" if k < kl.shape[1] else "—"
        label = str(layer) if k < kl.shape[1] else f"{layer} (no exit)"
        table.add_row(label, mean_kl, *[f"{t[k]:.3f}" for t in targets])
    return table


def print_summary(directory: str | Path, console: Console | None = None) -> None:
    manifest, rows = load_calibration(directory)
    (console or Console()).print(summary_table(manifest, rows))
