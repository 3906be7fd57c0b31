"""The lm-evaluation-harness adapter on a tiny saved model, offline: each request type against a direct
computation, then lm-eval itself (``simple_evaluate`` and the documented command) on local YAML tasks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # lm-eval and datasets never try the network here
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM

from tests.tiny import tiny_model_dir, tiny_tokenizer
from thinkaloud import EarlyExitModel, ExitConfig
from thinkaloud.serve.harness import ThinkaloudLM, evaluate

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread", "offline")
ITEMS = [
    {"question": "2+2", "choices": ["4", "5", "6"], "answer": 0, "target": "4"},
    {"question": "3+3", "choices": ["5", "6", "7"], "answer": 1, "target": "6"},
    {"question": "1+1", "choices": ["2", "3", "4"], "answer": 0, "target": "2"},
]


@pytest.fixture
def offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """(base model folder, saved early-exit model whose heads fire half the time at layers 2 and 4)."""
    root = tmp_path_factory.mktemp("lm-eval")
    base = Path(tiny_model_dir(root / "base"))
    model = EarlyExitModel.from_base(str(base), ExitConfig(exit_every=2))
    with torch.no_grad():
        model.heads.bias.fill_(0.0)
    return base, model.save_pretrained(root / "saved")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    """A multiple-choice, a generation and a perplexity task over a local JSONL file."""
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        f'task: tiny_mc\n{common}output_type: multiple_choice\ndoc_to_text: "Question: {{{{question}}}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n'
    )
    (folder / "gen.yaml").write_text(
        f'task: tiny_gen\n{common}output_type: generate_until\ndoc_to_text: "Q: {{{{question}}}}\\nA:"\n'
        'doc_to_target: "{{target}}"\ngeneration_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n'
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n"
    )
    (folder / "ppl.yaml").write_text(
        f'task: tiny_ppl\n{common}output_type: loglikelihood_rolling\ndoc_to_text: "{{{{question}}}} = {{{{target}}}}"\n'
        'doc_to_target: ""\nmetric_list:\n  - metric: word_perplexity\n'
    )
    return folder


def requests(kind: str, *args) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def base_logprobs(base: Path, ids: list[int]) -> torch.Tensor:
    """log p(ids[t+1] | ids[:t+1]) under the plain HF model, (T-1,)."""
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


def test_loglikelihood_with_exits_off_is_the_base_models(folders):
    base, saved = folders
    lm = ThinkaloudLM(model=str(saved), offset="-inf", batch_size=2)
    pairs = [("Question: 2+2\nAnswer:", " 4"), ("Q", " five"), ("", "hello")]
    got = lm.loglikelihood(requests("loglikelihood", *pairs))
    tok = tiny_tokenizer()
    for (ctx, cont), (lp, _) in zip(pairs, got):
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]  # empty: the EOS prefix
        cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
        want = base_logprobs(base, ctx_ids + cont_ids)[-len(cont_ids) :].sum()
        assert lp == pytest.approx(float(want), abs=1e-4)
    assert lm.mode == "off"


def test_expected_loglikelihood_is_the_mixture_over_exit_layers(folders):
    _, saved = folders
    lm = ThinkaloudLM(model=str(saved), offset=0.5, batch_size=4)
    assert lm.mode == "expected"
    ctx, cont = "Question: 2+2\nAnswer:", " 4!"
    [(lp, greedy)] = lm.loglikelihood(requests("loglikelihood", (ctx, cont)))

    # By hand: at each continuation position, exit there (and nowhere else) at each layer in turn.
    model = EarlyExitModel.from_pretrained(saved).eval()
    tok = tiny_tokenizer()
    ids = tok(ctx + cont, add_special_tokens=False)["input_ids"]
    n = len(tok(cont, add_special_tokens=False)["input_ids"])
    x = torch.tensor([ids[:-1]])
    with torch.no_grad():
        p_exit = model.exit_logprobs(x, offset=0.5)[0].exp()  # (T, m+1)
        total, argmax_ok = 0.0, True
        for t in range(len(ids) - 1 - n, len(ids) - 1):
            mix = 0.0
            for k, layer in enumerate([*model.layers, model.num_layers]):
                exits = torch.full_like(x, model.num_layers)
                exits[0, t] = layer
                probs = torch.softmax(model(x, exit_layers=exits).logits[0, t], -1)
                mix = mix + p_exit[t, k] * probs
            total += math.log(float(mix[ids[t + 1]]))
            argmax_ok &= int(mix.argmax()) == ids[t + 1]
    assert lp == pytest.approx(total, abs=1e-4) and greedy == argmax_ok
    off = ThinkaloudLM(model=str(saved), offset=0.5, loglikelihood="off")
    [(lp_off, _)] = off.loglikelihood(requests("loglikelihood", (ctx, cont)))
    assert abs(lp_off - lp) > 1e-3  # the exits change the score


def test_rolling_loglikelihood_with_exits_off(folders):
    base, saved = folders
    lm = ThinkaloudLM(model=str(saved), offset="-inf")
    text = "The sum of 2 and 2 is 4."
    [got] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
    tok = tiny_tokenizer()
    want = base_logprobs(base, [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]).sum()
    assert got == pytest.approx(float(want), abs=1e-4)


def test_generate_until_is_greedy_with_exits_off_and_counts_the_exits(folders):
    base, saved = folders
    tok = tiny_tokenizer()
    hf = AutoModelForCausalLM.from_pretrained(base).eval()
    contexts = ["Q: 2+2\nA:", "Q: what is three plus three?\nA:"]
    expected = []
    for c in contexts:
        ids = torch.tensor([tok(c, add_special_tokens=False)["input_ids"]])
        out = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        expected.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    stop = expected[0][2:4]  # a stop string within the first answer: its generation stops early
    lm = ThinkaloudLM(model=str(saved), offset="-inf", batch_size=2)
    asked = requests("generate_until", *((c, {"until": [stop], "max_gen_toks": 12}) for c in contexts))
    got = lm.generate_until(asked)
    assert got == [e.split(stop)[0] for e in expected]
    assert all(r.args[1] == {"until": [stop], "max_gen_toks": 12} for r in asked)  # the requests are left as they were
    assert lm.exit_summary()["early_exit_rate"] == 0.0

    exits = ThinkaloudLM(model=str(saved), offset=0.0, batch_size=2)
    exits.generate_until(
        requests("generate_until", *((c, {"until": ["\n\n\n\n"], "max_gen_toks": 10}) for c in contexts))
    )
    summary = exits.exit_summary()
    assert summary["tokens"] > 0 and 0 < summary["early_exit_rate"] <= 1 and summary["offset"] == 0.0


def test_simple_evaluate_on_local_tasks(folders, tasks):
    base, saved = folders
    import thinkaloud.serve.harness  # noqa: F401  (registers "thinkaloud")

    results = lm_eval.simple_evaluate(
        model="thinkaloud",
        model_args=f"model={saved},offset=-inf",
        tasks=["tiny_mc", "tiny_gen", "tiny_ppl"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        batch_size=2,
        device="cpu",
    )
    tok = tiny_tokenizer()
    correct = 0
    for item in ITEMS:  # the base model's own choice per item
        ctx = f"Question: {item['question']}\nAnswer:"
        scores = []
        for choice in item["choices"]:
            ids = tok(ctx + " " + choice, add_special_tokens=False)["input_ids"]
            n = len(tok(" " + choice, add_special_tokens=False)["input_ids"])
            scores.append(float(base_logprobs(base, ids)[-n:].sum()))
        correct += int(max(range(3), key=scores.__getitem__) == item["answer"])
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(correct / 3)
    assert "exact_match,none" in results["results"]["tiny_gen"]
    assert math.isfinite(results["results"]["tiny_ppl"]["word_perplexity,none"])

    with_exits = evaluate(
        {"model": str(saved), "offset": 0.0, "batch_size": 2, "device": "cpu"},
        ["tiny_gen"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )
    summary = with_exits["thinkaloud"]
    assert summary["tokens"] > 0 and summary["early_exit_rate"] > 0 and summary["loglikelihood"] == "expected"


def test_the_documented_command(folders, tasks, tmp_path):
    _, saved = folders
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "thinkaloud.serve.harness",
            "--model",
            "thinkaloud",
            "--model_args",
            f"model={saved},offset=1",
            "--tasks",
            "tiny_mc",
            "--include_path",
            str(tasks),
            "--batch_size",
            "2",
            "--device",
            "cpu",
            "--output_path",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = list((tmp_path / "out").rglob("results_*.json"))
    assert "acc,none" in json.loads(result.read_text())["results"]["tiny_mc"]
    assert "offset 1 (given), loglikelihood expected" in done.stderr
