"""Figures (labels, legends, files) and the report built from synthetic eval/sweep/RL directories."""

import json
import os
import random
import re
from pathlib import Path

import pytest

from thinkaloud.report.build import build_report, detect_kind
from thinkaloud.report.plots import (
    plot_als_coherence_tradeoff,
    plot_coherence_distributions,
    plot_exit_histogram,
    plot_rl_dynamics,
    save_figure,
)

# ---------------------------------------------------------------------------------------------------
# Synthetic eval, sweep and RL directories in the runner's format (see thinkaloud.report.build)

L = 30
E = [5, 10, 15, 20, 25]
PAPER_SWEEP = [
    (0.25, 1.1, 0.59, 0.224),
    (0.5, 5.5, 0.49, 0.081),
    (1.0, 7.5, 0.47, 0.064),
    (2.0, 8.4, 0.43, 0.053),
    (4.0, 8.5, 0.37, 0.046),
]


def write_eval_dir(path: Path, label: str, exit_share: float, seed: int = 0, judged: bool = True, n: int = 8) -> Path:
    """An eval directory whose records have ~exit_share early exits and (optionally) judge scores."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    records, all_layers, overall = [], [], []
    for i in range(n):
        tokens = [
            "<think>",
            "\n",
            "Let",
            " me",
            " add",
            " 2",
            " +",
            " 2",
            ".",
            " <",
            "b",
            ">",
            " &",
            "\n",
            "</think>",
            "\n\n",
            "The",
            " answer",
            " is",
            " 4",
            ".",
        ]
        layers = [rng.choice(E) if rng.random() < exit_share else L for _ in tokens]
        all_layers += layers
        score = max(1, min(10, round(rng.gauss(8 - 6 * exit_share, 1.2)))) if judged else None
        judge = None
        if judged and i != n - 1:
            judge = {"coherence": score, "completeness": score, "clarity": score, "no_repetition": 9, "overall": score}
            overall.append(score)
        records.append(
            {
                "id": f"gsm8k-{i}",
                "prompt": "What is 2 + 2?",
                "completion": "".join(tokens),
                "tokens": tokens,
                "exit_layers": layers,
                "score": 1.0,
                "judge": judge,
                "judge_missing": None if judge or not judged else "timeout after 3 tries",
            }
        )
    hist = {str(ly): sum(x == ly for x in all_layers) / len(all_layers) for ly in E + [L]}
    target = {str(ly): (1 - exit_share) if ly == L else exit_share / len(E) for ly in E + [L]}
    summary = {
        "model": "tiny-llama",
        "label": label,
        "task": "gsm8k",
        "n": n,
        "num_layers": L,
        "exit_layers": E,
        "offset": 0.0,
        "kl_factor": None if label == "base" else 1.0,
        "accuracy": 0.62,
        "early_exit_rate": exit_share,
        "als": exit_share * 0.3,
        "mean_length": float(len(tokens)),
        "tokens_per_s": 41.5,
        "flop_savings": exit_share * 0.2,
        "exit_hist": hist,
        "target_hist": None if label == "base" else target,
        "tv_distance": None if label == "base" else 0.5 * sum(abs(hist[k] - target[k]) for k in hist),
        "coherence": {
            "mean": sum(overall) / len(overall),
            "n_judged": len(overall),
            "n_missing": n - len(overall),
            "hist": {str(s): overall.count(s) for s in range(1, 11)},
            "rubric": "paper",
        }
        if judged
        else None,
        "target": None if label == "base" else {"kl_factor": 1.0, "source": f"sft run runs/{label}"},
        "decode_ms_per_token": 12.5,
        "speedup_vs_base": None if label == "base" else 1.25,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_sweep_dir(path: Path, coherence: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "label": f"kl={f:g}",
            "kl_factor": f,
            "coherence": c if coherence else None,
            "early_exit_rate": r,
            "als": a,
            "accuracy": 0.7 - a,
        }
        for f, c, r, a in PAPER_SWEEP
    ]
    rows.append(
        {
            "label": "base",
            "kl_factor": None,
            "coherence": 8.9 if coherence else None,
            "early_exit_rate": 0.0,
            "als": 0.0,
            "accuracy": 0.72,
        }
    )
    (path / "sweep.json").write_text(json.dumps({"rows": rows}))
    return path


def write_rl_dir(path: Path, runs: int = 3, steps: int = 40, coherence_every: int | None = 5) -> Path:
    rng = random.Random(1)
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for run in range(runs):
        for step in range(steps):
            t = step / steps
            acc = 0.55 + 0.15 * t + rng.gauss(0, 0.03)
            depth = 0.95 - 0.25 * t + rng.gauss(0, 0.02)
            coh = 8.5 - 1.0 * t + rng.gauss(0, 0.3) if coherence_every and step % coherence_every == 0 else None
            lines.append(
                {
                    "run": run,
                    "step": step,
                    "reward": acc - 1.5 * depth,
                    "accuracy": acc,
                    "depth_frac": depth,
                    "als": 1 - depth,
                    "early_exit_rate": 0.1 + 0.5 * t,
                    "kl": 0.01 * step,
                    "length": 300.0,
                    "coherence": coh,
                }
            )
    (path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (path / "base.json").write_text(json.dumps({"accuracy": 0.6, "depth_frac": 1.0, "coherence": 8.9}))
    return path


@pytest.fixture
def report_dirs(tmp_path):
    return [
        write_eval_dir(tmp_path / "eval_base", "base", 0.0),
        write_eval_dir(tmp_path / "eval_sft", "sft", 0.4, seed=1),
        write_eval_dir(tmp_path / "eval_rl", "rl", 0.6, seed=2, judged=False),
        write_sweep_dir(tmp_path / "sweep"),
        write_rl_dir(tmp_path / "rl"),
    ]


# ---------------------------------------------------------------------------------------------------
def legend_texts(ax):
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_exit_histogram_figure():
    hist = {"5": 0.2, "10": 0.1, "15": 0.0, "20": 0.0, "25": 0.1, "30": 0.6}
    target = {str(ly): 0.1 for ly in E} | {"30": 0.5}
    fig = plot_exit_histogram(hist, target, L, title="sft")
    [ax] = fig.axes
    assert ax.get_xlabel() == "exit layer (of L = 30)"
    assert ax.get_ylabel() == "share of generated tokens"
    assert legend_texts(ax) == ["model", "target"]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["5", "10", "15", "20", "25", "30\n(no exit)"]
    assert "TV distance 0.200" in ax.get_title()  # ½ (0.1 + 0 + 0.1 + 0.1 + 0 + 0.1)
    assert len(ax.patches) == 12  # 6 layers × (model, target)
    # Without a target: one bar per layer.
    assert len(plot_exit_histogram(hist, None, L).axes[0].patches) == 6


def test_coherence_distributions_figure():
    fig = plot_coherence_distributions({"base": [9, 9, 8], "sft": [7, 6, 8, 8], "rl": []})
    [ax] = fig.axes
    assert ax.get_xlabel().startswith("overall coherence score")
    assert ax.get_ylabel() == "share of responses"
    assert legend_texts(ax) == ["base (mean 8.7, n=3)", "sft (mean 7.2, n=4)"]
    assert plot_coherence_distributions({}).axes[0].texts[0].get_text() == "no coherence scores"


def test_tradeoff_figure(tmp_path):
    rows = json.loads((write_sweep_dir(tmp_path / "s") / "sweep.json").read_text())["rows"]
    fig = plot_als_coherence_tradeoff(rows)
    [ax] = fig.axes
    assert ax.get_xlabel() == "average layer savings, ALS (%)"
    assert ax.get_ylabel().startswith("coherence")
    assert legend_texts(ax) == ["F=0.25", "F=0.5", "F=1", "F=2", "F=4", "base model"]
    markers = [line for line in ax.lines if line.get_label() == "F=1"]
    assert markers[0].get_xydata().tolist() == [[pytest.approx(6.4), 7.5]]  # ALS in %, coherence as is
    assert fig.get_suptitle() == "Coherence vs layer savings"


def test_tradeoff_without_coherence_says_so(tmp_path):
    rows = json.loads((write_sweep_dir(tmp_path / "s", coherence=False) / "sweep.json").read_text())["rows"]
    fig = plot_als_coherence_tradeoff(rows)
    assert [ax.get_ylabel() for ax in fig.axes] == ["early-exit rate (%)", "accuracy (%)"]
    assert "No coherence" in fig.get_suptitle()


@pytest.mark.parametrize("coherence_every, n_panels", [(5, 4), (None, 3)])  # accuracy, depth, (coherence), KL̂
def test_rl_dynamics_figure(tmp_path, coherence_every, n_panels):
    d = write_rl_dir(tmp_path / "rl", runs=3, steps=12, coherence_every=coherence_every)
    rows = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    fig = plot_rl_dynamics(rows, base={"accuracy": 0.6, "depth_frac": 1.0, "coherence": 8.9})
    assert len(fig.axes) == n_panels
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    assert ylabels[:2] == ["accuracy", "average compute (mean depth ℓ/L)"]
    assert ylabels[-1] == "KL̂ to the base (nats/token)"
    for ax in fig.axes:
        assert ax.get_xlabel() == "RL step"
        with_base = ax is not fig.axes[-1]  # no base level for the KL̂
        assert set(legend_texts(ax)) == {"individual runs (3)", "mean ± 1 SE"} | (
            {"base model"} if with_base else set()
        )
        assert len(ax.lines) >= 3 + with_base  # three runs, the mean, the base line
    # The mean line of the accuracy panel at step 0 is the mean across runs.
    first = [r["accuracy"] for r in rows if r["step"] == 0]
    mean_line = [line for line in fig.axes[0].lines if line.get_linewidth() == 1.8][0]
    assert mean_line.get_ydata()[0] == pytest.approx(sum(first) / 3)


def test_rl_dynamics_figure_shows_beta_the_kl_target_and_degenerate_completions(tmp_path):
    d = write_rl_dir(tmp_path / "rl", runs=2, steps=6, coherence_every=None)
    rows = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    for r in rows:
        r.update(beta=0.1 * 1.2 ** r["step"], kl_target=0.5, degenerate=0.1 * r["step"])
    fig = plot_rl_dynamics(rows)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels[2:] == ["KL̂ to the base (nats/token)", "KL weight β", "degenerate completions (share)"]
    kl_ax, beta_ax = fig.axes[2], fig.axes[3]
    assert "target T = 0.5" in legend_texts(kl_ax) and beta_ax.get_yscale() == "log"
    assert beta_ax.get_title() == "KL weight β" and kl_ax.get_title() == "KL̂ to the base"  # no lower-cased "Kl"
    assert fig.axes[0].get_subplotspec().get_geometry()[:2] == (2, 4)  # five panels: two rows of four


def test_save_figure_writes_png_and_svg(tmp_path):
    png, svg = save_figure(plot_exit_histogram({"30": 1.0}, None, L), tmp_path / "fig" / "h")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in svg.read_bytes()
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["h.png", "h.svg"]  # no temp files left


def test_detect_kind(report_dirs, tmp_path):
    assert [detect_kind(d) for d in report_dirs] == ["eval", "eval", "eval", "sweep", "rl"]
    with pytest.raises(ValueError, match="not an eval"):
        detect_kind(tmp_path)


def test_build_report(report_dirs, tmp_path):
    out = tmp_path / "report"
    md, page = build_report(report_dirs, out)
    assert md == out / "report.md" and page == out / "report.html"
    figures = sorted(p.name for p in (out / "figures").iterdir())
    for stem in (
        "exit_hist_00_base",
        "exit_hist_01_sft",
        "exit_hist_02_rl",
        "coherence_distributions",
        "tradeoff_00_sweep",
        "rl_dynamics_00_rl",
    ):
        assert f"{stem}.png" in figures and f"{stem}.svg" in figures
    assert not [p for p in out.rglob("*.tmp")]

    text = md.read_text()
    assert "| label | model | task |" in text
    for label in ("base", "sft", "rl"):
        assert re.search(rf"^\| {label} \| tiny-llama \| gsm8k \|", text, re.M)
    assert "![" in text and "(figures/tradeoff_00_sweep.png)" in text
    assert "(tokens/00_base_0.html)" in text and (out / "tokens" / "00_base_0.html").is_file()
    assert "| kl=0.25 | 0.25 | 1.10 | — | — | 59.0% | 22.4% |" in text
    # RL table: coherence is logged every 5 of 40 steps, so its last value is at step 35.
    last = re.search(r"^\| last \|.*$", text, re.M).group(0)
    assert last.endswith("@35 |") and "@39" in last
    assert re.search(r"^\| base model \| — \| 0.600 \| 1.000 \|", text, re.M)

    doc = page.read_text()
    assert doc.count("<table>") == 3  # evals, sweep, RL
    assert "<th>early-exit rate</th>" in doc and "<th>FLOP savings</th>" in doc
    n_figures = len([f for f in figures if f.endswith(".png")])
    assert doc.count('src="data:image/png;base64,') == n_figures
    assert doc.count('class="ta-view"') == 3  # one token view per eval dir
    assert doc.count('class="ta-tok"') == 3 * 21
    assert "&lt;/think&gt;" in doc
    assert not re.search(r"""(src|href)=["'](?!data:)""", doc)  # self-contained
    assert "—" in doc  # the un-judged rl dir shows a dash for coherence


def test_report_states_target_rubric_and_measured_speed(report_dirs, tmp_path):
    md, _ = build_report(report_dirs[:2], tmp_path / "report")
    text = md.read_text()
    assert "| decode ms/token | speedup vs base |" in text
    assert re.search(r"^\| sft \|.*\| 12.50 \| 1.25 \|", text, re.M)
    assert (
        "sft: target KL factor 1 — sft run runs/sft" in text and "sft: coherence judged with the paper rubric" in text
    )


def test_report_command_takes_folders_as_arguments(tmp_path, monkeypatch):
    from thinkaloud.cli import main
    from thinkaloud.report.job import ReportConfig, default_out

    write_eval_dir(tmp_path / "runs" / "a", "sft", 0.4)
    write_eval_dir(tmp_path / "runs" / "b", "rl", 0.6, seed=1)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "runs/a", "runs/b"]) == 0
    assert (tmp_path / "runs" / "report" / "report.md").is_file()  # --out defaults to report/ in the common parent
    assert main(["report", "--dirs", "runs/a", "--out", "elsewhere"]) == 0
    assert (tmp_path / "elsewhere" / "report.html").is_file()
    assert ReportConfig(dirs=["runs/a"]).out == str(Path("runs") / "report")
    assert default_out([str(tmp_path / "runs" / "a"), "/"]) == Path("report")  # only the root in common: here
    with pytest.raises(ValueError, match="at least one"):
        ReportConfig(dirs=[])


def test_build_report_rejects_unknown_dir(tmp_path):
    with pytest.raises(ValueError):
        build_report([tmp_path], tmp_path / "out")


def test_the_report_copies_the_rl_jobs_own_figure_unless_its_log_is_newer(tmp_path):
    d = write_rl_dir(tmp_path / "rl")
    (d / "figures").mkdir()
    drawn = {ext: f"the job's {ext}".encode() for ext in ("png", "svg")}
    for ext, data in drawn.items():
        (d / "figures" / f"rl_dynamics.{ext}").write_bytes(data)
    build_report([d], tmp_path / "report")
    copied = tmp_path / "report" / "figures" / "rl_dynamics_00_rl"
    assert copied.with_suffix(".png").read_bytes() == drawn["png"]
    assert copied.with_suffix(".svg").read_bytes() == drawn["svg"]
    log = d / "log.jsonl"
    os.utime(log, ns=(log.stat().st_atime_ns, (d / "figures" / "rl_dynamics.png").stat().st_mtime_ns + 10**9))
    build_report([d], tmp_path / "report2")  # the log changed after the figure: drawn anew
    png = (tmp_path / "report2" / "figures" / "rl_dynamics_00_rl.png").read_bytes()
    assert png != drawn["png"] and png.startswith(b"\x89PNG")
