"""Coherence judge: an LLM scores each response 1–10 on four criteria plus overall (or, with the
``legibility`` rubric, 0–4 on legibility and coverage).

Criteria: coherence, completeness, clarity, absence of repetition (``no_repetition``), and an overall
score. Two coherence rubrics (prompts in ``thinkaloud.measures.rubrics``), chosen per judge with ``rubric=``:

- ``"ours"`` (default): writing quality only — the judge is told not to grade correctness;
- ``"paper"``: the write-up's scorer prompt restated — it asks for a correct and explicit chain of
  thought, penalises factual mistakes about the prompt, and puts partial or cut-off answers at 4–7.
  Use it to compare the coherence column with the write-up's table.

The third rubric, ``legibility`` (Emmons, Zimmermann et al. 2025; ``rubrics`` says what it asks), is read
by ``parse_legibility`` into a :class:`Legibility` and summarised by ``legibility_summary``; ``judge_one``
parses each reply by its judge's rubric.

In all three, role tags, chat-template markers and ``<think>…</think>`` wrappers are part of the expected
format and the judge is told not to penalise them. The judge must answer with one JSON object
holding exactly the rubric's integer keys; ``parse_judgement`` is strict about it.

``--judge`` specs (``parse_judge_spec`` / ``make_judge``): ``openai:<base_url>#<model>`` or
``hf:<model path or alias>``.

Backends (both expose ``complete(messages) -> str`` and ``concurrency``):
- ``OpenAIJudge``: POSTs to ``{base_url}/chat/completions`` with urllib, temperature 0. Works with
  OpenAI, vLLM, the llama.cpp server and Ollama's OpenAI-compatible endpoint (``.../v1``). Retries
  with exponential backoff on HTTP 5xx/429, timeouts and connection errors; never on other 4xx.
- ``HFJudge``: a local Hugging Face causal LM, chat template, greedy ``generate``.

``judge_many`` scores many (question, response) pairs in a thread pool and never raises for one
item: a failure becomes ``JudgeResult(judgement=None, missing=<reason>)``, e.g. ``"timeout after 3
tries"``, ``"http 500 after 3 tries"``, ``"http 401"``, ``"parse: missing keys ['overall']"``.

In an eval directory (see ``thinkaloud.report.build``) each record stores ``judge`` =
``Judgement.as_dict()`` or null and ``judge_missing`` = the reason or null; ``summary.json`` stores
``coherence`` = ``coherence_summary(results)``. The headline coherence number is the mean of the
``overall`` score; per-criterion means are kept too.

Departure from "strict": a complete leading ``<think>…</think>`` block in the judge's reply is
dropped before parsing, so that reasoning models can serve as judges. Parse failures are not retried
(the judge decodes at temperature 0 and would repeat itself).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from thinkaloud.measures.rubrics import (
    COHERENCE_KEYS,
    RUBRICS,
    Judgement,
    JudgeParseError,
    Legibility,
    check_rubric,
    clip,
    judge_messages,
    parse_judgement,
    parse_legibility,
)

__all__ = [
    "CRITERIA",
    "RUBRICS",
    "Judge",
    "Judgement",
    "JudgeParseError",
    "JudgeResult",
    "JudgeUnavailable",
    "Legibility",
    "HFJudge",
    "OpenAIJudge",
    "coherence_summary",
    "judge_many",
    "judge_messages",
    "judge_one",
    "legibility_summary",
    "make_judge",
    "parse_judge_spec",
    "parse_judgement",
    "parse_legibility",
]

CRITERIA = COHERENCE_KEYS

# ---------------------------------------------------------------------------------------------------
# Parsing


class JudgeUnavailable(RuntimeError):
    """The backend gave no reply; ``reason`` is the short text stored as ``judge_missing``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------
# Backends


class Judge(Protocol):
    concurrency: int
    rubric: str  # one of RUBRICS

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The judge's raw reply, or ``JudgeUnavailable(reason)``."""
        ...


class OpenAIJudge:
    """A judge behind an OpenAI-compatible chat-completions endpoint.

    base_url: e.g. ``https://api.openai.com/v1``, ``http://localhost:8000/v1`` (vLLM),
      ``http://localhost:11434/v1`` (Ollama). ``/chat/completions`` is appended.
    api_key_env: name of the environment variable holding the key; unset → no Authorization header
      (local servers).
    timeout: seconds per request. max_retries: extra attempts after the first on 5xx/429/timeouts/
      connection errors, sleeping ``backoff · 2**i`` seconds (or the server's Retry-After, if longer,
      capped at ``max_backoff``). concurrency: parallel requests in ``judge_many``.
    max_tokens: reply budget, or None to leave it to the server (reasoning judges need a large one).
    rubric: one of ``RUBRICS`` (see the module docstring).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 2.0,
        concurrency: int = 4,
        max_tokens: int | None = None,
        max_backoff: float = 60.0,
        rubric: str = "ours",
    ):
        if max_retries < 0 or concurrency < 1 or timeout <= 0 or backoff < 0:
            raise ValueError("need max_retries >= 0, concurrency >= 1, timeout > 0, backoff >= 0")
        self.rubric = check_rubric(rubric)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self.max_tokens = max_tokens

    def _request(self, messages: list[dict[str, str]]) -> urllib.request.Request:
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0}
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")

    def complete(self, messages: list[dict[str, str]]) -> str:
        tries = self.max_retries + 1
        for attempt in range(tries):
            retry_after = 0.0
            try:
                with urllib.request.urlopen(self._request(messages), timeout=self.timeout) as resp:
                    body = resp.read()
                return _reply_content(body)
            except urllib.error.HTTPError as e:
                e.close()
                if e.code != 429 and e.code < 500:
                    raise JudgeUnavailable(f"http {e.code}") from None
                reason = f"http {e.code}"
                retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
                reason = "timeout"
            except urllib.error.URLError as e:
                reason = "timeout" if isinstance(e.reason, TimeoutError) else f"connection error: {e.reason}"
            except (ConnectionError, http.client.HTTPException) as e:  # e.g. closed mid-reply
                reason = f"connection error: {type(e).__name__}"
            if attempt + 1 < tries:
                time.sleep(min(max(self.backoff * 2**attempt, retry_after), self.max_backoff))
        raise JudgeUnavailable(f"{reason} after {tries} tries" if tries > 1 else reason)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0  # an HTTP date; fall back to our own backoff


def _reply_content(body: bytes) -> str:
    """``choices[0].message.content`` of a chat-completions reply."""
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeUnavailable(f"bad response: {clip(body.decode('utf-8', 'replace'))}") from None
    if not isinstance(content, str):
        raise JudgeUnavailable(f"bad response: content is {type(content).__name__}")
    return content


class HFJudge:
    """A local Hugging Face causal LM as judge: chat template, greedy decoding.

    model / tokenizer: as loaded by ``AutoModelForCausalLM`` / ``AutoTokenizer``; the tokenizer needs a
    chat template. chat_template_kwargs: extra template arguments (e.g. ``{"enable_thinking": False}``
    for Qwen3). rubric: one of ``RUBRICS``. Runs one item at a time (``concurrency = 1``).
    """

    concurrency = 1

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_new_tokens: int = 256,
        chat_template_kwargs: dict | None = None,
        rubric: str = "ours",
    ):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the judge's tokenizer has no chat template; use an instruction-tuned model")
        self.rubric = check_rubric(rubric)
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.chat_template_kwargs = chat_template_kwargs or {}

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        prompt = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)  # (1, P + T)
        new_tokens = out[0, inputs["input_ids"].shape[1] :]  # (T,)
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------
# Many items, summaries


@dataclass(frozen=True)
class JudgeResult:
    """One item's outcome: a judgement, or None and the reason it is missing."""

    judgement: Judgement | Legibility | None
    missing: str | None = None


def judge_one(judge: Judge, question: str, response: str) -> JudgeResult:
    """Score one response; failures become ``missing`` reasons, never exceptions."""
    rubric = getattr(judge, "rubric", "ours")
    try:
        reply = judge.complete(judge_messages(question, response, rubric))
    except JudgeUnavailable as e:
        return JudgeResult(None, e.reason)
    except Exception as e:  # a backend bug or an OOM must not lose the whole batch
        return JudgeResult(None, f"error: {type(e).__name__}: {clip(str(e))}")
    try:
        return JudgeResult(parse_legibility(reply) if rubric == "legibility" else parse_judgement(reply))
    except JudgeParseError as e:
        return JudgeResult(None, f"parse: {e}")


def judge_many(judge: Judge, items: Sequence[tuple[str, str]]) -> list[JudgeResult]:
    """Score (question, response) pairs, at most ``judge.concurrency`` at a time, in input order."""
    workers = max(1, min(int(getattr(judge, "concurrency", 1)), len(items)))
    if workers == 1:
        return [judge_one(judge, q, r) for q, r in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: judge_one(judge, *item), items))


def coherence_summary(results: Sequence[JudgeResult]) -> dict[str, Any]:
    """The ``coherence`` block of ``summary.json``.

    ``{"mean": mean overall score or None, "n_judged", "n_missing", "hist": {"1": count, …, "10": count}
    of the overall score, "criteria": {criterion: mean or None}, "missing_reasons": {reason: count}}``.
    """
    judged = [r.judgement for r in results if isinstance(r.judgement, Judgement)]
    missing = _missing(results)

    def mean(key: str) -> float | None:
        return sum(getattr(j, key) for j in judged) / len(judged) if judged else None

    overall = Counter(j.overall for j in judged)
    return {
        "mean": mean("overall"),
        "n_judged": len(judged),
        "n_missing": sum(missing.values()),
        "hist": {str(s): overall.get(s, 0) for s in range(1, 11)},
        "criteria": {k: mean(k) for k in CRITERIA},
        "missing_reasons": dict(missing.most_common()),
    }


def legibility_summary(results: Sequence[JudgeResult]) -> dict[str, Any]:
    """The ``legibility`` block of ``summary.json`` under the ``legibility`` rubric.

    ``{"legibility", "coverage": mean score 0..4 or None, "n_judged", "n_missing", "hist": {"legibility":
    {"0": count, …, "4": count}, "coverage": {…}}, "missing_reasons": {reason: count}}``.
    """
    judged = [r.judgement for r in results if isinstance(r.judgement, Legibility)]
    missing = _missing(results)
    mean = lambda key: sum(getattr(j, key) for j in judged) / len(judged) if judged else None
    hist = lambda key: {str(s): sum(getattr(j, key) == s for j in judged) for s in range(5)}
    return {
        "legibility": mean("legibility"),
        "coverage": mean("coverage"),
        "n_judged": len(judged),
        "n_missing": sum(missing.values()),
        "hist": {"legibility": hist("legibility"), "coverage": hist("coverage")},
        "missing_reasons": dict(missing.most_common()),
    }


def _missing(results: Sequence[JudgeResult]) -> Counter[str]:
    return Counter(r.missing or "unknown" for r in results if r.judgement is None)


# ---------------------------------------------------------------------------------------------------
# --judge specs


def parse_judge_spec(spec: str) -> tuple[str, str, str | None]:
    """'openai:<base_url>#<model>' → ("openai", base_url, model); 'hf:<model>' → ("hf", model, None)."""
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        url, _, model = rest.partition("#")
        if url.startswith(("http://", "https://")) and model:
            return "openai", url, model
    elif kind == "hf" and rest:
        return "hf", rest, None
    raise ValueError(
        f"judge must be 'openai:<base_url>#<model>' (e.g. openai:http://localhost:8000/v1#qwen) "
        f"or 'hf:<model path or alias>', got {spec!r}"
    )


def make_judge(spec: str, concurrency: int = 4, device: str | None = None, rubric: str = "ours") -> Judge:
    """The judge a ``--judge`` spec names, asking with ``rubric``."""
    kind, where, model = parse_judge_spec(spec)
    if kind == "openai" and model is not None:  # every openai spec names a model
        return OpenAIJudge(where, model, concurrency=concurrency, rubric=rubric)
    from thinkaloud.hub import load_causal_lm, load_tokenizer

    lm, _ = load_causal_lm(where, device=device)
    return HFJudge(lm, load_tokenizer(where), rubric=rubric)
