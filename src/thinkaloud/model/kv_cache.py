"""The key/value cache of ``thinkaloud.model.generate`` and the prefilled prefixes it can start from.

:class:`KVCache` preallocates keys and values per layer, (B, H_kv, S, D). The wrapped HF decoder
layers are called unchanged with a small view of it (:class:`RowView`) whose ``update`` writes the
K/V of the rows being computed in place and returns their keys and values so far.

A cache column is a storage slot, not a position: every key was rotated at its own position when it
was written, and which columns a query may attend to is said by a per-row mask of valid keys. So a
row may hold holes — left padding, or the part of a shared prefix that it does not keep — and
attention over its valid keys is the same as over the contiguous sequence.

:class:`Prefix` is a cache filled by a full-depth pass over left-padded token ids
(``thinkaloud.model.generate.prefill``) with its valid keys and the next position of each row.
``Prefix.hf_cache`` hands it to a Hugging Face forward. ``Prefix.select`` repeats rows and keeps only the first tokens of each, so that one pass over a
shared text (a prompt and its whole reasoning) serves every cut of it; ``generate(..., prefix=…)``
continues from there. ``select`` copies no keys or values: its prefix names the rows it takes of the
cache it shares (``Prefix.rows``), and ``generate`` gathers them once, straight into its own cache
(``Prefix.copy_into``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask → (B, T) positions counting only real tokens, as HF ``generate`` does."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class KVCache:
    """Preallocated keys and values for every layer: (B, H_kv, S, D) each."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        kv_heads: int,
        size: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.k = [torch.zeros(batch, kv_heads, size, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros_like(k) for k in self.k]

    @property
    def size(self) -> int:
        """S, the number of columns."""
        return self.k[0].shape[2]

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row not in ``rows`` (finished sequences leave the batch)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]

    def write(self, layer: int, rows: torch.Tensor | None, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        end = start + k.shape[2]
        if rows is None:
            self.k[layer][:, :, start:end] = k
            self.v[layer][:, :, start:end] = v
        else:
            self.k[layer][rows, :, start:end] = k
            self.v[layer][rows, :, start:end] = v

    def view(self, rows: torch.Tensor | None, start: int) -> RowView:
        return RowView(self, rows, start)


class RowView:
    """What an HF attention module sees: ``update`` stores the new K/V of ``rows`` at ``start`` and
    returns their keys and values so far, (b, H_kv, start + t, D)."""

    def __init__(self, cache: KVCache, rows: torch.Tensor | None, start: int):
        self.cache, self.rows, self.start = cache, rows, start

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.cache.write(layer_idx, self.rows, self.start, key_states, value_states)
        end = self.start + key_states.shape[2]
        k, v = self.cache.k[layer_idx][:, :, :end], self.cache.v[layer_idx][:, :, :end]
        if self.rows is not None:
            k, v = k[self.rows], v[self.rows]
        return k, v


def attention_masks(
    key_valid: torch.Tensor,
    key_positions: torch.Tensor,
    start: int,
    t: int,
    windows: Sequence[int | None],
    dtype: torch.dtype,
) -> dict[int | None, torch.Tensor]:
    """Additive attention masks (b, 1, t, start+t) for queries at columns start..start+t-1, one per
    distinct sliding window. key_valid (b, ≥end) bool, key_positions (b, ≥end): the position of the
    token in each column. Causality is by column (columns are written in order), a window by position
    (so holes in a row do not shrink it). A query always sees itself (padding rows stay finite)."""
    end = start + t
    q = torch.arange(start, end, device=key_valid.device)[:, None]  # (t, 1)
    k = torch.arange(end, device=key_valid.device)[None, :]  # (1, end)
    causal = (k <= q)[None]  # (1, t, end)
    distance = key_positions[:, start:end, None] - key_positions[:, None, :end]  # (b, t, end)
    out = {}
    for w in set(windows):
        allowed = causal if w is None else causal & (distance < w)
        allowed = (allowed & key_valid[:, None, :end]) | (k == q)[None]  # (b, t, end)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device)
        out[w] = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # (b, 1, t, end)
    return out


@dataclass
class Prefix:
    """Keys and values of a text already read at full depth, for ``generate(..., prefix=…)``."""

    cache: KVCache
    """(B0, H_kv, ≥S, D) per layer; shared with the prefix this one was selected from."""
    valid: torch.Tensor
    """(B, S) bool: the columns each row attends to."""
    positions: torch.Tensor
    """(B, S) the position of the token in each column (0 at a row's first token)."""
    next_position: torch.Tensor
    """(B,) the position of the token that follows each row's kept text (= its number of tokens)."""
    rows: torch.Tensor | None = None
    """(B,) the cache row that each row reads; None: row b is cache row b (B = B0)."""

    def __post_init__(self) -> None:
        B, S = self.valid.shape
        cache_rows = self.cache.k[0].shape[0]
        shapes_agree = (
            (cache_rows == B if self.rows is None else self.rows.shape == (B,))
            and self.cache.size >= S
            and self.positions.shape == (B, S)
            and self.next_position.shape == (B,)
        )
        if not shapes_agree:
            raise ValueError(
                f"prefix shapes disagree: cache {tuple(self.cache.k[0].shape)}, valid {(B, S)}, "
                f"positions {tuple(self.positions.shape)}, next_position {tuple(self.next_position.shape)}, "
                f"rows {None if self.rows is None else tuple(self.rows.shape)}"
            )

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def columns(self) -> int:
        """S, the cache columns a continuation starts after."""
        return self.valid.shape[1]

    def select(self, rows: Sequence[int] | torch.Tensor, keep: Sequence[int] | torch.Tensor) -> Prefix:
        """A prefix whose row i is row ``rows[i]`` cut to its first ``keep[i]`` tokens (a row may repeat).

        Columns that no row keeps any more are dropped from the end (less attention work). The keys and
        values are not copied: the new prefix shares this one's cache."""
        device = self.valid.device
        rows = torch.as_tensor(rows, dtype=torch.long, device=device)  # (R,)
        keep = torch.as_tensor(keep, dtype=torch.long, device=device)  # (R,)
        if rows.dim() != 1 or keep.shape != rows.shape:
            raise ValueError(
                f"rows and keep must be two equal-length lists, got {tuple(rows.shape)}, {tuple(keep.shape)}"
            )
        have = self.next_position[rows]
        if bool((keep < 0).any()) or bool((keep > have).any()):
            bad = int(((keep < 0) | (keep > have)).nonzero()[0, 0])
            raise ValueError(f"row {bad} keeps {int(keep[bad])} tokens of a prefix of {int(have[bad])}")
        valid = self.valid[rows]  # (R, S)
        valid = valid & (valid.long().cumsum(-1) <= keep[:, None])  # the first keep[i] real tokens
        used = valid.any(0).nonzero()
        end = int(used.max()) + 1 if used.numel() else 1
        cache_rows = rows if self.rows is None else self.rows[rows]  # (R,) rows of the shared cache
        return Prefix(self.cache, valid[:, :end], self.positions[rows, :end], keep, cache_rows)

    def copy_into(self, cache: KVCache) -> None:
        """Write this prefix's keys and values into columns ``:S`` of ``cache`` (B rows): the one copy."""
        S = self.columns
        for layer, (k, v) in enumerate(zip(self.cache.k, self.cache.v)):
            if self.rows is None:
                cache.k[layer][:, :, :S] = k[:, :, :S]
                cache.v[layer][:, :, :S] = v[:, :, :S]
            else:  # gathered straight into place, no intermediate tensor
                torch.index_select(k[:, :, :S], 0, self.rows, out=cache.k[layer][:, :, :S])
                torch.index_select(v[:, :, :S], 0, self.rows, out=cache.v[layer][:, :, :S])

    def hf_cache(self, config):
        """This prefix as a Hugging Face ``DynamicCache`` of ``config``'s model (its keys and values copied once),
        for a teacher-forced pass after it (``EarlyExitModel.forward_after``). A full-depth pass fills both the
        same way, so a prompt read by generation serves that pass too."""
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=config)  # the layer types: sliding-window layers keep their window
        except TypeError:  # a transformers without config-aware caches
            cache = DynamicCache()
        S = self.columns
        for layer, (k, v) in enumerate(zip(self.cache.k, self.cache.v)):
            k, v = k[:, :, :S], v[:, :, :S]  # (B0, H_kv, S, D)
            if self.rows is not None:
                k, v = k.index_select(0, self.rows), v.index_select(0, self.rows)
            cache.update(k.clone(), v.clone(), layer)
        return cache


def shared_copy(cache):
    """A copy of a Hugging Face ``DynamicCache`` that shares its key and value tensors: its own layer objects, so
    extending or selecting rows of the copy (which give the layers new tensors, by concatenation or indexing, and
    never write into the old ones) leaves ``cache`` as it was, without copying every key and value."""
    memo: dict[int, object] = {}
    seen: set[int] = set()
    stack: list[object] = [cache]
    while stack:  # every tensor reachable from the cache maps to itself in the copy
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            memo[id(obj)] = obj
        elif isinstance(obj, list | tuple | set):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return copy.deepcopy(cache, memo)
