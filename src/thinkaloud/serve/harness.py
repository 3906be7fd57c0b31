"""A thinkaloud model as an lm-evaluation-harness model, registered as ``thinkaloud`` (extra ``lm-eval``).

Any lm-eval task, from the command line (lm-eval's own arguments, with our model registered):

    python -m thinkaloud.serve.harness --model thinkaloud --model_args model=runs/rl,offset=1 \\
        --tasks gsm8k --batch_size 8
    accelerate launch -m thinkaloud.serve.harness --model thinkaloud ...   # data parallel, one process per GPU

or from Python: ``import thinkaloud.serve.harness`` registers the name, then
``lm_eval.simple_evaluate(model="thinkaloud", model_args={"model": "runs/rl", "offset": 1}, tasks=[...])``.

Model arguments: ``model`` (or ``pretrained``): a run folder, a saved model or a base model, as
``--model`` of the other commands; ``offset``: a number, ``-inf`` (exits off), default the offset
recorded with the model by ``thinkaloud risk --save``, else 0 (a base model never exits);
``batch_size``, ``device``, ``dtype`` (float32, bfloat16, float16); ``loglikelihood``: ``expected``
(default) or ``off``; ``max_length`` (default the model's context); ``max_gen_toks`` (default 256); ``seed``.

What each request type computes:

- ``generate_until``: the engine of ``thinkaloud.model.generate`` with exits *sampled* layer by layer at
  the offset, as ``thinkaloud eval`` does (real layer skipping). Tokens are greedy unless the task asks
  for ``do_sample`` (then its ``temperature`` and ``top_p``). A batch stops once every row has hit a
  stop string or the end-of-sequence token; the text is cut at the first stop string. The exits of the
  generated tokens (up to the stop) are counted: :meth:`ThinkaloudLM.exit_summary` gives their exit rate
  and ALS, logged after each call and added to ``simple_evaluate``'s results by :func:`evaluate`.
- ``loglikelihood`` / ``loglikelihood_rolling``: teacher-forced. ``loglikelihood=expected`` scores each
  token under its *expected* next-token distribution over exit layers, Σ_k P(exit at k) · p_k(token)
  (stick-breaking probabilities of the heads at the offset, ``exit_log_distribution``), with the
  context computed at full depth. Why: sampled exits would add noise to every comparison between
  answer choices (and differ between choices), while the expectation is exact, deterministic and one
  pass, and it still shows what the exits at this offset do to the model's predictions. The departure:
  earlier positions do not exit in the context (with exits in the context a position's distribution
  depends on the exits drawn before it, which has no single-pass form). ``loglikelihood=off`` scores
  with exits off (the adapter at full depth); at ``offset=-inf`` the two are the same.

Tokenisation: contexts of ``generate_until`` go through ``thinkaloud.data.prompts.prompt_ids`` (the path
of every stage: the tokenizer's BOS prepended when it uses one); loglikelihood pairs get the same BOS
in front of the context; rolling windows use lm-eval's windows with the BOS (else EOS) as prefix.
Data parallel: under ``accelerate launch`` (``WORLD_SIZE`` > 1) each process takes the GPU of its
rank and lm-eval splits the requests between the processes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import model_registry
    from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - the optional extra is missing
    raise ImportError("the lm-evaluation-harness adapter needs lm-eval: pip install 'thinkaloud[lm-eval]'") from e

from thinkaloud.data.prompts import left_pad, pad_id, prompt_ids, special_prefix
from thinkaloud.measures import metrics
from thinkaloud.model import arch
from thinkaloud.model.loading import default_device, load_model
from thinkaloud.serve.chat import DTYPES, parse_offset, resolve_offset

NAME = "thinkaloud"
TARGET = "thinkaloud.serve.harness:ThinkaloudLM"
LOGLIKELIHOOD_MODES = ("expected", "off")
CHUNK = 256  # positions whose (V,) distributions are materialised at once
logger = logging.getLogger("lm_eval.thinkaloud")  # shown by lm-eval's own log handler


class ThinkaloudLM(TemplateLM):
    """lm-eval's model interface over an early-exit model (see the module docstring)."""

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        offset: Any = None,
        batch_size: Any = 8,
        device: str | None = None,
        dtype: str = "float32",
        loglikelihood: str = "expected",
        max_length: int | None = None,
        max_gen_toks: int = 256,
        seed: int = 0,
        **unused: Any,
    ):
        super().__init__()
        spec = model or pretrained
        if not spec:
            raise ValueError("model_args needs model=<run folder, saved model or base model>")
        if loglikelihood not in LOGLIKELIHOOD_MODES:
            raise ValueError(f"loglikelihood must be one of {LOGLIKELIHOOD_MODES}, got {loglikelihood!r}")
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if unused:
            logger.warning("thinkaloud: ignoring model arguments %s", sorted(unused))
        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate or torchrun
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            device = str(self.accelerator.device)
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            logger.warning("thinkaloud: no CUDA device here (lm-eval's --device defaults to cuda): running on cpu")
            device = "cpu"
        self._device = torch.device(device or default_device())
        self.loaded = load_model(str(spec), dtype=DTYPES[str(dtype)], device=str(self._device))
        self.model, self.tokenizer = self.loaded.model.eval(), self.loaded.tokenizer
        self.offset, self.offset_source = resolve_offset(parse_offset(offset), self.loaded)
        self.mode = "off" if self.offset == -math.inf else loglikelihood
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" → 8
        context = getattr(self.model.hf_config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length or context)
        self.max_gen_toks = int(max_gen_toks)
        self.prefix = special_prefix(self.tokenizer)
        self.generator = torch.Generator(device=self._device).manual_seed(int(seed) + self._rank)
        self.exit_layers: list[int] = []  # of every generated token counted so far
        logger.info(
            "thinkaloud: %s, offset %g (%s), loglikelihood %s", spec, self.offset, self.offset_source, self.mode
        )

    # ------------------------------------------------------------------------------- lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        return self.prefix[-1] if self.prefix else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"])

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        text = self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )
        return text  # type: ignore[return-value]  # a str with tokenize=False; transformers types all modes as one union

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.accelerator is None:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # --------------------------------------------------------------------------------- likelihoods
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """((context, continuation) or None, context ids, continuation ids) → (log p(continuation), greedy)."""
        rows = []
        for key, ctx, cont in requests:
            if not cont:
                raise ValueError(f"empty continuation for context {key!r}")
            if key is not None and self.prefix and ctx[: len(self.prefix)] != self.prefix:
                ctx = self.prefix + ctx  # the BOS in front of a context, as prompt_ids puts it
            whole = (ctx + cont)[-(self.max_length + 1) :]
            n = min(len(cont), len(whole) - 1)  # a continuation longer than the context window is cut
            rows.append((whole[:-1], whole[-n:], n))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: dict[int, tuple[float, bool]] = {}  # request index → (log-likelihood, greedy)
        for s in range(0, len(order), self.batch_size):
            batch = [rows[i] for i in order[s : s + self.batch_size]]
            for i, res in zip(order[s : s + self.batch_size], self._score(batch)):
                results[i] = res
                key = requests[i][0]
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, res)
        return [results[i] for i in range(len(rows))]

    def _score(self, batch: list[tuple[list[int], list[int], int]]) -> list[tuple[float, bool]]:
        """Right-padded inputs → per row the summed log-probability of its last n targets and whether each is
        the argmax (of the expected distribution over exit layers, or of the full-depth one)."""
        T = max(len(inp) for inp, _, _ in batch)
        ids = torch.full((len(batch), T), pad_id(self.tokenizer), dtype=torch.long)
        mask = torch.zeros_like(ids)
        select = torch.zeros(len(batch), T, dtype=torch.bool)
        targets = torch.zeros_like(ids)
        for b, (inp, cont, n) in enumerate(batch):
            ids[b, : len(inp)] = torch.tensor(inp)
            mask[b, : len(inp)] = 1
            select[b, len(inp) - n : len(inp)] = True
            targets[b, len(inp) - n : len(inp)] = torch.tensor(cont)
        ids, mask, select = ids.to(self._device), mask.to(self._device), select.to(self._device)
        out = self.model(ids, mask, all_exits=True, offset=self.offset)  # states: m+1 × (B, T, C)
        where = select.nonzero(as_tuple=True)
        lp_exit = out.exit_logprobs[where]  # (N, m+1)
        tgt = targets.to(self._device)[where]  # (N,)
        outcomes = range(len(out.states)) if self.mode == "expected" else [len(out.states) - 1]
        token_lps, greedys = [], []
        for c in range(0, tgt.numel(), CHUNK):
            part = slice(c, c + CHUNK)
            mix: torch.Tensor | None = None  # (n, V): log Σ_k P(k) p_k(·)
            for k in outcomes:
                h = out.states[k][where[0][part], where[1][part]]  # (n, C)
                logp = F.log_softmax(arch.readout(self.model.peft, h).float(), -1)  # (n, V)
                if self.mode == "expected":
                    logp = logp + lp_exit[part, k, None]
                mix = logp if mix is None else torch.logaddexp(mix, logp)
            assert mix is not None  # outcomes is never empty
            token_lps.append(mix.gather(-1, tgt[part, None]).squeeze(-1))
            greedys.append(mix.argmax(-1) == tgt[part])
        token_lp, greedy = torch.cat(token_lps).cpu(), torch.cat(greedys).cpu()
        res, start = [], 0
        for _, _, n in batch:  # `where` is row-major: each row's n positions in turn
            res.append((float(token_lp[start : start + n].sum()), bool(greedy[start : start + n].all())))
            start += n
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in [req.args for req in requests]:
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            out.append(sum(lp for lp, _ in scores))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), out[-1])
        return out

    # ---------------------------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [req.args for req in requests]
        groups: dict[str, list[int]] = {}
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        results: dict[int, str] = {}  # request index → generated text
        eos = self.tokenizer.decode([self.eot_token_id])
        bar = tqdm(total=len(args), desc="thinkaloud generate_until", disable=disable_tqdm or self.rank != 0)
        for indices in groups.values():
            kwargs = copy.deepcopy(args[indices[0]][1])  # the request's own kwargs stay as they are
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", self.max_gen_toks)))
            indices.sort(key=lambda i: -len(args[i][0]))
            for s in range(0, len(indices), self.batch_size):
                chunk = indices[s : s + self.batch_size]
                for i, text in zip(chunk, self._generate([args[i][0] for i in chunk], until, max_new, kwargs)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
                bar.update(len(chunk))
        bar.close()
        summary = self.exit_summary()
        logger.info(
            "thinkaloud: %d generated tokens, exit rate %.4f, ALS %.4f at offset %g",
            summary["tokens"],
            summary["early_exit_rate"],
            summary["als"],
            self.offset,
        )
        return [results[i] for i in range(len(args))]

    @torch.no_grad()
    def _generate(self, contexts: list[str], until: list[str], max_new: int, kwargs: dict) -> list[str]:
        """One batch: exits sampled at the offset; stops once every row hit a stop string or EOS."""
        if max_new >= self.max_length:
            raise ValueError(f"max_gen_toks={max_new} leaves no room for a context in max_length={self.max_length}")
        rows = [prompt_ids(self.tokenizer, c)[-(self.max_length - max_new) :] for c in contexts]
        ids, mask = left_pad(rows, pad_id(self.tokenizer), self._device)  # (b, P) each
        do_sample = bool(kwargs.get("do_sample", False)) and float(kwargs.get("temperature", 1.0)) > 0
        tokens: list[list[int]] = [[] for _ in rows]
        layers: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        longest = max((len(u) for u in until), default=0) + 8  # tokens that can hold a stop string

        def on_token(active, new, exit_at, _logprobs) -> None:
            for b, t, e in zip(active.tolist(), new.tolist(), exit_at.tolist()):
                if done[b]:
                    continue
                tokens[b].append(t)
                layers[b].append(e)
                tail = self.tokenizer.decode(tokens[b][-longest:], skip_special_tokens=False)
                done[b] = t == self.eot_token_id or any(u and u in tail for u in until)
            if all(done):
                raise _AllStopped

        try:
            self.model.generate(
                ids,
                mask,
                max_new_tokens=max_new,
                do_sample=do_sample,
                temperature=float(kwargs.get("temperature", 1.0)) if do_sample else 1.0,
                top_p=float(kwargs.get("top_p", 1.0)) if do_sample else 1.0,
                offset=self.offset,
                pad_token_id=pad_id(self.tokenizer),
                generator=self.generator,
                on_token=on_token,
            )
        except _AllStopped:
            pass
        for row in layers:
            self.exit_layers.extend(row)
        return [
            postprocess_generated_text(self.tokenizer.decode(t, skip_special_tokens=True), until, None) for t in tokens
        ]

    def exit_summary(self) -> dict[str, Any]:
        """Exits of the tokens generated so far: {"tokens", "early_exit_rate", "als", "offset"}."""
        L, n = self.model.num_layers, len(self.exit_layers)
        return {
            "tokens": n,
            "offset": None if self.offset == -math.inf else self.offset,
            "early_exit_rate": metrics.early_exit_rate(self.exit_layers, L) if n else None,
            "als": metrics.average_layer_savings(self.exit_layers, L) if n else None,
        }


class _AllStopped(Exception):
    """Every row of a batch has hit a stop string or EOS: the rest of the batch need not run."""


def evaluate(model_args: dict[str, Any], tasks: list[str], **kwargs: Any) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on a thinkaloud model; the results get ``"thinkaloud"``: the model's
    offset, loglikelihood mode and :meth:`ThinkaloudLM.exit_summary` of the generated tokens."""
    import lm_eval

    lm = ThinkaloudLM(**model_args)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, **kwargs)
    if results is not None:
        results["thinkaloud"] = {**lm.exit_summary(), "offset_source": lm.offset_source, "loglikelihood": lm.mode}
    return results


def register() -> None:
    """Register the name ``thinkaloud`` with lm-eval (lazily: the class is imported when used)."""
    import lm_eval.models  # noqa: F401  (lm-eval's own names first: it loads them only into an empty registry)

    if NAME not in model_registry:
        model_registry.register(NAME, target=TARGET)


def main() -> None:
    """``python -m thinkaloud.serve.harness``: lm-eval's command line, with ``--model thinkaloud`` known."""
    from lm_eval.__main__ import cli_evaluate

    register()
    cli_evaluate()


register()

if __name__ == "__main__":
    main()
