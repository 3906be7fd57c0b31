"""The per-offset losses of the ``risk`` job (``thinkaloud.risk.run``): full-depth rollouts, then one loss
in [0, 1] per item at an offset, with the exits taken.

``rollouts`` generates the items greedily at full depth (offset −∞, adapter on) and keeps what the risks
start from (the generations, their prompts as generation read them, the final answers); the token risk's
full-depth teacher-forced pass (``_Reference``: top-1 tokens, exit-head logits, caches every
``CHECKPOINT_EVERY`` columns) is made once per batch for all offsets. ``token_stats`` and
``answer_stats`` give the ``token`` and ``answer`` risks at one offset (defined in ``thinkaloud.risk.run``'s
docstring), ``offset_stats`` picks between them by ``RiskConfig.risk``; ``OffsetStats.summary`` turns the
exits taken into mean ALS, early-exit rate and FLOP savings, as in eval.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.task import Item, Task
from thinkaloud.measures import metrics
from thinkaloud.model.generate import prefill
from thinkaloud.model.generation_output import GenerationOutput
from thinkaloud.model.kv_cache import Prefix, shared_copy
from thinkaloud.model.loading import Loaded

if TYPE_CHECKING:
    from thinkaloud.risk.config import RiskConfig

CHECKPOINT_EVERY = 8
"""Columns between the caches the full-depth pass keeps: an offset's pass starts at the last one before its first
exit."""


@dataclass
class Rollouts:
    """Full-depth greedy generations of some items, in batches, with what every risk compares against."""

    items: list[Item]
    batches: list[GenerationOutput]
    answers: list[str | None]  # per item: the full-depth final answer
    prompts: list[Prefix | None]  # per batch: its prompt less the last token as generation read it, if it could


@dataclass
class OffsetStats:
    losses: list[float]  # per item, in [0, 1]
    layers: list[list[int]]  # per item: the exit layer of each completion token
    context: list[list[int]]  # per item: the context length each token attended to

    def summary(self, model) -> dict[str, float]:
        L = model.num_layers
        return {
            "als": metrics.average_layer_savings(self.layers, L),
            "early_exit_rate": metrics.early_exit_rate(self.layers, L),
            "flop_savings": metrics.flop_savings(
                self.layers, context=self.context, **metrics.model_dims(model.hf_config)
            ),
        }


def _answers(loaded: Loaded, task: Task, gen: GenerationOutput) -> list[str | None]:
    texts = loaded.tokenizer.batch_decode(
        [gen.new_tokens[i, : int(gen.lengths[i])].tolist() for i in range(len(gen.lengths))], skip_special_tokens=True
    )
    return [task.extract_answer(text) for text in texts]


def _per_item(gen: GenerationOutput, layers: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
    """(b, N) exit layers of the new tokens → per item the layers and the context lengths, padding dropped."""
    real_prompt = gen.attention_mask[:, : gen.prompt_length].sum(-1).tolist()
    out_layers, out_context = [], []
    for i, n in enumerate(gen.lengths.tolist()):
        out_layers.append(layers[i, :n].tolist())
        out_context.append([int(real_prompt[i]) + k for k in range(n)])
    return out_layers, out_context


@torch.no_grad()
def rollouts(
    loaded: Loaded, task: Task, items: list[Item], *, max_new_tokens: int, batch_size: int, device: str
) -> Rollouts:
    """Greedy generations at full depth (offset −∞, adapter on) and their final answers.

    Each batch's prompt less its last token is read first (``prefill``) and generation continues from it, the
    same computation as generating from the whole prompt; the token risk's teacher-forced passes start from that
    read too (``Prefix.hf_cache``) instead of reading the prompt again."""
    model, tokenizer = loaded.model, loaded.tokenizer
    batches, answers, prefixes = [], [], []
    for s in range(0, len(items), batch_size):
        prompts = [task.prompt(item, tokenizer) for item in items[s : s + batch_size]]
        ids, mask = encode_prompts(tokenizer, prompts, device)  # (b, P) each
        args = dict(
            max_new_tokens=max_new_tokens, do_sample=False, offset=-math.inf, pad_token_id=tokenizer.pad_token_id
        )
        P = ids.shape[1]
        if P > 1 and bool(mask[:, : P - 1].any(-1).all()):  # every row has a token before its last
            prefix = prefill(model, ids[:, : P - 1], mask[:, : P - 1])
            last = model.generate(ids[:, P - 1 :], mask[:, P - 1 :], prefix=prefix, **args)
            gen = dataclasses.replace(
                last,
                sequences=torch.cat([ids[:, : P - 1], last.sequences], 1),
                attention_mask=torch.cat([mask[:, : P - 1], last.attention_mask], 1),
                prompt_length=P,
            )
        else:
            prefix, gen = None, model.generate(ids, mask, **args)
        batches.append(gen)
        prefixes.append(prefix)
        answers += _answers(loaded, task, gen)
    return Rollouts(items, batches, answers, prefixes)


@torch.no_grad()
def token_stats(model, roll: Rollouts, offset: float, seed: int) -> OffsetStats:
    """Token risk at ``offset``: per item, the share of completion tokens whose top-1 token with sampled exits
    differs from the full-depth top-1 (both teacher-forced on the full-depth rollout)."""
    return token_stats_per_offset(model, roll, [offset], seed)[0]


@dataclass
class _Reference:
    """The full-depth teacher-forced pass over a batch's predicting positions, read once for every offset."""

    ids: torch.Tensor  # (b, N) the predicting positions' tokens: the last prompt token and all but the last new one
    mask: torch.Tensor  # (b, S + N) the attention mask up to them
    top1: torch.Tensor  # (b, N) full-depth top-1
    head_logits: torch.Tensor  # (m, b, N) each exit head's logit at full depth, before the offset
    caches: dict[int, object]  # column c → the cache of the prompt and the predicting positions before c


def _reference(model, gen: GenerationOutput, prompt: Prefix | None) -> _Reference:
    """The prompt is read once (it never exits, so its keys and values are the same at every offset): by the
    generation (``prompt``) or else here; the predicting positions in chunks of ``CHECKPOINT_EVERY`` columns,
    keeping the cache at each chunk's start."""
    sl = gen.predicting_positions()  # columns P-1 … P+N-2
    S, N = sl.start, sl.stop - sl.start
    ids, mask = gen.sequences[:, sl], gen.attention_mask[:, : sl.stop]
    if prompt is not None:
        cache = prompt.hf_cache(model.hf_config)
    else:
        cache = model.prefix_cache(gen.sequences[:, :S], gen.attention_mask[:, :S])
    caches, top1, heads = {}, [], []
    for a in range(0, N, CHECKPOINT_EVERY):
        b = min(a + CHECKPOINT_EVERY, N)
        caches[a] = shared_copy(cache)  # the extension below gives the layers new tensors
        out = model.forward_after(cache, ids[:, a:b], mask[:, : S + b], record_heads=True, extend=True)
        top1.append(out.logits.argmax(-1))  # (b, chunk)
        heads.append(out.head_logits)  # (m, b, chunk)
    return _Reference(ids, mask, torch.cat(top1, 1), torch.cat(heads, 2), caches)


def first_exits(head_logits: torch.Tensor, uniforms: list[torch.Tensor], offset: float, live: torch.Tensor):
    """The first column of each row where a sampled pass exits, from the full-depth head logits (m, b, N), the
    pass's uniforms (m tensors (b, N)) and the positions that may exit (b, N) → (b,), N where none does.
    Exact: up to a row's first exit its states are the full-depth ones, so its heads read these logits."""
    N = live.shape[1]
    hits = torch.stack([u < torch.sigmoid(z + offset) for z, u in zip(head_logits, uniforms)]).any(0) & live
    return torch.where(hits.any(-1), hits.to(torch.uint8).argmax(-1), N)  # argmax: the first of equal maxima


@torch.no_grad()
def token_stats_per_offset(model, roll: Rollouts, offsets: list[float], seed: int) -> list[OffsetStats]:
    """``token_stats`` at every offset, reading each batch's prompt and its full-depth pass once (``_Reference``).

    An offset's pass runs only the rows that exit somewhere, from the chunk of their first exit on: before a
    row's first exit its states, exits and top-1 are the full-depth ones (``first_exits`` finds that column from the full-depth head logits and
    the pass's own uniforms, drawn as a sampled pass draws them), and a position of a row that has not
    exited by then keeps the full-depth top-1. One generator per offset, all seeded with ``seed`` (common
    random numbers across offsets)."""
    generators = [torch.Generator(device=model.device).manual_seed(seed) for _ in offsets]
    stats = [OffsetStats([], [], []) for _ in offsets]
    L = model.num_layers
    for gen, prompt in zip(roll.batches, roll.prompts):
        ref = _reference(model, gen, prompt)
        m, B, N = ref.head_logits.shape
        S = ref.mask.shape[1] - N
        live = ref.mask[:, S:].bool()  # (b, N) real positions: the ones that may exit
        completion = gen.completion_mask  # (b, N)
        for offset, generator, st in zip(offsets, generators, stats):
            uniforms = [torch.rand((B, N), generator=generator, device=live.device) for _ in range(m)]
            top, layers = ref.top1.clone(), torch.full_like(ref.top1, L)  # (b, N) each
            first = first_exits(ref.head_logits, uniforms, offset, live)  # (b,), N: no exit in the row
            rows = (first < N).nonzero().squeeze(-1)  # (r,) the rows that exit somewhere; the others are exact
            if rows.numel():
                c = int(first[rows].min())
                a = c - c % CHECKPOINT_EVERY
                cache = shared_copy(ref.caches[a])
                if rows.numel() < B:
                    cache.batch_select_indices(rows)
                u = [x[rows, a:] for x in uniforms]
                out = model.forward_after(
                    cache, ref.ids[rows, a:], ref.mask[rows], "sample", offset, uniforms=u, extend=True
                )
                exited = (out.exit_layers < L).cumsum(-1) > 0  # (r, N - a) at or after the row's first exit
                top[rows, a:] = torch.where(exited, out.logits.argmax(-1), ref.top1[rows, a:])
                layers[rows, a:] = out.exit_layers
            differ = ((top != ref.top1) & completion).sum(-1).double() / completion.sum(-1)  # (b,)
            st.losses += differ.tolist()
            per_layers, context = _per_item(gen, layers)
            st.layers += per_layers
            st.context += context
    return stats


@torch.no_grad()
def answer_stats(
    loaded: Loaded, task: Task, roll: Rollouts, offset: float, seed: int, max_new_tokens: int
) -> OffsetStats:
    """Answer risk at ``offset``: per item, 1 if a greedy generation with sampled exits answers differently
    from the full-depth generation."""
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = torch.Generator(device=model.device).manual_seed(seed)
    stats, k = OffsetStats([], [], []), 0
    for ref in roll.batches:
        P = ref.prompt_length
        gen = model.generate(
            ref.sequences[:, :P],
            ref.attention_mask[:, :P],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            offset=offset,
            pad_token_id=tokenizer.pad_token_id,
            generator=generator,
        )
        for answer in _answers(loaded, task, gen):
            stats.losses.append(float(answer != roll.answers[k]))
            k += 1
        layers, context = _per_item(gen, gen.exit_layers)
        stats.layers += layers
        stats.context += context
    return stats


def offset_stats(loaded: Loaded, task: Task, roll: Rollouts, offset: float, config: RiskConfig) -> OffsetStats:
    if config.risk == "token":
        return token_stats(loaded.model, roll, offset, config.seed)
    return answer_stats(loaded, task, roll, offset, config.seed, config.max_new_tokens)


def stats_per_offset(
    loaded: Loaded, task: Task, roll: Rollouts, offsets: list[float], config: RiskConfig, advance=lambda: None
) -> list[OffsetStats]:
    """``offset_stats`` at every offset (token risk: each prompt read once for all of them); ``advance`` is
    called once per offset done (a progress bar)."""
    if config.risk == "token":
        out = token_stats_per_offset(loaded.model, roll, offsets, config.seed)
        for _ in offsets:
            advance()
        return out
    out = []
    for offset in offsets:
        out.append(offset_stats(loaded, task, roll, offset, config))
        advance()
    return out
