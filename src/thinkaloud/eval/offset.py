"""The exit offset an eval generates with: the given one, else the one recorded with the model, else 0.

``thinkaloud risk --save`` records an offset with its guarantee in the model folder
(``thinkaloud.model.recorded``); the guarantee holds for its task and generation length only, so an eval
on another one gets a note saying it does not carry over.
"""

from __future__ import annotations

import math

from thinkaloud.model.loading import Loaded
from thinkaloud.model.recorded import describe_record, recorded_value


def eval_offset(
    requested: float | None, loaded: Loaded, task: str, max_new_tokens: int
) -> tuple[float, str, list[str]]:
    """(offset, where it comes from, notes) for an eval: the given one, else the one recorded with the model
    (noting a task or generation length other than the guarantee's), else 0; a base model never exits."""
    if loaded.is_base:
        ignored = requested is not None and requested != -math.inf
        notes = [f"a base model has no trained exit heads: offset {requested:g} is ignored"] if ignored else []
        return -math.inf, "base model: no exits", notes
    if requested is not None:
        return float(requested), "given", []
    entry = loaded.model.risk_control
    if entry is None:
        return 0.0, "default 0 (no offset recorded with the model)", []
    notes = []
    if entry.get("task") != task:
        notes.append(f"the recorded offset's guarantee is for {entry.get('task')}, not {task}: it does not carry over")
    if entry.get("max_new_tokens") != max_new_tokens:
        notes.append(
            f"the recorded offset's guarantee is for max-new-tokens {entry.get('max_new_tokens')}, not "
            f"{max_new_tokens}: it does not carry over to another generation length"
        )
    return recorded_value(entry), f"recorded with the model, {describe_record(entry)}", notes
