"""``thinkaloud organism``: does the exit penalty move computation into the text? (issue 23)

Stages, each in ``out/<stage>`` and reused when a re-run finds it finished (like the demo):

1. the organism: the default recipe (``--model organism``, built and cached when missing) or a built folder;
2. the RL hop counts (``ks.json``): those where the card's direct and written-hops accuracies differ by at most
   ``gap`` (so the task reward alone has no reason to prefer a route); none: the k with the smallest gap;
3. calibrate on the train split of ``organism`` (all k), sampled rollouts so that every route appears;
4. SFT at KL factor 1;
5. RL from the SFT model, one folder per arm (``rl/<arm>``: the control with λ = 0, one arm per ``penalties``
   entry with λ > 0), ``len(seeds)`` runs each, on ``organism:<ks>``, with ``--log-completions`` (the routes
   per step) and held-out evaluation every few steps;
6. the measures (``thinkaloud.experiments.organism.measures``) on the same test items of every k, for the
   organism (no exits), the SFT model and every RL run (``measures/<label>``);
7. the findings O1–O5 (``thinkaloud.experiments.organism.findings``), printed and written (``findings/``:
   ``findings.json`` in the report's format, ``findings.md``, the figures), and the report (``report/``).

λ, β and steps (``OrganismExperimentConfig``) were chosen on pilot seeds other than the report's (its
docstring), then fixed.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from thinkaloud.data.organism import OrganismTask
from thinkaloud.errors import UserError
from thinkaloud.experiments.organism.config import CONTROL, OrganismExperimentConfig, Sizes, sizes
from thinkaloud.experiments.stages import Stages
from thinkaloud.io import atomic_write_json, atomic_write_text

STAGE_DIRS = ("calib", "sft", "rl", "measures", "findings", "report")


def built_organism(spec: str, quick: bool = False) -> Path:
    """The built organism ``spec`` names: the default recipe's (``--quick``: a seconds-long one; built when
    missing) or a folder with a card."""
    if spec == "organism":
        from thinkaloud.experiments.organism.model import QUICK_RECIPE
        from thinkaloud.experiments.organism.pretrain import ensure_organism

        return ensure_organism(QUICK_RECIPE if quick else None)
    folder = Path(spec)
    if not (folder / "organism.json").is_file():
        raise UserError(f"{spec} is not a built organism (no organism.json); pass --model organism to build one")
    return folder


def choose_ks(accuracy: dict[str, dict[Any, float]], gap: float) -> list[int]:
    """The hop counts where |direct − hops| accuracy is at most ``gap``; none: the one with the smallest gap."""
    gaps = {int(k): abs(float(accuracy["direct"][k]) - float(accuracy["hops"][k])) for k in accuracy["direct"]}
    chosen = sorted(k for k, g in gaps.items() if g <= gap + 1e-9)
    return chosen or [min(sorted(gaps), key=lambda k: gaps[k])]


def check_folder(out: Path, config: OrganismExperimentConfig) -> None:
    """Record the settings that decide the results in ``out/experiment.json``; refuse a folder of other settings
    (its finished stages would be reused)."""
    identity = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "threads")}
    path = out / "experiment.json"
    if path.exists() and (previous := json.loads(path.read_text())) != identity:
        changed = sorted(k for k in identity if previous.get(k) != identity[k])
        raise UserError(
            f"{out} holds an organism experiment with other settings ({', '.join(changed)}); choose another --out"
        )
    atomic_write_json(path, identity)


def rl_models(folder: Path, runs: int) -> list[Path]:
    from thinkaloud.train.rl_report import run_dir

    return [run_dir(folder, runs, r) / "model" for r in range(runs)]


def run_organism(config: OrganismExperimentConfig, console: Console | None = None) -> Path:
    """Run the experiment of the module docstring into ``config.out``; returns the report folder."""
    from thinkaloud.data.calibrate import CalibrateConfig, calibrate
    from thinkaloud.data.organism import balanced_items
    from thinkaloud.data.tasks import get_task
    from thinkaloud.experiments.findings import findings_block
    from thinkaloud.experiments.organism import outputs
    from thinkaloud.experiments.organism.measures import measure_model
    from thinkaloud.report.job import ReportConfig, report
    from thinkaloud.train.rl import train_rl
    from thinkaloud.train.sft import SFTConfig, train_sft

    console = console or Console()
    if config.threads:
        torch.set_num_threads(config.threads)
    size, out, seed = sizes(config), Path(config.out), config.seeds[0]
    out.mkdir(parents=True, exist_ok=True)
    check_folder(out, config)
    stage = Stages(console)

    # 1–2. the organism and the RL hop counts
    folder = built_organism(config.model, config.quick)
    card = json.loads((folder / "organism.json").read_text())
    ks_file = out / "ks.json"
    if not ks_file.exists():
        atomic_write_json(
            ks_file, {"ks": choose_ks(card["accuracy"], config.gap), "gap": config.gap, "card": card["accuracy"]}
        )
    ks = json.loads(ks_file.read_text())["ks"]
    rl_task = "organism:" + ",".join(map(str, ks))
    console.print(
        f"organism {folder}; RL on hop counts {ks} (|direct − hops| ≤ {100 * config.gap:.0f} pts on its card)"
    )
    task = get_task("organism")
    assert isinstance(task, OrganismTask)
    n_new = 2 * task.config.max_k + 4  # the longest route, its answer, "." and the end token

    # 3–4. calibration (sampled, so that every route appears) and SFT at F = 1
    calib, sft = out / "calib", out / "sft"
    manifest = calib / "manifest.json"
    stage(
        "calibrate",
        manifest.exists() and json.loads(manifest.read_text()).get("complete", False),
        lambda: calibrate(
            CalibrateConfig(
                out=str(calib), model=str(folder), task="organism", n=size.calib_n, max_new_tokens=n_new, seed=seed,
                do_sample=True, batch_size=32, shard_size=size.calib_n,
            ),
            console,
        ),
    )  # fmt: skip
    stage(
        "SFT at KL factor 1",
        (sft / "model").exists(),
        lambda: train_sft(
            SFTConfig(
                calib=str(calib), out=str(sft), kl_factor=1.0, steps=size.sft_steps, batch_size=size.sft_batch,
                exit_loss="expected", seed=seed, save_every=size.sft_steps, resume=(sft / "checkpoints").exists(),
            ),
            console,
        ),
    )  # fmt: skip

    # 5. RL: the control and the penalty arms, every seed, from the same SFT model
    arms = {name: out / "rl" / name for name in config.arms()}
    for name, (lam, penalty) in config.arms().items():
        arm = arms[name]
        stage(
            f"RL {name} (λ={lam:g}, {penalty} depth, β={config.beta:g}, {len(config.seeds)} seed(s))",
            all(m.exists() for m in rl_models(arm, len(config.seeds))),
            partial(train_rl, rl_config(config, size, sft, arm, rl_task, lam, penalty, n_new)),
        )

    # 6. measures on the same test items (every k) for the organism, the SFT model and every RL run
    items = balanced_items(task, size.eval_n, seed)
    models = {"organism": folder, "sft": sft}
    for name, arm in arms.items():
        for s, model in zip(config.seeds, rl_models(arm, len(config.seeds))):
            models[f"{name}/seed{s}"] = model
    for label, model in models.items():
        target = out / "measures" / label
        stage(
            f"measure {label}",
            (target / "summary.json").exists(),
            partial(measure_model, str(model), target, task, items, seed=seed, samples=size.samples),
        )

    # 7. findings, figures, report
    findings = outputs.write(out, config, size, ks, arms, card)
    stage(
        "report",
        False,
        lambda: report(ReportConfig(dirs=[str(out / "findings"), *map(str, arms.values())], out=str(out / "report"))),
    )
    console.rule("[bold]Organism findings")
    console.print(findings_block(findings), highlight=False)
    stage.finish(out)
    console.print(f"Report: [bold]{out / 'report' / 'report.html'}[/] (and report.md)")
    atomic_write_text(out / "findings" / "findings.txt", findings_block(findings) + "\n")
    return out / "report"


def rl_config(
    config: OrganismExperimentConfig, size: Sizes, sft: Path, arm: Path, task: str, lam: float, penalty: str, n_new: int
):
    """The RL settings of one arm: every seed as a run of one ``train_rl`` (the same prompts, other sampling)."""
    from thinkaloud.train.rl_config import RLConfig

    return RLConfig(
        model=str(sft),
        out=str(arm),
        task=task,
        lam=lam,
        depth_penalty=penalty,
        beta=config.beta,
        k=size.k,
        prompts_per_step=size.prompts_per_step,
        steps=size.steps,
        runs=len(config.seeds),
        seed=config.seeds[0],
        max_new_tokens=n_new,
        base_prompts=size.prompts_per_step,
        save_every=size.steps,
        eval_every=size.rl_eval_every,
        eval_n=size.rl_eval_n,
        log_completions=True,
        resume=(arm / "config.yaml").exists(),
    )


__all__ = ["CONTROL", "OrganismExperimentConfig", "choose_ks", "run_organism"]
