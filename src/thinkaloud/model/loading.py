"""Load what a command's ``--model`` names: a trained run, a saved early-exit model, or a base model.

- a run folder (``RUN/model/thinkaloud.json``) or a saved model folder (``thinkaloud.json``) → its
  heads + adapter on the recorded base model;
- anything else (an alias such as ``smollm2-135m``, a local HF folder, a hub id) → the base model
  wrapped with fresh heads that never fire (``is_base=True``: evaluate it with ``offset=-inf``).

``check_model_spec`` checks a spec without loading weights (the command line runs it before a job
starts): a path must exist (``thinkaloud.hub.looks_like_path`` decides what is a path), a folder must
be a run, a saved model or a HF folder whose ``config.json`` names a supported family. A hub id is not
checked (that needs the network); if loading it fails, the error says so in one line. Every such
problem raises a ``thinkaloud.errors.UserError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from thinkaloud.config import ExitConfig
from thinkaloud.errors import ModelNotFoundError, UserError
from thinkaloud.hub import ALIASES, BUILDERS, is_alias, load_tokenizer, looks_like_path
from thinkaloud.model import arch
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.recorded import META_FILE, saved_model_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Loaded:
    model: EarlyExitModel
    tokenizer: PreTrainedTokenizerBase
    is_base: bool
    base_name: str


def check_model_spec(spec: str) -> None:
    """Raise a ``UserError`` if ``spec`` cannot name a usable model; reads no weights, needs no network."""
    saved = saved_model_dir(spec)
    if saved is not None:
        check_model_spec(json.loads((saved / META_FILE).read_text())["base_model"])
        return
    if is_alias(spec) or not looks_like_path(spec):
        return  # an alias, or a hub id: checked when loaded
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"no such model folder: {spec}")
    if not path.is_dir():
        raise ModelNotFoundError(f"not a model folder (a file): {spec}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(
            f"{spec} is neither a thinkaloud run/model folder ({META_FILE}) nor a "
            "Hugging Face model folder (config.json)"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise UserError(f"{config_file} is not a JSON object") from None
    arch.check_supported(SimpleNamespace(model_type=model_type))


def load_model(
    spec: str, *, exit_config: ExitConfig | None = None, dtype: torch.dtype | None = None, device: str | None = None
) -> Loaded:
    check_model_spec(spec)
    saved = saved_model_dir(spec)
    if saved is not None:
        base_name = json.loads((saved / META_FILE).read_text())["base_model"]
        model = EarlyExitModel.from_pretrained(saved, dtype=dtype, device=device)
        return Loaded(model.eval(), load_tokenizer(base_name), False, base_name)
    try:
        model = EarlyExitModel.from_base(spec, exit_config, dtype=dtype, device=device)
        tokenizer = load_tokenizer(spec)
    except OSError as e:
        if isinstance(e, UserError) or is_alias(spec) or looks_like_path(spec):
            raise
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelNotFoundError(
            f"cannot load model {spec!r}: not an alias ({', '.join([*ALIASES, *BUILDERS])}), "
            f"not a local folder, and from the hub: {first_line}"
        ) from e
    return Loaded(model.eval(), tokenizer, True, spec)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
