"""The organism's architecture, tokenizer and cache: a tiny Llama trained from scratch on the ``organism`` task.

One character is one token (letters, digits and ``=;?>.``). The chat template is the bare question after
``<s>``: the prompt ``<s>c=b;a=3;…;?d`` is followed directly by the route (``=3.``, ``>dcba=3.`` or
``.....=3.``) and ``</s>``. A written hop (one letter of ``>dcba``) is one lookup — find ``c=`` in the
prompt, read the character after it, an induction-style copy of about two layers — while a direct
answer at k hops needs k lookups stacked in one forward pass.

A built organism is a plain Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer,
``organism.json`` with its recipe and ``README.md``, its card) under
``<cache>/models/organism-<hash>``, the hash being that of :class:`OrganismModelConfig`: the same
recipe is built once and then loaded, and a changed recipe is a new folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkaloud.data.organism import DIGITS, LETTERS, OrganismConfig
from thinkaloud.hub import cache_dir

ALIAS = "organism"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
SYMBOLS = "=;?>."
ASSIGNMENT = r"(?<=^|;)[a-z]=[a-z0-9]"  # with assignment tokens: one token at the start or after ';'
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


@dataclass(frozen=True)
class OrganismModelConfig:
    """The organism's recipe: its architecture, its pretraining and the chains it is trained on.

    The early-exit loss (LayerSkip, Elhoushi et al. 2024) trains every layer's residual stream to be
    read by the final norm and unembedding, layer l's cross-entropy weighted ∝ l (weights summing to 1),
    so that calibration has intermediate predictions to aim at. The default recipe's choices, each from
    pilots on the card's accuracy (never on the RL findings): one token per assignment with factorised
    starting embeddings (char tokens alone: lookups not learnt within 1 500 steps), 8 queries per training
    prompt (one gave too little signal per step), and the first 55% of the steps on written hops only
    (lookups are learnt abruptly around step 350–450; the other routes follow within ~150 steps).
    """

    layers: int = 6
    hidden: int = 128
    heads: int = 4
    intermediate: int = 256
    steps: int = 640
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    exit_loss: bool = True
    assignment_tokens: bool = True  # an assignment of the prompt (``c=b``) is one token
    queries: int = 8  # queries per training sequence: the prompt's own, then other variables of it
    curriculum: float = 0.55  # first share of the steps on written hops only (lookups first)
    seed: int = 0
    task: OrganismConfig = field(default_factory=OrganismConfig)
    eval_n: int = 96  # test prompts per (route, k) for the card

    def __post_init__(self) -> None:
        if self.layers < 1 or self.hidden % self.heads or self.steps < 1 or self.batch < 1:
            raise ValueError(f"bad organism recipe: {self}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OrganismModelConfig:
        task = d.get("task", {})
        task = OrganismConfig(**{**task, "ks": tuple(task.get("ks", OrganismConfig().ks))})
        return cls(**{**d, "task": task})

    def digest(self) -> str:
        """12 hex digits of the recipe (what the cache folder is named after)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# ``--quick`` (CI): a recipe that trains in seconds; its card says how little it learnt
QUICK_RECIPE = OrganismModelConfig(
    layers=4, hidden=64, heads=2, intermediate=128, steps=80, batch=16, queries=4, eval_n=8
)


def organism_folder(config: OrganismModelConfig | None = None) -> Path:
    config = config or OrganismModelConfig()
    return cache_dir() / "models" / f"organism-{config.digest()}"


def is_built(folder: Path) -> bool:
    return all((folder / name).exists() for name in ("config.json", "model.safetensors", "organism.json"))


def build_tokenizer(assignment_tokens: bool = False):
    """The tokenizer as a ``PreTrainedTokenizerFast`` (saved with the model): one token per character, and
    with ``assignment_tokens`` one per assignment of the prompt (``c=b`` after the start or a ``;``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assignments = [f"{v}={r}" for v in LETTERS for r in LETTERS + DIGITS] if assignment_tokens else []
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *LETTERS, *DIGITS, *SYMBOLS, *assignments])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    pattern = f"{ASSIGNMENT}|." if assignment_tokens else "."
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(config: OrganismModelConfig, vocab_size: int, special_ids: dict[str, int]):
    """A freshly initialised Llama of the recipe's size (seeded by the caller)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=special_ids["pad"],
        bos_token_id=special_ids["bos"],
        eos_token_id=special_ids["eos"],
    )
    return LlamaForCausalLM(hf)


@torch.no_grad()
def init_assignment_embeddings(model, tokenizer, seed: int) -> None:
    """Start every assignment token ``v=r`` at emb(v) + emb(r)·R (R a random rotation): its left and right
    sides readable apart from the first step, as if the model had learnt the two characters' embeddings."""
    emb = model.get_input_embeddings().weight  # (V, H)
    vocab = tokenizer.get_vocab()
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(emb.shape[1], emb.shape[1], generator=g))  # (H, H)
    for token, i in vocab.items():
        if len(token) == 3 and token[1] == "=":
            emb[i] = emb[vocab[token[0]]] + emb[vocab[token[2]]] @ rotation
