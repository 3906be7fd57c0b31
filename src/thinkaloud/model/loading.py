"""Load what a command's ``--model`` names: a trained run, a saved early-exit model, or a base model.

- a run folder (``RUN/model/thinkaloud.json``) or a saved model folder (``thinkaloud.json``) → its
  heads + adapter on the recorded base model;
- anything else (an alias such as ``smollm2-135m``, a local HF folder, a hub id) → the base model
  wrapped with fresh heads that never fire (``is_base=True``: evaluate it with ``offset=-inf``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from thinkaloud.config import ExitConfig
from thinkaloud.hub import load_tokenizer
from thinkaloud.model.early_exit import META_FILE, EarlyExitModel

RUN_MODEL_DIR = "model"


@dataclass
class Loaded:
    model: EarlyExitModel
    tokenizer: object
    is_base: bool
    base_name: str


def saved_model_dir(spec: str) -> Path | None:
    path = Path(spec)
    for candidate in (path / RUN_MODEL_DIR, path):
        if (candidate / META_FILE).exists():
            return candidate
    return None


def load_model(spec: str, *, exit_config: ExitConfig | None = None, dtype: torch.dtype | None = None,
               device: str | None = None) -> Loaded:
    saved = saved_model_dir(spec)
    if saved is not None:
        base_name = json.loads((saved / META_FILE).read_text())["base_model"]
        model = EarlyExitModel.from_pretrained(saved, dtype=dtype, device=device)
        return Loaded(model.eval(), load_tokenizer(base_name), False, base_name)
    if Path(spec).exists() and Path(spec).is_dir() and not (Path(spec) / "config.json").exists():
        raise FileNotFoundError(f"{spec} is neither a thinkaloud run/model folder ({META_FILE}) nor a HF model folder")
    model = EarlyExitModel.from_base(spec, exit_config, dtype=dtype, device=device)
    return Loaded(model.eval(), load_tokenizer(spec), True, spec)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
