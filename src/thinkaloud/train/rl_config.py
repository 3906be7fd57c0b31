"""The configuration of Stage-2 RL (``thinkaloud rl``): every field with its help text and the paper's setting.

The loop and its departures from the paper are described in ``thinkaloud.train.rl``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from thinkaloud.data.splits import SPLITS
from thinkaloud.data.tasks import DEFAULT_TASK
from thinkaloud.train.rloo import DEPTH_PENALTIES
from thinkaloud.train.trackers import check_report_to


@dataclass
class RLConfig:
    """Stage 2: RL of LoRA + exit heads for earlier exits (leave-one-out REINFORCE)."""

    model: str = field(
        metadata={
            "help": "a run folder from `thinkaloud sft` (its model/), a saved model folder, or a "
            "base model (alias such as smollm2-135m, local path): fresh exit heads"
        }
    )
    out: str = field(metadata={"help": "output folder (log.jsonl, base.json, figures/, model/ or run-<r>/model)"})
    task: str = field(
        default=DEFAULT_TASK,
        metadata={"help": "task spec: gsm8k[:<path>[:split]], rg:<dataset>, tom (the paper's RL figure: tom)"},
    )
    lam: float = field(
        default=1.5,
        metadata={"help": "λ: weight of the compute penalty (--depth-penalty), the eagerness dial (paper: 1.5)"},
    )
    depth_penalty: str = field(
        default="mean",
        metadata={
            "help": "the depth λ charges each completion: mean = mean_t ℓ_t/L (the paper; padding with shallow "
            "filler tokens lowers it), sum = Σ_t ℓ_t/L (total compute in full forward passes: every token "
            "costs, so padding never lowers it, and shorter completions pay less; scale λ down by a typical "
            "length), max = max_t ℓ_t/L (the deepest token, the serial depth the answer needed: filler cannot "
            "lower it, writing steps out can)"
        },
    )
    beta: float = field(
        default=0.25,
        metadata={
            "help": "β: weight of the KL penalty to the base model (paper: 0.25); with --kl-target, the starting β"
        },
    )
    kl_target: float | None = field(
        default=None,
        metadata={
            "help": "KL budget T in nats per generated token: β adapts every step so that the measured KL̂ to the "
            "base model tracks T (Ziegler et al. 2019; thinkaloud.train.kl_control); unset: a fixed --beta"
        },
    )
    kl_horizon: float | None = field(
        default=None,
        metadata={
            "help": "with --kl-target: horizon H in completions, β ← β·(1 + e·n/H) with e = clip(KL̂/T − 1, ±0.2) "
            "(default: one step's n completions, so β changes by a factor in [0.8, 1.2] a step; TRL: 10000)"
        },
    )
    k: int = field(default=4, metadata={"help": "completions per prompt (the leave-one-out group size, >= 2)"})
    prompts_per_step: int = field(default=2, metadata={"help": "prompts per step (per process)"})
    steps: int = field(default=50, metadata={"help": "RL steps (one optimiser update each)"})
    runs: int = field(default=1, metadata={"help": "independent runs with seeds seed, seed+1, …"})
    seed: int = field(default=0, metadata={"help": "seed of the first run; also selects the prompt stream"})
    offset: float = field(
        default=0.0,
        metadata={
            "help": "exit-logit offset while sampling and training "
            "(>0: earlier exits); the saved heads do not include it"
        },
    )
    max_new_tokens: int = field(default=64, metadata={"help": "completion length cap (paper: up to 400)"})
    head_lr: float = field(
        default=1e-3,
        metadata={
            "help": "AdamW learning rate of the exit heads (paper: 1e-5; higher here so that short runs move the heads)"
        },
    )
    lora_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the LoRA adapter (paper: 1e-4)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm clip (0: off)"})
    normalize_advantages: bool = field(default=False, metadata={"help": "divide advantages by their std over the step"})
    format_penalty: float = field(
        default=0.0,
        metadata={
            "help": "subtracted from the task reward when no answer "
            "can be extracted: with strict answers (default), any "
            "response without an answer marker (prototype: 1)"
        },
    )
    lenient_answers: bool = field(
        default=False,
        metadata={
            "help": "lenient answer extraction (fallbacks such as the last number or line) instead of strict markers"
        },
    )
    split: str = field(default="train", metadata={"help": "task split the prompts come from"})
    pool: int | None = field(
        default=None,
        metadata={"help": "distinct prompts in the stream, cycled (default: steps × prompts per step × processes)"},
    )
    base_prompts: int = field(
        default=8,
        metadata={
            "help": "first prompts of the stream on which the base model "
            "(adapter off, no exits) is measured, K samples each; 0: skip"
        },
    )
    save_every: int = field(default=5, metadata={"help": "checkpoint every N steps (and at the last step)"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoints in --out"})
    exit_every: int | None = field(
        default=None,
        metadata={
            "help": "fresh heads only: exit layers every N layers (default: the paper's 5 on models of 25 layers or "
            "more, else L // 6: every layer on a 6-layer model)"
        },
    )
    head_init_bias: float = field(default=-6.0, metadata={"help": "fresh heads only: initial exit-logit bias"})
    device: str | None = field(
        default=None,
        metadata={"help": "cpu | cuda (default: cuda if available; `accelerate launch` sets it per process)"},
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "float32 or bfloat16 (bfloat16 makes the on-policy recomputation approximate; see logprob_err)"
        },
    )
    onpolicy_tol: float = field(
        default=1e-3, metadata={"help": "warn when recomputed log-probs differ from the sampled ones by more than this"}
    )
    judge_url: str | None = field(
        default=None,
        metadata={"help": "OpenAI-compatible judge endpoint (…/v1) for the coherence curve; unset: no coherence"},
    )
    judge_model: str | None = field(default=None, metadata={"help": "judge model name at --judge-url"})
    judge_every: int = field(default=1, metadata={"help": "judge the completions of every N-th step"})
    eval_every: int = field(
        default=0,
        metadata={
            "help": "evaluate each run on --eval-n fixed held-out prompts at "
            "step 0, every N steps and the last (0: off): heldout.jsonl"
        },
    )
    eval_n: int = field(default=16, metadata={"help": "held-out prompts of --eval-split (greedy tokens)"})
    eval_split: str = field(default="test", metadata={"help": "split of the held-out prompts (not --split)"})
    heldout_from: str | None = field(
        default=None,
        metadata={
            "help": "an RL output folder from the same starting model and held-out settings (checked): its step-0 "
            "held-out rows and base row are reused instead of evaluated again (runs that differ in λ, β, …)"
        },
    )
    log_completions: bool = field(
        default=False,
        metadata={
            "help": "also write every step's sampled completions to completions.jsonl (per run, like log.jsonl): "
            "their texts, task rewards, mean depth ℓ/L and exit layers"
        },
    )
    report_to: str = field(
        default="none",
        metadata={"help": "also log the metrics to tensorboard | wandb | none (log.jsonl stays the record)"},
    )

    def __post_init__(self) -> None:
        check_report_to(self.report_to)
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (leave-one-out baseline), got {self.k}")
        for name in ("prompts_per_step", "steps", "runs", "max_new_tokens", "save_every", "judge_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.eval_n < 1 or self.eval_split not in SPLITS:
            raise ValueError(
                f"need eval_every >= 0, eval_n >= 1 and eval_split in {SPLITS}, got {self.eval_every}, "
                f"{self.eval_n}, {self.eval_split!r}"
            )
        if self.eval_every and self.eval_split == self.split:
            raise ValueError(f"eval_split must differ from split {self.split!r}: the held-out prompts are held out")
        if self.base_prompts < 0 or (self.pool is not None and self.pool < 1):
            raise ValueError("base_prompts must be >= 0 and pool >= 1")
        if self.lam < 0 or self.beta < 0:
            raise ValueError(f"lam and beta must be >= 0, got lam={self.lam}, beta={self.beta}")
        if self.depth_penalty not in DEPTH_PENALTIES:
            raise ValueError(
                f"depth_penalty must be one of {', '.join(DEPTH_PENALTIES)} (mean: the paper's mean_t ℓ_t/L; sum: "
                f"Σ_t ℓ_t/L; max: max_t ℓ_t/L), got {self.depth_penalty!r}"
            )
        if self.kl_target is not None and not (self.kl_target > 0 and self.beta > 0):
            raise ValueError(
                f"kl_target needs a target > 0 and a starting beta > 0 (β adapts by factors), got "
                f"kl_target={self.kl_target}, beta={self.beta}"
            )
        if self.kl_horizon is not None and (self.kl_target is None or not self.kl_horizon > 0):
            raise ValueError(f"kl_horizon needs kl_target and must be > 0, got {self.kl_horizon}")
        if self.head_lr <= 0 or self.lora_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if math.isnan(self.offset) or math.isinf(self.offset):
            raise ValueError(f"offset must be finite (the policy needs exits to learn them), got {self.offset}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if (self.judge_url is None) != (self.judge_model is None):
            raise ValueError("set both judge_url and judge_model, or neither")
