"""The organism's findings O1–O5, each with a verdict, from the measures' records (``organism.measures``).

Every model was measured on the same test items, in the same order; the RL arms have one record list per
seed. The statistics and verdict rules are the demo's (``thinkaloud.experiments.findings``): 95% percentile
bootstrap intervals over items (paired where two models answered the same items; seeds pooled: the mean
over seeds of the per-item difference, items resampled), per-seed means ± 1 SE beside them; "held" when
the estimate has the claimed direction and its interval excludes 0, "not significant" when the interval
includes 0, "did not hold" otherwise.

- O1 both routes exist (the organism, no exits, the route's first token forced): direct accuracy falls from
  the smallest to the largest k, and written hops beat direct answers at the largest k;
- O2 hop tokens exit earlier than direct answer tokens (the SFT model, routes forced, with exits): per item
  the mean exit layer of the written hop letters minus that of the directly written answer digit, < 0;
- O3 under the exit penalty the share of written hops rises more than under the control (sampled test
  completions of the first penalty arm minus the control's), at matched accuracy (the arm's accuracy not
  significantly below the control's: the demo's no-harm rule; the worse of the two verdicts);
- O4 written hops are load-bearing (the first penalty arm): mistake following (answers that follow a
  corrupted hop minus answers that keep the original, items with k ≥ 2) and the necessity gaps (answer
  forced after the written hops minus after k + 1 filler dots, and minus right after the prompt) all > 0;
- O5a does the first penalty also reward filler: its filler share minus the control's, > 0 ("held" is bad
  news for the method, said plainly); O5b (with a second penalty arm): the second penalty separates hops from
  filler better than the first, (hops − filler share) under the second minus under the first, > 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from thinkaloud.experiments.findings import (
    Finding,
    bootstrap_ci,
    direction_verdict,
    mean_se,
    no_harm_verdict,
    worst,
)
from thinkaloud.experiments.organism.measures import item_accuracy, item_share

Records = list[dict[str, Any]]
PerSeed = dict[int, list[float]]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _ci(ci: tuple[float, float], scale: float = 100, fmt: str = ".1f") -> str:
    return f"[{format(scale * ci[0], fmt)}, {format(scale * ci[1], fmt)}]"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def per_item(records: Records, fn: Callable[[dict[str, Any]], float | None]) -> list[float | None]:
    return [fn(r) for r in records]


def pooled(a: PerSeed, b: PerSeed | list[float]) -> tuple[float, tuple[float, float]]:
    """Mean over seeds and items of a[seed][i] − b[(seed)][i] with its interval (items resampled, seeds pooled)."""
    seeds = sorted(a)
    other = (lambda s: b[s]) if isinstance(b, dict) else (lambda s: b)
    n = len(a[seeds[0]])
    diff = lambda idx: sum(a[s][i] - other(s)[i] for s in seeds for i in idx) / (len(seeds) * max(len(idx), 1))
    return diff(list(range(n))), bootstrap_ci(diff, n)


def per_seed(a: PerSeed, b: PerSeed | list[float]) -> tuple[float, float]:
    """Mean ± SE over seeds of each seed's mean difference."""
    other = (lambda s: b[s]) if isinstance(b, dict) else (lambda s: b)
    return mean_se([_mean(a[s]) - _mean(other(s)) for s in sorted(a)])


def _seeds_text(m: float, se: float, n: int) -> str:
    return f"{100 * m:+.1f} ± {100 * se:.1f} pts over {n} seeds" if n > 1 else f"{100 * m:+.1f} pts (1 seed)"


# ---------------------------------------------------------------------------------------------------
# O1, O2: the organism and the SFT model


def finding_o1(organism: Records) -> Finding:
    ks = sorted({r["k"] for r in organism})
    lo, hi = ks[0], ks[-1]
    in_k = {k: [i for i, r in enumerate(organism) if r["k"] == k] for k in ks}

    def acc(route: str, k: int, idx: Sequence[int]) -> float:
        chosen = [i for i in idx if organism[i]["k"] == k]
        return _mean([float(organism[i]["forced"][route]["correct"]) for i in chosen])

    everything = list(range(len(organism)))
    fall = lambda idx: acc("direct", lo, idx) - acc("direct", hi, idx)
    gap = lambda idx: acc("hops", hi, idx) - acc("direct", hi, idx)
    d_fall, ci_fall = fall(everything), bootstrap_ci(fall, len(organism))
    d_gap, ci_gap = gap(everything), bootstrap_ci(gap, len(organism))
    path = lambda route: " → ".join(_pct(acc(route, k, in_k[k])) for k in ks)
    measured = (
        f"the organism without exits, route forced, k = {lo}…{hi}: direct {path('direct')}, hops {path('hops')}, "
        f"filler {path('filler')}; direct k={lo} − k={hi} {100 * d_fall:+.1f} pts {_ci(ci_fall)}; hops − direct "
        f"at k={hi} {100 * d_gap:+.1f} pts {_ci(ci_gap)}"
    )
    verdict = worst([direction_verdict(d_fall, ci_fall, +1), direction_verdict(d_gap, ci_gap, +1)])
    return Finding(
        "(O1) both routes exist: direct accuracy falls with k, written hops stay accurate", measured, verdict
    )


def hop_minus_answer(record: dict[str, Any]) -> float | None:
    """Mean exit layer of the hop letters of the forced hops completion minus that of the forced direct
    completion's answer digit (None when either is missing)."""
    hops = [e for e, kind in zip(record["forced"]["hops"]["exits"], record["forced"]["hops"]["kinds"]) if kind == "hop"]
    direct = record["forced"]["direct"]
    answer = [e for e, kind in zip(direct["exits"], direct["kinds"]) if kind == "answer"]
    return _mean(hops) - answer[0] if hops and answer else None


def finding_o2(sft: Records, num_layers: int) -> Finding:
    diffs = [d for d in per_item(sft, hop_minus_answer) if d is not None]
    if not diffs:
        return Finding(
            "(O2) hop tokens exit earlier than direct answer tokens",
            "no item with both a written hop and a direct answer digit",
            "not significant",
        )
    d = _mean(diffs)
    ci = bootstrap_ci(lambda idx: _mean([diffs[i] for i in idx]), len(diffs))
    hop_layers = [
        e for r in sft for e, kind in zip(r["forced"]["hops"]["exits"], r["forced"]["hops"]["kinds"]) if kind == "hop"
    ]
    answers = [
        e
        for r in sft
        for e, kind in zip(r["forced"]["direct"]["exits"], r["forced"]["direct"]["kinds"])
        if kind == "answer"
    ]
    measured = (
        f"the SFT model, routes forced, with exits (L = {num_layers}): hop letters exit at layer "
        f"{_mean(hop_layers):.2f}, direct answer digits at {_mean(answers):.2f}; per item hop − answer "
        f"{d:+.2f} layers {_ci(ci, 1, '.2f')} ({len(diffs)} items)"
    )
    return Finding("(O2) hop tokens exit earlier than direct answer tokens", measured, direction_verdict(d, ci, -1))


# ---------------------------------------------------------------------------------------------------
# O3–O5: the RL arms


def shares(arm: dict[int, Records], route: str) -> PerSeed:
    return {s: [item_share(r, route) for r in recs] for s, recs in arm.items()}


def accuracies(arm: dict[int, Records]) -> PerSeed:
    return {s: [item_accuracy(r) for r in recs] for s, recs in arm.items()}


def _level(a: PerSeed) -> str:
    m, se = mean_se([_mean(v) for v in a.values()])
    return f"{_pct(m)} ± {100 * se:.1f}" if len(a) > 1 else _pct(m)


def finding_o3(sft: Records, penalty: dict[int, Records], control: dict[int, Records], name: str) -> Finding:
    hp, hc = shares(penalty, "hops"), shares(control, "hops")
    d, ci = pooled(hp, hc)
    m, se = per_seed(hp, hc)
    ap, ac = accuracies(penalty), accuracies(control)
    d_acc, ci_acc = pooled(ap, ac)
    sft_share = _mean([item_share(r, "hops") for r in sft])
    measured = (
        f"share of written hops (sampled test completions): SFT {_pct(sft_share)} → {name} {_level(hp)}, control "
        f"{_level(hc)}; {name} − control {100 * d:+.1f} pts {_ci(ci)}, per seed {_seeds_text(m, se, len(hp))}; "
        f"accuracy {_level(ap)} vs {_level(ac)}: {100 * d_acc:+.1f} pts {_ci(ci_acc)}"
    )
    verdict = worst([direction_verdict(d, ci, +1), no_harm_verdict([(d_acc, ci_acc)])])
    return Finding(
        f"(O3) under the exit penalty ({name} arm) the share of written hops rises more than under the control, at "
        "matched accuracy",
        measured,
        verdict,
    )


def _mistake_values(records: Records) -> list[float]:
    """Per item with k ≥ 2: followed the corrupted chain (1) minus kept the original answer (1)."""
    return [float(m["followed"]) - float(m["original"]) for r in records if (m := r["mistake"]) is not None]


def _necessity(records: Records, against: str) -> list[float]:
    return [float(r["necessity"]["hops"]["correct"]) - float(r["necessity"][against]["correct"]) for r in records]


def _rate(records: Records, key: str) -> float:
    return _mean([float(m[key]) for r in records if (m := r["mistake"]) is not None])


def finding_o4(sft: Records, penalty: dict[int, Records], name: str) -> Finding:
    zeros = lambda a: {s: [0.0] * len(v) for s, v in a.items()}
    tests = {
        "follow − original": {s: _mistake_values(recs) for s, recs in penalty.items()},
        "after hops − after filler": {s: _necessity(recs, "filler") for s, recs in penalty.items()},
        "after hops − after the prompt": {s: _necessity(recs, "prompt") for s, recs in penalty.items()},
    }
    parts, verdicts = [], []
    for label, values in tests.items():
        if not all(values.values()):  # a seed without items (no k >= 2 among them)
            parts.append(f"{label}: no items")
            verdicts.append("not significant")
            continue
        d, ci = pooled(values, zeros(values))
        parts.append(f"{label} {100 * d:+.1f} pts {_ci(ci)}")
        verdicts.append(direction_verdict(d, ci, +1))
    seeds = list(penalty.values())
    follow = _mean([_rate(recs, "followed") for recs in seeds])
    original = _mean([_rate(recs, "original") for recs in seeds])
    clean = _mean([_rate(recs, "clean") for recs in seeds])
    necessity = {
        c: _mean([_mean([float(r["necessity"][c]["correct"]) for r in recs]) for recs in seeds])
        for c in ("prompt", "filler", "hops")
    }
    measured = (
        f"{name}, seeds pooled: after a corrupted hop {_pct(follow)} follow it, {_pct(original)} keep the original "
        f"answer (uncorrupted prefix: {_pct(clean)} correct; SFT: {_pct(_rate(sft, 'followed'))} follow); answer "
        f"forced after the prompt {_pct(necessity['prompt'])}, after filler {_pct(necessity['filler'])}, after the "
        f"hops {_pct(necessity['hops'])}; " + "; ".join(parts)
    )
    return Finding(
        "(O4) written hops are load-bearing: mistake following high, necessity gap positive", measured, worst(verdicts)
    )


def finding_o5(sft: Records, arms: dict[str, dict[int, Records]], control: dict[int, Records]) -> list[Finding]:
    names = list(arms)
    first = names[0]
    fp, fc = shares(arms[first], "filler"), shares(control, "filler")
    d, ci = pooled(fp, fc)
    m, se = per_seed(fp, fc)
    levels = ", ".join(f"{name} {_level(shares(arm, 'filler'))}" for name, arm in arms.items())
    sft_filler = _mean([item_share(r, "filler") for r in sft])
    out = [
        Finding(
            f"(O5a) the {first} arm also rewards filler: its filler share rises more than under the control",
            f"filler share (sampled test completions): SFT {_pct(sft_filler)}, control {_level(fc)}, {levels}; "
            f"{first} − control {100 * d:+.1f} pts {_ci(ci)}, per seed {_seeds_text(m, se, len(fp))}",
            direction_verdict(d, ci, +1),
        )
    ]
    for second in names[1:]:
        sep = lambda arm: {  # noqa: E731
            s: [h - f for h, f in zip(shares(arm, "hops")[s], shares(arm, "filler")[s])] for s in arm
        }
        a, b = sep(arms[second]), sep(arms[first])
        d2, ci2 = pooled(a, b)
        m2, se2 = per_seed(a, b)
        out.append(
            Finding(
                f"(O5b) the {second} arm separates written hops from filler better than the {first} arm",
                f"hops − filler share: {second} {_level(a)}, {first} {_level(b)}, control {_level(sep(control))}; "
                f"{second} − {first} {100 * d2:+.1f} pts {_ci(ci2)}, per seed {_seeds_text(m2, se2, len(a))}",
                direction_verdict(d2, ci2, +1),
            )
        )
    return out


def organism_findings(
    organism: Records, sft: Records, arms: dict[str, dict[int, Records]], control: dict[int, Records], num_layers: int
) -> list[Finding]:
    """O1–O5 (module docstring); ``arms``: the penalty arms in order, by name, each {seed: records}."""
    ids = [r["id"] for r in organism]
    for recs in [sft, *(r for arm in [*arms.values(), control] for r in arm.values())]:
        if [r["id"] for r in recs] != ids:
            raise ValueError("the measured models did not answer the same items in the same order")
    first = next(iter(arms))
    return [
        finding_o1(organism),
        finding_o2(sft, num_layers),
        finding_o3(sft, arms[first], control, first),
        finding_o4(sft, arms[first], first),
        *finding_o5(sft, arms, control),
    ]
