"""Registers ``thinkaloud`` as an Inspect model provider: Inspect loads this module through the
``inspect_ai`` entry point of thinkaloud's package metadata (``pyproject.toml``) when a model name starts
with ``thinkaloud/``. The provider itself, and torch, are imported only when such a model is made
(``thinkaloud.serve.inspect_provider``)."""

from __future__ import annotations

from typing import Any

from inspect_ai.model import modelapi


@modelapi(name="thinkaloud")
def thinkaloud() -> Any:
    from thinkaloud.serve.inspect_provider import ThinkaloudAPI

    return ThinkaloudAPI
