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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from thinkaloud import __version__
from thinkaloud.config import ExitConfig
from thinkaloud.io import atomic_save_safetensors, atomic_write_json
from thinkaloud.model import arch
from thinkaloud.model.card import write_card
from thinkaloud.model.exits import exit_index, exit_log_distribution
from thinkaloud.model.lens import lens_kl
from thinkaloud.model.recorded import (  # noqa: F401
    ADAPTER_DIR,
    HEADS_FILE,
    META_FILE,
    RISK_KEY,
    describe_record,
    read_meta,
    record_offset,
    recorded_offset,
    recorded_value,
    weights_fingerprint,
)

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


class ExitHeads(nn.Module):
    """m scalar readouts z_i = w_i · h + b_i, computed in fp32 whatever the model's dtype.

    Autocast is switched off inside the head (for the input's device type): under bf16 mixed
    precision autocast would otherwise run the readout's matmul in bf16, and exit logits near the
    sampling threshold would move by bf16 round-off.
    """

    def __init__(self, hidden_size: int, layers: list[int], init_bias: float = -6.0):
        super().__init__()
        self.layers = list(layers)
        self.weight = nn.Parameter(torch.zeros(len(layers), hidden_size))  # (m, C)
        self.bias = nn.Parameter(torch.full((len(layers),), float(init_bias)))  # (m,)

    def forward(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """hidden (..., C) at exit layer ``self.layers[k]`` → exit logit z (...), float32."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return hidden.float() @ self.weight[k].float() + self.bias[k].float()


@dataclass
class ExitForwardOutput:
    logits: torch.Tensor
    """(B, T, V) next-token logits read out at each position's exit."""
    exit_layers: torch.Tensor
    """(B, T) layer actually used (L for no exit)."""
    exit_logprobs: torch.Tensor
    """(B, T) log P(exit at that layer) under stick-breaking (0 where offset = −inf and no exit)."""


@dataclass
class AllExitsOutput:
    exit_logprobs: torch.Tensor
    """(B, T, m+1) log-distribution over exit layers (context without exits)."""
    states: list[torch.Tensor]
    """m+1 tensors (B, T, C): the final-normed residual stream at each exit layer and at L; the
    logits of exiting at outcome k are ``arch.readout(model.peft, states[k])``."""


ExitSpec = torch.Tensor | Literal["sample"] | None


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask → (B, T) positions counting only real tokens, as HF ``generate`` does."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class _ExitRun:
    """State of one teacher-forced pass, advanced by the decoder-layer hooks in layer order."""

    def __init__(
        self,
        model: EarlyExitModel,
        mask: torch.Tensor,
        spec: ExitSpec,
        offset: float,
        generator: torch.Generator | None,
        capture: bool,
        exits_from: torch.Tensor | None = None,
    ):
        B, T = mask.shape
        L = model.num_layers
        self.model, self.mask, self.offset, self.generator = model, mask.bool(), float(offset), generator
        self.can_exit = self.mask  # (B, T): real positions from each row's first exit column on
        if exits_from is not None:
            self.can_exit = self.mask & (torch.arange(T, device=mask.device)[None, :] >= exits_from[:, None])
        self.sample = isinstance(spec, str)
        if isinstance(spec, str) or spec is None:  # sampling starts from "no exit" everywhere
            self.exit_layers = torch.full((B, T), L, dtype=torch.long, device=mask.device)
        else:
            self.exit_layers = spec.to(mask.device).long()
            self.exit_layers = torch.where(self.mask, self.exit_layers, L)  # padding never exits
            exit_index(self.exit_layers, model.layers, L)  # validates the values
            if ((self.exit_layers < L) & ~self.can_exit).any():
                raise ValueError("exit_layers prescribes exits before exits_from, where positions never exit")
        self.frozen = torch.zeros(B, T, dtype=torch.bool, device=mask.device)  # exited below this layer
        self.logp = torch.zeros(B, T, device=mask.device)  # (B, T) log P(exit layer) so far
        self.capture = capture
        self.captured: dict[int, torch.Tensor] = {}  # exit layer → its stream, when capturing
        self.inputs: torch.Tensor | None = None

    def before(self, hidden: torch.Tensor) -> None:
        self.inputs = hidden

    def after(self, j: int, out: torch.Tensor) -> torch.Tensor:
        """Output of layer j (1-based) → the residual stream after layer j under freeze."""
        if self.frozen.any():
            assert self.inputs is not None, "the layer's pre-hook sets its input"
            out = torch.where(self.frozen[..., None], self.inputs, out)  # (B, T, C)
        if j in self.model.layer_to_head:
            k = self.model.layer_to_head[j]
            if self.capture:
                self.captured[j] = out
            z = self.model.heads(out, k) + self.offset  # (B, T)
            live = ~self.frozen & self.can_exit
            if self.sample:
                u = torch.rand(z.shape, generator=self.generator, device=z.device)
                exits = live & (u < torch.sigmoid(z.detach()))
                self.exit_layers = torch.where(exits, j, self.exit_layers)
            exiting = self.exit_layers == j
            step = torch.where(exiting, F.logsigmoid(z), F.logsigmoid(-z))
            self.logp = self.logp + torch.where(live, step, torch.zeros_like(step))
        self.frozen = self.exit_layers <= j
        self.inputs = None
        return out


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
        base, source = _load_base(model_or_path, dtype=dtype, device=device)
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
        run = _ExitRun(self, attention_mask, exit_layers, offset, generator, capture=False, exits_from=start)
        with self._running(run):
            hidden = self._hidden(input_ids, attention_mask)  # (B, T, C)
        logits = arch.readout(self.peft, hidden)  # (B, T, V)
        return ExitForwardOutput(logits=logits, exit_layers=run.exit_layers, exit_logprobs=run.logp)

    def _capture(self, input_ids, attention_mask) -> tuple[_ExitRun, torch.Tensor]:
        """A pass without exits that keeps the stream at every exit layer → (run, final hidden (B, T, C))."""
        run = _ExitRun(self, attention_mask, None, 0.0, None, capture=True)
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
        run = _ExitRun(self, attention_mask, exit_layers, 0.0, None, capture=True)
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
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.parent / f".{directory.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.peft.save_pretrained(str(tmp / ADAPTER_DIR))
        atomic_save_safetensors(tmp / HEADS_FILE, {"weight": self.heads.weight, "bias": self.heads.bias})
        meta = {
            "thinkaloud_version": __version__,
            "base_model": self.source,
            "model_type": self.hf_config.model_type,
            "unembedding_hash": arch.unembedding_hash(self.base),
            "num_layers": self.num_layers,
            "hidden_size": self.hf_config.hidden_size,
            "exit_layers": self.layers,
            "exit_config": self.config.to_dict(),
        }
        fingerprint = weights_fingerprint(tmp)
        for record in (self.risk_control, read_meta(directory).get(RISK_KEY)):
            if isinstance(record, dict) and record.get("weights") == fingerprint:  # same weights: still valid
                meta[RISK_KEY] = record
                break
        atomic_write_json(tmp / META_FILE, meta)
        write_card(tmp, meta, home=directory)  # README.md: the model card (thinkaloud.model.card)
        old = directory.parent / f".{directory.name}.old"
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
        return directory

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
        from peft import PeftModel
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} holds no {META_FILE}: not a thinkaloud checkpoint")
        meta = json.loads(meta_path.read_text())
        base_model, source = _load_base(base if base is not None else meta["base_model"], dtype=dtype, device=device)
        arch.check_supported(base_model.config)
        found = arch.unembedding_hash(base_model)
        if found != meta["unembedding_hash"] or base_model.config.num_hidden_layers != meta["num_layers"]:
            raise ValueError(
                f"{directory} was trained on base model {meta['base_model']!r} (unembedding hash "
                f"{meta['unembedding_hash']}, {meta['num_layers']} layers); the given base {source!r} has hash "
                f"{found} and {base_model.config.num_hidden_layers} layers. Load it onto the model it was trained on."
            )
        config = ExitConfig(**meta["exit_config"])
        peft_model = PeftModel.from_pretrained(base_model, str(directory / ADAPTER_DIR), is_trainable=is_trainable)
        heads = ExitHeads(base_model.config.hidden_size, meta["exit_layers"], config.head_init_bias)
        state = load_file(str(directory / HEADS_FILE))
        heads.load_state_dict(state)
        model = cls(peft_model, heads, config, meta["base_model"]).to(base_model.device)
        model.risk_control = recorded_offset(directory)
        return model


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    return input_ids, attention_mask.to(input_ids.device)


def _check_exits_from(exits_from: int | torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor | None:
    """``exits_from`` of :meth:`EarlyExitModel.forward` → (B,) first exit column of each row, or None."""
    if exits_from is None:
        return None
    (B, T), start = input_ids.shape, torch.as_tensor(exits_from, device=input_ids.device)
    if start.is_floating_point() or start.shape not in ((), (B,)) or (start < 0).any() or (start > T).any():
        raise ValueError(f"exits_from must be an int or a (batch,) integer tensor in 0..{T}, got {exits_from!r}")
    return start.long().expand(B)


def _load_base(
    model_or_path: nn.Module | str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, str]:
    """A loaded model is used as is (a multimodal Gemma 3 through its text model); a string is an alias, a
    local path or a hub id."""
    from transformers import PreTrainedModel

    if isinstance(model_or_path, nn.Module):
        if not isinstance(model_or_path, PreTrainedModel):
            raise TypeError(
                f"expected a loaded transformers model (a PreTrainedModel), a path or an alias; got a "
                f"{type(model_or_path).__name__}"
            )
        source = getattr(model_or_path.config, "_name_or_path", "") or model_or_path.config.model_type
        if device is not None:  # in place; transformers' @wraps(nn.Module.to) is typed as unbound (self first)
            model_or_path.to(device)  # type: ignore[arg-type]
        return arch.text_causal_lm(model_or_path), source
    from thinkaloud.hub import load_causal_lm

    model, source = load_causal_lm(str(model_or_path), dtype=dtype, device=device)
    return arch.text_causal_lm(model), source  # a multimodal Gemma 3 → its text model
