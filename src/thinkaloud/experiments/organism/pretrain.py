"""Pretraining the organism from scratch, measuring it per route and hop count, and caching it.

Every batch draws fresh train-split chains (a prompt whose hash falls in another split is redrawn, so
the test prompts stay unseen), hop counts uniform over ``ks`` and the three routes in equal shares
(row i takes route i mod 3). The loss is on the completion only (its route, answer, ``.`` and ``</s>``);
with ``exit_loss`` the residual stream after every layer is also read by the final norm and
unembedding and its cross-entropy added with weight l/L (LayerSkip), normalised by the weights' sum.

:func:`route_accuracy` is what the card states: greedy completions of test prompts with the route's
first token forced (``=``, ``>`` or ``.``), scored by the task, per route and k.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from thinkaloud.data.organism import DIGITS, FIRST_TOKEN, ROUTES, OrganismTask, balanced_items, make_chains, route_text
from thinkaloud.data.splits import split_of
from thinkaloud.data.task import Item
from thinkaloud.experiments.organism.model import (
    OrganismModelConfig,
    build_model,
    build_tokenizer,
    init_assignment_embeddings,
    is_built,
    organism_folder,
)
from thinkaloud.io import atomic_folder, atomic_write_json, atomic_write_text

Row = list[tuple[str, bool]]  # a training sequence as (text, whether its tokens are labelled) segments


def chain_of(assigns: dict[str, str], var: str) -> list[str]:
    """The variables from ``var`` to the last one before its digit (``var`` first): k = its length."""
    chain = [var]
    while assigns[chain[-1]] not in DIGITS:
        chain.append(assigns[chain[-1]])
    return chain


def draw_row(rng: random.Random, config: OrganismModelConfig, routes: Sequence[str], first: int) -> Row | None:
    """One training sequence: a train-split prompt, its query answered by ``routes[first]``, then
    ``queries − 1`` more queries of other variables of the same prompt (``?x`` unlabelled, each answered by
    the next route), then ``</s>``; None when the prompt falls in another split."""
    k = rng.choice(config.task.ks)
    prompt, _, chain, assigns = make_chains(rng, k, config.task)
    if split_of(prompt) != "train":
        return None
    others = [v for v in assigns if v != chain[0]]
    queries = [chain[0], *rng.sample(others, min(config.queries - 1, len(others)))]
    row: Row = [(f"<s>{prompt}", False)]
    for i, var in enumerate(queries):
        hops = chain_of(assigns, var)
        item = Item(id="", question="", answer=assigns[hops[-1]], meta={"chain": hops, "k": len(hops)}, key="-")
        if i:
            row.append((f"?{var}", False))
        row.append((route_text(item, routes[(first + i) % len(routes)]), True))
    row.append(("</s>", True))
    return row


def draw_batch(rng: random.Random, config: OrganismModelConfig, step: int | None = None) -> list[Row]:
    """``batch`` training sequences (:func:`draw_row`), their first routes cycling direct/hops/filler; during
    the first ``curriculum`` share of the steps every completion writes its hops (each hop token is one
    lookup, so looking a variable up is learnt first; the direct and filler answers then reuse it)."""
    routes = ("hops",) if step is not None and step < config.curriculum * config.steps else ROUTES
    rows: list[Row] = []
    while len(rows) < config.batch:
        row = draw_row(rng, config, routes, len(rows))
        if row is not None:
            rows.append(row)
    return rows


def encode_batch(rows: Sequence[Row], tokenizer) -> tuple[torch.Tensor, ...]:
    """Rows → (input_ids, attention_mask, labels), each (B, T), right-padded; labels -100 on the unlabelled
    segments (the prompt, the later queries) and the padding. One token per character, so the segments
    tokenise on their own exactly as in the whole text."""
    pad = tokenizer.pad_token_id
    encoded = []
    for row in rows:
        ids, labelled = [], []
        for text, on in row:
            piece = tokenizer(text, add_special_tokens=False).input_ids
            ids += piece
            labelled += [on] * len(piece)
        encoded.append((ids, labelled))
    T = max(len(ids) for ids, _ in encoded)
    ids_t = torch.full((len(rows), T), pad)
    labels = torch.full((len(rows), T), -100)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, (ids, labelled) in enumerate(encoded):
        ids_t[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = 1
        labels[b, : len(ids)] = torch.where(torch.tensor(labelled), ids_t[b, : len(ids)], -100)
    return ids_t, mask, labels


def layer_losses(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(L,) next-token cross-entropy on the labelled positions, read after each layer l = 1…L."""
    out = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    states = [model.model.norm(h) for h in out.hidden_states[1:-1]] + [out.last_hidden_state]  # L × (B, T, H)
    target = labels[:, 1:].reshape(-1)  # (B·(T-1),)
    losses = []
    for h in states:
        logits = model.lm_head(h[:, :-1])  # (B, T-1, V)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target, ignore_index=-100))
    return torch.stack(losses)


def exit_weights(num_layers: int, exit_loss: bool) -> torch.Tensor:
    """(L,) weights of the per-layer losses: l/L each with the exit loss (summing to 1), else the last only."""
    if not exit_loss:
        return F.one_hot(torch.tensor(num_layers - 1), num_layers).float()
    w = torch.arange(1, num_layers + 1, dtype=torch.float32) / num_layers
    return w / w.sum()


def pretrain(
    config: OrganismModelConfig, progress: bool = True, on_step: Callable[[int, torch.Tensor], None] | None = None
) -> tuple[torch.nn.Module, object, dict]:
    """Train the organism of ``config`` from scratch → (model in eval mode, tokenizer, training stats);
    ``on_step(step, layer_losses)`` is called after every update."""
    from rich.progress import Progress

    torch.manual_seed(config.seed)
    tokenizer = build_tokenizer(config.assignment_tokens)
    vocab = tokenizer.get_vocab()
    ids = {"pad": vocab["<pad>"], "bos": vocab["<s>"], "eos": vocab["</s>"]}
    model = build_model(config, len(vocab), ids)
    if config.assignment_tokens:
        init_assignment_embeddings(model, tokenizer, config.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, cosine to 10%
        if step < config.warmup:
            return (step + 1) / config.warmup
        t = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    weights = exit_weights(config.layers, config.exit_loss)
    rng = random.Random(f"organism-pretrain/{config.seed}")
    t0, last = time.perf_counter(), torch.zeros(config.layers)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("Pretraining the organism", total=config.steps)
        for step in range(config.steps):
            batch = encode_batch(draw_batch(rng, config, step), tokenizer)
            losses = layer_losses(model, *batch)  # (L,)
            loss = (weights * losses).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if on_step is not None:
                on_step(step, losses.detach())
            last = 0.9 * last + 0.1 * losses.detach() if step else losses.detach()
            bar.update(task, advance=1, description=f"Pretraining the organism (loss {last[-1]:.3f})")
    model.eval()
    stats = {"seconds": time.perf_counter() - t0, "final_layer_losses": [round(x, 4) for x in last.tolist()]}
    return model, tokenizer, stats


@torch.no_grad()
def greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy completions of raw prompt texts (``<s>`` prepended, left-padded), cut at ``</s>``."""
    vocab = tokenizer.get_vocab()
    rows = tokenizer([f"<s>{p}" for p in prompts], add_special_tokens=False).input_ids
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), vocab["<pad>"])
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, T - len(row) :] = torch.tensor(row)
        mask[b, T - len(row) :] = 1
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    texts = tokenizer.batch_decode(out[:, T:], skip_special_tokens=True)
    return [t.replace(" ", "") for t in texts]


def route_accuracy(model, tokenizer, config: OrganismModelConfig, n: int, split: str = "test") -> dict:
    """{route: {k: accuracy}} of greedy completions with the route's first token forced, n prompts per k."""
    task = OrganismTask(config.task)
    items = balanced_items(task, n, seed=config.seed, split=split)
    result: dict[str, dict[int, float]] = {}
    for route in ROUTES:
        first = FIRST_TOKEN[route]
        texts = greedy(model, tokenizer, [it.question + first for it in items], 2 * config.task.max_k + 4)
        by_k: dict[int, list[float]] = {}
        for it, text in zip(items, texts):
            by_k.setdefault(it.meta["k"], []).append(task.score(it, first + text))
        result[route] = {k: sum(v) / len(v) for k, v in sorted(by_k.items())}
    return result


def card_text(config: OrganismModelConfig, accuracy: dict, stats: dict) -> str:
    ks = config.task.ks
    head = "| route | " + " | ".join(f"k = {k}" for k in ks) + " |"
    rows = [head, "|---" * (len(ks) + 1) + "|"]
    for route, by_k in accuracy.items():
        rows.append(f"| {route} | " + " | ".join(f"{100 * by_k[k]:.0f}%" for k in ks) + " |")
    return (
        "# thinkaloud organism\n\n"
        f"A Llama ({config.layers} layers, width {config.hidden}, {config.heads} heads) trained from scratch by "
        f"`thinkaloud` in {stats['seconds']:.0f} s ({config.steps} steps of {config.batch}) on the `organism` "
        "task: in-context variable-binding chains answered directly, by written hops or after filler, "
        "in equal shares, with an early-exit loss on every layer.\n\n"
        f"Accuracy on {config.eval_n} test prompts per hop count k, greedy, the route's first token forced:\n\n"
        + "\n".join(rows)
        + "\n\nIt is a model organism: a controlled setting for whether an exit penalty moves computation "
        "into the text, not a language model.\n"
    )


def save_organism(folder: Path, model, tokenizer, config: OrganismModelConfig, accuracy: dict, stats: dict) -> None:
    """The model folder, its recipe and measured accuracy (``organism.json``) and card, written atomically."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        record = {"recipe": config.to_dict(), "digest": config.digest(), "accuracy": accuracy, **stats}
        atomic_write_json(tmp / "organism.json", record)
        atomic_write_text(tmp / "README.md", card_text(config, accuracy, stats))


def ensure_organism(config: OrganismModelConfig | None = None, progress: bool = True) -> Path:
    """The cached organism of ``config`` (default recipe), pretrained and measured first if missing."""
    config = config or OrganismModelConfig()
    folder = organism_folder(config)
    if is_built(folder):
        return folder
    from rich.console import Console

    console = Console(stderr=True)
    console.print(
        f"Pretraining the organism {folder.name} from scratch (once; {config.steps} steps, ~3 min on 2 cores)"
    )
    model, tokenizer, stats = pretrain(config, progress=progress)
    accuracy = route_accuracy(model, tokenizer, config, config.eval_n)
    save_organism(folder, model, tokenizer, config, accuracy, stats)
    hops = min(accuracy["hops"].values())
    console.print(
        f"Built {folder} in {stats['seconds']:.0f} s: written hops ≥ {100 * hops:.0f}% at every k, "
        f"direct {100 * accuracy['direct'][min(accuracy['direct'])]:.0f}% at k = {min(accuracy['direct'])} (card: README.md)"
    )
    return folder
