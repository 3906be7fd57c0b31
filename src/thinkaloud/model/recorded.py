"""A saved model folder's files, and the offset recorded in it: written by ``thinkaloud risk --save``, read by eval and generation.

A saved early-exit model is a folder with ``thinkaloud.json``, ``exit_heads.safetensors`` and
``adapter/`` (``thinkaloud.model.saving``). ``record_offset`` adds a ``"risk_control"`` entry to
``thinkaloud.json`` (rewritten atomically): the chosen offset (JSON null = exits off), how it was
chosen (ε, δ, risk type, task, split, n, max-new-tokens, …) and ``"weights"``, a fingerprint of the
saved exit heads and adapter tensors. The guarantee behind the offset holds for those weights only, so
``recorded_offset`` returns the entry only while the fingerprint matches the files in the folder; a
folder saved again with other weights (further training into the same folder) keeps a stale entry
that is ignored with a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

from thinkaloud.io import atomic_write_json

META_FILE = "thinkaloud.json"
HEADS_FILE = "exit_heads.safetensors"
ADAPTER_DIR = "adapter"
RISK_KEY = "risk_control"
RUN_MODEL_DIR = "model"  # a training run's folder keeps its saved model here


def saved_model_dir(spec: str) -> Path | None:
    """The saved model folder that ``spec`` names: the folder itself, or a run folder's ``model/``; None if neither."""
    path = Path(spec).expanduser()
    for candidate in (path / RUN_MODEL_DIR, path):
        if (candidate / META_FILE).exists():
            return candidate
    return None


def read_meta(directory: str | os.PathLike) -> dict:
    """The folder's ``thinkaloud.json`` ({} when there is none)."""
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def weights_fingerprint(directory: str | os.PathLike) -> str:
    """16 hex digits of sha256 over the saved exit heads and adapter tensors of a model folder."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in [directory / HEADS_FILE, *sorted((directory / ADAPTER_DIR).glob("*.safetensors"))]:
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def record_offset(directory: str | os.PathLike, offset: float | None, info: dict) -> dict:
    """Record a chosen offset (None or −inf: exits off) with ``info`` (ε, δ, risk type, task, …) in the
    folder's ``thinkaloud.json``, rewritten atomically; returns the entry."""
    directory = Path(directory)
    meta = read_meta(directory)
    if not meta:
        raise FileNotFoundError(f"{directory} holds no {META_FILE}: not a thinkaloud model folder")
    exits_off = offset is None or offset == -math.inf
    if offset is not None and not exits_off and not math.isfinite(offset):
        raise ValueError(f"offset must be a number, -inf or None, got {offset}")
    entry = {
        "offset": None if offset is None or exits_off else float(offset),
        **info,
        "weights": weights_fingerprint(directory),
    }
    atomic_write_json(directory / META_FILE, {**meta, RISK_KEY: entry})
    return entry


def recorded_offset(directory: str | os.PathLike) -> dict | None:
    """The folder's risk-control entry; None when none is recorded or it was recorded for other weights
    (a warning then says so)."""
    entry = read_meta(directory).get(RISK_KEY)
    if entry is None:
        return None
    if entry.get("weights") != weights_fingerprint(directory):
        warnings.warn(
            f"{directory}: the recorded offset was chosen for other weights (the model was saved again "
            "since); it is ignored — run `thinkaloud risk --save` again",
            stacklevel=2,
        )
        return None
    return entry


def recorded_value(entry: dict) -> float:
    """The offset of a risk-control entry (JSON null = exits off = −inf)."""
    return -math.inf if entry["offset"] is None else float(entry["offset"])


def describe_record(entry: dict) -> str:
    """One line: how a recorded offset was chosen."""
    return (
        f"chosen by `thinkaloud risk`: {entry.get('risk', '?')} risk <= {entry.get('epsilon')} with probability "
        f">= 1 - {entry.get('delta')} on {entry.get('task', '?')} (split {entry.get('split', '?')}, "
        f"n={entry.get('n', '?')}, max-new-tokens {entry.get('max_new_tokens', '?')})"
    )
