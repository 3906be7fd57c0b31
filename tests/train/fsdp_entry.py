"""Entry point of the two-process FSDP (and DDP) tests of tests/train/test_fsdp.py; every process dumps what it saw.

sft OUT CONFIGS_JSON [KILL_RANK KILL_STEP]: ``train_sft`` on each config of the JSON list, in turn; each process
    writes OUT/<run>/rank<r>.pt with the final trainable weights and how its model was sharded. With KILL_*, the
    process of that rank SIGKILLs itself after that step (after the step's checkpoint, if any).
rl OUT: one RL step of tests/train/test_rl.py's tiny setup; each process writes OUT/rank<r>.pt with its
    rollouts, the log-probabilities the loss recomputed and the trainable weights after the update.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from thinkaloud.model import arch
from thinkaloud.train.common import trainable_state
from thinkaloud.train.dist.fsdp import is_sharded


def layout(core) -> dict:
    """Whether the model is sharded, and the elements of a decoder layer's base weight this process holds."""
    weight = arch.decoder_layers(core.peft)[0].mlp.up_proj.weight
    local = weight.to_local() if hasattr(weight, "to_local") else weight
    return {"sharded": is_sharded(core), "local_numel": local.numel(), "numel": weight.numel()}


def sft(out: str, configs: str, kill: list[str]) -> None:
    from thinkaloud.train.sft import SFTConfig, train_sft

    for kw in json.loads(configs):
        seen: dict = {}

        def on_step(step, core, seen=seen):
            seen.update(weights=trainable_state(core), layout=layout(core))  # every process: a gather
            if kill and dist.get_rank() == int(kill[0]) and step == int(kill[1]):
                os.kill(os.getpid(), signal.SIGKILL)

        train_sft(SFTConfig(**kw), on_step=on_step)
        torch.save(seen, Path(kw["out"]) / f"rank{dist.get_rank()}.pt")


def rl(out: str) -> None:
    from tests.train.test_rl import DepthOnlyEnv, config, make_tiny
    from thinkaloud.train import rl

    seen: dict = {"rollouts": [], "recomputed": []}
    sample, logprobs = rl.sample_rollouts, rl.policy_logprobs

    def spy_sample(*a, **kw):
        seen["rollouts"].append(sample(*a, **kw))
        return seen["rollouts"][-1]

    def spy_logprobs(*a, **kw):
        token_lp, exit_lp = logprobs(*a, **kw)
        seen["recomputed"].append((token_lp.detach().clone(), exit_lp.detach().clone()))
        return token_lp, exit_lp

    rl.sample_rollouts, rl.policy_logprobs = spy_sample, spy_logprobs
    made = []

    def make():
        made.append(make_tiny()())
        return made[-1]

    rl.train_rl(config(out, steps=1, beta=0.1), env=DepthOnlyEnv(), make_model=make)
    rollouts = [
        {k: getattr(o, k) for k in ("sequences", "exit_layers", "token_logprobs", "exit_logprobs", "completion_mask")}
        for o in seen["rollouts"]
    ]
    dump = {"rollouts": rollouts, "recomputed": seen["recomputed"], "weights": trainable_state(made[-1])}
    torch.save({**dump, "layout": layout(made[-1])}, Path(out) / f"rank{dist.get_rank()}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out, *rest = sys.argv[1:]
    if mode == "sft":
        sft(out, rest[0], rest[1:])
    else:
        rl(out)
    assert dist.is_initialized() and dist.get_world_size() == 2, "expected 2 processes"
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left to exit can abort the process
