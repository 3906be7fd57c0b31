"""The eval's configuration (``thinkaloud eval``'s flags) and the names of the measures it can run.

It lives here, below the eval job (``thinkaloud.eval.run``), because the measures read it too: each
measure receives it in its :class:`~thinkaloud.measures.base.EvalContext`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from thinkaloud.data.splits import SPLITS
from thinkaloud.data.tasks import DEFAULT_TASK
from thinkaloud.measures.judge import parse_judge_spec
from thinkaloud.measures.rubrics import RUBRICS, check_rubric

MEASURES = ("reliance", "lens", "fluency", "filler", "mistakes", "paraphrase", "decodability")
DEFAULT_MEASURES = ("reliance", "lens", "fluency")  # the load-bearing four: about 0.7× an eval's own time more


def check_measures(names: list[str]) -> None:
    """Raise ValueError for an unknown or repeated measure name."""
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measure(s) {unknown}; known: {', '.join(MEASURES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"measures listed twice: {names}")


@dataclass
class EvalConfig:
    """Generate with exits on a task, score, and write an eval directory (records, summary, token view)."""

    model: str = field(
        metadata={
            "help": "a run folder, a saved early-exit model, or a base model (alias such "
            "as smollm2-135m, local HF folder); a base model runs without exits"
        }
    )
    out: str = field(metadata={"help": "output directory (records.jsonl, summary.json, config.json, tokens.html)"})
    task: str | None = field(
        default=None,
        metadata={
            "help": f"task spec: gsm8k[:<path>] (a file is used whole; <file>:split splits it by question hash), "
            f"rg:<dataset>, tom (default: the run's training task, else {DEFAULT_TASK}; paper: gsm8k)"
        },
    )
    n: int = field(default=32, metadata={"help": "number of items (paper: 50 GSM8K prompts)"})
    seed: int = field(default=0, metadata={"help": "selects the items and seeds exit and token sampling"})
    split: str = field(default="test", metadata={"help": f"item split, one of {', '.join(SPLITS)}"})
    offset: float | None = field(
        default=None,
        metadata={
            "help": "added to every exit logit: positive = earlier exits, --offset=-inf = no exits (default: the offset "
            "recorded with the model by `thinkaloud risk --save`, else 0; a base model always runs without exits)"
        },
    )
    max_new_tokens: int = field(default=128, metadata={"help": "generation budget per item (paper: up to 400)"})
    batch_size: int = field(default=16, metadata={"help": "items generated together"})
    do_sample: bool = field(
        default=False, metadata={"help": "sample tokens (else greedy tokens); exits are always sampled layer by layer"}
    )
    temperature: float = field(default=1.0, metadata={"help": "token sampling temperature (with --do-sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (with --do-sample)"})
    target: bool = field(
        default=True,
        metadata={
            "help": "compare the exits with the calibration target q* = 2σ(−F·D), computed on the same completions "
            "with the adapter off (target histogram + TV distance)"
        },
    )
    kl_factor: float | None = field(
        default=None,
        metadata={
            "help": "KL factor F of the target (default: the run's, read from its saved config; 1.0 for a base "
            "model or an unknown run)"
        },
    )
    judge: str | None = field(
        default=None,
        metadata={
            "help": "coherence judge: 'openai:<base_url>#<model>' (key from $OPENAI_API_KEY, if set) or "
            "'hf:<model path or alias>'; unset = no judge (paper: GPT-5)"
        },
    )
    rubric: str = field(
        default="ours",
        metadata={
            "help": f"judge rubric, one of {', '.join(RUBRICS)}: 'ours' grades the writing only; 'paper' is the "
            "write-up's (also asks for a correct, explicit chain of thought and penalises factual mistakes); "
            "'legibility' scores legibility and coverage 0-4 (Emmons, Zimmermann et al. 2025) instead of coherence"
        },
    )
    judge_concurrency: int = field(default=4, metadata={"help": "parallel requests to an openai judge"})
    speed_baseline: bool = field(
        default=True,
        metadata={
            "help": "also time the base model (adapter off, no exits, greedy) on the same prompt batches: "
            "speedup_vs_base = base decode s/token ÷ model decode s/token"
        },
    )
    lenient_answers: bool = field(
        default=False,
        metadata={
            "help": "lenient answer extraction (fall back to e.g. the last number); default: strict, only the "
            "format the prompt asks for"
        },
    )
    measures: list[str] = field(
        default_factory=lambda: list(DEFAULT_MEASURES),
        metadata={
            "help": f"externalisation measures, comma-separated, of {', '.join(MEASURES)} ('' for none): reliance = "
            "early answering on cut reasoning, lens = linear future lens, fluency = base-model NLL and "
            "repetition; is the reasoning load-bearing: filler = answer after own reasoning / none / filler, "
            "mistakes = follow rate of an edit in the reasoning, paraphrase = answer after a reworded reasoning, "
            "decodability = linear probes for the answer per layer and point of the reasoning (default: "
            f"{','.join(DEFAULT_MEASURES)}; reliance + lens cost about 0.8× the eval's generation on a CPU, the "
            "four load-bearing ones about 0.7× the eval's own time)"
        },
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "generate with the LoRA adapter merged into the weights (same function, without the LoRA "
            "layers' extra matmuls; the base weights are restored exactly afterwards)"
        },
    )
    label: str | None = field(
        default=None,
        metadata={"help": "name in reports (default: 'base' for a base model, else the model folder's name)"},
    )
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"})
    show: int = field(default=1, metadata={"help": "responses to print in the terminal, coloured by exit layer"})

    def __post_init__(self) -> None:
        for name in ("n", "batch_size", "max_new_tokens", "judge_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.kl_factor is not None and not self.kl_factor > 0:
            raise ValueError(
                f"kl_factor must be > 0 (the target q* = 2σ(−F·D) is 1 everywhere at F = 0), "
                f"got {self.kl_factor}; leave it unset to use the run's"
            )
        if self.offset is not None and (math.isnan(self.offset) or self.offset == math.inf):
            raise ValueError(f"offset must be a number or -inf, got {self.offset}")
        if self.show < 0:
            raise ValueError(f"show must be >= 0, got {self.show}")
        check_rubric(self.rubric)
        check_measures(self.measures)
        if self.judge is not None:
            parse_judge_spec(self.judge)
