"""The early-exit model: the wrapper (LoRA + exit heads, exit = freeze), its maths, batched KV-cached generation,
saving and loading, and ``arch/``, the only place that knows Hugging Face model internals (one file per family)."""
