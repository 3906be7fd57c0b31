"""Rollouts of the early-exit policy and their log-probabilities (Stage 2, docs/method.md §3).

``sample_rollouts`` samples completions (temperature 1, exits sampled layer by layer, no threshold);
``policy_logprobs`` recomputes their token and exit log-probabilities teacher-forced, with gradients,
with the sampled exits prescribed; ``reference_logprobs`` gives the token log-probabilities under the
reference, the base model (adapter disabled, no exits). The RL loop (``thinkaloud.train.rl``) uses the
reference log-probabilities twice: in the KL term of the reward and, minus their mean, as the
per-step fluency proxy (the base model's NLL per token of the completions).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from thinkaloud.data.env import Env, Prompt
from thinkaloud.data.prompts import left_pad
from thinkaloud.model.generate import prefill
from thinkaloud.model.generation_output import GenerationOutput


def sample_rollouts(
    policy,
    prompts: Sequence[Prompt],
    env: Env,
    *,
    max_new_tokens: int,
    offset: float,
    generator: torch.Generator | None = None,
    group: int = 1,
) -> GenerationOutput:
    """One completion per row of ``prompts`` from the early-exit policy (temperature 1, exits sampled).

    ``group``: rows come in runs of ``group`` that share their prompt (RL's K completions, prompt-major): each
    prompt less its last token is then read once (``prefill``) and its keys and values serve its rows
    (``generate(prefix=…)``, the same computation as from the whole prompt)."""
    ids, mask = left_pad([p.ids for p in prompts], env.pad_token_id, policy.device)  # (B, P) each
    args = dict(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        offset=offset,
        stop_token_ids=env.stop_token_ids,
        pad_token_id=env.pad_token_id,
        generator=generator,
    )
    (B, P), firsts = ids.shape, slice(None, None, group)  # the first row of each prompt's run
    if group == 1 or P == 1 or B % group or not bool(mask[firsts, : P - 1].any(-1).all()):
        return policy.generate(ids, mask, **args)
    read = prefill(policy, ids[firsts, : P - 1], mask[firsts, : P - 1])
    runs = torch.arange(B // group, device=ids.device).repeat_interleave(group)  # (B,) each row's prompt
    last = policy.generate(
        ids[:, P - 1 :], mask[:, P - 1 :], prefix=read.select(runs, read.next_position[runs]), **args
    )
    return dataclasses.replace(
        last,
        sequences=torch.cat([ids[:, : P - 1], last.sequences], 1),
        attention_mask=torch.cat([mask[:, : P - 1], last.attention_mask], 1),
        prompt_length=P,
    )


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits (B, N, V), tokens (B, N) → (B, N) log-softmax at the tokens."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)


def policy_logprobs(model, out: GenerationOutput, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced (B, N) log p(y_t | ℓ_t) and log P(ℓ_t) of a rollout, with gradients.

    ``model`` may be the DDP-wrapped one. Call it in eval mode (dropout off) for the values to equal
    those recorded at sampling. Exits are confined to the predicting positions, as in generation.
    """
    full = model(
        out.sequences,
        out.attention_mask,
        exit_layers=out.full_exit_layers(),
        offset=offset,
        exits_from=out.prompt_length - 1,
    )
    pos = out.predicting_positions()
    return _token_logprobs(full.logits[:, pos], out.new_tokens), full.exit_logprobs[:, pos]


@torch.no_grad()
def reference_logprobs(policy, out: GenerationOutput, group: int = 1) -> torch.Tensor:
    """(B, N) log p_ref(y_t) under the base model: the adapter disabled and no exits.

    ``group``: rows come in runs of ``group`` that share their prompt (RL's K completions of a prompt, prompt-major);
    each prompt is then read once, its keys and values repeated for its rows, and only the completions are run
    (``EarlyExitModel.forward_after``): the same log-probabilities up to float round-off. Under FSDP call it
    with the weights gathered (``thinkaloud.train.dist.fsdp.gathered``): the prompt pass calls the decoder itself,
    not the root unit's forward."""
    pos = out.predicting_positions()  # columns P-1 … P+N-2
    shared = group > 1 and pos.start > 0 and out.sequences.shape[0] % group == 0
    with policy.disable_adapter():
        if shared:
            firsts = slice(None, None, group)  # the first row of each prompt's run
            cache = policy.prefix_cache(out.sequences[firsts, : pos.start], out.attention_mask[firsts, : pos.start])
            cache.batch_repeat_interleave(group)
            logits = policy.forward_after(
                cache, out.sequences[:, pos], out.attention_mask[:, : pos.stop], offset=-math.inf, extend=True
            ).logits  # (B, N, V)
        else:
            logits = policy(out.sequences, out.attention_mask, exit_layers=None, offset=-math.inf).logits[:, pos]
    return _token_logprobs(logits, out.new_tokens)
