"""Pieces shared by the training loops: optimiser groups, checkpoints with resume, JSONL logs.

Checkpoints hold everything a resumed run needs to continue bit-for-bit: trainable weights (LoRA +
heads), optimiser state, step, RNG states (one per process of a multi-process run) and the data order
position. Under FSDP they are gathered: the same file as a single-process run's
(``thinkaloud.train.dist.fsdp``), so every process takes part in :func:`save_checkpoint` and the main process
writes. They are written into a
temporary folder and renamed into place, so a kill never leaves a partial checkpoint; it may leave the
temporary itself (``.step-*.tmp``, ``.latest.json.*.tmp``), which the next run of the same folder
removes (:func:`remove_stale_temporaries`).

A checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain values only (the RNG
states are a tuple of ints and byte tensors), never a pickled object, whose loading could run code. A
``state.pt`` that holds anything else, or a ``latest.json`` that points outside the checkpoint folder,
is refused with a :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from thinkaloud.errors import UserError, one_line
from thinkaloud.io import atomic_folder, atomic_write_json
from thinkaloud.train.dist.fsdp import full, shard_like

CKPT_DIR = "checkpoints"
STATE_FILE = "state.pt"
STATE_KEYS = ("step", "trainable", "optimizer", "rng", "extra")
_STEP_RE = re.compile(r"step-\d+")


class CheckpointError(UserError):
    """A checkpoint that a run cannot resume from: not one that thinkaloud wrote."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters that training changes (LoRA and exit heads), by name, whole (gathered under FSDP: then
    every process must call it)."""
    return {n: full(p).detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def make_optimizer(model, *, head_lr: float, lora_lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW with separate learning rates for the exit heads and the LoRA adapter."""
    heads = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("heads.")]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.")]
    if not heads or not lora:
        raise ValueError("expected trainable exit heads and LoRA parameters")
    return torch.optim.AdamW(
        [{"params": heads, "lr": head_lr, "name": "heads"}, {"params": lora, "lr": lora_lr, "name": "lora"}],
        weight_decay=weight_decay,
    )


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _world() -> tuple[int, int]:
    """(rank, number of processes) of the process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _rng_states() -> dict[str, Any] | list[dict[str, Any]]:
    """This process's RNG state; with several processes, the list of all of theirs (a collective)."""
    rank, world = _world()
    if world == 1:
        return _rng_state()
    states: list[Any] = [None] * world
    torch.distributed.all_gather_object(states, _rng_state())
    return states


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with whole tensors (the moments of sharded parameters gathered)."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: full(v) for k, v in s.items()} for i, s in state["state"].items()}
    return state


def _set_rng_state(state: dict[str, Any] | list[dict[str, Any]]) -> None:
    if isinstance(state, list):  # one per process: this process's (the main process's if the count changed)
        rank, world = _world()
        state = state[rank] if len(state) == world else state[0]
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: Path,
    step: int,
    model,
    optimizer,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    *,
    write: bool = True,
) -> Path:
    """``out/checkpoints/step-000123/`` with trainable weights, optimiser, RNG and ``extra``; atomically.

    With several processes every one calls it (the state is gathered) and only the one with ``write``
    (the main process) writes."""
    root = Path(out) / CKPT_DIR
    final = root / f"step-{step:06d}"
    state = {
        "step": step,
        "trainable": trainable_state(model),
        "optimizer": _optimizer_state(optimizer),
        "rng": _rng_states(),
        "extra": extra or {},
    }
    if not write:
        return final
    root.mkdir(parents=True, exist_ok=True)
    with atomic_folder(final) as tmp:  # tmp: .step-000123.tmp
        torch.save(state, tmp / STATE_FILE)
    atomic_write_json(root / "latest.json", {"step": step, "path": final.name})
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


STALE_PATTERNS = (".step-[0-9]*.tmp", ".step-[0-9]*.old", ".latest.json.*.tmp")
"""Temporaries of :func:`save_checkpoint`: its step folder and ``thinkaloud.io``'s write of latest.json."""


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete checkpoint temporaries left in ``out/checkpoints`` by a run killed mid-write; returns them.

    Only names :func:`save_checkpoint` creates are touched. Call it once, on the main process, when a
    run starts or resumes (before it writes a checkpoint).
    """
    root = Path(out) / CKPT_DIR
    stale = sorted(p for pattern in STALE_PATTERNS for p in root.glob(pattern)) if root.is_dir() else []
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def latest_checkpoint(out: Path) -> Path | None:
    pointer = Path(out) / CKPT_DIR / "latest.json"
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["path"]
    except (ValueError, TypeError, KeyError):
        raise CheckpointError(f"{pointer} is not a checkpoint pointer (a JSON object with a path)") from None
    if not isinstance(name, str) or not _STEP_RE.fullmatch(name):
        raise CheckpointError(f"{pointer} points to {name!r}, not to a step-<n> folder beside it")
    path = Path(out) / CKPT_DIR / name
    return path if (path / STATE_FILE).exists() else None


def read_state(path: Path) -> dict[str, Any]:
    """The contents of ``path/state.pt``, loaded with ``weights_only=True`` (module docstring)."""
    file = Path(path) / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" (it names {named.group(1)})" if named else ""
        raise CheckpointError(
            f"refused to load {file}: it holds more than tensors and plain values{what}, and loading it could "
            "run code; delete that checkpoint folder, or start again without --resume"
        ) from None
    except (RuntimeError, EOFError) as e:  # a truncated or corrupted file
        raise CheckpointError(f"{file} is unreadable ({one_line(e)}); delete that checkpoint folder") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise CheckpointError(f"{file} is not a thinkaloud checkpoint (expected a dict of {', '.join(STATE_KEYS)})")
    return state


def load_checkpoint(path: Path, model, optimizer) -> dict[str, Any]:
    """Restore weights, optimiser and RNG from ``path``; returns {"step": ..., "extra": ...}."""
    state = read_state(path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(shard_like(value.to(params[name].device), params[name]))
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # FSDP: the whole moments cut into this process's shards
        for p in group["params"]:
            moments = optimizer.state.get(p, {})
            for k, v in moments.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.dim() > 0:
                    moments[k] = shard_like(v, p)
    _set_rng_state(state["rng"])
    return {"step": state["step"], "extra": state["extra"]}


class JsonlLog:
    """Append-only metrics log; on resume, lines from steps after the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
