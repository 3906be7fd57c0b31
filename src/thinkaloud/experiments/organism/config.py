"""The organism experiment's settings (``thinkaloud organism``'s flags), its arms and the sizes of its stages.

The RL arms share the SFT model and the prompt stream: a control with λ = 0 and one arm with λ > 0 per entry of
``penalties`` (the depth each completion is charged, ``RLConfig.depth_penalty``). The first penalty arm is the
one finding O3 compares with the control; further arms (default: ``max``, the deepest token, which filler
cannot lower) answer O5's second question. Every arm runs ``len(seeds)`` RL runs, seeds ``seeds[0]``,
``seeds[0] + 1``, … (``RLConfig.runs``: the same prompts, different sampling and LoRA initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thinkaloud.train.rloo import DEPTH_PENALTIES

CONTROL = "control"


@dataclass
class OrganismExperimentConfig:
    """Does the exit penalty move computation into the text? The organism, calibrated, SFT, then RL with and
    without the penalty, measured (``thinkaloud.experiments.organism.run``).

    How λ, β, the RL steps and the SFT size were chosen: from two pilots on seeds 10–12 (the report's are
    0–2), on the default organism (card: direct 96/40/45/43%, hops 100/99/100/100% at k = 1…4; RL on k = 1),
    then fixed before the report's seeds ran. What was tuned is whether the test can see anything, not
    which way it comes out:

    - Pilot A, λ = 1, β = 0.1, 30 steps, SFT 60 steps of 8: the depth term λ·Δ(mean ℓ/L) between routes is
      ~0.01 of reward (exits span layers 1–2 of 6), far below the task reward's noise, so no arm moved
      (written hops 26% → 28% under both the penalty and the control) — a test that cannot fail to be
      null. The SFT model, 60 steps, exited hop letters at layer 1.08 and kept 30% accuracy (organism: 63%).
    - Pilot B, λ = 5 (λ·Δ ≈ 0.1–0.2, the size of a few points of accuracy), β = 0.1 (KL̂ stayed ≤ 1 nat), 40
      steps, SFT 300 steps of 16: the arms separate (written hops: SFT 35%, control 42%, mean penalty 56%,
      max penalty 48%) at matched accuracy between the mean penalty and the control (55% vs 54%). Its
      SFT model still loses accuracy to exits (35% vs the organism's 63%); RL partly repairs it in every arm.

    So λ = 5, β = 0.1, 40 steps and SFT 300 × 16 (``Sizes``) are the settings of the report's seeds.
    """

    out: str = field(default="runs/organism", metadata={"help": "output folder (stages reused on re-runs)"})
    model: str = field(
        default="organism",
        metadata={"help": "the organism: `organism` (the default recipe, built when missing) or a built folder"},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "the report's seeds, consecutive (pilots: other seeds); the first also seeds the stages"},
    )
    lam: float = field(
        default=5.0, metadata={"help": "λ of the penalty arms (chosen on pilot seeds; the class docstring)"}
    )
    beta: float = field(default=0.1, metadata={"help": "β, the KL weight of every arm (chosen on pilot seeds)"})
    steps: int = field(default=40, metadata={"help": "RL steps per run (chosen on pilot seeds)"})
    k: int = field(default=8, metadata={"help": "completions per prompt (leave-one-out group)"})
    prompts_per_step: int = field(default=4, metadata={"help": "RL prompts per step"})
    penalties: list[str] = field(
        default_factory=lambda: ["mean", "max"],
        metadata={
            "help": "depth penalties of the λ > 0 arms, the first compared with the control (O3), every one "
            "with filler (O5): mean (the paper), max, sum (scale λ down by a typical length)"
        },
    )
    gap: float = field(
        default=0.10,
        metadata={"help": "RL hop counts: those where |direct − hops| accuracy on the card is at most this"},
    )
    eval_n: int = field(default=64, metadata={"help": "test prompts per hop count for the final measures"})
    samples: int = field(default=4, metadata={"help": "sampled completions per test prompt (route shares)"})
    quick: bool = field(default=False, metadata={"help": "tiny sizes of every stage, for CI"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: all cores)"})

    def __post_init__(self) -> None:
        seeds = list(self.seeds)
        if not seeds or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            raise ValueError(f"seeds must be consecutive (RL runs seed, seed+1, …), got {self.seeds}")
        if not self.penalties or any(p not in DEPTH_PENALTIES for p in self.penalties):
            raise ValueError(f"penalties must be some of {', '.join(DEPTH_PENALTIES)}, got {self.penalties}")
        if len(set(self.penalties)) != len(self.penalties):
            raise ValueError(f"penalties repeat: {self.penalties}")
        if self.lam <= 0 or self.beta < 0:
            raise ValueError(
                f"need lam > 0 (the penalty arms; the control has 0) and beta >= 0, got {self.lam}, {self.beta}"
            )
        for name in ("steps", "k", "prompts_per_step", "eval_n", "samples"):
            if getattr(self, name) < (2 if name == "k" else 1):
                raise ValueError(f"{name} is too small: {getattr(self, name)}")
        if not 0 <= self.gap <= 1:
            raise ValueError(f"gap must be in [0, 1], got {self.gap}")

    def arms(self) -> dict[str, tuple[float, str]]:
        """{arm name: (λ, depth penalty)}: the control first, then one arm per penalty."""
        return {CONTROL: (0.0, self.penalties[0]), **{f"{p}-penalty": (self.lam, p) for p in self.penalties}}


@dataclass(frozen=True)
class Sizes:
    """What a run's size decides besides the config's fields."""

    calib_n: int
    sft_steps: int
    sft_batch: int
    rl_eval_every: int
    rl_eval_n: int
    steps: int
    k: int
    prompts_per_step: int
    eval_n: int
    samples: int


def sizes(config: OrganismExperimentConfig) -> Sizes:
    """The stages' sizes: the config's own, or ``--quick``'s tiny ones (a few seconds a stage)."""
    if config.quick:
        return Sizes(
            calib_n=8, sft_steps=2, sft_batch=4, rl_eval_every=1, rl_eval_n=2,
            steps=2, k=2, prompts_per_step=2, eval_n=2, samples=2,
        )  # fmt: skip
    return Sizes(
        calib_n=96,
        sft_steps=300,
        sft_batch=16,
        rl_eval_every=max(1, config.steps // 5),
        rl_eval_n=32,
        steps=config.steps,
        k=config.k,
        prompts_per_step=config.prompts_per_step,
        eval_n=config.eval_n,
        samples=config.samples,
    )
