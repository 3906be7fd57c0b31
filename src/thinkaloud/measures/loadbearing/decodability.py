"""Where is the answer computed? Linear probes from the hidden states to the final answer, per layer and
per point of the reasoning: a probing reading of Lanham et al. 2023's question whether the answer is
settled before the chain of thought is written (``thinkaloud.measures.lens`` asks it of single tokens).

For every response with an extractable answer, the model reads its prompt and reasoning teacher-forced,
with the exits it took in generation (exit = freeze, as in ``thinkaloud.measures.lens``); the residual
stream after every layer ℓ = 1..L is kept at the positions of ``FRACTIONS``: the prompt's last token
(f = 0, before any reasoning is written) and the token after a fraction f = 0.1, …, 1 of the reasoning
(f = 1: its last token, just before the final-answer marker). The label is the response's own answer
(what the model eventually says, not the reference): its class (answers that ``task.same_answer``
equates are one class) when the answers are not numbers and form at most ``MAX_CLASSES`` classes (``tom``:
containers), else the answer's first token that is not blank (for digit-wise tokenizers, its first digit).

Probe: multinomial logistic regression per (layer, fraction) on the standardised state, L2-regularised
(``L2``), fitted by L-BFGS in its dual form (the optimal weights lie in the span of the training states,
so each probe has n × classes parameters instead of C × classes). Two folds (:func:`two_folds`): the
responses of each label alternate between the halves; each half is scored by the probe fitted on the
other, so every response is scored once. ``accuracy[ℓ][f]`` is that held-out accuracy; ``chance[ℓ][f]`` the same with the
training labels shuffled (``SHUFFLES`` permutations, mean), scored against the true labels, which is what
a probe gets from the label frequencies and from fitting noise; ``majority`` is the share of the most
frequent training label on the held-out half. ``best[f]`` is the highest accuracy over the layers at
fraction f and ``best_chance[f]`` the same maximum over the chance table: a maximum over L noisy cells is
biased upwards, so compare the two maxima, not a maximum with a mean.

Reading. Reasoning that carries the answer predicts late decodability: near chance at f = 0 and
rising as the reasoning is written. An answer decodable at the prompt's end (f = 0) well above chance
was computed, or fixed by the prompt, before the reasoning was written. A layer where it first appears
says how deep the computation sits.

What it does not prove. n is small (tens of responses, each probe fitted on half), so one table cell
moves by 1/n per response: read rows and columns, not single cells, and the chance table beside it. A
linear probe is a lower bound (the answer may be there non-linearly); decodability is not use (the model
may hold the answer and not act on it). Positions are relative, so when the reasoning's length goes with
the answer, the state can give the answer away through its position alone. For a weak model most answers are one or two frequent classes
and the majority baseline is high; answer format effects (a first token that is shared by many
answers) and the normalisation of faithfulness scores across models of different accuracy (Bentham et
al. 2024) apply here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from thinkaloud.data.answers import normalize_number
from thinkaloud.data.task import Task
from thinkaloud.measures.loadbearing.forced import Reasoned, check_task, split_reasoning
from thinkaloud.measures.responses import Response, chunked, teacher_batch
from thinkaloud.model import arch

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MAX_CLASSES = 12
SHUFFLES = 5
L2 = 1.0
MIN_RESPONSES = 4


def answer_labels(task: Task, reasoned: Sequence[Reasoned], tokenizer: Any) -> tuple[list[str], str]:
    """The label of each response and its kind: ("answer" classes or "first_token")."""
    classes: list[str] = []
    labels = []
    for s in reasoned:
        label = next((c for c in classes if task.same_answer(s.item, s.answer, c)), None)
        if label is None:
            label = s.answer.strip().rstrip(".").strip().casefold()
            classes.append(label)
        labels.append(label)
    numeric = all(normalize_number(s.answer).lstrip("-").replace(".", "").isdigit() for s in reasoned)
    if not numeric and len(classes) <= MAX_CLASSES:
        return labels, "answer"
    first = []
    for s in reasoned:  # the first token that is not blank (" 42" is " ", "4", "2" for SmolLM2)
        pieces = [
            tokenizer.decode([i]) for i in tokenizer(" " + s.answer.strip(), add_special_tokens=False)["input_ids"]
        ]
        first.append(next((p for p in pieces if p.strip()), ""))
    return first, "first_token"


def positions(prompt_length: int, n: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """Positions (in prompt + reasoning) read for each fraction: the prompt's last token, then after f · n tokens."""
    return [prompt_length - 1 + round(f * n) for f in fractions]


@torch.no_grad()
def reasoning_states(
    model, reasoned: Sequence[Reasoned], fractions: Sequence[float] = FRACTIONS, batch_size: int = 8
) -> torch.Tensor:
    """(L, F, N, C) float32 residual stream after every layer at each fraction's position, per response,
    teacher-forced with the exits the responses took."""
    layers = arch.decoder_layers(model.peft)
    out: list[torch.Tensor] = []  # (L, F, b, C) per chunk
    grabbed: list[torch.Tensor] = []
    where: list[torch.Tensor] = []  # (rows, cols) of the chunk being read

    def grab(module, args, output):
        h = output[0] if isinstance(output, tuple) else output  # (B, T, C)
        grabbed.append(h[where[0], where[1]].float().cpu())  # (b, F, C)

    hooks = [layer.register_forward_hook(grab) for layer in layers]  # after the model's own (freeze) hooks
    was_training = model.training
    model.eval()
    try:
        for chunk in chunked(list(reasoned), batch_size):
            rs = [Response(s.prompt_ids, s.reasoning_ids, _exits(s)) for s in chunk]
            batch = teacher_batch(rs, 0, model.num_layers, model.device)
            start = batch.start().tolist()
            cols = torch.tensor([positions(st, s.n, fractions) for st, s in zip(start, chunk)], device=model.device)
            rows = torch.arange(len(chunk), device=model.device)[:, None].expand_as(cols)
            where[:] = [rows, cols]
            grabbed.clear()
            model.exit_states(batch.ids, batch.mask, batch.exits)
            out.append(torch.stack(grabbed).transpose(1, 2))  # (L, F, b, C)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return torch.cat(out, dim=2)


def _exits(s: Reasoned) -> list[int] | None:
    layers = s.response.exit_layers
    return None if layers is None else layers[: s.n]


def kernels(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per probe, the states standardised by the training states' mean and deviation and ÷ √C (entries of
    order 1): train (G, n, C), test (G, m, C) → their inner products, (G, n, n) and (G, m, n), float64."""
    mu, sd = train.mean(1, keepdim=True), train.std(1, keepdim=True, unbiased=False).clamp_min(1e-6)
    a, b = ((x - mu) / sd / train.shape[-1] ** 0.5 for x in (train, test))
    return (a @ a.transpose(1, 2)).double(), (b @ a.transpose(1, 2)).double()


def fit_predict(
    gram: torch.Tensor, y: torch.Tensor, cross: torch.Tensor, classes: int, *, l2: float = L2, iters: int = 100
) -> torch.Tensor:
    """Multinomial logistic probes, one per leading index, from their :func:`kernels`: gram (G, n, n) of the
    training states, labels y (G, n), cross (G, m, n) of the test states → predicted classes (G, m). Loss:
    mean cross-entropy + (l2 / 2n) ‖W‖² (scikit-learn's C = 1 at l2 = 1); W = Xᵀα (the dual form), fitted
    by L-BFGS on all probes at once."""
    G, n = y.shape
    alpha = torch.zeros(G, n, classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(G, 1, classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([alpha, bias], max_iter=iters, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = gram @ alpha + bias  # (G, n, K)
        ce = F.cross_entropy(logits.reshape(-1, classes), y.reshape(-1), reduction="sum") / n
        penalty = (alpha * (gram @ alpha)).sum() * l2 / (2 * n)  # ‖W‖² = tr(αᵀ K α)
        loss = ce + penalty
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (cross @ alpha.detach() + bias.detach()).argmax(-1)  # (G, m)


def two_folds(labels: Sequence[str]) -> list[int]:
    """Fold 0 or 1 per response: each label's responses alternate between the folds, in order (so a label
    seen twice is on both sides), the first fold of each label alternating too (balanced sizes)."""
    count: dict[str, int] = {}
    out = []
    for label in labels:
        if label not in count:
            count[label] = len(count) % 2  # a new label starts in the other fold from the previous new one
        out.append(count[label] % 2)
        count[label] += 1
    return out


def probe_tables(
    states: torch.Tensor, labels: Sequence[str], *, shuffles: int = SHUFFLES, seed: int = 0, l2: float = L2
) -> dict[str, Any]:
    """Two-fold held-out accuracy of probes on ``states`` (..., N, C) for ``labels`` (N,), and its chance level
    from shuffled training labels → {"accuracy", "chance" (both shaped as states' leading dims), "majority",
    "correct" (N,) of the best probe}."""
    lead, (N, C) = states.shape[:-2], states.shape[-2:]
    names = sorted(set(labels))
    y = torch.tensor([names.index(label) for label in labels])
    x = states.reshape(-1, N, C).float()  # (G, N, C)
    G, R = x.shape[0], 1 + shuffles
    fold = two_folds(labels)
    folds = [torch.tensor([i for i in range(N) if fold[i] == k]) for k in (0, 1)]
    generator = torch.Generator().manual_seed(seed)
    hits = torch.zeros(R, G, dtype=torch.float64)
    majority = 0
    for test, train in (folds, folds[::-1]):
        y_train = y[train]
        ys = [y_train] + [y_train[torch.randperm(len(train), generator=generator)] for _ in range(shuffles)]
        gram, cross = kernels(x[:, train], x[:, test])  # (G, n, n), (G, m, n)
        rep = lambda t: t[None].expand(R, *t.shape).reshape(-1, *t.shape[1:])  # (R·G, …): one per shuffle
        Y = torch.stack(ys)[:, None].expand(R, G, len(train)).reshape(-1, len(train))  # (R·G, n)
        pred = fit_predict(rep(gram), Y, rep(cross), len(names), l2=l2)  # (R·G, m)
        hits += (pred == y[test]).view(R, G, -1).sum(-1)
        majority += int((y[test] == torch.bincount(y_train, minlength=len(names)).argmax()).sum())
    accuracy, chance = hits[0] / N, hits[1:].mean(0) / N
    return {
        "accuracy": accuracy.view(lead).tolist(),
        "chance": chance.view(lead).tolist(),
        "majority": majority / N,
    }


def answer_decodability(
    model,
    task: Task,
    responses: Sequence[Response],
    tokenizer: Any,
    *,
    fractions: Sequence[float] = FRACTIONS,
    shuffles: int = SHUFFLES,
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The layer × fraction table of held-out probe accuracies → (summary, one dict per response).

    Raises ValueError when fewer than ``MIN_RESPONSES`` responses have an answer, when they share one label,
    or when no label is given twice (every held-out label would be missing from the training half)."""
    check_task(task)
    split = split_reasoning(task, responses, tokenizer)
    reasoned = [s for s in split if s is not None]
    if len(reasoned) < MIN_RESPONSES:
        raise ValueError(f"decodability needs at least {MIN_RESPONSES} responses with an answer, got {len(reasoned)}")
    labels, kind = answer_labels(task, reasoned, tokenizer)
    if len(set(labels)) < 2:
        raise ValueError(f"every response has the same label ({labels[0]!r}): nothing to decode")
    if len(set(labels)) == len(labels):
        raise ValueError(f"no label is given twice ({len(labels)} different): a held-out label is never fitted")
    states = reasoning_states(model, reasoned, fractions, batch_size)  # (L, F, N, C)
    tables = probe_tables(states, labels, shuffles=shuffles, seed=seed)
    accuracy, chance = tables["accuracy"], tables["chance"]
    counts = {label: labels.count(label) for label in sorted(set(labels))}
    best = lambda table: [max(row[j] for row in table) for j in range(len(fractions))]
    labelled = iter(zip(labels, two_folds(labels)))
    records: list[dict[str, Any]] = []
    for s in split:
        if s is None:
            records.append({"included": False, "label": None, "fold": None})
        else:
            label, fold = next(labelled)
            records.append({"included": True, "label": label, "fold": fold})
    summary = {
        "measure": "answer_decodability",
        "layers": list(range(1, model.num_layers + 1)),
        "fractions": [float(f) for f in fractions],
        "accuracy": accuracy,
        "chance": chance,
        "chance_mean": sum(map(sum, chance)) / (len(chance) * len(fractions)),
        "majority": tables["majority"],
        "best": best(accuracy),
        "best_chance": best(chance),
        "label": kind,
        "classes": counts,
        "n": len(reasoned),
        "n_skipped": len(responses) - len(reasoned),
        "shuffles": shuffles,
    }
    return summary, records
