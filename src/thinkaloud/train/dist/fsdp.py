"""FSDP2 for ``thinkaloud sft`` and ``thinkaloud rl``: the base weights sharded, the LoRA adapter and the exit heads
trained.

Switched on by accelerate's launch config (``distributed_type: FSDP`` with ``fsdp_version: 2``:
``examples/fsdp.yaml``), which ``accelerate launch`` hands to its processes as ``ACCELERATE_USE_FSDP`` and
``FSDP_*`` variables; ``torchrun`` with those variables set does the same.

**Who shards.** accelerate 1.16 enters its FSDP mode only on accelerators: on CPU the same config gives a
``MULTI_CPU`` state whose ``prepare`` wraps the model in DDP, so nothing would be sharded and nothing could be
tested without GPUs. thinkaloud therefore takes the settings from accelerate's FSDP plugin (reshard after
forward, mixed precision, CPU offload) and applies ``torch.distributed.fsdp.fully_shard`` itself, on CPU and GPU
alike — one code path, the one the gloo tests run: a unit per decoder layer, then the root unit, the
:class:`~thinkaloud.model.early_exit.EarlyExitModel` (embeddings, final norm, unembedding, exit heads), which
mixed precision leaves in its stored dtype (the heads' fp32 weights are not rounded to bf16). The
model and optimiser are not passed to ``accelerator.prepare`` (on GPUs it would find the model already
sharded and leave it as it is). The optimiser is built over the sharded parameters (DTensors: every process
holds and updates 1/N of each LoRA matrix and of the heads); FSDP averages the gradients (reduce-scatter);
clipping uses the global norm (:func:`clip_grad_norm`).

**Exit = freeze holds.** ``fully_shard`` keeps the decoder-layer modules and their forward hooks (its own
pre-forward hook runs first and gathers the layer's weights), so the model's hooks see every layer's input
and output as before. A sharded forward computes the same numbers as an unsharded one (bit for bit on CPU:
an all-gather copies the weights exactly), exit probabilities included.

**Generation and saving gather the weights.** Generation (RL rollouts, held-out evaluations) calls the layers
one at a time with its own cache and reads the embeddings, the final norm, the heads and, for tokens that
exited, the layers' K/V projections directly, outside any forward of their FSDP unit. :func:`gathered`
all-gathers every unit once for such a block, keeps it gathered across the layer calls (reshard after
forward off) and frees it afterwards: every decode step sees the full weights, exactly those of training.
The cost is one full copy of the weights (in their stored dtype) during generation, as TRL's
``unwrap_model_for_generation`` does under DeepSpeed ZeRO-3; the alternative, an all-gather of each layer
at every decode step, sends the whole model over the interconnect per generated token.

**Checkpoints are gathered, not sharded.** The trainable state (LoRA, heads and their AdamW moments) is a
few MB even for a 32B base, so every process all-gathers it and the main process writes the same
``state.pt`` as a single-process run, with every process's RNG state. Such a checkpoint resumes under any
layout (one process, DDP, FSDP); loading re-shards it (:func:`shard_like`). The frozen base is never
written: it is reloaded from its source. The final ``model/`` folder is written the same way
(:func:`save_pretrained`: the LoRA weights gathered, the root unit gathered for the heads and the
unembedding's fingerprint; the decoder layers' base weights stay sharded).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from thinkaloud.errors import UserError
from thinkaloud.model import arch

__all__ = ["clip_grad_norm", "full", "gathered", "is_sharded", "save_pretrained", "shard", "shard_like"]

_RESHARD_ATTR = "_thinkaloud_reshard_after_forward"


def fsdp_plugin(accelerator) -> Any | None:
    """accelerate's FSDP plugin (its config's settings) when the launch asks for FSDP, else None."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        plugin = FullyShardedDataParallelPlugin()  # ignored by accelerate without GPUs: the same settings, from env
    else:
        return None
    if int(plugin.fsdp_version) != 2:
        raise UserError(f"thinkaloud shards with FSDP2 only: set fsdp_version: 2 in the accelerate config (got {plugin.fsdp_version})")
    if plugin.activation_checkpointing:
        raise UserError("fsdp_activation_checkpointing is not supported by thinkaloud: set it to false")
    return plugin


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether :func:`shard` sharded ``model`` (its root is an FSDP unit)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded parameter (an all-gather: call it on every process), else ``t``."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard(model, accelerator) -> bool:
    """Shard ``model`` (an EarlyExitModel) with FSDP2 when the launch config asks for it; returns whether it did.

    Call it before building the optimiser, on every process. The trainable parameters are first broadcast
    from the main process (RL seeds each process differently, and LoRA's A matrices are drawn at random).
    """
    plugin = fsdp_plugin(accelerator)
    if plugin is None or accelerator.num_processes < 2 or not (dist.is_available() and dist.is_initialized()):
        return False
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)
    reshard = bool(plugin.reshard_after_forward)
    mp = plugin.mixed_precision_policy
    for layer in arch.decoder_layers(model.peft):  # the config's mixed precision (bf16: weights gathered in bf16)
        mp_layer = mp if isinstance(mp, MixedPrecisionPolicy) else MixedPrecisionPolicy()
        fully_shard(layer, reshard_after_forward=reshard, mp_policy=mp_layer, offload_policy=plugin.cpu_offload)
    # The root unit is never cast: the exit heads keep their fp32 weights and gradients (ExitHeads computes in
    # fp32), and the unembedding its stored dtype. It keeps its weights gathered from forward to backward (FSDP's
    # default for the root): the SFT loss reads the unembedding after the forward.
    fully_shard(model, reshard_after_forward=False, mp_policy=MixedPrecisionPolicy(), offload_policy=plugin.cpu_offload)
    setattr(model, _RESHARD_ATTR, reshard)
    # FSDP elects its root in the first forward: make it the whole model before generation calls single layers.
    training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, dtype=torch.long, device=model.device))
    model.reshard()  # the root keeps its weights gathered after a forward: the optimiser must get the shards
    model.train(training)
    return True


@contextlib.contextmanager
def gathered(model) -> Iterator[None]:
    """All weights gathered inside the block (for generation), sharded again after; no-op when not sharded.

    Every process must enter it (the gathering is collective); inside, no collective is needed, so the main
    process alone may generate (held-out evaluations)."""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            if unit is not model:
                unit.set_reshard_after_forward(getattr(model, _RESHARD_ATTR), recurse=False)


def clip_grad_norm(accelerator, model, max_norm: float) -> torch.Tensor:
    """Clip the gradients to a global norm of ``max_norm``; returns the norm before clipping."""
    if not is_sharded(model):
        return accelerator.clip_grad_norm_(model.parameters(), max_norm)
    params = [p for p in model.parameters() if p.grad is not None]
    total = full(torch.nn.utils.get_total_norm([p.grad for p in params]))  # the shards' norms, combined
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole tensor cut as ``param`` is sharded (this process's shard, as a DTensor); ``value`` if not sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or isinstance(value, DTensor):
        return value
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)  # no communication


def save_pretrained(core, directory, main: bool) -> None:
    """``core.save_pretrained(directory)`` by the main process; every process calls it (gathers when sharded)."""
    if not is_sharded(core):
        if main:
            core.save_pretrained(directory)
        return
    from thinkaloud.model.saving import save_model

    lora = {
        name.removeprefix("peft."): full(p).detach().cpu()
        for name, p in core.named_parameters()
        if p.requires_grad and name.startswith("peft.")
    }
    core.unshard()  # the root unit only: embeddings, norm, unembedding (its fingerprint) and the heads
    try:
        if main:  # a copy of the (tiny) heads: writing them must not pin storage that FSDP frees
            heads = copy.deepcopy(core.heads)
            save_model(directory, core.peft, heads, core.config, core.source, core.risk_control, adapter_state=lora)
    finally:
        core.reshard()
