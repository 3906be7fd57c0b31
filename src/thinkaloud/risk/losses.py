"""The per-offset losses of the ``risk`` job (``thinkaloud.risk.run``): full-depth rollouts, then one loss
in [0, 1] per item at an offset, with the exits taken.

``rollouts`` generates the items greedily at full depth (offset −∞, adapter on) and keeps what every risk
compares against (the teacher-forced top-1 tokens, the final answers). ``token_stats`` and
``answer_stats`` give the ``token`` and ``answer`` risks at one offset (defined in ``thinkaloud.risk.run``'s
docstring), ``offset_stats`` picks between them by ``RiskConfig.risk``; ``OffsetStats.summary`` turns the
exits taken into mean ALS, early-exit rate and FLOP savings, as in eval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.task import Item, Task
from thinkaloud.measures import metrics
from thinkaloud.model.generation_output import GenerationOutput
from thinkaloud.model.loading import Loaded

if TYPE_CHECKING:
    from thinkaloud.risk.config import RiskConfig


@dataclass
class Rollouts:
    """Full-depth greedy generations of some items, in batches, with what every risk compares against."""

    items: list[Item]
    batches: list[GenerationOutput]
    top1: list[torch.Tensor]  # per batch (b, N): full-depth top-1 at the positions predicting the new tokens
    answers: list[str | None]  # per item: the full-depth final answer


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
    """Greedy generations at full depth (offset −∞, adapter on) and their teacher-forced top-1 tokens."""
    model, tokenizer = loaded.model, loaded.tokenizer
    batches, top1, answers = [], [], []
    for s in range(0, len(items), batch_size):
        prompts = [task.prompt(item, tokenizer) for item in items[s : s + batch_size]]
        ids, mask = encode_prompts(tokenizer, prompts, device)  # (b, P) each
        gen = model.generate(
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            offset=-math.inf,
            pad_token_id=tokenizer.pad_token_id,
        )
        logits = model(gen.sequences, gen.attention_mask, exit_layers=None).logits  # (b, P+N, V)
        batches.append(gen)
        top1.append(logits[:, gen.predicting_positions()].argmax(-1))  # (b, N)
        answers += _answers(loaded, task, gen)
    return Rollouts(items, batches, top1, answers)


@torch.no_grad()
def token_stats(model, roll: Rollouts, offset: float, seed: int) -> OffsetStats:
    """Token risk at ``offset``: per item, the share of completion tokens whose top-1 token with sampled exits
    differs from the full-depth top-1 (both teacher-forced on the full-depth rollout)."""
    return token_stats_per_offset(model, roll, [offset], seed)[0]


@torch.no_grad()
def token_stats_per_offset(model, roll: Rollouts, offsets: list[float], seed: int) -> list[OffsetStats]:
    """``token_stats`` at every offset, reading each batch's prompt once: the prompt never exits, so its keys
    and values are the same at every offset (``EarlyExitModel.prefix_cache``), and each offset runs only the
    positions that predict the new tokens (``forward_after``). One generator per offset, all seeded with
    ``seed`` (common random numbers across offsets)."""
    generators = [torch.Generator(device=model.device).manual_seed(seed) for _ in offsets]
    stats = [OffsetStats([], [], []) for _ in offsets]
    for gen, ref in zip(roll.batches, roll.top1):
        sl = gen.predicting_positions()  # columns P-1 … P+N-2: the last prompt token and all but the last new one
        cache = model.prefix_cache(gen.sequences[:, : sl.start], gen.attention_mask[:, : sl.start])
        completion = gen.completion_mask  # (b, N)
        for offset, generator, st in zip(offsets, generators, stats):
            out = model.forward_after(
                cache,
                gen.sequences[:, sl],
                gen.attention_mask[:, : sl.stop],
                exit_layers="sample",
                offset=offset,
                generator=generator,
            )
            top = out.logits.argmax(-1)  # (b, N)
            differ = ((top != ref) & completion).sum(-1).double() / completion.sum(-1)  # (b,)
            st.losses += differ.tolist()
            layers, context = _per_item(gen, out.exit_layers)
            st.layers += layers
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
