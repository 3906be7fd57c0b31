"""Decoding generated tokens for display: the exact text each token adds to the decoded sequence."""

from __future__ import annotations

from typing import Any


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded sequence (special tokens kept).

    Decodes growing prefixes and takes the difference, so ``"".join(result)`` is the decoded text.
    A token that ends inside a multi-byte character (the prefix ends in U+FFFD) adds "" and the token
    that completes the character carries all of it (after 4 tokens without a complete character, as
    from invalid byte sequences, the replacement characters are assigned as they are). If a tokenizer
    rewrites earlier text when more tokens follow, the token falls back to its own
    ``convert_tokens_to_string``.
    """
    out: list[str] = []
    done = ""  # decoded text of the tokens assigned so far
    start = 0  # first token not yet assigned text
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and i + 1 < len(ids) and i - start < 3:
            continue  # incomplete character (UTF-8: at most 4 bytes): wait for the next token
        if text.startswith(done):
            out += [""] * (i - start) + [text[len(done) :]]
        else:
            pieces = tokenizer.convert_ids_to_tokens(ids[start : i + 1])
            out += [tokenizer.convert_tokens_to_string([p]) for p in pieces]
        done, start = text, i + 1
    return out
