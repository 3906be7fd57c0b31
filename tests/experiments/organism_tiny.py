"""A tiny organism built in code for the organism experiment's tests: the recipe at a toy size, 20 steps."""

from __future__ import annotations

from pathlib import Path

from thinkaloud.data.organism import OrganismConfig
from thinkaloud.experiments.organism.model import OrganismModelConfig
from thinkaloud.experiments.organism.pretrain import pretrain, route_accuracy, save_organism

TINY = OrganismModelConfig(
    layers=2, hidden=32, heads=2, intermediate=64, steps=20, batch=8, warmup=2, task=OrganismConfig(), eval_n=6
)
MAX_PARAMS = 100_000


def build_tiny_organism(folder: Path) -> tuple[Path, int]:
    """Pretrain the tiny recipe into ``folder`` (its card measured on 6 prompts per k); returns (folder, params)."""
    model, tokenizer, stats = pretrain(TINY, progress=False)
    accuracy = route_accuracy(model, tokenizer, TINY, TINY.eval_n)
    save_organism(folder, model, tokenizer, TINY, accuracy, stats)
    return folder, sum(p.numel() for p in model.parameters())
