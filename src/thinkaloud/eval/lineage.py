"""Where a model under evaluation comes from: a base model, a Stage-1 (SFT) run or a Stage-2 (RL) run.

``lineage(spec)`` reads the saved configs of run folders (never the weights) and returns the stage,
the KL factor of the Stage-1 run in the model's history, the task it was trained on and the
calibration folder whose items it has seen:

- an SFT run folder ``RUN`` (``RUN/model/thinkaloud.json`` + ``RUN/config.yaml``, an ``SFTConfig``):
  ``kl_factor`` and ``calib`` from the config; the calibration's ``manifest.json`` gives the task
  (``config.task``) and its split (``config.split``);
- an RL run folder ``OUT`` (``OUT/config.yaml``, an ``RLConfig``): ``model`` is the folder (or base
  model) it started from, whose lineage gives the KL factor and the calibration; the task is the RL
  task. With several RL runs the model is ``OUT/run-<r>/model`` and the config ``OUT/config.yaml``;
- a base model (alias, HF folder, hub id): stage ``"base"``, nothing else known;
- a saved model folder outside a run, or a run whose config is missing or unreadable: ``"unknown"``.

``check_no_leakage(calib, items)`` refuses evaluation items whose content (``Item.key``) is in the
calibration (``thinkaloud.data.calibrate.overlapping_items``), naming up to five of them.

Relative paths inside a saved config (RL's ``model``, SFT's ``calib``) are tried as written (relative to
the current folder, as at training time), then relative to the two folders above the run folder
(``runs/sft`` written by an RL run in ``runs/rl`` is found from any current folder).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from thinkaloud.data.calibrate import calibration_items, overlapping_items
from thinkaloud.data.task import Item
from thinkaloud.errors import UserError
from thinkaloud.model.recorded import RUN_MODEL_DIR, saved_model_dir

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
_RUN_RE = re.compile(r"run-\d+")


@dataclass(frozen=True)
class Lineage:
    stage: str  # "base" | "sft" | "rl" | "unknown"
    origin: str  # where the history starts: "sft run runs/x", "base model smollm2-135m", …
    kl_factor: float | None = None  # KL factor of the Stage-1 run in the history
    task: str | None = None  # the task trained on last: RL's task, else the calibration's
    calib: str | None = None  # calibration folder of the Stage-1 run, when it exists here
    calib_split: str | None = None
    via: tuple[str, ...] = ()  # RL run folders on top of the origin, oldest first
    notes: tuple[str, ...] = ()  # what could not be read

    @property
    def source(self) -> str:
        """e.g. "sft run runs/x (via RL run runs/y)"."""
        return self.origin + (f" (via RL run {' → '.join(self.via)})" if self.via else "")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "via": list(self.via), "notes": list(self.notes), "source": self.source}


def lineage(spec: str, _depth: int = 0) -> Lineage:
    """The lineage of the model that ``--model spec`` loads (see the module docstring)."""
    saved = saved_model_dir(spec)
    if saved is None:
        return Lineage("base", f"base model {spec}")
    run = saved.parent if saved.name == RUN_MODEL_DIR else saved
    config_path = _config_path(run)
    if config_path is None:
        return Lineage("unknown", f"saved model {saved}", notes=(f"no {CONFIG_FILE} beside {saved}",))
    try:
        cfg = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        return Lineage("unknown", f"saved model {saved}", notes=(f"{config_path}: {e}",))
    if isinstance(cfg, dict) and "calib" in cfg and "kl_factor" in cfg:
        return _sft(run, cfg)
    if isinstance(cfg, dict) and "lam" in cfg and "model" in cfg and _depth < 8:
        return _rl(config_path.parent, cfg, _depth)
    return Lineage("unknown", f"saved model {saved}", notes=(f"{config_path} is neither an SFT nor an RL config",))


def _config_path(run: Path) -> Path | None:
    if (run / CONFIG_FILE).is_file():
        return run / CONFIG_FILE
    if _RUN_RE.fullmatch(run.name) and (run.parent / CONFIG_FILE).is_file():  # OUT/run-<r> of a multi-run RL
        return run.parent / CONFIG_FILE
    return None


def _find(path: str, run: Path) -> Path | None:
    """``path`` as written, else relative to the folders above ``run``; None when none exists."""
    above = run.resolve().parents
    for candidate in (Path(path), *(above[i] / path for i in range(min(2, len(above))))):
        if candidate.exists():
            return candidate
    return None


def _sft(run: Path, cfg: dict[str, Any]) -> Lineage:
    kl = float(cfg["kl_factor"])
    calib = _find(str(cfg["calib"]), run)
    if calib is None or not (calib / MANIFEST_FILE).is_file():
        return Lineage(
            "sft",
            f"sft run {run}",
            kl_factor=kl,
            notes=(f"calibration {cfg['calib']} not found: its task and items are unknown",),
        )
    manifest = json.loads((calib / MANIFEST_FILE).read_text()).get("config", {})
    return Lineage(
        "sft",
        f"sft run {run}",
        kl_factor=kl,
        task=manifest.get("task"),
        calib=str(calib),
        calib_split=manifest.get("split"),
    )


def _rl(out: Path, cfg: dict[str, Any], depth: int) -> Lineage:
    start = str(cfg["model"])
    found = _find(start, out)
    parent = lineage(str(found) if found is not None else start, depth + 1)
    notes = parent.notes
    if found is None and parent.stage == "base" and ("/" in start or start.startswith(".")):
        notes += (f"the RL run started from {start}, which is not here; taken as a base model",)
    return Lineage(
        "rl",
        parent.origin,
        kl_factor=parent.kl_factor,
        task=cfg.get("task") or parent.task,
        calib=parent.calib,
        calib_split=parent.calib_split,
        via=parent.via + (str(out),),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------
# Train/test leakage


class LeakageError(UserError, ValueError):
    """Evaluation items that the model saw in its calibration."""


def check_no_leakage(calib: str | None, items: Sequence[Item], what: str = "the model was trained on") -> str | None:
    """Refuse items whose content is in the calibration folder ``calib`` (no check when it is None).

    Refusing rather than dropping them keeps ``n`` what was asked for and makes the fix explicit.
    Returns a note when the check could not be made (a calibration that recorded no item keys).
    """
    if calib is None:
        return None
    if not calibration_items(calib):
        return f"the calibration {calib} records no item keys (made by an older version): leakage not checked"
    ids = overlapping_items(calib, list(items))
    if ids:
        shown = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
        raise LeakageError(
            f"{len(ids)} of the {len(items)} eval items are in the calibration {calib} that {what} "
            f"({shown}); evaluate on unseen items: another task file (a GSM8K file is used whole for every "
            "split), or another --split or --seed of a split task (rg:, tom, gsm8k:<file>:split)"
        )
    return None
