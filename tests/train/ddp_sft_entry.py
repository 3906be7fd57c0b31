"""Entry point of the 2-process DDP test: the same ``train_sft``; each rank saves its final trainable weights."""

import sys

import torch
import torch.distributed as dist

from thinkaloud.train.common import trainable_state
from thinkaloud.train.sft import SFTConfig, train_sft

calib, out = sys.argv[1], sys.argv[2]
final = {}
config = SFTConfig(calib=calib, out=out, steps=2, batch_size=2, save_every=1, device="cpu", head_lr=1e-2, lora_lr=1e-2)
train_sft(config, on_step=lambda step, model: final.update(trainable_state(model)))
assert dist.is_initialized() and dist.get_world_size() == 2, "expected 2 processes"
torch.save(final, f"{out}/rank{dist.get_rank()}.pt")
dist.barrier()
dist.destroy_process_group()  # a gloo group left to exit can abort the process
