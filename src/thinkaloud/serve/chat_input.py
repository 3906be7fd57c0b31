"""What ``thinkaloud generate`` and ``thinkaloud chat`` read: prompts from a file or stream (plain lines,
or JSONL objects with a ``"prompt"``), and a conversation rendered as the text that asks for the next
answer. The verbs themselves are in ``thinkaloud.serve.chat``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from thinkaloud.data.task import render_prompt
from thinkaloud.errors import UserError


def read_prompts(source: str | Path | TextIO, name: str = "") -> list[dict[str, Any]]:
    """Prompts of a file or stream → ``[{"prompt", "id"?, "system"?}]`` (rules in the module docstring)."""
    text = source.read() if hasattr(source, "read") else Path(source).read_text()
    name = name or str(source)
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise UserError(f"{name}: no prompts")
    if not _is_json_object(lines[0][1]):
        return [{"prompt": line} for _, line in lines]
    out = []
    for i, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{name}:{i}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise UserError(f'{name}:{i}: expected an object with a "prompt" string')
        out.append({k: row[k] for k in ("prompt", "id", "system") if k in row})
    return out


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def render_conversation(messages: list[dict[str, str]], tokenizer: Any, system_prompt: str | None = None) -> str:
    """A conversation (user/assistant turns, the last a user turn) → the text that asks for the next answer.

    One user turn is exactly ``render_prompt`` (as eval renders it). Longer ones go through the chat
    template (a system prompt the template rejects is merged into the first user turn); without a
    template, "Question: …\\nAnswer: …" blocks.
    """
    if len(messages) == 1:
        return render_prompt(messages[0]["content"], tokenizer, system_prompt)
    if not getattr(tokenizer, "chat_template", None):
        head = f"{system_prompt}\n\n" if system_prompt else ""
        turns = [
            f"Question: {m['content']}\nAnswer:" if m["role"] == "user" else f" {m['content']}\n\n" for m in messages
        ]
        return head + "".join(turns)
    if system_prompt:
        try:
            return tokenizer.apply_chat_template(
                [{"role": "system", "content": system_prompt}, *messages], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # noqa: BLE001 (a template without a system role, as render_prompt)
            first = {"role": "user", "content": f"{system_prompt}\n\n{messages[0]['content']}"}
            messages = [first, *messages[1:]]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
