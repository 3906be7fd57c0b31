"""Tiny models of every supported family, built from configs in code (never a hub id)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

MAX_TINY_PARAMS = 500_000

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(family: str):
    if family == "llama":  # untied, llama3 rotary scaling
        return LlamaConfig(**COMMON, tie_word_embeddings=False,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    if family == "llama-tied":
        return LlamaConfig(**COMMON, tie_word_embeddings=True, attention_bias=True)
    if family == "qwen2":  # q/k/v biases, tied
        return Qwen2Config(**COMMON, tie_word_embeddings=True)
    if family == "qwen3":  # per-head q/k RMSNorm, explicit head_dim
        return Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=False)
    if family == "mistral":
        return MistralConfig(**COMMON, sliding_window=None, tie_word_embeddings=False)
    raise ValueError(family)


FAMILIES = ["llama", "llama-tied", "qwen2", "qwen3", "mistral"]


def build_tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    assert n < MAX_TINY_PARAMS, f"tiny {family} model has {n} parameters"
    return model.eval()


def left_padded_batch(lengths: list[int], vocab: int = 97, seed: int = 0, pad: int = 0):
    """Random token rows of the given lengths, left-padded → (input_ids, attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, T - n:] = 1
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
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                  unk_token="<unk>", padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
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
