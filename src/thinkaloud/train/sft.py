"""Stage 1: calibration SFT of the LoRA adapter and the exit heads (docs/method.md §2.4), base frozen.

Per completion token of the teacher rollouts (from ``thinkaloud calibrate``):
- targets: ``exit_targets(D, F)`` from the stored per-layer KLs D and the KL factor F;
- teacher: the exact next-token distribution of the base model, recomputed with the adapter disabled
  and exits off (no vocab-sized data is stored on disk);
- ``exit_loss="sample"`` (default, as the paper): draw ``exit_samples`` exit layers ℓ̂ per token from
  the targets; for each draw, one teacher-forced student pass with those exits prescribed (freeze
  semantics, so later tokens see frozen K/V exactly as in generation); loss =
  KL(teacher ‖ student at ℓ̂) + exit_weight · (−log P_student(ℓ̂)), averaged over draws and tokens;
- ``exit_loss="expected"``: the exact expectation over the m+1 outcomes instead of draws, computed in
  one pass without exits in the context (lower variance; conditions each token on a context that did
  not exit, where the sampled variant conditions on sampled context exits).

Departures from the prototype, on purpose: forward KL(teacher ‖ student) by default (the prototype
used KL(student ‖ teacher); ``distill_kl="reverse"`` restores it); the heads' biases start from the
calibration's mean target hazards (``init_heads_from_targets``) so a short run starts near the
target exit rates instead of from exits that never fire; heads learn faster than the paper's 1e-5
(``head_lr`` 1e-3) so a CPU run of a few hundred steps moves them.

Runs unchanged under ``accelerate launch`` / ``torchrun``: rows of each global batch are split across
processes, gradients are averaged by DDP or, with an FSDP launch config (``examples/fsdp.yaml``), by FSDP2
over a sharded base (``thinkaloud.train.dist.fsdp``). A multi-process step equals the single-process step
on the same global batch, up to float round-off: the exit draws are made for the whole micro-batch on
every process (each keeps its rows' tokens), and each process's loss is its tokens' sum over the
micro-batch's token count per process, so that the averaged gradient is that of the mean over all tokens
(LoRA dropout aside: its masks come from each process's own random stream; set ``lora_dropout`` 0 for an
exact match). The logged losses are the means over all processes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from thinkaloud.config import ExitConfig
from thinkaloud.data.calibrate import CalibrationRow, load_calibration
from thinkaloud.io import atomic_write_text
from thinkaloud.model import arch
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.exits import exit_targets
from thinkaloud.model.loading import default_device, load_model
from thinkaloud.model.recorded import RUN_MODEL_DIR
from thinkaloud.train import losses
from thinkaloud.train.common import (
    JsonlLog,
    latest_checkpoint,
    load_checkpoint,
    make_optimizer,
    remove_stale_temporaries,
    save_checkpoint,
    set_seed,
)
from thinkaloud.train.dist.fsdp import clip_grad_norm, full, is_sharded, save_pretrained, shard
from thinkaloud.train.trackers import Trackers, accelerator_kwargs, check_report_to


@dataclass
class SFTConfig:
    calib: str = field(metadata={"help": "calibration folder written by `thinkaloud calibrate`"})
    out: str = field(metadata={"help": "run folder: model/, log.jsonl, checkpoints/, config.yaml"})
    model: str | None = field(default=None, metadata={"help": "base model (default: the calibration's)"})
    kl_factor: float = field(
        default=1.0,
        metadata={
            "help": "KL factor F > 0 of the targets q* = 2σ(−F·D); higher F = later exits (paper: 0.25–4, standard 1)"
        },
    )
    exit_loss: str = field(default="sample", metadata={"help": "sample | expected (exact expectation over exits)"})
    exit_samples: int = field(
        default=4, metadata={"help": "exit layers drawn per token (exit_loss=sample; the prototype drew 4)"}
    )
    exit_weight: float = field(default=1.0, metadata={"help": "weight of the exit cross-entropy term"})
    distill_kl: str = field(
        default="forward", metadata={"help": "forward KL(teacher‖student) | reverse (the prototype: reverse)"}
    )
    steps: int = field(default=200, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=4, metadata={"help": "rollouts per optimiser step (all processes together)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    head_lr: float = field(
        default=1e-3,
        metadata={
            "help": "learning rate of the exit heads (paper: 1e-5; higher here so that short runs move the heads)"
        },
    )
    lora_lr: float = field(default=1e-4, metadata={"help": "learning rate of the LoRA adapter (paper: 1e-4)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    init_heads_from_targets: bool = field(
        default=True, metadata={"help": "start head biases at the mean target hazards (not in the paper)"}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (paper: 8, on q/k/v/o)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (paper: 16)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (paper: 0.05)"})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N steps (and at the end)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --out"})
    seed: int = field(default=0, metadata={"help": "seed for data order, exit draws and dropout"})
    bf16: bool = field(default=True, metadata={"help": "bf16 mixed precision on GPU (ignored on CPU)"})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda (default: cuda if available)"})
    report_to: str = field(
        default="none",
        metadata={"help": "also log the metrics to tensorboard | wandb | none (log.jsonl stays the record)"},
    )

    def __post_init__(self) -> None:
        if self.exit_loss not in ("sample", "expected"):
            raise ValueError(f"exit_loss must be 'sample' or 'expected', got {self.exit_loss!r}")
        if self.distill_kl not in ("forward", "reverse"):
            raise ValueError(f"distill_kl must be 'forward' or 'reverse', got {self.distill_kl!r}")
        for name in ("steps", "batch_size", "grad_accum", "exit_samples", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_report_to(self.report_to)
        if not self.kl_factor > 0:
            raise ValueError(
                f"kl_factor must be > 0 (F = 0 would send every token to the first exit layer, "
                f"F < 0 is not a temperature), got {self.kl_factor}"
            )


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) left-padded
    attention_mask: torch.Tensor  # (B, T)
    select: torch.Tensor  # (B, T) bool: positions that predict completion tokens
    kl: torch.Tensor  # (N, m) stored KLs of the selected positions, in row-major order


def collate(rows: list[CalibrationRow], pad_id: int, device) -> Batch:
    T = max(r.input_ids.numel() for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    select = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = r.input_ids.numel()
        ids[i, T - n :] = r.input_ids
        mask[i, T - n :] = 1
        select[i, T - n + r.prompt_length - 1 : T - 1] = True  # predicting positions of completion tokens
    kl = torch.cat([r.kl for r in rows])
    assert int(select.sum()) == kl.shape[0]
    return Batch(ids.to(device), mask.to(device), select.to(device), kl.to(device))


def batch_rows(rows: list, step: int, batch_size: int, seed: int) -> list:
    """The rows of optimiser step ``step`` (0-based): epochs of seeded permutations, reproducible on resume."""
    per_epoch = max(1, len(rows) // batch_size)
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return [rows[i] for i in order[k * batch_size : (k + 1) * batch_size].tolist()]


def sft_loss(
    model,
    teacher_logp: torch.Tensor,
    batch: Batch,
    config: SFTConfig,
    generator: torch.Generator,
    *,
    draws: torch.Tensor | None = None,
    tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The Stage-1 loss of one micro-batch; ``model`` is what the optimiser trains (maybe DDP-wrapped).

    ``draws``: the sampled outcome indices (S, N) of the batch's tokens (default: drawn here from
    ``generator``); ``tokens``: what the per-token losses are summed over (default N, the mean; with several
    processes, the micro-batch's token count per process)."""
    core = getattr(model, "module", model)
    L, layers = core.num_layers, core.layers
    log_t = exit_targets(batch.kl, config.kl_factor)  # (N, m+1)
    outcome_layers = torch.tensor(layers + [L], device=batch.kl.device)
    per = float(batch.kl.shape[0]) if tokens is None else tokens
    if config.exit_loss == "sample":
        if draws is None:
            draws = losses.sample_exit_index(log_t.cpu(), config.exit_samples, generator)  # (S, N)
        draws = draws.to(batch.kl.device)
        distill, ce = torch.zeros((), device=batch.kl.device), torch.zeros((), device=batch.kl.device)
        for s in range(config.exit_samples):
            exits = torch.full_like(batch.input_ids, L)
            exits[batch.select] = outcome_layers[draws[s]]
            out = model(batch.input_ids, batch.attention_mask, exit_layers=exits)
            kl = losses.distill_kl(teacher_logp, out.logits[batch.select], config.distill_kl)
            distill = distill + kl.sum() / per
            ce = ce + losses.exit_cross_entropy(out.exit_logprobs[batch.select]).sum() / per
        distill, ce = distill / config.exit_samples, ce / config.exit_samples
    else:
        out = model(batch.input_ids, batch.attention_mask, all_exits=True)
        per_outcome = torch.stack(
            [
                losses.distill_kl(teacher_logp, arch.readout(core.peft, h[batch.select]), config.distill_kl)
                for h in out.states
            ],
            dim=-1,
        )  # (N, m+1)
        d, c = losses.expected_exit_loss(log_t, out.exit_logprobs[batch.select], per_outcome)
        distill, ce = d.sum() / per, c.sum() / per
    loss = distill + config.exit_weight * ce
    return loss, {"loss": float(loss.detach()), "distill": float(distill.detach()), "exit_ce": float(ce.detach())}


@torch.no_grad()
def teacher_logprobs(core, batch: Batch) -> torch.Tensor:
    """Exact teacher next-token log-probabilities at the selected positions, (N, V)."""
    with core.disable_adapter():
        if is_sharded(core):  # through the model's forward, which gathers the sharded weights; no exits
            logits = core(batch.input_ids, batch.attention_mask, offset=-math.inf).logits[batch.select]
        else:  # no exits: the hooks stay idle outside a run
            hidden = core._hidden(batch.input_ids, batch.attention_mask)  # (B, T, C)
            logits = arch.readout(core.peft, hidden[batch.select])  # (N, V): only the completion positions
    return torch.log_softmax(logits.float(), dim=-1)


def own_tokens(rows: list[CalibrationRow], rank: int, world: int) -> torch.Tensor:
    """Indices, in the row-major token order of ``rows``, of the tokens of rows ``rank::world`` (this process's)."""
    counts = [r.kl.shape[0] for r in rows]
    starts = [sum(counts[:i]) for i in range(len(rows))]
    return torch.cat([torch.arange(starts[i], starts[i] + counts[i]) for i in range(rank, len(rows), world)])


def train_sft(
    config: SFTConfig, console: Console | None = None, on_step: Callable[[int, EarlyExitModel], None] | None = None
) -> Path:
    """Train LoRA + heads on a calibration; returns the run folder (``out/model`` holds the result)."""
    from accelerate import Accelerator

    console = console or Console()
    out = Path(config.out)
    manifest, rows = load_calibration(config.calib)
    model_name = config.model or manifest["config"]["model"]
    cpu = (config.device or default_device()) == "cpu"
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if config.bf16 and not cpu else "no",
        **accelerator_kwargs(config.report_to, out),
    )
    exit_config = ExitConfig(
        exit_layers=manifest["exit_layers"],
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
    )
    set_seed(config.seed)  # before the adapter is created: LoRA A is initialised randomly
    loaded = load_model(model_name, exit_config=exit_config, device=str(accelerator.device))
    model, tokenizer = loaded.model, loaded.tokenizer
    if arch.unembedding_hash(model.base) != manifest["model_hash"]:
        raise ValueError(f"{config.calib} was made with another model than {model_name!r}")
    if not loaded.is_base:
        raise ValueError("SFT starts from a base model; --model names a trained run")
    if config.init_heads_from_targets:
        mean_target = exit_targets(torch.cat([r.kl for r in rows]), config.kl_factor).exp().mean(0)
        with torch.no_grad():
            model.heads.bias.copy_(losses.hazard_bias_init(mean_target))
    sharded = shard(model, accelerator)  # FSDP2 when the launch config asks for it (before the optimiser)
    optimizer = make_optimizer(model, head_lr=config.head_lr, lora_lr=config.lora_lr, weight_decay=config.weight_decay)

    start = 0
    if accelerator.is_main_process:
        remove_stale_temporaries(out)  # of a run killed while writing a checkpoint
    ckpt = latest_checkpoint(out) if config.resume else None
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, optimizer)["step"]
        console.print(f"Resuming {out} from step {start}")
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    log = (
        JsonlLog(out / "log.jsonl", resume_step=start if ckpt is not None else None)
        if accelerator.is_main_process
        else None
    )
    trackers = Trackers(accelerator, config.report_to, "thinkaloud-sft", dataclasses.asdict(config), out)

    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    core = model if sharded else accelerator.unwrap_model(model)
    rank, world = accelerator.process_index, accelerator.num_processes
    micro = config.batch_size // config.grad_accum
    if micro < world or config.batch_size % (config.grad_accum * world):
        raise ValueError(
            f"batch_size {config.batch_size} must split into grad_accum {config.grad_accum} × {world} process(es)"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.train()
    t0 = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]sft[/] F={task.fields[f]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not accelerator.is_main_process,
    )
    with progress:
        bar = progress.add_task("sft", total=config.steps, completed=start, f=config.kl_factor, info="")
        for step in range(start, config.steps):
            generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
            step_rows = batch_rows(rows, step, config.batch_size, config.seed)
            stats: dict[str, float] = {}
            for a in range(config.grad_accum):
                rows_a = step_rows[a * micro : (a + 1) * micro]  # the micro-batch, all processes together
                batch = collate(rows_a[rank::world], pad_id, accelerator.device)
                draws = None
                if config.exit_loss == "sample":  # drawn for the whole micro-batch: the same draws in any layout
                    log_t = exit_targets(torch.cat([r.kl for r in rows_a]), config.kl_factor)
                    draws = losses.sample_exit_index(log_t, config.exit_samples, generator)[
                        :, own_tokens(rows_a, rank, world)
                    ]
                teacher = teacher_logprobs(core, batch)
                tokens = sum(r.kl.shape[0] for r in rows_a) / world
                with accelerator.autocast():
                    loss, parts = sft_loss(model, teacher, batch, config, generator, draws=draws, tokens=tokens)
                accelerator.backward(loss / config.grad_accum)
                for k, v in parts.items():
                    stats[k] = stats.get(k, 0.0) + v / config.grad_accum
            if world > 1:  # the means over all tokens: each process's parts are its share of them
                totals = accelerator.reduce(torch.tensor(list(stats.values()), device=accelerator.device), "mean")
                stats = dict(zip(stats, totals.tolist()))
            if config.max_grad_norm > 0:
                clip_grad_norm(accelerator, model, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            row = {
                "step": done,
                **{k: round(v, 5) for k, v in stats.items()},
                "head_bias_mean": round(float(full(core.heads.bias).detach().mean()), 4),
                "elapsed_s": round(time.perf_counter() - t0, 2),
            }
            if log is not None:
                log.write(row)
            trackers.log(row, step=done)
            progress.update(
                bar,
                advance=1,
                info=f"loss {stats['loss']:.3f} distill {stats['distill']:.3f} exit {stats['exit_ce']:.3f}",
            )
            if done % config.save_every == 0 or done == config.steps:
                accelerator.wait_for_everyone()
                save_checkpoint(out, done, core, optimizer, write=accelerator.is_main_process)
            if on_step is not None:
                on_step(done, core)
    accelerator.wait_for_everyone()
    save_pretrained(core, out / RUN_MODEL_DIR, main=accelerator.is_main_process)
    if accelerator.is_main_process:
        console.print(f"SFT done: {out / RUN_MODEL_DIR}")
    trackers.end()
    return out
