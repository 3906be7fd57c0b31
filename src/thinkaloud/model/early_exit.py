"""The early-exit model: a Hugging Face causal LM + LoRA (peft) + one scalar exit head per exit layer.

Exit = freeze (docs/method.md §1). A token that exits at layer ℓ stops writing its residual stream: every
layer above ℓ passes h_ℓ through, and the model's own readout (final norm, unembedding, any logit
soft-capping: ``arch.readout``) reads it out. Layers above ℓ still produce K/V for this position —
from the frozen state, since the layer's input *is* the frozen state — so later tokens attend to it as
in generation.

Teacher-forced, all positions are computed in parallel by the wrapped model's own forward; forward
hooks on the decoder layers apply ``h_{j} = where(exited, h_{j-1}, layer_j(h_{j-1}))`` and read the
exit heads. The HF forward itself (masks, rotary scaling, GQA, caches) is never copied or patched.
Generation (``thinkaloud.model.generate``) skips the work of exited tokens for real; both give the
same probabilities.

The recorded offset (``thinkaloud.model.recorded``): ``thinkaloud risk --save`` records an offset chosen
with a risk guarantee in ``thinkaloud.json``. :meth:`EarlyExitModel.from_pretrained` reads it into
``model.risk_control`` (while it matches the weights), :meth:`EarlyExitModel.generate` uses it when no
``offset`` is given, and :meth:`save_pretrained` keeps it when it writes the weights it was chosen for.

This module holds :class:`EarlyExitModel` (building, the hooks, the teacher-forced passes, generation) and
its outputs. ``thinkaloud.model.exit_run`` holds the exit heads (:class:`ExitHeads`), ``ExitSpec`` and the
per-pass state ``_ExitRun`` that the hooks advance; ``thinkaloud.model.saving`` holds the bodies of
:meth:`EarlyExitModel.save_pretrained` / :meth:`EarlyExitModel.from_pretrained` and the base-model loader.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from thinkaloud.config import ExitConfig
from thinkaloud.model import arch
from thinkaloud.model.exit_run import (
    AllExitsOutput,
    ExitForwardOutput,
    ExitHeads,
    ExitSpec,
    _check_exits_from,
    _check_inputs,
    _ExitRun,
)
from thinkaloud.model.exits import exit_log_distribution
from thinkaloud.model.kv_cache import default_position_ids
from thinkaloud.model.lens import lens_kl
from thinkaloud.model.recorded import describe_record, recorded_value
from thinkaloud.model.saving import load_base, load_parts, save_model

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


class EarlyExitModel(nn.Module):
    """A causal LM with exit heads and a LoRA adapter. Build with :meth:`from_base`."""

    def __init__(self, peft_model: PeftModel, heads: ExitHeads, config: ExitConfig, source: str):
        super().__init__()
        self.peft = peft_model
        self.heads = heads
        self.config = config
        self.source = source
        self.risk_control: dict | None = None  # the offset recorded by `thinkaloud risk` (see the docstring)
        self.layers: list[int] = list(heads.layers)
        self.layer_to_head = {layer: k for k, layer in enumerate(self.layers)}
        self._run: _ExitRun | None = None
        self._hooks = []
        for j, layer in enumerate(arch.decoder_layers(self.peft), start=1):
            self._hooks.append(layer.register_forward_pre_hook(self._pre_hook(), with_kwargs=True))
            self._hooks.append(layer.register_forward_hook(self._post_hook(j)))

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_base(
        cls,
        model_or_path: nn.Module | str | os.PathLike,
        config: ExitConfig | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> EarlyExitModel:
        """Wrap a loaded ``PreTrainedModel`` (or load one from a local path or alias) with fresh heads + LoRA."""
        from peft import LoraConfig, PeftModel, get_peft_model

        config = config or ExitConfig()
        base, source = load_base(model_or_path, dtype=dtype, device=device)
        arch.check_supported(base.config)
        layers = config.resolve_layers(base.config.num_hidden_layers)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=arch.lora_target_modules(base.config, config.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(base, lora)
        assert isinstance(peft_model, PeftModel)  # not a PeftMixedModel: that takes mixed=True
        heads = ExitHeads(base.config.hidden_size, layers, config.head_init_bias)
        return cls(peft_model, heads, config, source).to(base.device)

    @property
    def base(self) -> PreTrainedModel:
        """The wrapped ``*ForCausalLM`` (LoRA layers injected in place)."""
        return arch.base_causal_lm(self.peft)

    @property
    def hf_config(self):
        return self.base.config

    @property
    def num_layers(self) -> int:
        return self.base.config.num_hidden_layers

    @property
    def device(self) -> torch.device:
        return self.heads.weight.device

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """The base model: LoRA off (use with ``offset=-inf`` / no exits for the exact reference)."""
        with self.peft.disable_adapter():
            yield

    # ------------------------------------------------------------------------------------- hooks
    def _pre_hook(self):
        def hook(module, args, kwargs):
            if self._run is not None:
                self._run.before(args[0] if args else kwargs["hidden_states"])

        return hook

    def _post_hook(self, j: int):
        def hook(module, args, output):
            if self._run is None:
                return None
            out = self._run.after(j, arch._layer_output(output))
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return hook

    @contextlib.contextmanager
    def _running(self, run: _ExitRun) -> Iterator[_ExitRun]:
        self._run = run
        try:
            yield run
        finally:
            self._run = None

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The wrapped decoder's own forward → final-normed last hidden state (B, T, C)."""
        out = arch.decoder(self.peft)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=default_position_ids(attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state

    # ----------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        exit_layers: ExitSpec = None,
        offset: float = 0.0,
        generator: torch.Generator | None = None,
        all_exits: bool = False,
        exits_from: int | torch.Tensor | None = None,
    ) -> ExitForwardOutput | AllExitsOutput:
        """Teacher-forced pass with exits.

        exit_layers: None → no exits (every position runs all L layers); a (B, T) tensor → exits
        prescribed per position (values in the exit layers or L); ``"sample"`` → sampled layer by layer
        (Bernoulli(q) at each exit layer, first success wins). ``exit_logprobs`` is always the
        log-probability of the exits taken, so with ``offset=-inf`` and no exits it is 0.

        exits_from: the first column that takes part in exits — an int for every row, or a (B,) tensor
        per row; None (default) → every real position. Columns before it run all L layers, never exit
        (sampled or prescribed: a prescribed exit there is an error) and add 0 to ``exit_logprobs``.
        Generation lets only the last prompt position and the new tokens exit, so for a left-padded
        batch with padded prompt length P, ``exits_from=P - 1`` makes ``"sample"`` draw exactly where
        generation does and ``exit_logprobs`` cover exactly the predicting positions.

        ``all_exits=True`` returns :class:`AllExitsOutput` instead (no exits in the context; every
        outcome's normed state and its log-probability), for losses that take the expectation over
        exit layers. It goes through ``forward`` so that DDP wrappers see the call.
        """
        if all_exits:
            return self._all_exits(input_ids, attention_mask, offset)
        input_ids, attention_mask = _check_inputs(input_ids, attention_mask)
        if isinstance(exit_layers, str) and exit_layers != "sample":
            raise ValueError(f"exit_layers must be None, a (B, T) tensor or 'sample', got {exit_layers!r}")
        if isinstance(exit_layers, torch.Tensor) and exit_layers.shape != input_ids.shape:
            raise ValueError(
                f"exit_layers shape {tuple(exit_layers.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        start = _check_exits_from(exits_from, input_ids)
        run = _ExitRun(
            self.heads, self.num_layers, attention_mask, exit_layers, offset, generator, capture=False, exits_from=start
        )
        with self._running(run):
            hidden = self._hidden(input_ids, attention_mask)  # (B, T, C)
        logits = arch.readout(self.peft, hidden)  # (B, T, V)
        return ExitForwardOutput(logits=logits, exit_layers=run.exit_layers, exit_logprobs=run.logp)

    @torch.no_grad()
    def prefix_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """A full-depth pass over a prefix that never exits (a prompt) → the wrapped model's own K/V cache of it,
        for :meth:`forward_after`. Adapter on, as in ``forward``."""
        input_ids, attention_mask = _check_inputs(input_ids, attention_mask)
        out = arch.decoder(self.peft)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=default_position_ids(attention_mask),
            use_cache=True,
        )
        return out.get("cache", out.get("past_key_values"))  # named `cache` in recent transformers 5

    def forward_after(
        self,
        cache,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        exit_layers: ExitSpec = None,
        offset: float = 0.0,
        generator: torch.Generator | None = None,
        uniforms: Sequence[torch.Tensor] | None = None,
        record_heads: bool = False,
        extend: bool = False,
    ) -> ExitForwardOutput:
        """``forward`` over (B, T) ``input_ids`` that continue the prefix of ``cache`` (from :meth:`prefix_cache`):
        the same logits and exits as ``forward`` over prefix + these tokens with ``exits_from`` = the prefix's
        length, without reading the prefix again. ``attention_mask`` is (B, S + T), prefix included; every one
        of the T positions may exit. ``cache`` is copied, never extended, so one prefix serves many calls;
        ``extend=True`` extends it in place by these T columns instead (for a cache of the caller's own).
        ``uniforms``, ``record_heads``: as in ``_ExitRun`` (the draws of a sampled pass given per exit head;
        every head's logit in the output's ``head_logits``)."""
        S = cache.get_seq_length()
        if attention_mask.shape != (input_ids.shape[0], S + input_ids.shape[1]):
            raise ValueError(
                f"attention_mask must cover the {S} cached and {input_ids.shape[1]} new columns, "
                f"got shape {tuple(attention_mask.shape)}"
            )
        if isinstance(exit_layers, torch.Tensor) and exit_layers.shape != input_ids.shape:
            raise ValueError(
                f"exit_layers shape {tuple(exit_layers.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        new_mask = attention_mask[:, S:]  # (B, T)
        run = _ExitRun(
            self.heads, self.num_layers, new_mask, exit_layers, offset, generator, False, None, uniforms, record_heads
        )
        decoder = arch.decoder(self.peft)
        cache_kw = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        with self._running(run):
            hidden = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=default_position_ids(attention_mask)[:, S:],
                use_cache=True,
                **{cache_kw: cache if extend else copy.deepcopy(cache)},
            ).last_hidden_state  # (B, T, C)
        logits = arch.readout(self.peft, hidden)  # (B, T, V)
        heads = None if run.head_logits is None else torch.stack(run.head_logits)  # (m, B, T)
        return ExitForwardOutput(logits, run.exit_layers, run.logp, heads)

    def _capture(self, input_ids, attention_mask) -> tuple[_ExitRun, torch.Tensor]:
        """A pass without exits that keeps the stream at every exit layer → (run, final hidden (B, T, C))."""
        run = _ExitRun(self.heads, self.num_layers, attention_mask, None, 0.0, None, capture=True)
        with self._running(run):
            final = self._hidden(input_ids, attention_mask)
        return run, final

    @torch.no_grad()
    def exit_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        exit_layers: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Teacher-forced pass with prescribed exits (a (B, T) tensor, or None for none) → the residual
        stream at every exit layer (m tensors (B, T, C)) and the last hidden state *before* the final
        norm (B, T, C), the state that the final norm + readout read. Under freeze, a position that
        exited at e has its layer-e state at every deeper exit layer and as its last hidden state."""
        input_ids, attention_mask = _check_inputs(input_ids, attention_mask)
        if exit_layers is not None and exit_layers.shape != input_ids.shape:
            raise ValueError(
                f"exit_layers shape {tuple(exit_layers.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        run = _ExitRun(self.heads, self.num_layers, attention_mask, exit_layers, 0.0, None, capture=True)
        last: list[torch.Tensor] = []  # the final norm's input
        hook = arch.final_norm(self.peft).register_forward_pre_hook(lambda module, args: last.append(args[0]))
        try:
            with self._running(run):
                self._hidden(input_ids, attention_mask)
        finally:
            hook.remove()
        return [run.captured[e] for e in self.layers], last[-1]

    def _all_exits(self, input_ids, attention_mask, offset: float) -> AllExitsOutput:
        input_ids, attention_mask = _check_inputs(input_ids, attention_mask)
        run, final = self._capture(input_ids, attention_mask)  # final: (B, T, C)
        z = torch.stack([self.heads(run.captured[e], k) for k, e in enumerate(self.layers)], dim=-1)  # (B, T, m)
        norm = arch.final_norm(self.peft)
        states = [norm(run.captured[e]) for e in self.layers] + [final]
        return AllExitsOutput(exit_logprobs=exit_log_distribution(z, offset), states=states)

    def exit_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, offset: float = 0.0
    ) -> torch.Tensor:
        """The full log-distribution over exit layers, (B, T, m+1) (last column = no exit, layer L).

        Computed in a pass without exits, so each position's distribution is conditioned on a
        context in which no earlier position exited (the only context in which all m+1 outcomes of
        every position are defined by one parallel pass).
        """
        return self._all_exits(input_ids, attention_mask, offset).exit_logprobs

    @torch.no_grad()
    def layer_kl(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """KL(p_L ‖ p_ℓ) per position and exit layer with the logit lens (the model's final norm + readout).

        Returns (B, T, m) float32; positions not selected (``positions`` mask, default the attention
        mask) are NaN. Logits are materialised ``chunk_size`` positions at a time (see
        :func:`thinkaloud.model.lens.lens_kl`), so memory does not grow with vocab × layers × length.
        """
        input_ids, attention_mask = _check_inputs(input_ids, attention_mask)
        run, final = self._capture(input_ids, attention_mask)  # final: (B, T, C)
        select = attention_mask.bool() if positions is None else positions.bool() & attention_mask.bool()
        return lens_kl(
            [run.captured[e] for e in self.layers],
            final,
            select,
            arch.final_norm(self.peft),
            lambda normed: arch.readout(self.peft, normed),
            self.hf_config.vocab_size,
            chunk_size,
        )

    # ------------------------------------------------------------------------------- generation
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Batched, KV-cached sampling with exits; see :func:`thinkaloud.model.generate.generate`.

        Without ``offset``: the offset recorded by ``thinkaloud risk`` (``self.risk_control``) if any
        (logged at INFO level), else 0."""
        from thinkaloud.model.generate import generate

        if "offset" not in kwargs and self.risk_control is not None:
            kwargs["offset"] = recorded_value(self.risk_control)
            logger.info(
                "generating with the recorded offset %s (%s)", kwargs["offset"], describe_record(self.risk_control)
            )
        return generate(self, input_ids, attention_mask, **kwargs)

    # ---------------------------------------------------------------------------- save and load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Heads (safetensors) + adapter (peft) + ``thinkaloud.json`` + a model card ``README.md``, replaced
        atomically as a folder."""
        return save_model(directory, self.peft, self.heads, self.config, self.source, self.risk_control)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        base: nn.Module | str | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        is_trainable: bool = True,
    ) -> EarlyExitModel:
        """Load heads + adapter saved by :meth:`save_pretrained` onto ``base`` (default: the recorded one)."""
        peft_model, heads, config, source, risk_control = load_parts(
            directory, base, dtype=dtype, device=device, is_trainable=is_trainable
        )
        model = cls(peft_model, heads, config, source)
        model.risk_control = risk_control
        return model
