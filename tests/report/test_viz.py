"""Token visualisation: escaping, one span per token, legend, whitespace, terminal rendering."""

import html
import io
import re

import pytest
from rich.console import Console

from thinkaloud.report.viz import NO_EXIT_COLOR, layer_colors, render_terminal, text_color, tokens_fragment, tokens_html

L = 30
E = [5, 10, 15, 20, 25]
TOKENS = ["<think>", "The", " answer", " is", " <b>4</b>", " & 'x'", "\n\n", "  done", '"q"', " [red]r[/red]"]
EXITS = [30, 5, 10, 30, 25, 15, 30, 20, 5, 10]


def test_colors_distinct_and_no_exit_neutral():
    colors = layer_colors(E, L)
    assert sorted(colors) == E + [L]
    assert colors[L] == NO_EXIT_COLOR
    assert len(set(colors.values())) == len(colors)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colors.values())
    assert text_color("#000000") == "#ffffff" and text_color("#ffffff") == "#000000"


def test_one_span_per_token_and_escaping():
    page = tokens_html(TOKENS, EXITS, E, L, title="demo <1>")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('class="ta-tok"') == len(TOKENS)
    # Raw markup from the tokens never reaches the page unescaped.
    assert "<b>4</b>" not in page and "&lt;b&gt;4&lt;/b&gt;" in page
    assert "&lt;think&gt;" in page and "<think>" not in page
    assert "&amp; " in page
    assert "<title>demo &lt;1&gt;</title>" in page
    # No external resources.
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page


def test_hover_titles_and_text_round_trip():
    page = tokens_html(TOKENS, EXITS, E, L)
    spans = re.findall(r'<span class="ta-tok" style="[^"]*" title="([^"]*)">(.*?)</span>', page, re.DOTALL)
    assert len(spans) == len(TOKENS)
    for (title, text), token, layer in zip(spans, TOKENS, EXITS):
        assert html.unescape(text) == token  # whitespace and newlines preserved
        hover = html.unescape(title)
        assert hover.startswith(repr(token))
        assert f"layer {layer} / {L}" in hover
    assert "no exit" in html.unescape(spans[0][0])
    assert "white-space: pre-wrap" in page


def test_legend_lists_every_layer_with_counts():
    fragment = tokens_fragment(TOKENS, EXITS, E, L)
    legend = re.search(r'<div class="ta-legend">(.*?)</div>', fragment).group(1)
    entries = re.findall(r"<span[^>]*>(.*?)</span>", legend)
    assert len(entries) == len(E) + 1
    assert entries[0] == "layer 5 / 30 · 2 tok"
    assert entries[-1] == "layer 30 / 30 (no exit) · 3 tok"


def test_mismatch_and_unknown_layers_raise():
    with pytest.raises(ValueError, match="tokens but"):
        tokens_html(["a", "b"], [5], E, L)
    with pytest.raises(ValueError, match="not in"):
        tokens_html(["a"], [7], E, L)


def test_render_terminal():
    buf = io.StringIO()
    console = Console(file=buf, width=80, color_system="truecolor", force_terminal=True)
    text = render_terminal(TOKENS, EXITS, E, L, console=console)
    assert text.plain == "".join(TOKENS)  # "[red]" stays text, not rich markup
    assert len(text.spans) == len(TOKENS)
    out = buf.getvalue()
    assert "layer 5 / 30" in out and "(no exit)" in out
    assert "\x1b[" in out  # coloured
    assert "[red]r[/red]" in out
