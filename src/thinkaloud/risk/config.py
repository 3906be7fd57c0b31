"""The ``risk`` job's configuration: the risks it can bound, the offset grid, and what its guarantee covers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from thinkaloud.data.splits import SPLITS
from thinkaloud.data.tasks import DEFAULT_TASK

RISKS = {
    "token": "per item, the fraction of completion tokens whose top-1 token with exits sampled at the offset differs "
    "from the full-depth top-1, teacher-forced on the model's own full-depth greedy rollout",
    "answer": "per item, 1 if the final answer of a greedy generation with exits sampled at the offset differs from "
    "the full-depth greedy generation's answer, else 0",
}
GUARANTEE = (
    "with probability >= 1 - delta over the calibration items, the risk at the chosen offset is <= epsilon "
    "on new items of the same task and split, at the same max-new-tokens, with these weights; not on "
    "another task or distribution, nor at another generation length"
)
MAX_OFFSETS = 200


def parse_offsets(spec: str) -> list[float]:
    """``"LO:HI:STEP"`` → [LO, LO + STEP, …, HI] (HI included when on the grid), ascending."""
    parts = spec.split(":")
    try:
        lo, hi, step = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"offsets must be LO:HI:STEP with numbers (e.g. -4:8:1), got {spec!r}") from None
    if not all(math.isfinite(x) for x in (lo, hi, step)) or step <= 0 or hi < lo:
        raise ValueError(f"offsets LO:HI:STEP need finite LO <= HI and STEP > 0, got {spec!r}")
    count = math.floor((hi - lo) / step + 1e-9) + 1
    if count > MAX_OFFSETS:
        raise ValueError(f"offsets {spec!r} give {count} offsets; at most {MAX_OFFSETS} (use a larger STEP)")
    return [round(lo + i * step, 9) for i in range(count)]


@dataclass
class RiskConfig:
    """Choose the most aggressive exit offset whose risk is <= ε with probability >= 1 − δ (Learn-then-Test)."""

    model: str = field(metadata={"help": "a run folder, a saved early-exit model, or a base model (fresh heads)"})
    out: str = field(metadata={"help": "output directory (risk.json, risk.png)"})
    epsilon: float = field(metadata={"help": "target risk ε in (0, 1)"})
    delta: float = field(default=0.1, metadata={"help": "allowed failure probability δ in (0, 1)"})
    risk: str = field(
        default="token",
        metadata={
            "help": "token: share of completion tokens whose top-1 differs from full depth (teacher-forced); "
            "answer: the final answer differs from full depth's"
        },
    )
    task: str | None = field(
        default=None, metadata={"help": f"task spec (default: the run's training task, else {DEFAULT_TASK})"}
    )
    n: int = field(default=64, metadata={"help": "calibration items"})
    split: str = field(default="validation", metadata={"help": f"calibration split, one of {', '.join(SPLITS)}"})
    val_n: int | None = field(default=None, metadata={"help": "validation items (default: n)"})
    val_split: str = field(default="test", metadata={"help": "validation split, disjoint from --split"})
    offsets: str = field(
        default="-4:8:1",
        metadata={"help": "offsets LO:HI:STEP, tested from LO up (write --offsets=-4:8:1 when LO is negative)"},
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "generation budget per item; the guarantee is for this budget"}
    )
    batch_size: int = field(default=16, metadata={"help": "items per forward pass / generation (as eval)"})
    seed: int = field(default=0, metadata={"help": "selects the items and seeds the exit sampling"})
    save: bool = field(
        default=False,
        metadata={
            "help": "record the chosen offset in the model folder's thinkaloud.json (eval and generation use it "
            "when no offset is given)"
        },
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "run the model with the LoRA adapter merged into the weights (same function, without the LoRA "
            "layers' extra matmuls; the base weights are restored exactly afterwards)"
        },
    )
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"})

    def __post_init__(self) -> None:
        for name in ("epsilon", "delta"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {getattr(self, name)}")
        if self.risk not in RISKS:
            raise ValueError(f"risk must be one of {', '.join(RISKS)}, got {self.risk!r}")
        for name in ("n", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_n is not None and self.val_n < 1:
            raise ValueError(f"val_n must be >= 1, got {self.val_n}")
        for name in ("split", "val_split"):
            if getattr(self, name) not in SPLITS:
                raise ValueError(f"{name} must be one of {SPLITS}, got {getattr(self, name)!r}")
        if self.split == self.val_split:
            raise ValueError(f"the validation split must differ from the calibration split ({self.split!r})")
        parse_offsets(self.offsets)
