"""``thinkaloud generate`` and ``thinkaloud chat``: talk to an early-exit model in the terminal.

The model is what ``--model`` names (``thinkaloud.model.loading.load_model``): a run folder, a saved
model folder, or a base model (which has no trained exit heads and runs without exits). Each prompt
is rendered with the tokenizer's chat template (``thinkaloud.data.tasks.render_prompt``; a
conversation with ``render_conversation``) and tokenised with ``thinkaloud.data.prompts.prompt_ids``,
the path every stage uses. Exits are always sampled layer by layer at the offset; ``--do-sample``
only chooses between greedy and sampled *tokens*, as in ``eval``.

The offset: ``--offset`` if given, else the one recorded with the model by ``thinkaloud risk --save``
(``EarlyExitModel.risk_control``; its guarantee is for the task it was chosen on, not for any prompt),
else 0. A base model always runs with offset −∞.

``generate``: prompts from arguments, ``--file`` (one prompt per line; or JSONL, one object per line
with a ``"prompt"`` and optionally an ``"id"`` and a ``"system"`` — a file whose first line is a JSON
object is read as JSONL) or standard input (``--file -``, or no prompt and stdin not a terminal).
In the terminal each answer streams token by token, coloured by exit layer (``thinkaloud.serve.stream``),
after a legend, and ends with its exit rate, ALS and tokens/s. ``--json`` writes instead one JSON record
per prompt to standard output (``RECORD_KEYS``), prompts generated in batches of ``--batch-size``.
Ctrl-C stops the current answer (printed with its statistics) and the run, with status 130.

``chat``: a multi-turn session; each answer joins the conversation. Ctrl-C stops the current answer
(what was printed stays in the conversation) and returns to the prompt; Ctrl-D or ``/quit`` leaves;
``/reset`` starts a new conversation; ``/offset X`` changes the offset. When the conversation no
longer fits the model's context with ``max_new_tokens`` to spare, the oldest turns are dropped.

Reading prompt files and rendering a conversation: ``thinkaloud.serve.chat_input``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from rich.console import Console
from rich.text import Text

from thinkaloud.data.prompts import encode_prompts, pad_id, prompt_ids
from thinkaloud.data.task import render_prompt
from thinkaloud.errors import UserError
from thinkaloud.eval.decode import token_strings
from thinkaloud.measures import metrics
from thinkaloud.model.loading import Loaded, default_device, load_model
from thinkaloud.model.recorded import describe_record, recorded_value
from thinkaloud.serve.chat_input import read_prompts, render_conversation
from thinkaloud.serve.stream import TokenStream, legend

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RECORD_KEYS = (
    "index",
    "id",
    "prompt",
    "text",
    "tokens",
    "token_ids",
    "exit_layers",
    "token_logprobs",
    "exit_logprobs",
    "num_layers",
    "offset",
    "exit_rate",
    "als",
)
HELP = "/reset new conversation · /offset X change the offset · /quit (or Ctrl-D) leave · Ctrl-C stops an answer"


@dataclass
class _Common:
    model: str = field(
        metadata={
            "help": "a run folder, a saved early-exit model, or a base model (alias such as "
            "smollm2-135m, local HF folder); a base model runs without exits"
        }
    )
    offset: float | None = field(
        default=None,
        metadata={
            "help": "added to every exit logit: positive = earlier exits, --offset=-inf = no exits (default: the offset "
            "recorded with the model by `thinkaloud risk --save`, else 0)"
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "system message of the chat template"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens per answer at most"})
    do_sample: bool = field(
        default=False, metadata={"help": "sample tokens (else greedy tokens); exits are always sampled layer by layer"}
    )
    temperature: float = field(default=1.0, metadata={"help": "token sampling temperature (with --do-sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (with --do-sample)"})
    seed: int = field(default=0, metadata={"help": "seeds exit and token sampling"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"})
    dtype: str = field(default="float32", metadata={"help": f"weights dtype, one of {', '.join(DTYPES)}"})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.offset is not None and (math.isnan(self.offset) or self.offset == math.inf):
            raise ValueError(f"offset must be a number or -inf, got {self.offset}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass
class GenerateConfig(_Common):
    """Answer prompts with exits: streamed and coloured by exit layer in the terminal, or JSON records."""

    prompts: list[str] = field(
        default_factory=list,
        metadata={"help": "prompts, one per argument (or --prompts, repeatable)", "positional": True, "whole": True},
    )
    file: str | None = field(
        default=None,
        metadata={"help": "prompts file: one per line, or JSONL with a \"prompt\" per object; '-' = standard input"},
    )
    json: bool = field(
        default=False,
        metadata={
            "help": "write one JSON record per prompt to standard output (text, tokens, exit layers, log-probabilities)"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "prompts generated together with --json"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prompts and self.file is not None:
            raise ValueError("give prompts as arguments or with --file, not both")


@dataclass
class ChatConfig(_Common):
    """A multi-turn conversation in the terminal, each token coloured by its exit layer."""


# ---------------------------------------------------------------------------------------------------
# Prompts


def _gather_prompts(config: GenerateConfig) -> list[dict[str, Any]]:
    if config.prompts:
        return [{"prompt": p} for p in config.prompts]
    if config.file == "-" or (config.file is None and not sys.stdin.isatty()):
        return read_prompts(sys.stdin, "<stdin>")
    if config.file is None:
        raise UserError("no prompts: give them as arguments, with --file, or on standard input")
    return read_prompts(config.file)


# ---------------------------------------------------------------------------------------------------
# Model and offset


def parse_offset(value: Any) -> float | None:
    """An offset given as text or a number (a model argument of lm-eval or Inspect): None when unset, ``-inf``
    (also ``off``, ``none``) for exits off, else a finite number or a ``ValueError``."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() in ("-inf", "off", "none"):
        return -math.inf
    offset = float(value)
    if math.isnan(offset) or offset == math.inf:
        raise ValueError(f"offset must be a number or -inf, got {value!r}")
    return offset


def resolve_offset(requested: float | None, loaded: Loaded) -> tuple[float, str]:
    """(offset, where it comes from): a base model never exits; else the given one, the recorded one, or 0."""
    if loaded.is_base:
        return -math.inf, "base model: no exits"
    if requested is not None:
        return float(requested), "given"
    entry = loaded.model.risk_control
    if entry is not None:
        return recorded_value(entry), f"recorded with the model, {describe_record(entry)}"
    return 0.0, "the default (no offset recorded with the model)"


def _load(config: _Common, console: Console) -> tuple[Loaded, str]:
    device = config.device or default_device()
    with console.status(f"loading {config.model}…"):
        loaded = load_model(config.model, dtype=DTYPES[config.dtype], device=device)
    return loaded, device


def _gen_kwargs(config: _Common, loaded: Loaded, offset: float, generator: torch.Generator) -> dict[str, Any]:
    return {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "offset": offset,
        "pad_token_id": pad_id(loaded.tokenizer),
        "generator": generator,
    }


def _stop_ids(model) -> list[int]:
    """The ids the engine stops at by default (the model's EOS): counted, not printed."""
    from thinkaloud.model.generate import _stop_ids as engine_stop_ids

    return engine_stop_ids(model, None)


def _header(console: Console, loaded: Loaded, offset: float, source: str) -> None:
    model = loaded.model
    exits = "none" if offset == -math.inf else ", ".join(str(x) for x in model.layers)
    console.print(
        f"[bold]{loaded.base_name if loaded.is_base else 'thinkaloud'}[/bold] · exit layers {exits} of "
        f"{model.num_layers} · offset {offset:g}: {source}",
        highlight=False,
    )
    console.print(legend(model.layers, model.num_layers))


def stream_answer(
    loaded: Loaded, text: str, config: _Common, offset: float, generator: torch.Generator, console: Console, device: str
) -> tuple[TokenStream, bool]:
    """Generate one answer to a rendered prompt, printing it as it comes → (stream, stopped by Ctrl-C)."""
    ids = torch.tensor([prompt_ids(loaded.tokenizer, text)], device=device)  # (1, P)
    stream = TokenStream(
        loaded.tokenizer, console, loaded.model.layers, loaded.model.num_layers, _stop_ids(loaded.model)
    )

    def on_token(rows, tokens, exit_layers, logprobs) -> None:  # (1,) each: one row
        stream.push(int(tokens[0]), int(exit_layers[0]), float(logprobs[0]))

    try:
        loaded.model.generate(
            ids, torch.ones_like(ids), on_token=on_token, **_gen_kwargs(config, loaded, offset, generator)
        )
    except KeyboardInterrupt:
        stream.finish("stopped")
        return stream, True
    stream.finish()
    return stream, False


# ---------------------------------------------------------------------------------------------------
# The jobs


def generate_answers(config: GenerateConfig) -> int:
    """Answer every prompt (module docstring); returns the exit status (130 when stopped by Ctrl-C)."""
    prompts = _gather_prompts(config)
    console = Console(stderr=config.json)
    loaded, device = _load(config, console)
    offset, source = resolve_offset(config.offset, loaded)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    texts = [render_prompt(p["prompt"], loaded.tokenizer, p.get("system", config.system_prompt)) for p in prompts]
    if config.json:
        _write_records(loaded, prompts, texts, config, offset, generator, device, sys.stdout)
        return 0
    _header(console, loaded, offset, source)
    for i, (p, text) in enumerate(zip(prompts, texts), start=1):
        console.rule(Text(f"{i}/{len(prompts)} · {_clip(p['prompt'])}"))
        _, stopped = stream_answer(loaded, text, config, offset, generator, console, device)
        if stopped:
            return 130
    return 0


def _write_records(
    loaded: Loaded,
    prompts: list[dict],
    texts: list[str],
    config: GenerateConfig,
    offset: float,
    generator: torch.Generator,
    device: str,
    out: TextIO,
) -> None:
    tokenizer, L = loaded.tokenizer, loaded.model.num_layers
    for s in range(0, len(texts), config.batch_size):
        ids, mask = encode_prompts(tokenizer, texts[s : s + config.batch_size], device)  # (b, P) each
        gen = loaded.model.generate(ids, mask, **_gen_kwargs(config, loaded, offset, generator))
        for i in range(ids.shape[0]):
            n = int(gen.lengths[i])
            new = gen.new_tokens[i, :n].tolist()
            layers = gen.exit_layers[i, :n].tolist()
            p = prompts[s + i]
            record = {
                "index": s + i,
                "id": p.get("id"),
                "prompt": p["prompt"],
                "text": tokenizer.decode(new, skip_special_tokens=True),
                "tokens": token_strings(tokenizer, new),
                "token_ids": new,
                "exit_layers": layers,
                "token_logprobs": gen.token_logprobs[i, :n].tolist(),
                "exit_logprobs": gen.exit_logprobs[i, :n].tolist(),
                "num_layers": L,
                "offset": None if offset == -math.inf else offset,
                "exit_rate": metrics.early_exit_rate(layers, L),
                "als": metrics.average_layer_savings(layers, L),
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()


def _clip(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def chat(config: ChatConfig) -> int:
    """The chat session of the module docstring."""
    console = Console()
    loaded, device = _load(config, console)
    offset, source = resolve_offset(config.offset, loaded)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    _header(console, loaded, offset, source)
    console.print(f"[dim]{HELP}[/dim]")
    messages: list[dict[str, str]] = []
    while True:
        try:
            line = console.input("[bold]you>[/bold] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            if command == "/quit":
                return 0
            if command == "/reset":
                messages = []
                console.print("[dim]new conversation[/dim]")
            elif command == "/offset" and loaded.is_base:
                console.print("[dim]a base model has no trained exit heads: it runs without exits[/dim]")
            elif command == "/offset" and _is_offset(arg):
                offset = float(arg)
                console.print(f"[dim]offset {offset:g}[/dim]")
            else:
                console.print(f"[dim]{HELP}[/dim]")
            continue
        messages.append({"role": "user", "content": line})
        text = _fit(loaded, messages, config)
        if text is None:
            messages.pop()
            console.print("[yellow]this message alone is longer than the model's context[/yellow]")
            continue
        stream, _ = stream_answer(loaded, text, config, offset, generator, console, device)
        messages.append({"role": "assistant", "content": stream.text})


def _is_offset(arg: str) -> bool:
    try:
        value = float(arg)
    except ValueError:
        return False
    return not math.isnan(value) and value != math.inf


def _fit(loaded: Loaded, messages: list[dict[str, str]], config: ChatConfig) -> str | None:
    """The rendered conversation, dropping the oldest turns until it fits the context; None if it cannot."""
    context = getattr(loaded.model.hf_config, "max_position_embeddings", None)
    while True:
        text = render_conversation(messages, loaded.tokenizer, config.system_prompt)
        if context is None or len(prompt_ids(loaded.tokenizer, text)) + config.max_new_tokens <= context:
            return text
        if len(messages) <= 1:
            return None
        del messages[:2]  # the oldest user turn and its answer
