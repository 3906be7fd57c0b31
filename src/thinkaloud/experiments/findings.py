"""The demo's findings: the paper's four claims, tested on the demo's outputs, each with a verdict.

Reads the eval directories (``records.jsonl``: exit layers, score and fluency proxy per response), the
calibration targets and the RL folder's held-out log (``thinkaloud.train.rl_heldout``) and states:

1. lower KL factor → more and earlier exits (early-exit rate and ALS fall from F = 0.25 to 1 to 4) and
   lower fluency (the base-model NLL per token is higher at F = 0.25 than at F = 4; the judge's
   coherence too when a judge is configured);
2. the learned exit histogram follows its target: for every F, the TV distance between the SFT model's
   exit histogram and the calibration target at F is below the base model's (which never exits);
3. RL lowers mean compute: the mean depth ℓ/L on the fixed held-out prompts is lower at the last RL
   step than at step 0 (the SFT model), over the three seeds;
4. accuracy holds: the RL policies' held-out accuracy is not significantly below the base model's on
   the same prompts, and neither is the final RL model's eval accuracy;
5. coherence holds through RL: against the SFT model RL started from, on the same prompts — the held-out
   prompts at the last step against step 0 (seeds pooled) and the RL model's eval against the F = 1 eval
   — the judge's coherence does not fall when a judge is configured; otherwise neither fluency proxy
   worsens: the base-model NLL per token does not rise and distinct-2 does not fall (a response too
   short for a bigram counts as distinct-2 = 0). The paper's third claim for Stage 2 (Figure 2).

Uncertainty: 95% percentile-bootstrap intervals (``BOOTSTRAP`` resamples, fixed seed) over items —
paired where two models answered the same items (the evals share their items; the held-out prompts
are the same for every seed and step, so seeds are pooled and prompts resampled); per-seed means ±
1 SE are given beside them. Verdicts, for a claimed direction: "held" when the estimate has that
direction and its interval excludes 0, "not significant" when it has the direction but the interval
includes 0, "did not hold" otherwise; for (4), a claim of no harm: "did not hold" when an interval
lies entirely below 0, "not significant" when an estimate falls by more than ``ACCURACY_MARGIN`` with an
interval that includes 0 or when the base model answers nothing correctly (nothing to hold), "held"
otherwise; (5) is a claim of no harm too, with the same rule on each measure in its worse direction and
``COHERENCE_MARGINS`` in place of the accuracy margin. Small samples (tens of items, three seeds) give wide
intervals: "not significant" is common and says only that.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thinkaloud.measures.metrics import tv_distance

BOOTSTRAP = 2000
ACCURACY_MARGIN = 0.05
COHERENCE_MARGINS = {"base_nll": 0.25, "distinct2": 0.05, "coherence": 0.5}
"""Worsening tolerated by (5) before "not significant": nats/token, share of distinct bigrams, judge points."""
HELD, NOT_SIGNIFICANT, DID_NOT_HOLD = "held", "not significant", "did not hold"


@dataclass
class Finding:
    finding: str
    measured: str
    verdict: str


# ---------------------------------------------------------------------------------------------------
# Statistics


def bootstrap_ci(
    stat: Callable[[list[int]], float], n: int, *, resamples: int = BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``stat(indices)`` over ``resamples`` draws of n indices with replacement."""
    rng = random.Random(seed)
    values = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    return values[int(0.025 * resamples)], values[min(resamples - 1, int(0.975 * resamples))]


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0


def direction_verdict(estimate: float, ci: tuple[float, float], sign: int) -> str:
    """``sign`` = +1 if the claim is "greater than 0", −1 if "less than 0"."""
    if sign * estimate <= 0:
        return DID_NOT_HOLD
    return HELD if sign * ci[0] > 0 and sign * ci[1] > 0 else NOT_SIGNIFICANT


def no_harm_verdict(estimates: Sequence[tuple[float, tuple[float, float]]], margin: float = ACCURACY_MARGIN) -> str:
    """Estimates with intervals, oriented so that below 0 is harm."""
    if any(hi < 0 for _, (_, hi) in estimates):
        return DID_NOT_HOLD
    return NOT_SIGNIFICANT if any(est < -margin for est, _ in estimates) else HELD


def worst(verdicts: Sequence[str]) -> str:
    return DID_NOT_HOLD if DID_NOT_HOLD in verdicts else NOT_SIGNIFICANT if NOT_SIGNIFICANT in verdicts else HELD


def _ci(ci: tuple[float, float], scale: float = 100, fmt: str = ".1f") -> str:
    return f"[{format(scale * ci[0], fmt)}, {format(scale * ci[1], fmt)}]"


# ---------------------------------------------------------------------------------------------------
# What an eval directory holds, per response


@dataclass
class EvalRecords:
    label: str
    exit_layers: list[list[int]]
    nll: list[float | None]  # base-model NLL per token of each response (None when not measured)
    scores: list[float]
    coherence: list[float | None]
    num_layers: int
    exit_support: list[int]
    distinct2: list[float | None] | None = None  # distinct-2 of each response (None: too short, or not measured)

    @classmethod
    def read(cls, label: str, d: Path) -> EvalRecords:
        summary = json.loads((d / "summary.json").read_text())
        recs = [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines() if line.strip()]
        return cls(
            label,
            [r["exit_layers"] for r in recs],
            [(r.get("fluency") or {}).get("base_nll") for r in recs],
            [float(r["score"]) for r in recs],
            [(r.get("judge") or {}).get("overall") for r in recs],
            int(summary["num_layers"]),
            list(summary["exit_layers"]) + [int(summary["num_layers"])],
            [(r.get("fluency") or {}).get("distinct2") for r in recs],
        )

    def exit_rate(self, idx: Sequence[int]) -> float:
        tokens = [x for i in idx for x in self.exit_layers[i]]
        return sum(x < self.num_layers for x in tokens) / max(len(tokens), 1)

    def depth(self, idx: Sequence[int]) -> float:
        """Mean ℓ/L over the tokens (1 − ALS)."""
        tokens = [x for i in idx for x in self.exit_layers[i]]
        return sum(x / self.num_layers for x in tokens) / max(len(tokens), 1)

    def nll_mean(self, idx: Sequence[int]) -> float:
        """Token-weighted mean NLL per token."""
        pairs = [(v, len(self.exit_layers[i])) for i in idx if (v := self.nll[i]) is not None]
        return sum(v * n for v, n in pairs) / max(sum(n for _, n in pairs), 1)

    def hist(self, idx: Sequence[int]) -> dict[int, float]:
        tokens = [x for i in idx for x in self.exit_layers[i]]
        return {ly: sum(x == ly for x in tokens) / max(len(tokens), 1) for ly in self.exit_support}

    def distinct2_mean(self, idx: Sequence[int]) -> float:
        """Mean distinct-2 over the responses, a response too short for a bigram counting as 0."""
        values = self.distinct2 or [None] * len(self)
        return sum(values[i] or 0.0 for i in idx) / max(len(idx), 1)

    def coherence_mean(self, idx: Sequence[int]) -> float:
        return sum(c for i in idx if (c := self.coherence[i]) is not None) / max(len(idx), 1)

    def accuracy(self, idx: Sequence[int]) -> float:
        return sum(self.scores[i] for i in idx) / max(len(idx), 1)

    def __len__(self) -> int:
        return len(self.scores)


def _paired(a: EvalRecords, b: EvalRecords, metric: str) -> tuple[float, tuple[float, float]]:
    """(a − b) of a metric over the same items, with its paired bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"{a.label} and {b.label} have {len(a)} and {len(b)} responses: not the same items")
    diff = lambda idx: getattr(a, metric)(idx) - getattr(b, metric)(idx)
    everything = list(range(len(a)))
    return diff(everything), bootstrap_ci(diff, len(a))


# ---------------------------------------------------------------------------------------------------
# The four findings


def finding_1(by_factor: dict[float, EvalRecords]) -> list[Finding]:
    """Exits (rate and ALS) and fluency across KL factors, lowest against highest factor."""
    factors = sorted(by_factor)
    lo, hi = by_factor[factors[0]], by_factor[factors[-1]]
    everything = lambda r: list(range(len(r)))
    rates = [by_factor[f].exit_rate(everything(by_factor[f])) for f in factors]
    als = [1 - by_factor[f].depth(everything(by_factor[f])) for f in factors]
    d_rate, ci_rate = _paired(lo, hi, "exit_rate")
    d_depth, ci_depth = _paired(lo, hi, "depth")  # ALS difference = −depth difference
    ci_als = (-ci_depth[1], -ci_depth[0])
    monotone = all(a > b for a, b in zip(rates, rates[1:])) and all(a > b for a, b in zip(als, als[1:]))
    verdicts = [direction_verdict(d_rate, ci_rate, +1), direction_verdict(-d_depth, ci_als, +1)]
    exits = (
        DID_NOT_HOLD
        if DID_NOT_HOLD in verdicts or not monotone
        else NOT_SIGNIFICANT
        if NOT_SIGNIFICANT in verdicts
        else HELD
    )
    names = " → ".join(f"F={f:g}" for f in factors)
    out = [
        Finding(
            f"(1a) lower KL factor → more and earlier exits ({names})",
            f"early-exit rate {' → '.join(f'{100 * r:.1f}%' for r in rates)}; ALS "
            f"{' → '.join(f'{100 * a:.1f}%' for a in als)}; F={factors[0]:g} − F={factors[-1]:g}: rate "
            f"{100 * d_rate:+.1f} pts {_ci(ci_rate)}, ALS {-100 * d_depth:+.1f} pts {_ci(ci_als)}",
            exits,
        )
    ]
    nlls = [by_factor[f].nll_mean(everything(by_factor[f])) for f in factors]
    d_nll, ci_nll = _paired(lo, hi, "nll_mean")
    measured = (
        f"base-model NLL {' → '.join(f'{v:.3f}' for v in nlls)} nats/token; F={factors[0]:g} − "
        f"F={factors[-1]:g}: {d_nll:+.3f} {_ci(ci_nll, 1, '.3f')}"
    )
    verdict = direction_verdict(d_nll, ci_nll, +1)
    if all(c is not None for c in lo.coherence + hi.coherence):
        coh = lambda r, idx: sum(r.coherence[i] for i in idx) / len(idx)
        d_coh = coh(lo, everything(lo)) - coh(hi, everything(hi))
        ci_coh = bootstrap_ci(lambda idx: coh(lo, idx) - coh(hi, idx), len(lo))
        measured += f"; judge coherence F={factors[0]:g} − F={factors[-1]:g}: {d_coh:+.2f} {_ci(ci_coh, 1, '.2f')}"
        verdict = direction_verdict(-d_coh, (-ci_coh[1], -ci_coh[0]), +1)
    out.append(
        Finding("(1b) lower KL factor → lower fluency (coherence when judged, else the NLL proxy)", measured, verdict)
    )
    return out


def finding_2(
    by_factor: dict[float, EvalRecords], base: EvalRecords, targets: dict[float, dict[int, float]]
) -> Finding:
    """TV(SFT exit histogram, target) below TV(base, target) for every factor."""
    parts, verdicts = [], []
    for f in sorted(by_factor):
        r, target = by_factor[f], targets[f]
        tv = tv_distance(r.hist(range(len(r))), target)
        ci = bootstrap_ci(lambda idx: tv_distance(r.hist(idx), target), len(r))  # noqa: B023 (called right here)
        tv_base = tv_distance(base.hist(range(len(base))), target)
        parts.append(f"F={f:g}: TV {tv:.3f} {_ci(ci, 1, '.3f')} vs base {tv_base:.3f}")
        verdicts.append(direction_verdict(tv_base - tv, (tv_base - ci[1], tv_base - ci[0]), +1))
    verdict = worst(verdicts)
    return Finding(
        "(2) the learned exit histogram follows its target (TV trained < TV base)", "; ".join(parts), verdict
    )


def ends(heldout: Sequence[dict[str, Any]]) -> tuple[dict[int, dict], dict[int, dict]]:
    """The held-out rows at each run's first and last evaluated step."""
    runs = sorted({int(r["run"]) for r in heldout})
    first = {run: min((r for r in heldout if r["run"] == run), key=lambda r: r["step"]) for run in runs}
    last = {run: max((r for r in heldout if r["run"] == run), key=lambda r: r["step"]) for run in runs}
    return first, last


def _pooled(a: dict[int, list[float]], b: dict[int, list[float]] | list[float]) -> tuple[float, tuple[float, float]]:
    """Mean over seeds and prompts of a[seed][i] − b[(seed)][i], prompts resampled (seeds pooled)."""
    runs = sorted(a)
    other = (lambda run: b[run]) if isinstance(b, dict) else (lambda run: b)
    n = len(a[runs[0]])
    diff = lambda idx: sum(a[run][i] - other(run)[i] for run in runs for i in idx) / (len(runs) * len(idx))
    return diff(list(range(n))), bootstrap_ci(diff, n)


def finding_3(heldout: Sequence[dict[str, Any]]) -> Finding:
    first, last = ends(heldout)
    d, ci = _pooled(
        {k: v["prompt_depth_frac"] for k, v in last.items()}, {k: v["prompt_depth_frac"] for k, v in first.items()}
    )
    per_seed = [last[k]["depth_frac"] - first[k]["depth_frac"] for k in sorted(first)]
    m, se = mean_se(per_seed)
    steps = f"step {first[min(first)]['step']} → {last[min(last)]['step']}"
    measured = (
        f"mean depth ℓ/L on {first[min(first)]['n']} held-out prompts, {steps}: "
        + ", ".join(f"{100 * first[k]['depth_frac']:.1f}% → {100 * last[k]['depth_frac']:.1f}%" for k in sorted(first))
        + f" ({_seeds(len(per_seed))}); change {100 * m:+.1f}"
        + (f" ± {100 * se:.1f} pts (mean ± SE over seeds)" if len(per_seed) > 1 else " pts")
        + f", per prompt {100 * d:+.1f} pts {_ci(ci)}"
    )
    return Finding("(3) RL lowers mean compute", measured, direction_verdict(d, ci, -1))


def finding_4(
    heldout: Sequence[dict[str, Any]], heldout_base: dict[str, Any], rl: EvalRecords, base: EvalRecords
) -> Finding:
    _, last = ends(heldout)
    d_held, ci_held = _pooled({k: v["prompt_accuracy"] for k, v in last.items()}, heldout_base["prompt_accuracy"])
    d_eval, ci_eval = _paired(rl, base, "accuracy")
    every = lambda r: list(range(len(r)))
    accs = ", ".join(f"{100 * last[k]['accuracy']:.0f}%" for k in sorted(last))
    measured = (
        f"held-out accuracy at the last step {accs} (per seed)"
        f" vs base {100 * heldout_base['accuracy']:.0f}%: {100 * d_held:+.1f} pts {_ci(ci_held)}; eval ({len(rl)} "
        f"items) {rl.label} {100 * rl.accuracy(every(rl)):.1f}% vs base {100 * base.accuracy(every(base)):.1f}%: "
        f"{100 * d_eval:+.1f} pts {_ci(ci_eval)}"
    )
    verdict = no_harm_verdict([(d_held, ci_held), (d_eval, ci_eval)])
    if not any(heldout_base["prompt_accuracy"]) and not any(base.scores):
        verdict, measured = NOT_SIGNIFICANT, measured + "; no signal: the base model answered none correctly"
    return Finding("(4) accuracy holds (RL vs the base model)", measured, verdict)


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def finding_5(heldout: Sequence[dict[str, Any]], rl: EvalRecords | None, sft: EvalRecords) -> Finding:
    """Coherence through RL: the RL policies against the SFT model they started from, on the same prompts
    (``rl``: the RL model's eval, compared with ``sft``'s on the same items; None: the held-out prompts only)."""
    first, last = ends(heldout)
    prompts = lambda rows, key: {k: [v or 0.0 for v in r[key]] for k, r in rows.items()}  # distinct-2: None → 0
    nll = [_pooled(prompts(last, "prompt_base_nll"), prompts(first, "prompt_base_nll"))]
    distinct = [_pooled(prompts(last, "prompt_distinct2"), prompts(first, "prompt_distinct2"))]
    step = f"step {first[min(first)]['step']} → {last[min(last)]['step']}"
    path = lambda key: ", ".join(f"{first[k][key] or 0:.2f} → {last[k][key] or 0:.2f}" for k in sorted(first))
    measured = (
        f"held-out ({first[min(first)]['n']} prompts, {_seeds(len(first))}, {step}): base-model NLL "
        f"{path('base_nll')} nats/token, per prompt {nll[0][0]:+.3f} {_ci(nll[0][1], 1, '.3f')}; distinct-2 "
        f"{path('distinct2')}, per prompt {distinct[0][0]:+.3f} {_ci(distinct[0][1], 1, '.3f')}"
    )
    if rl is not None:
        nll.append(_paired(rl, sft, "nll_mean"))
        distinct.append(_paired(rl, sft, "distinct2_mean"))
        measured += (
            f"; eval ({len(rl)} items) {rl.label} − {sft.label}: NLL {nll[1][0]:+.3f} {_ci(nll[1][1], 1, '.3f')}, "
            f"distinct-2 {distinct[1][0]:+.3f} {_ci(distinct[1][1], 1, '.3f')}"
        )
    flip = lambda est, ci: (-est, (-ci[1], -ci[0]))  # NLL: a rise is the harm
    verdict = worst(
        [
            no_harm_verdict([flip(*e) for e in nll], COHERENCE_MARGINS["base_nll"]),
            no_harm_verdict(distinct, COHERENCE_MARGINS["distinct2"]),
        ]
    )
    what = "fluency proxies: base-model NLL per token and distinct-2"
    if rl is not None and all(c is not None for c in rl.coherence + sft.coherence):
        d_coh, ci_coh = _paired(rl, sft, "coherence_mean")
        measured += f"; judge coherence {rl.label} − {sft.label}: {d_coh:+.2f} {_ci(ci_coh, 1, '.2f')}"
        verdict, what = no_harm_verdict([(d_coh, ci_coh)], COHERENCE_MARGINS["coherence"]), "judge's coherence"
    return Finding(f"(5) coherence holds through RL (RL vs the SFT model it started from; {what})", measured, verdict)


def findings_block(findings: Sequence[Finding]) -> str:
    """The findings as plain text lines (terminal and logs)."""
    return "\n".join(f"{f.finding}\n    measured: {f.measured}\n    verdict: {f.verdict.upper()}" for f in findings)


def write_findings(
    out: Path,
    title: str,
    findings: Sequence[Finding],
    notes: Sequence[str],
    tables: Sequence[dict[str, Any]],
    figures: Sequence[dict[str, str]],
    first: bool = False,
) -> Path:
    """``out/findings.json`` in the report's findings format (``thinkaloud.report.build``); ``first``: the report
    puts this section before all others."""
    from thinkaloud.io import atomic_write_json

    return atomic_write_json(
        Path(out) / "findings.json",
        {
            "title": title,
            "findings": [asdict(f) for f in findings],
            "notes": list(notes),
            "tables": list(tables),
            "figures": list(figures),
            **({"first": True} if first else {}),
        },
    )
