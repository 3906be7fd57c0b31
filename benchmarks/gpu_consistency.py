"""GPU correctness on real architectures (random weights): generation vs HF, and vs teacher forcing.

    python -m benchmarks.gpu_consistency --device cuda

For each shape: (1) greedy, exits off — our tokens against HF ``generate`` (fp32 and bf16);
(2) sampled with exits (batch 8, mixed prompt lengths) — the largest difference between the
log-probabilities recorded at sampling and those of a teacher-forced ``forward`` with the recorded exits.
"""

from __future__ import annotations

import argparse
import math

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.decode import RANDOM_CONFIGS, prompts
from thinkaloud import EarlyExitModel, ExitConfig


def build(name: str, dtype, device) -> EarlyExitModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(RANDOM_CONFIGS[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    return EarlyExitModel.from_base(base, ExitConfig()).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    table = Table(title=f"GPU consistency on {torch.cuda.get_device_name() if args.device == 'cuda' else args.device}")
    for col in (
        "shape",
        "dtype",
        "greedy = HF generate",
        "max |Δ token logp|",
        "max |Δ exit logp|",
        "exit layers seen",
    ):
        table.add_column(col)
    for name in ("smollm2-135m", "deepseek-r1-distill-qwen-1.5b"):
        for dtype in (torch.float32, torch.bfloat16):
            model = build(name, dtype, args.device)
            ids, mask = prompts(None, 8, model.hf_config.vocab_size, args.device)
            ours = model.generate(
                ids, mask, max_new_tokens=args.new_tokens, do_sample=False, offset=-math.inf, stop_token_ids=[]
            )
            hf = model.base.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            same = (ours.sequences == hf).all(dim=1).float().mean().item()
            g = torch.Generator(device=args.device).manual_seed(0)
            with torch.no_grad():
                model.heads.weight.copy_(torch.randn(model.heads.weight.shape, generator=g, device=args.device) * 0.02)
                model.heads.bias.fill_(-1.5)
            out = model.generate(ids, mask, max_new_tokens=args.new_tokens, seed=0, stop_token_ids=[])
            full = model(out.sequences, out.attention_mask, exit_layers=out.full_exit_layers())
            pos, done = out.predicting_positions(), out.completion_mask
            token = torch.log_softmax(full.logits[:, pos].float(), -1).gather(-1, out.new_tokens[..., None]).squeeze(-1)
            d_tok = (token - out.token_logprobs)[done].abs().max().item()
            d_exit = (full.exit_logprobs[:, pos] - out.exit_logprobs)[done].abs().max().item()
            seen = sorted(set(out.exit_layers[done].tolist()))
            table.add_row(
                name,
                str(dtype).replace("torch.", ""),
                f"{same:.0%} of rows",
                f"{d_tok:.2e}",
                f"{d_exit:.2e}",
                str(seen),
            )
            del model
            torch.cuda.empty_cache()
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
