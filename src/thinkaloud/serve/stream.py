"""A response streamed to the terminal token by token, each token coloured by the layer it exited at.

``TokenStream`` receives (token id, exit layer) pairs as the engine produces them (the ``on_token``
callback of ``thinkaloud.model.generate``) and prints the text each token adds, on the background
colour of its exit layer (``thinkaloud.report.viz``: dark = early exit, grey = no exit). The text of a
token is found as ``thinkaloud.eval.decode.token_strings`` finds it, incrementally: the growing
sequence is decoded and the new part printed, so the printed pieces join to the decoded text; a token
that ends inside a multi-byte character prints nothing and the token that completes the character
prints it (on its own colour). Stop tokens count in the statistics but are not printed; control
characters other than newline and tab are printed escaped (``\r``, ``\x1b``).

``stats_line`` is the line printed after a response: tokens, early-exit rate, ALS (average layer
savings) and tokens/s over the wall time of the answer, the stop token included as in ``eval``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.text import Text

from thinkaloud.measures import metrics
from thinkaloud.report import viz

MAX_PENDING = 3  # tokens that may end inside one UTF-8 character (at most 4 bytes)
# Control characters other than newline and tab would move the cursor: shown escaped instead.
VISIBLE = {c: f"\\x{c:02x}" for c in [*range(9), *range(11, 32), 127]} | {13: "\\r"}


def legend(layers: Sequence[int], num_layers: int) -> Text:
    """One line: a coloured chip per exit layer and one for "no exit"."""
    colors = viz.layer_colors(layers, num_layers)
    text = Text()
    for layer, bg in sorted(colors.items()):
        text.append(f" {viz.layer_label(layer, num_layers)} ", style=f"{viz.text_color(bg)} on {bg}")
        text.append(" ")
    return text


def stats_line(exit_layers: Sequence[int], num_layers: int, seconds: float) -> str:
    """ "N tokens · exit rate x% · ALS y% · z tokens/s" (ALS and exit rate over every generated token)."""
    n = len(exit_layers)
    if n == 0:
        return "0 tokens"
    rate = metrics.early_exit_rate(list(exit_layers), num_layers)
    als = metrics.average_layer_savings(list(exit_layers), num_layers)
    speed = f"{n / seconds:.1f} tokens/s" if seconds > 0 else "— tokens/s"
    return f"{n} tokens · exit rate {rate:.1%} · ALS {als:.1%} · {speed}"


class TokenStream:
    """Print one response as it is generated; ``push`` each token, ``finish`` at the end."""

    def __init__(
        self, tokenizer: Any, console: Console, layers: Sequence[int], num_layers: int, stop_ids: Iterable[int] = ()
    ):
        self.tokenizer, self.console, self.num_layers = tokenizer, console, num_layers
        self.colors = viz.layer_colors(layers, num_layers)
        self.stop_ids = {int(i) for i in stop_ids}
        self.ids: list[int] = []  # every generated token, stop tokens included
        self.exit_layers: list[int] = []
        self.token_logprobs: list[float] = []
        self._shown: list[int] = []  # the ids whose text is printed (stop tokens left out)
        self._done = ""  # decoded text of the tokens printed so far
        self._pending = 0  # tokens waiting for the rest of a multi-byte character
        self.start = time.perf_counter()
        self.end = self.start

    def push(self, token_id: int, exit_layer: int, logprob: float = 0.0) -> None:
        self.ids.append(int(token_id))
        self.exit_layers.append(int(exit_layer))
        self.token_logprobs.append(float(logprob))
        self.end = time.perf_counter()
        if token_id in self.stop_ids:
            return
        self._shown.append(int(token_id))
        text = self.tokenizer.decode(self._shown, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and self._pending < MAX_PENDING:
            self._pending += 1  # an incomplete character: the next token completes it
            return
        self._pending = 0
        if text.startswith(self._done):
            piece = text[len(self._done) :]
        else:  # the tokenizer rewrote earlier text: show this token's own string
            piece = self.tokenizer.convert_tokens_to_string(self.tokenizer.convert_ids_to_tokens([int(token_id)]))
        self._done = text
        bg = self.colors.get(int(exit_layer), viz.NO_EXIT_COLOR)
        self.console.print(
            Text(piece.translate(VISIBLE), style=f"{viz.text_color(bg)} on {bg}"),
            end="",
            soft_wrap=True,
            highlight=False,
        )

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def text(self) -> str:
        """The response without special tokens."""
        return self.tokenizer.decode(self._shown, skip_special_tokens=True)

    def finish(self, note: str = "") -> str:
        """End the response's line, print the statistics line (with ``note``); returns that line."""
        line = stats_line(self.exit_layers, self.num_layers, self.seconds) + (f" · {note}" if note else "")
        self.console.print()
        self.console.print(f"[dim]{line}[/dim]", highlight=False)
        return line
