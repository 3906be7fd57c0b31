"""Experiment trackers for ``sft`` and ``rl`` (``--report-to tensorboard|wandb|none``), through accelerate.

``log.jsonl`` stays the record; a tracker receives a copy of what it logs, so a dashboard shows the
same numbers: every numeric field of a log row (not ``run`` and ``step``, which place the row; a
``None``, a string or a list is left out) is one scalar at the row's step. Held-out rows of RL
(``heldout.jsonl``) go under ``heldout/<field>``. Several RL runs are several tracker runs, each
counting its steps from 1. The run's config is stored as hyperparameters (``None`` fields left out), so
β, λ, the KL factor and the rest sit beside the curves.

Where it goes: TensorBoard writes event files into ``OUT/<project>/`` (``thinkaloud-sft`` or
``thinkaloud-rl``; with several RL runs ``OUT/thinkaloud-rl/run-<r>/``); ``tensorboard --logdir OUT``
shows them. wandb logs to the project of that name, with its files under ``OUT/wandb/``; its mode and
account come from wandb's own settings (``WANDB_MODE=offline`` works without network). Both packages
are optional (``pip install 'thinkaloud[tensorboard]'``, ``pip install wandb``); asking for one that is
not installed is an error before anything runs.

Only the main process writes (accelerate keeps its trackers there), so a multi-process run logs once.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPORT_TO = ("none", "tensorboard", "wandb")
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install 'thinkaloud[tensorboard]'"),
    "wandb": ("wandb", "pip install wandb"),
}
PLACE_KEYS = ("run", "step")  # place a row; not logged as scalars


def check_report_to(value: str) -> None:
    """Raise ``ValueError`` for an unknown tracker, or one whose package is not installed."""
    if value not in REPORT_TO:
        raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}, got {value!r}")
    if value in PACKAGES:
        module, install = PACKAGES[value]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"--report-to {value} needs the {module} package: {install}")


def accelerator_kwargs(report_to: str, out: str | Path) -> dict[str, Any]:
    """The ``Accelerator(...)`` arguments of a tracker choice: ``log_with`` and the folder it writes under."""
    return {"log_with": None if report_to == "none" else report_to, "project_dir": str(out)}


def scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric fields of a log row as ``{prefix + name: value}`` (bools as 0/1; NaN and ±inf kept)."""
    out = {}
    for key, value in row.items():
        if key in PLACE_KEYS or value is None or isinstance(value, (str, list, tuple, dict)):
            continue
        if isinstance(value, (bool, int, float)):
            out[prefix + key] = float(value)
    return out


def hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as tracker hyperparameters: scalars and strings, lists as text, ``None`` left out."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class Trackers:
    """The trackers of one training run on an ``Accelerator`` made with :func:`accelerator_kwargs`.

    ``run`` names one of several RL runs: TensorBoard writes it to ``OUT/<project>/run-<r>/`` (the runs
    overlay, tag by tag), wandb starts one wandb run per RL run in the same project. A no-op for ``none``.
    """

    def __init__(
        self,
        accelerator,
        report_to: str,
        project: str,
        config: Mapping[str, Any],
        out: str | Path,
        run: int | None = None,
    ):
        self.accelerator = accelerator
        self.active = report_to != "none"
        if not self.active:
            return
        suffix = "" if run is None else f"-run-{run}"
        if report_to == "tensorboard" and run is not None:
            project = f"{project}/run-{run}"  # the tracker's sub-folder of OUT
        init_kwargs = {"wandb": {"dir": str(out), "name": Path(out).name + suffix, "group": Path(out).name}}
        accelerator.init_trackers(project, config=hparams(config), init_kwargs=init_kwargs)

    def log(self, row: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Log the numeric fields of ``row`` at ``step`` (main process only; accelerate ignores the others)."""
        if self.active:
            values = scalars(row, prefix)
            if values:
                self.accelerator.log(values, step=step)

    def end(self) -> None:
        """Flush and close the trackers, so that another run can open its own.

        Not ``accelerator.end_training()``: that also destroys the process group, which the next RL
        run (and a caller after ``train_sft``) still needs.
        """
        if self.active:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()
            self.active = False
