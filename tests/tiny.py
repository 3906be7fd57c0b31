"""Tiny models of every supported family, built from configs in code (never a hub id)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GptOssConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Olmo3Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
    SmolLM3Config,
)

MAX_TINY_PARAMS = 500_000

COMMON = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(family: str):
    if family == "llama":  # untied, llama3 rotary scaling
        return LlamaConfig(
            **COMMON,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        )
    if family == "llama-tied":
        return LlamaConfig(**COMMON, tie_word_embeddings=True, attention_bias=True)
    if family == "qwen2":  # q/k/v biases, tied
        return Qwen2Config(**COMMON, tie_word_embeddings=True)
    if family == "qwen3":  # per-head q/k RMSNorm, explicit head_dim
        return Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=False)
    if family == "mistral":
        return MistralConfig(**COMMON, sliding_window=None, tie_word_embeddings=False)
    if family == "phi3":  # fused qkv_proj / gate_up_proj, partial rotary, a window on every layer
        return Phi3Config(
            **COMMON,
            sliding_window=6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        )
    if family == "gemma2":  # scaled embeddings, soft-capped scores and logits, query_pre_attn_scalar, windows
        return Gemma2Config(
            **COMMON,
            head_dim=8,
            query_pre_attn_scalar=24,
            sliding_window=5,
            initializer_range=0.2,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        )
    if family == "gemma3_text":  # + per-head q/k norms, local/global rotary bases (scaled on global layers)
        return Gemma3TextConfig(
            **COMMON,
            head_dim=8,
            query_pre_attn_scalar=24,
            sliding_window=5,
            sliding_window_pattern=3,
            initializer_range=0.2,
            final_logit_softcapping=3.0,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            },
        )
    if family == "olmo2":  # no input norm, norms after attention/MLP, q/k norm over the whole projection
        return Olmo2Config(**COMMON, tie_word_embeddings=False)
    if family == "olmo3":  # + sliding windows and a rotary per layer type (scaled on full-attention layers)
        return Olmo3Config(
            **COMMON,
            sliding_window=5,
            tie_word_embeddings=False,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0},
            },
        )
    if family == "qwen3_moe":  # experts (top-2 of 4) on all layers but one dense MLP layer
        return Qwen3MoeConfig(
            **COMMON,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            mlp_only_layers=[2],
            tie_word_embeddings=False,
        )
    if family == "smollm3":  # layers 3 and 6 without rotary (NoPE), q/k/v biases
        return SmolLM3Config(**COMMON, no_rope_layer_interval=3, attention_bias=True)
    if family == "gpt_oss":  # attention sinks, alternating windows, biases, experts, YaRN rotary
        return GptOssConfig(
            **{**COMMON, "intermediate_size": 32},
            head_dim=8,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=4,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 4.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 32,
            },
        )
    raise ValueError(family)


FAMILIES = [
    "llama",
    "llama-tied",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "gemma2",
    "gemma3_text",
    "olmo2",
    "olmo3",
    "qwen3_moe",
    "smollm3",
    "gpt_oss",
]
MOE_FAMILIES = {"qwen3_moe", "gpt_oss"}


def tolerance(family: str) -> float:
    """Parity tolerance: 1e-5, 1e-4 for mixture-of-experts (experts sum their tokens in another order)."""
    return 1e-4 if family in MOE_FAMILIES else 1e-5


def build_tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    assert n < MAX_TINY_PARAMS, f"tiny {family} model has {n} parameters"
    return model.eval()


def build_tiny_gemma3_multimodal(seed: int = 0):
    """A multimodal Gemma 3 (``Gemma3ForConditionalGeneration``) whose text model is the tiny ``gemma3_text``."""
    from transformers import Gemma3Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    config = Gemma3Config(
        text_config=tiny_config("gemma3_text").to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_id=96,
        boi_token_index=95,
        eoi_token_index=94,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) < MAX_TINY_PARAMS
    return model.eval()


def left_padded_batch(lengths: list[int], vocab: int = 97, seed: int = 0, pad: int = 0):
    """Random token rows of the given lengths, left-padded → (input_ids, attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n :] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, T - n :] = 1
    return ids, mask


def tiny_tokenizer():
    """A character-level tokenizer with a ChatML template, built in code (no files, no hub)."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"<\|im_(?:start|end)\|>|[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        padding_side="left",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def tiny_model_dir(path, family: str = "llama", seed: int = 0):
    """Save a tiny model + the tiny tokenizer as a local HF folder (vocab matched to the tokenizer)."""
    tok = tiny_tokenizer()
    config = tiny_config(family)
    config.vocab_size = len(tok)
    config.max_position_embeddings = 1024  # character-level prompts are long
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) < MAX_TINY_PARAMS
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def tiny_calibration(out, model_dir: str, **overrides):
    """Calibrate ``model_dir`` on 4 easy ``rg:chain_sum`` items of 4 new tokens into ``out`` (CPU) → the folder."""
    from thinkaloud.data.calibrate import CalibrateConfig, calibrate

    fields = dict(task="rg:chain_sum", n=4, max_new_tokens=4, batch_size=4, shard_size=4, device="cpu")
    return calibrate(CalibrateConfig(out=str(out), model=model_dir, **{**fields, **overrides}))


def free_port() -> str:
    """A TCP port no one listens on now (bound to port 0, then released), for a multi-process test's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
