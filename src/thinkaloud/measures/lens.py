"""Future lens: how far ahead the hidden states already hold the coming tokens (Pal et al. 2023,
"Future Lens: Anticipating Subsequent Tokens from a Single Hidden State", its learned linear
approximation; Wu et al. 2024, "Do Language Models Plan Ahead for Future Tokens?", pre-caching).

On the model's own responses, teacher-forced with the exits recorded in generation (exit = freeze: a
position that exited at e has its layer-e state at every deeper layer and as its last hidden state),
for every exit layer ℓ (and the last layer L) and distance k ∈ {1, 2, 3} a linear map is fitted from
the residual stream h_t^ℓ to the last hidden state (before the final norm) at position t+k−1 — the
state that the final norm and unembedding read to predict token t+k. On held-out responses the mapped
state goes through the model's own final norm and readout (``arch.readout``: unembedding, and
soft-capping where the family has it); ``accuracy[ℓ][k]`` is the share of
positions whose top-1 token is the response's token t+k. k = 1 is a learned (tuned-lens-like) version
of the logit lens; ``logit_lens[ℓ]`` is the plain logit lens (no map) at k = 1 and ``constant[k]`` the
accuracy of always answering the token most frequent at distance k in the fitted part (what a map that
learned only its intercept achieves), both for comparison. For greedy responses the last layer at
k = 1 is 1 by construction.

Fit. The map is x ↦ x + xΔ + b, the identity plus a closed-form ridge regression of the residual
y − x per (ℓ, k): centre x and y − x, Δ = (XᵀX + λI)⁻¹ Xᵀ(Y − X), b = mean(y − x) − x̄Δ, with the sums
accumulated in float64 over chunks of positions (memory O(C²) per (ℓ, k), never O(N·C)). Shrinking
towards the identity rather than towards zero (as the tuned lens' translators start from the identity,
Belrose et al. 2023) means that with few tokens per hidden dimension a strongly regularised map falls
back to the logit lens of the state shifted by the mean residual (the intercept is not penalised)
instead of to the mean state. λ = α · tr(XᵀX)/C; α is chosen per (ℓ, k) from
``ALPHAS`` by the squared error on a validation part, computed in closed form from that part's own
sums, then the map is refitted on fit + validation. Departure from Pal et al.: their linear model is
trained by gradient descent on a cross-entropy readout; ours is fitted in closed form on the state.

Split by response (never by token, so that a response's tokens are not on both sides): odd-numbered
responses are held out for the accuracies; of the even-numbered ones the first three quarters fit the
maps and the last quarter chooses α. Positions: every position t that predicted a response token
(from the last prompt token on) and whose token t+K lies inside the response, the same set for every
k (K = largest distance), so the columns of the table count the same positions.

What it does not show: a linear probe is a lower bound — a low accuracy does not prove that the
information is absent from h_t^ℓ (a non-linear read-out might find it); a high accuracy at k > 1 shows
that the state predicts later tokens, which can come from the context (predictable continuations), not
necessarily from computation done ahead. Memory of the fit: 2 · (m+1) · (1 + K) · C² float64 values.

Cost: the held-out readouts ((m+1) · (K+1) per position, each over the whole vocabulary) would
dominate on a CPU; :func:`top1` first reads out only the tokens of the responses and prompts, which
settles every position whose token one of them beats, and reads the full vocabulary for the rest
(the same answers; on SmolLM2 and ``tom`` it halved the readout time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from thinkaloud.measures.responses import Response, chunked, teacher_batch
from thinkaloud.model import arch

DISTANCES = (1, 2, 3)
ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class RidgeStats:
    """Streaming float64 sums of pairs (x (C_in,), y (C_out,)): n, Σx, Σy, Σxxᵀ, Σxyᵀ and Σy² per column."""

    def __init__(self, c_in: int, c_out: int, device: torch.device | str = "cpu"):
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)
        self.n, self.sx, self.sy = 0, z(c_in), z(c_out)
        self.sxx, self.sxy, self.syy = z(c_in, c_in), z(c_in, c_out), z(c_out)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x (N, C_in), y (N, C_out)."""
        x, y = x.double(), y.double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.T @ x  # (C_in, C_in)
        self.sxy += x.T @ y  # (C_in, C_out)
        self.syy += (y * y).sum(0)

    def __add__(self, other: RidgeStats) -> RidgeStats:
        out = RidgeStats.__new__(RidgeStats)
        out.n = self.n + other.n
        for name in ("sx", "sy", "sxx", "sxy", "syy"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (x̄, ȳ, XcᵀXc, XcᵀYc) of the centred data."""
        if self.n == 0:
            raise ValueError("no examples to fit")
        mx, my = self.sx / self.n, self.sy / self.n
        return mx, my, self.sxx - self.n * torch.outer(mx, mx), self.sxy - self.n * torch.outer(mx, my)


def ridge_fit(stats: RidgeStats, alpha: float, columns: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge map for the output ``columns`` with λ = α · tr(XcᵀXc)/C → W (C_in, c) and b (c,), float64."""
    mx, my, a, b = stats.centred()
    lam = alpha * float(torch.diagonal(a).sum()) / a.shape[0]
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    w = torch.linalg.solve(a + lam * eye, b[:, columns])  # (C_in, c)
    return w, my[columns] - mx @ w


def squared_error(stats: RidgeStats, w: torch.Tensor, b: torch.Tensor, columns: slice = slice(None)) -> float:
    """Σ ‖y − xW − b‖² over the examples summed in ``stats`` (output ``columns``), from the sums alone."""
    sxy, sy, syy = stats.sxy[:, columns], stats.sy[columns], stats.syy[columns]
    total = (
        syy.sum()
        - 2 * (w * sxy).sum()
        - 2 * (b * sy).sum()
        + (w * (stats.sxx @ w)).sum()
        + 2 * (b * (stats.sx @ w)).sum()
        + stats.n * (b * b).sum()
    )
    return float(total)


def select_and_fit(
    fit: RidgeStats, val: RidgeStats, alphas: Sequence[float], blocks: Sequence[slice] = (slice(None),)
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Per block of output columns: the α with the least validation error, then the map refitted on
    fit + validation → [(W, b, α)] (one solve per α for all blocks, one refit per distinct chosen α)."""
    errors = []  # (alphas, blocks)
    for a in alphas:
        w, b = ridge_fit(fit, a)
        errors.append([squared_error(val, w[:, cols], b[cols], cols) for cols in blocks])
    best = [alphas[min(range(len(alphas)), key=lambda i: errors[i][j])] for j in range(len(blocks))]
    both = fit + val
    refit = {a: ridge_fit(both, a) for a in set(best)}
    return [(refit[a][0][:, cols], refit[a][1][cols], a) for a, cols in zip(best, blocks)]


def top1(
    readout: Callable[..., torch.Tensor],
    h: torch.Tensor,
    tokens: torch.Tensor,
    candidates: torch.Tensor | None = None,
    budget: int | None = None,
) -> torch.Tensor:
    """Whether each state's top-1 readout is its token: h (N, C), tokens (N,) → (N,) bool.

    ``readout(h)`` gives all logits (n, V), ``readout(h, ids)`` those of the token ids (K,). With
    ``candidates`` (ids of tokens likely to win, e.g. those of the texts), a first pass reads out only
    them and the tokens: a state whose token some candidate beats is settled there (not top-1, whatever
    the other logits are), and only the others get the full readout. The answer is the full argmax's;
    the saving is the share of states settled early. Logits are built ``budget // V`` rows at a time
    (default about 2^24 logits on CPU, 2^28 on GPU)."""
    out = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    if not h.shape[0]:
        return out
    vocab = readout(h[:1]).shape[-1]
    size = budget or ((1 << 28) if h.is_cuda else (1 << 24))
    open_ = torch.arange(h.shape[0], device=h.device)
    if candidates is not None:
        pool = torch.unique(torch.cat([candidates.to(tokens.device), tokens]))  # (K,) sorted
        at = torch.searchsorted(pool, tokens.contiguous())  # (N,) the token's column in the pool
        beaten, step = [], max(1, size // pool.numel())
        for s in range(0, h.shape[0], step):
            logits = readout(h[s : s + step], pool)  # (n, K)
            beaten.append((logits > logits.gather(-1, at[s : s + step, None])).any(-1))
        open_ = (~torch.cat(beaten)).nonzero().squeeze(-1)
    rows = max(1, size // vocab)
    for s in range(0, open_.numel(), rows):
        i = open_[s : s + rows]
        out[i] = readout(h[i]).argmax(-1) == tokens[i]
    return out


def _examples(
    model, responses: Sequence[Response], K: int
) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One teacher-forced pass → inputs {layer: (N, C)}, targets (N, K·C) (k-major blocks), tokens (N, K)
    and the batch row of each example (N,)."""
    L = model.num_layers
    batch = teacher_batch(responses, 0, L, model.device)
    states, last = model.exit_states(batch.ids, batch.mask, batch.exits)  # m × (B, T, C), (B, T, C)
    T = batch.ids.shape[1]
    col = torch.arange(T, device=batch.ids.device)[None, :]  # (1, T)
    usable = (col >= batch.start()[:, None] - 1) & (col + K <= T - 1)  # (B, T): predicting, t+K in the response
    rows, cols = usable.nonzero(as_tuple=True)  # (N,) each
    inputs = {e: s[rows, cols] for e, s in zip(model.layers, states)} | {L: last[rows, cols]}
    targets = torch.cat([last[rows, cols + k - 1] for k in range(1, K + 1)], dim=-1)  # (N, K·C)
    tokens = torch.stack([batch.ids[rows, cols + k] for k in range(1, K + 1)], dim=-1)  # (N, K)
    return inputs, targets, tokens, rows


def _split(n: int) -> tuple[list[int], list[int], list[int]]:
    """Response indices → (fit, validation, test): odd ones held out, the last quarter of the rest validates."""
    kept = list(range(0, n, 2))
    cut = max(1, 3 * len(kept) // 4)
    return kept[:cut], kept[cut:], list(range(1, n, 2))


@torch.no_grad()
def future_lens(
    model,
    responses: Sequence[Response],
    *,
    distances: Sequence[int] = DISTANCES,
    alphas: Sequence[float] = ALPHAS,
    batch_size: int = 8,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit and evaluate the future lens on ``responses`` (the model's own, with their recorded exits) →
    (summary with the layer × k table, one dict per response), both JSON-serialisable."""
    distances = sorted(int(k) for k in distances)
    if not distances or distances[0] < 1 or len(set(distances)) != len(distances):
        raise ValueError(f"distances must be distinct integers >= 1, got {distances}")
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"alphas must be positive, got {alphas}")
    fit_ids, val_ids, test_ids = _split(len(responses))
    if not val_ids or not test_ids:
        raise ValueError(
            f"the future lens needs at least 3 responses (fit, validation, held out), got {len(responses)}"
        )
    K, L, C = max(distances), model.num_layers, model.hf_config.hidden_size
    layers = list(model.layers) + [L]
    was_training = model.training
    model.eval()
    try:
        stats = {part: {e: RidgeStats(C, K * C, model.device) for e in layers} for part in ("fit", "val")}
        seen = []  # tokens of the fitted positions, (n, K) per chunk: the constant baseline's choice
        by_length = lambda ids: sorted(ids, key=lambda i: len(responses[i].prompt_ids) + len(responses[i].response_ids))
        for part, ids in (("fit", fit_ids), ("val", val_ids)):
            for chunk in chunked(by_length(ids), batch_size):  # similar lengths together: less padding
                inputs, targets, tokens, _ = _examples(model, [responses[i] for i in chunk], K)
                seen.append(tokens.cpu())
                for e in layers:
                    stats[part][e].add(inputs[e], targets - inputs[e].repeat(1, K))  # residual to the identity
        for part in ("fit", "val"):
            if stats[part][L].n == 0:
                raise ValueError(f"no positions in the {part} responses: responses need more than {K} tokens")
        n_fit = stats["fit"][L].n + stats["val"][L].n
        constant = torch.cat(seen).mode(dim=0).values  # (K,) the most frequent token at each distance
        maps, alpha = {}, {}  # (layer, k) → (Δ, b) and the chosen α
        blocks = [slice((k - 1) * C, k * C) for k in distances]
        for e in layers:
            fitted = select_and_fit(stats["fit"][e], stats["val"][e], list(alphas), blocks)
            for k, (w, b, alpha[e, k]) in zip(distances, fitted):
                maps[e, k] = (w.float(), b.float())
        del stats
        norm, dtype = arch.final_norm(model.peft), arch.unembed(model.peft).weight.dtype
        readout = lambda h, vocab=None: arch.readout(model.peft, norm(h.to(dtype)), vocab).float()  # (n, V or K)
        texts = torch.tensor(sorted({t for r in responses for t in (*r.prompt_ids, *r.response_ids)}))
        candidates = texts.to(model.device)  # the competitors that most often beat a token: the texts' own
        hits = torch.zeros(len(responses), len(layers), len(distances) + 1, dtype=torch.long)  # last: logit lens
        counts = torch.zeros(len(responses), dtype=torch.long)
        constant_hits = torch.zeros(K, dtype=torch.long)
        for chunk in chunked(by_length(test_ids), batch_size):
            inputs, _, tokens, rows = _examples(model, [responses[i] for i in chunk], K)
            constant_hits += (tokens.cpu() == constant).sum(0)
            owner = torch.tensor(chunk)[rows.cpu()]  # (N,) response index of each example
            counts.index_add_(0, owner, torch.ones_like(owner))
            for i, e in enumerate(layers):
                for j, k in enumerate(distances):
                    w, b = maps[e, k]
                    x = inputs[e].float()  # (N, C)
                    hit = top1(readout, x + x @ w + b, tokens[:, k - 1], candidates).long().cpu()
                    hits[:, i, j].index_add_(0, owner, hit)
                hits[:, i, -1].index_add_(0, owner, top1(readout, inputs[e], tokens[:, 0], candidates).long().cpu())
    finally:
        model.train(was_training)

    n_test = int(counts.sum())
    table = (hits.sum(0).double() / n_test).tolist() if n_test else None  # (layers, K+1)
    split = {i: "fit" for i in fit_ids} | {i: "validation" for i in val_ids} | {i: "test" for i in test_ids}
    records = [
        {
            "split": split[i],
            "n_tokens": int(counts[i]) if split[i] == "test" else None,
            "accuracy": (hits[i, :, :-1].double() / int(counts[i])).tolist()
            if split[i] == "test" and counts[i]
            else None,
        }
        for i in range(len(responses))
    ]
    summary = {
        "measure": "future_lens",
        "layers": layers,
        "num_layers": L,
        "distances": distances,
        "accuracy": None if table is None else [row[:-1] for row in table],
        "logit_lens": None if table is None else [row[-1] for row in table],
        "constant": None if table is None else [float(constant_hits[k - 1]) / n_test for k in distances],
        "alpha": [[alpha[e, k] for k in distances] for e in layers],
        "n_fit_responses": len(fit_ids) + len(val_ids),
        "n_fit_tokens": n_fit,
        "n_test_responses": len(test_ids),
        "n_test_tokens": n_test,
    }
    return summary, records
