"""Decode speed: HF ``generate`` vs ours without exits vs ours with exits forced to a target ALS.

    python benchmarks/decode.py                      # SmolLM2-135M-Instruct on this machine's CPU
    python benchmarks/decode.py --device cuda        # same on a GPU (bf16)
    python benchmarks/decode.py --device cuda --random-config deepseek-r1-distill-qwen-1.5b
    python benchmarks/decode.py --random-config gemma2-small --batch 1 4 --new-tokens 32   # one per family

Every row generates exactly ``--new-tokens`` tokens per sequence (stop tokens ignored) from the same
chat prompts, greedy tokens. Exits are forced through the heads' biases (weights zero): for a target
ALS between two exit layers' savings a and b, the lower layer exits with probability p and the
upper one always, so E[ALS] = p·a + (1−p)·b. The ideal speedup is the analytic FLOP ratio
(``thinkaloud.measures.metrics.flop_per_token``): skipped layers cost only their K/V projections,
embedding and unembedding always run; a mixture-of-experts MLP counts as a dense MLP of its active
experts (``num_experts_per_tok`` × expert width: ``model_dims``). realised/ideal = measured speedup /
ideal speedup.

The ``*-small`` random configs are one per family thinkaloud supports beyond Llama/Qwen2: small enough
for a CPU (12 layers, width 512, vocabulary 32k) but with each family's features switched on (sliding
windows shorter than prompt + generation, soft-capping, sinks, experts, NoPE layers, fused projections).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from thinkaloud.config import ExitConfig
from thinkaloud.measures.metrics import average_layer_savings, flop_per_token, model_dims
from thinkaloud.model.early_exit import EarlyExitModel

CHATS = [
    "What is 2 + 3?",
    "Name three colours of the rainbow and explain where each one comes from.",
    "Write a short poem about the sea.",
    "If I have 4 apples and eat one, how many are left?",
    "Explain photosynthesis to a child.",
    "List the planets of the solar system in order.",
    "What is the capital of France, and why is it famous?",
    "Give me a recipe for pancakes.",
]

RANDOM_CONFIGS = {
    # Shape of SmolLM2-135M-Instruct, for machines that do not carry its weights.
    "smollm2-135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    # Shape of DeepSeek-R1-Distill-Qwen-1.5B (weights random: speed does not depend on their values).
    "deepseek-r1-distill-qwen-1.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
}
SMALL = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=12,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
RANDOM_CONFIGS |= {
    "phi3-small": dict(
        SMALL,
        model_type="phi3",
        tie_word_embeddings=True,  # Phi-4-mini: partial rotary, tied
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
    ),
    "gemma2-small": dict(SMALL, model_type="gemma2", head_dim=64, query_pre_attn_scalar=64, sliding_window=32),
    "gemma3-small": dict(SMALL, model_type="gemma3_text", head_dim=64, query_pre_attn_scalar=64, sliding_window=32),
    "olmo2-small": dict(SMALL, model_type="olmo2"),
    "olmo3-small": dict(SMALL, model_type="olmo3", sliding_window=32),
    "qwen3-moe-small": dict(
        SMALL, model_type="qwen3_moe", head_dim=64, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=256
    ),
    "smollm3-small": dict(SMALL, model_type="smollm3"),  # every 4th layer without rotary
    "gpt-oss-small": dict(
        SMALL,
        model_type="gpt_oss",
        head_dim=64,
        intermediate_size=512,
        num_local_experts=8,
        num_experts_per_tok=2,
        sliding_window=32,
        max_position_embeddings=131072,
    ),
}


def load(args):
    if args.random_config:
        from transformers import AutoConfig, AutoModelForCausalLM

        spec = dict(RANDOM_CONFIGS[args.random_config])
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config, dtype=args.dtype).to(args.device).eval()
        tokenizer = None
    else:
        from thinkaloud.hub import load_causal_lm, load_tokenizer

        base, _ = load_causal_lm(args.model, dtype=args.dtype, device=args.device)
        tokenizer = load_tokenizer(args.model)
    model = EarlyExitModel.from_base(base, ExitConfig()).eval()
    return model, tokenizer


def prompts(tokenizer, batch: int, vocab: int, device):
    if tokenizer is None:  # random-weight model: random prompts of chat-like mixed lengths
        g = torch.Generator().manual_seed(0)
        lengths = [20 + 7 * (i % 5) for i in range(batch)]
        T = max(lengths)
        ids = torch.zeros(batch, T, dtype=torch.long)
        mask = torch.zeros(batch, T, dtype=torch.long)
        for i, n in enumerate(lengths):
            ids[i, T - n :] = torch.randint(10, vocab, (n,), generator=g)
            mask[i, T - n :] = 1
        return ids.to(device), mask.to(device)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": CHATS[i % len(CHATS)]}], tokenize=False, add_generation_prompt=True
        )
        for i in range(batch)
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def force_exits(model: EarlyExitModel, target_als: float | None) -> None:
    """Set head biases (weights 0) so that exits give E[ALS] = target; None → heads that never fire."""
    L, layers = model.num_layers, model.layers
    bias = torch.full((len(layers),), -1e4)
    if target_als is not None:
        savings = [(L - e) / L for e in layers]  # decreasing with depth
        k = max(i for i, s in enumerate(savings) if s >= target_als)  # lower layer: savings ≥ target
        if k + 1 < len(layers):
            a, b = savings[k], savings[k + 1]
            p = (target_als - b) / (a - b)
            bias[k] = math.log(p / (1 - p)) if 0 < p < 1 else (1e4 if p >= 1 else -1e4)
            bias[k + 1] = 1e4
        else:
            bias[k] = 1e4
    with torch.no_grad():
        model.heads.weight.zero_()
        model.heads.bias.copy_(bias)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fns, device, repeats: int) -> list[tuple[float, object]]:
    """(median wall time, last result) of each function. The repeats interleave the functions, so that
    a machine shared with other jobs slows them alike."""
    for fn in fns:
        fn()  # warm-up
    times, results = [[] for _ in fns], [None] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            sync(device)
            t0 = time.perf_counter()
            results[k] = fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return [(statistics.median(t), r) for t, r in zip(times, results)]


def run(args, console: Console) -> None:
    model, tokenizer = load(args)
    for batch in args.batch:
        console.print(batch_table(model, tokenizer, batch, args))


def batch_table(model, tokenizer, batch: int, args) -> Table:
    """The decode table of one batch size: HF generate, ours with exits off, ours at each target ALS."""
    cfg = model.hf_config
    dims = model_dims(cfg)
    L, N = model.num_layers, args.new_tokens
    ids, mask = prompts(tokenizer, batch, cfg.vocab_size, args.device)
    context = float(mask.sum(-1).float().mean()) + N / 2
    flops = lambda e: flop_per_token(**dims, context=context, exit_layer=e)

    def hf():
        force_exits(model, None)
        return model.base.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=N,
            min_new_tokens=N,
            do_sample=False,
            pad_token_id=cfg.pad_token_id or 0,
        )

    def ours(target):
        def go():
            force_exits(model, target)
            off = -math.inf if target is None else 0.0
            return model.generate(ids, mask, max_new_tokens=N, do_sample=False, offset=off, stop_token_ids=[], seed=0)

        return go

    table = Table(title=f"decode, batch {batch}, {N} new tokens, {args.label} on {args.device} ({args.dtype})")
    for col in ("row", "tokens/s", "ALS", "speedup", "ideal", "realised/ideal"):
        table.add_column(col, justify="right" if col != "row" else "left")
    (t_hf, _), (t_base, _), *with_exits = timed(
        [hf, ours(None)] + [ours(a) for a in args.als], args.device, args.repeats
    )
    table.add_row("HF generate (no exits)", f"{batch * N / t_hf:.1f}", "0.000", f"{t_base / t_hf:.2f}", "1.00", "")
    table.add_row("ours, exits off", f"{batch * N / t_base:.1f}", "0.000", "1.00", "1.00", "1.00")
    for target, (t, out) in zip(args.als, with_exits):
        exits = out.exit_layers[out.completion_mask]
        als = average_layer_savings(exits, L)
        ideal = flops(L) / statistics.fmean(flops(int(e)) for e in exits.tolist())
        speed = t_base / t
        table.add_row(
            f"ours, exits → ALS≈{target}",
            f"{batch * N / t:.1f}",
            f"{als:.3f}",
            f"{speed:.2f}",
            f"{ideal:.2f}",
            f"{speed / ideal:.2f}",
        )
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--random-config", choices=sorted(RANDOM_CONFIGS), default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--als", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    args.label = args.random_config or args.model
    torch.set_grad_enabled(False)
    run(args, Console())


if __name__ == "__main__":
    main()
