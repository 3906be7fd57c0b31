"""Fluency without a judge: cheap proxies that are always available.

Per response:

- ``base_nll``: the base model's mean negative log-likelihood per token (nats) of the response given
  its prompt — adapter off, no exits, one teacher-forced pass (the reference model the method starts
  from). Every generated token counts, the stop token included. Low = text the base model finds
  likely; it rises when exits or training make the text stranger;
- ``rep4``: share of the response's token 4-grams that repeat an earlier 4-gram of it (0 = none,
  → 1 for a loop); ``distinct2``: distinct token bigrams / bigrams (1 = no bigram repeats).
  Undefined (null) for responses shorter than the n-gram.

The summary gives the token-weighted mean NLL (``base_nll``) and its exponential (``base_ppl``), the
mean of the per-response NLLs, and the means of ``rep4`` / ``distinct2`` over responses where defined.

These are proxies, not fluency. A low NLL also rewards bland or repetitive text (read it with
``rep4``), and a high one can be a correct answer in a style the base model does not use; repetition
counts tokens, not meaning. They flag degenerate text; they do not replace a judge or a reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from thinkaloud.measures.responses import Response, chunked, teacher_batch
from thinkaloud.model import arch


def repeated_ngrams(tokens: Sequence[int], n: int = 4) -> float | None:
    """Share of the len−n+1 n-grams that already occurred earlier in ``tokens`` (None if there are none)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else None


def distinct_ngrams(tokens: Sequence[int], n: int = 2) -> float | None:
    """Distinct n-grams / n-grams of ``tokens`` (None if there are none)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


@torch.no_grad()
def response_nll(model, responses: Sequence[Response], chunk_rows: int | None = None) -> list[tuple[float, int]]:
    """(summed NLL in nats, tokens) of each response under the base model (adapter off, no exits).

    One teacher-forced pass per batch; only the positions that predict response tokens are read out,
    ``chunk_rows`` at a time (default: about 2^24 logits on CPU, 2^28 on GPU)."""
    batch = teacher_batch(responses, 0, model.num_layers, model.device)
    with model.disable_adapter():
        _, last = model.exit_states(batch.ids, batch.mask)  # (B, T, C), pre-norm, no exits
    T = batch.ids.shape[1]
    col = torch.arange(T, device=batch.ids.device)[None, :]  # (1, T)
    predicting = (col >= batch.start()[:, None] - 1) & (col < T - 1)  # (B, T): predicts a response token
    rows, cols = predicting.nonzero(as_tuple=True)  # (N,) each
    norm = arch.final_norm(model.peft)
    step = chunk_rows or max(1, ((1 << 28) if last.is_cuda else (1 << 24)) // model.hf_config.vocab_size)
    nll = torch.zeros(len(responses), dtype=torch.float64, device=last.device)
    for s in range(0, rows.numel(), step):
        r, c = rows[s : s + step], cols[s : s + step]
        logp = F.log_softmax(arch.readout(model.peft, norm(last[r, c])).float(), dim=-1)  # (n, V)
        nll.index_add_(0, r, -logp.gather(-1, batch.ids[r, c + 1, None]).squeeze(-1).double())
    return [(float(v), len(resp.response_ids)) for v, resp in zip(nll.tolist(), responses)]


def fluency(
    model, responses: Sequence[Response], *, batch_size: int = 8
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fluency proxies of ``responses`` → (summary, one dict per response), both JSON-serialisable."""
    if not responses:
        raise ValueError("no responses to measure")
    was_training = model.training
    model.eval()
    try:
        sums = [x for chunk in chunked(responses, batch_size) for x in response_nll(model, chunk)]
    finally:
        model.train(was_training)
    records = []
    for r, (total, n) in zip(responses, sums):
        records.append(
            {
                "base_nll": total / n if n else None,
                "n_tokens": n,
                "rep4": repeated_ngrams(r.response_ids, 4),
                "distinct2": distinct_ngrams(r.response_ids, 2),
            }
        )
    tokens = sum(n for _, n in sums)

    def mean(key: str) -> float | None:
        values = [v for x in records if (v := x[key]) is not None]
        return sum(values) / len(values) if values else None

    nll = sum(t for t, _ in sums) / tokens if tokens else None
    summary = {
        "measure": "fluency_proxies",
        "base_nll": nll,
        "base_ppl": None if nll is None else math.exp(nll),
        "base_nll_per_response": mean("base_nll"),
        "rep4": mean("rep4"),
        "distinct2": mean("distinct2"),
        "n": len(records),
        "n_tokens": tokens,
    }
    return summary, records
