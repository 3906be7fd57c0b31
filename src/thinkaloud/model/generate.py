"""Batched, KV-cached generation in which an exited token really skips the layers above its exit.

Per step, every active row processes its newest token layer by layer. At each exit layer a live row
exits with probability q = σ(z + offset) (Bernoulli, first success wins — no thresholds). From then
on that row runs neither attention nor MLP: the layers above only compute the K/V later tokens need,
from the frozen state (``arch.frozen_kv``). Rows that continue deeper are computed for their rows only.
The final norm and the model's readout (``arch.readout``: unembedding, any logit soft-capping) read out
every row's state. Each layer gets its own rotary (cos, sin) (``arch.position_embeddings``: Gemma 3
and OLMo 3 have one base per layer type) and its own sliding window (``arch.sliding_windows``).

Alignment with teacher forcing: the exit of position t decides the distribution of token t+1. So the
last prompt position takes part in the exits (it predicts the first new token), and the exit recorded
for new token n is that of the position that predicted it. ``GenerationOutput.full_exit_layers``
gives the (B, P+N) exit tensor for ``EarlyExitModel.forward`` which then reproduces the recorded
``token_logprobs`` and ``exit_logprobs``.

Recorded ``token_logprobs`` are under the model's own next-token distribution (temperature 1, no
top-p truncation), the distribution that training recomputes; with ``temperature=1, top_p=1`` (the
RL default) they are also exactly the sampling distribution.

Timing: ``prefill_seconds`` runs from the start to the first new token (the P-1 prompt positions
plus the step of the last prompt position, which predicts token 1) and ``decode_seconds`` from there to
the end, two timestamps per call (with a device synchronisation on CUDA so that queued kernels count).

The cache is preallocated per layer, (B, H_kv, S, D) (``thinkaloud.model.kv_cache``). The wrapped HF
decoder layers are called unchanged on the live rows with a small cache view whose ``update`` writes
those rows' K/V in place and returns their keys and values so far. Rows that finish stop being recorded
and leave the batch once a quarter of it is done (``COMPACT_AT``; the cache is compacted then, not at
every finish: copying it costs more than decoding a few finished rows along. SmolLM2-135M on 2 CPU
cores, 32 `tom` prompts in batches of 16: 18.1 s at every finish, 16.4 s at a quarter, 17.2 s at half).

Prefix: ``prefill(model, ids, mask)`` reads a text once at full depth (no exits, like every prompt
position) and returns a :class:`~thinkaloud.model.kv_cache.Prefix`; ``generate(..., prefix=p)`` then
treats each row of ``input_ids`` as the continuation of row i of ``p`` (its positions follow
``p.next_position``; it attends to ``p``'s valid keys). The result is that of generating from the
concatenated texts, without reading the prefix again (its keys and values are copied once, into the
generation's cache); ``sequences`` hold the continuation and the new tokens only. With ``Prefix.select`` one pass over a prompt and its reasoning serves every cut of it
(early answering, ``thinkaloud.measures.reliance``).

Streaming: ``on_token(rows, tokens, exit_layers, token_logprobs)``, if given, is called once per step
with the original batch indices of the rows still generating (b,) and their new token, its exit layer
and its log-probability (b,) each. A row that finished is no longer reported (rows finish
independently). The callback only reads: the output is the same with or without it. Its time counts in
``decode_seconds`` (and its first call in ``prefill_seconds``); an exception it raises (e.g. a
``KeyboardInterrupt``) ends the generation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from thinkaloud.model import arch
from thinkaloud.model.generation_output import GenerationOutput
from thinkaloud.model.kv_cache import KVCache, Prefix, attention_masks, default_position_ids

__all__ = ["COMPACT_AT", "generate", "prefill"]

COMPACT_AT = 0.75
"""Finished rows leave the batch once the rows still generating are at most this share of it."""


def _sample(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """logits (b, V) → tokens (b,)."""
    if not do_sample:
        return logits.argmax(-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)  # (b, V)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest prefix reaching top_p (as HF)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _stop_ids(model, stop_token_ids) -> list[int]:
    if stop_token_ids is not None:
        ids = stop_token_ids
    else:
        gen = getattr(model.base, "generation_config", None)
        ids = getattr(gen, "eos_token_id", None) if gen is not None else None
        if ids is None:
            ids = model.hf_config.eos_token_id
    if ids is None:
        return []
    return [ids] if isinstance(ids, int) else list(ids)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 128,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    offset: float = 0.0,
    stop_token_ids: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    on_token: Callable[..., None] | None = None,
    prefix: Prefix | None = None,
    stop_when: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> GenerationOutput:
    """Sample up to ``max_new_tokens`` per row with exits; ``offset=-inf`` is plain (LoRA) generation.

    input_ids/attention_mask: (B, P), left-padded. ``stop_token_ids`` default to the model's EOS.
    ``generator`` or ``seed`` make sampling (tokens and exits) reproducible. ``on_token``: the per-step
    streaming callback of the module docstring. ``prefix``: B rows already read (:func:`prefill`) that
    ``input_ids`` continue. ``stop_when(rows, new_tokens)``: a stopping rule besides the stop tokens,
    called after every step with the original indices of the rows still generating (b,) and their new
    tokens so far (b, n) → (b,) bool, True for a row that is done (its last token is kept, as a stop
    token is).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _validate(model, input_ids, attention_mask, max_new_tokens, temperature, top_p, prefix)
    if generator is None and seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        return _generate(
            model,
            input_ids,
            attention_mask.to(input_ids.device).long(),
            max_new_tokens,
            do_sample,
            temperature,
            top_p,
            float(offset),
            _stop_ids(model, stop_token_ids),
            pad_token_id,
            generator,
            on_token,
            prefix,
            stop_when,
        )
    finally:
        model.train(was_training)


@torch.no_grad()
def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Prefix:
    """Read left-padded ``input_ids`` (B, T) at full depth (adapter on, no exits) → their :class:`Prefix`."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _check_batch(input_ids, attention_mask)
    B, T = input_ids.shape
    spec, L = arch.kv_spec(model.hf_config), model.num_layers
    dtype = arch.embed(model.peft).weight.dtype
    cache = KVCache(L, B, spec.num_kv_heads, T, spec.head_dim, dtype, input_ids.device)
    valid = attention_mask.bool()
    positions = default_position_ids(attention_mask)
    was_training = model.training
    model.eval()
    try:
        _read(model, cache, input_ids, positions, valid, positions, 0)
    finally:
        model.train(was_training)
    return Prefix(cache, valid, positions, valid.sum(-1))


def _read(model, cache: KVCache, ids, positions, key_valid, key_positions, start: int) -> None:
    """Run ids (B, t) through every layer (no exits), their K/V written at columns start..start+t-1."""
    layers = arch.decoder_layers(model.peft)
    windows = arch.sliding_windows(model.hf_config)
    cache_kw = arch.cache_keyword(layers[0])  # `cache` in recent transformers, `past_key_values` before
    h = arch.embed(model.peft)(ids)  # (B, t, C)
    pe = arch.position_embeddings(model.peft, h, positions)  # per layer (cos, sin)
    masks = attention_masks(key_valid, key_positions, start, ids.shape[1], windows, h.dtype)  # per window
    view = cache.view(None, start)
    for i, layer in enumerate(layers):
        h = arch.call_layer(
            layer,
            h,
            attention_mask=masks[windows[i]],
            position_ids=positions,
            position_embeddings=pe[i],
            **{cache_kw: view},
        )


def _check_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Non-empty (batch, length) ids, a mask of the same shape, no empty row."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"empty prompt in row(s) {empty}")


def _validate(model, input_ids, attention_mask, max_new_tokens, temperature, top_p, prefix=None) -> None:
    _check_batch(input_ids, attention_mask)
    if (attention_mask[:, -1] == 0).any():
        raise ValueError("prompts must be left-padded (every row's last position must be a real token)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prefix is not None and (prefix.batch != input_ids.shape[0] or prefix.valid.device != input_ids.device):
        raise ValueError(
            f"prefix of {prefix.batch} rows on {prefix.valid.device} for input_ids of "
            f"{input_ids.shape[0]} rows on {input_ids.device}"
        )
    context = getattr(model.hf_config, "max_position_embeddings", None)
    ahead = 0 if prefix is None else prefix.next_position
    longest = int((attention_mask.sum(-1) + ahead).max())
    if context is not None and longest + max_new_tokens > context:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model "
            f"context of {context} tokens"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use do_sample=False for greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _generate(
    model,
    input_ids,
    attention_mask,
    max_new_tokens,
    do_sample,
    temperature,
    top_p,
    offset,
    stop_ids,
    pad_token_id,
    generator,
    on_token=None,
    prefix: Prefix | None = None,
    stop_when=None,
) -> GenerationOutput:
    B, P = input_ids.shape
    L = model.num_layers
    device = input_ids.device
    t_start = _clock(device)
    cfg = model.hf_config
    layers = arch.decoder_layers(model.peft)
    norm = arch.final_norm(model.peft)
    cache_kw = arch.cache_keyword(layers[0])  # `cache` in recent transformers, `past_key_values` before
    embed_tokens = arch.embed(model.peft)
    windows = arch.sliding_windows(cfg)
    spec = arch.kv_spec(cfg)
    dtype = embed_tokens.weight.dtype
    use_exits = offset != -math.inf
    pad = (
        pad_token_id
        if pad_token_id is not None
        else (cfg.pad_token_id if cfg.pad_token_id is not None else (stop_ids[0] if stop_ids else 0))
    )
    stop = torch.tensor(stop_ids, device=device, dtype=torch.long)

    S0 = 0 if prefix is None else prefix.columns  # columns before the prompt's first
    cache = KVCache(L, B, spec.num_kv_heads, S0 + P + max_new_tokens, spec.head_dim, dtype, device)
    positions = default_position_ids(attention_mask)  # (B, P)
    new_valid = torch.ones(B, max_new_tokens, dtype=torch.bool, device=device)
    new_positions = positions[:, -1:] + 1 + torch.arange(max_new_tokens, device=device)  # (B, N)
    key_valid = torch.cat([attention_mask.bool(), new_valid], 1)  # (B, S) for every column
    if prefix is not None:
        prefix.copy_into(cache)
        positions = positions + prefix.next_position[:, None]
        new_positions = new_positions + prefix.next_position[:, None]
        key_valid = torch.cat([prefix.valid, key_valid], 1)
    key_positions = torch.cat(
        ([] if prefix is None else [prefix.positions]) + [positions, new_positions], 1
    )  # (B, S) position of each column's token

    # Prefill: every prompt position but the last runs all layers (prompt positions do not exit).
    # After a prefix the continuation is short: read one column at a time, its single-query attention
    # runs on the key/value heads, where a multi-query block would copy every prefix key per head.
    if prefix is None:
        spans = [(0, P - 1)] if P > 1 else []
    else:
        spans = [(c, c + 1) for c in range(P - 1)]
    for start, end in spans:
        _read(model, cache, input_ids[:, start:end], positions[:, start:end], key_valid, key_positions, S0 + start)

    new_tokens = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)
    exit_layers = torch.full((B, max_new_tokens), L, dtype=torch.long, device=device)
    token_lp = torch.zeros(B, max_new_tokens, device=device)
    exit_lp = torch.zeros(B, max_new_tokens, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)

    rows = torch.arange(B, device=device)  # original index of each row in the batch
    alive: torch.Tensor | None = None  # batch indices of the rows still generating; None: all of them
    token = input_ids[:, -1]  # (b,) newest token per active row
    pos = positions[:, -1]  # (b,)
    # Additive key bias of the active rows, (b, S): padding masked. A decode query at column `col`
    # sees keys 0..col, so its mask is a slice; windowed layers (rare) get theirs built per step.
    key_bias = torch.zeros(B, key_valid.shape[1], dtype=dtype, device=device).masked_fill(
        ~key_valid, torch.finfo(dtype).min
    )
    windowed = any(w is not None for w in windows)
    # Without padding a single decode query may attend to every key so far: no mask at all, which
    # lets SDPA take its fastest kernel (HF's own generate does the same).
    unmasked = bool(key_valid.all()) and not windowed
    # Host-side bookkeeping keeps device syncs to one per exit layer (exits decide what runs next).
    for n in range(max_new_tokens):
        col = S0 + P - 1 + n
        b = rows.numel()
        h = embed_tokens(token)[:, None]  # (b, 1, C)
        pe = arch.position_embeddings(model.peft, h, pos[:, None])  # per layer (cos, sin), (b, 1, D) each
        masks: Mapping[int | None, torch.Tensor | None] = {
            None: None if unmasked else key_bias[:, None, None, : col + 1]
        }  # (b, 1, 1, col+1)
        if windowed:
            masks = attention_masks(key_valid[rows], key_positions[rows], col, 1, windows, dtype)
        live = torch.ones(b, dtype=torch.bool, device=device)
        exit_at = torch.full((b,), L, dtype=torch.long, device=device)
        lp_exit = torch.zeros(b, device=device)
        still: torch.Tensor | None = None  # row indices; None while every row is live
        done: torch.Tensor | None = None
        for i, layer in enumerate(layers):
            j, (cos, sin) = i + 1, pe[i]
            if still is None or done is None:
                h = arch.call_layer(
                    layer,
                    h,
                    attention_mask=masks[windows[i]],
                    position_ids=pos[:, None],
                    position_embeddings=(cos, sin),
                    **{cache_kw: cache.view(None, col)},
                )
            elif not still.numel():  # every row has exited: K/V from the frozen states only
                k, v = arch.frozen_kv(layer, h, cos, sin)  # (b, H_kv, 1, D)
                cache.write(i, None, col, k, v)
            else:
                k, v = arch.frozen_kv(layer, h[done], cos[done], sin[done])  # (d, H_kv, 1, D)
                cache.write(i, done, col, k, v)
                if still.numel():
                    mask = masks[windows[i]]
                    h_live = arch.call_layer(
                        layer,
                        h[still],
                        attention_mask=None if mask is None else mask[still],
                        position_ids=pos[still, None],
                        **{cache_kw: cache.view(still, col)},
                        position_embeddings=(cos[still], sin[still]),
                    )
                    h = h.index_copy(0, still, h_live)
            if use_exits and j in model.layer_to_head and (still is None or still.numel()):
                z = model.heads(h[:, 0], model.layer_to_head[j]) + offset  # (b,)
                u = torch.rand(b, generator=generator, device=device)
                exits = live & (u < torch.sigmoid(z))
                step = torch.where(exits, F.logsigmoid(z), F.logsigmoid(-z))
                lp_exit = lp_exit + torch.where(live, step, torch.zeros_like(step))
                exit_at = torch.where(exits, j, exit_at)
                live = live & ~exits
                if bool(exits.any()):  # the one sync of this exit layer
                    still, done = live.nonzero().squeeze(-1), (~live).nonzero().squeeze(-1)
        logits = arch.readout(model.peft, norm(h[:, 0])).float()  # (b, V)
        nxt = _sample(logits, do_sample, temperature, top_p, generator)  # (b,)
        # Record the rows still generating (finished rows may ride along until the batch is compacted).
        at, out_rows = (slice(None), rows) if alive is None else (alive, rows[alive])
        new_tokens[out_rows, n] = nxt[at]
        exit_layers[out_rows, n] = exit_at[at]
        token_lp[out_rows, n] = F.log_softmax(logits[at], -1).gather(-1, nxt[at, None]).squeeze(-1)
        exit_lp[out_rows, n] = lp_exit[at]
        lengths[out_rows] = n + 1
        if on_token is not None:
            on_token(out_rows, nxt[at], exit_at[at], token_lp[out_rows, n])  # (b,) each
        if n == 0:
            t_first = _clock(device)
        if stop.numel() or stop_when is not None:
            finished = torch.isin(nxt[at], stop)
            if stop_when is not None:
                finished = finished | stop_when(out_rows, new_tokens[out_rows, : n + 1])
            going = (torch.arange(b, device=device) if alive is None else alive)[~finished]  # batch indices
            if not going.numel():  # one sync per token, as HF's stopping criteria
                break
            if going.numel() <= COMPACT_AT * b:  # compact once a quarter of the batch is done: copying the
                cache.keep(going)  # cache costs more than decoding a few finished rows along
                rows, nxt, pos, key_bias, alive = rows[going], nxt[going], pos[going], key_bias[going], None
            elif going.numel() < out_rows.numel():
                alive = going
        token, pos = nxt, pos + 1

    t_end = _clock(device)
    N = int(lengths.max())
    new_tokens, exit_layers, token_lp, exit_lp = (x[:, :N] for x in (new_tokens, exit_layers, token_lp, exit_lp))
    new_mask = torch.arange(N, device=device)[None, :] < lengths[:, None]  # (B, N)
    return GenerationOutput(
        sequences=torch.cat([input_ids, new_tokens], dim=1),
        attention_mask=torch.cat([attention_mask, new_mask.long()], dim=1),
        prompt_length=P,
        exit_layers=exit_layers,
        token_logprobs=token_lp,
        exit_logprobs=exit_lp,
        lengths=lengths,
        num_layers=L,
        prefill_seconds=t_first - t_start,
        decode_seconds=t_end - t_first,
    )


def _clock(device: torch.device) -> float:
    """Seconds on a monotonic clock, once the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
