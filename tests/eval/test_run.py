"""The eval job end to end on a tiny model built in code (model, tokenizer and chat template), offline."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from tests.tiny import MAX_TINY_PARAMS
from thinkaloud.cli import main
from thinkaloud.config import ExitConfig
from thinkaloud.eval.decode import token_strings
from thinkaloud.eval.lineage import Lineage
from thinkaloud.eval.run import evaluate, resolve_target
from thinkaloud.measures.config import EvalConfig
from thinkaloud.measures.judge import parse_judge_spec
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.report.job import ReportConfig, report
from thinkaloud.report.terminal import describe_target

SUMMARY_KEYS = {
    "model",
    "label",
    "stage",
    "task",
    "split",
    "data",
    "n",
    "num_layers",
    "exit_layers",
    "offset",
    "offset_source",
    "kl_factor",
    "target",
    "accuracy",
    "early_exit_rate",
    "als",
    "mean_length",
    "tokens_per_s",
    "prefill_s",
    "decode_ms_per_token",
    "speed_baseline",
    "speedup_vs_base",
    "flop_savings",
    "exit_hist",
    "target_hist",
    "tv_distance",
    "coherence",
    "legibility",
    "reliance",
    "lens",
    "fluency",
    "filler",
    "mistakes",
    "paraphrase",
    "decodability",
}
RECORD_KEYS = {
    "id",
    "prompt",
    "completion",
    "tokens",
    "exit_layers",
    "score",
    "judge",
    "judge_missing",
    "reliance",
    "lens",
    "fluency",
    "filler",
    "mistakes",
    "paraphrase",
    "decodability",
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Solve the problem step by step. End your response with a final line of the form 'Answer: <answer>'.",
    "State the final answer to the following arithmetic problem: 4 + 7 = 11",
    "system user assistant",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on three sentences: ~360 tokens, any text encodes, with a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama (6 layers, 32 dims) with its tokenizer: a local HF folder like any other."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < MAX_TINY_PARAMS, f"tiny model has {n_params} parameters"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class _StubJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint on localhost that gives every response the same scores; it keeps the
    system prompts it was sent in ``systems``."""

    systems: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.systems.append(body["messages"][0]["content"])
        scores = {"coherence": 7, "completeness": 6, "clarity": 7, "no_repetition": 9, "overall": 7}
        body = json.dumps({"choices": [{"message": {"content": json.dumps(scores)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _check_eval_dir(d: Path, n: int, tokenizer) -> tuple[dict, list[dict]]:
    for name in ("summary.json", "records.jsonl", "config.json", "tokens.html"):
        assert (d / name).is_file(), name
    assert not list(d.glob(".*.tmp")), "temporary files left behind"
    summary = json.loads((d / "summary.json").read_text())
    records = [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines()]
    assert set(summary) == SUMMARY_KEYS
    assert len(records) == summary["n"] == n
    L, E = summary["num_layers"], summary["exit_layers"]
    assert set(summary["exit_hist"]) == {str(x) for x in E + [L]}
    assert sum(summary["exit_hist"].values()) == pytest.approx(1.0)
    if summary["target_hist"] is not None:
        assert sum(summary["target_hist"].values()) == pytest.approx(1.0)
        assert 0.0 <= summary["tv_distance"] <= 1.0
    all_layers = []
    for r in records:
        assert set(r) == RECORD_KEYS
        assert len(r["tokens"]) == len(r["exit_layers"]) >= 1
        assert set(r["exit_layers"]) <= set(E + [L])
        assert 0.0 <= r["score"] <= 1.0
        all_layers += r["exit_layers"]
    assert summary["mean_length"] == pytest.approx(len(all_layers) / n)
    assert summary["early_exit_rate"] == pytest.approx(sum(x < L for x in all_layers) / len(all_layers))
    assert summary["tokens_per_s"] > 0 and summary["prefill_s"] > 0
    if summary["mean_length"] > 1:
        assert summary["decode_ms_per_token"] > 0
    return summary, records


def test_eval_base_and_trained_then_report(tiny_dir, tmp_path, judge_url):
    tokenizer = tiny_tokenizer()
    # A base model through the command line: no exits, whatever the offset; batches of 3 and 1.
    base_dir = tmp_path / "base"
    main(
        [
            "eval",
            "--model",
            str(tiny_dir),
            "--out",
            str(base_dir),
            "--task",
            "rg:chain_sum",
            "--n",
            "4",
            "--max-new-tokens",
            "10",
            "--batch-size",
            "3",
            "--offset",
            "2",
            "--show",
            "1",
        ]
    )
    base, base_records = _check_eval_dir(base_dir, 4, tokenizer)
    assert base["label"] == "base" and base["stage"] == "base" and base["offset"] is None
    assert base["num_layers"] == 6 and base["exit_layers"] == [1, 2, 3, 4, 5]  # every layer below 6: L // 6 = 1
    assert base["target"] == {
        "kl_factor": 1.0,
        "source": f"the default, since the lineage has no KL factor (base model {tiny_dir})",
    }
    assert base["speed_baseline"] == {"skipped": "the evaluated model is the base model"}
    assert base["speedup_vs_base"] is None
    assert base["early_exit_rate"] == 0.0 and base["als"] == 0.0 and base["flop_savings"] == pytest.approx(0.0)
    assert base["exit_hist"]["6"] == 1.0
    assert base["coherence"] is None and all(r["judge"] is None for r in base_records)

    # A trained-style run folder (fresh heads + LoRA saved as a checkpoint), offset 6: q = σ(0) per layer.
    run = tmp_path / "run"
    EarlyExitModel.from_base(str(tiny_dir), ExitConfig(exit_layers=[2, 4])).save_pretrained(run / "model")
    _StubJudge.systems.clear()
    trained = evaluate(
        EvalConfig(
            model=str(run / "model"),
            out=str(tmp_path / "exits"),
            task="rg:chain_sum",
            n=4,
            max_new_tokens=10,
            offset=6.0,
            seed=1,
            judge=f"openai:{judge_url}#stub",
            rubric="paper",
            show=0,
        )
    )
    summary, records = _check_eval_dir(tmp_path / "exits", 4, tokenizer)
    assert summary == json.loads(json.dumps(trained))
    assert summary["label"] == "run" and summary["offset"] == 6.0 and summary["exit_layers"] == [2, 4]
    assert 0.3 < summary["early_exit_rate"] < 1.0  # P(exit) = 1 − 0.5² = 0.75 per token
    assert 0.0 < summary["als"] < summary["early_exit_rate"]
    assert 0.0 < summary["flop_savings"] < 1.0
    assert summary["coherence"]["mean"] == 7 and summary["coherence"]["n_judged"] == 4
    assert summary["coherence"]["rubric"] == "paper"
    assert len(_StubJudge.systems) == 4
    assert all("correct and explicit chain of thought" in p for p in _StubJudge.systems)
    assert all(r["judge"]["overall"] == 7 and r["judge_missing"] is None for r in records)
    # A saved model outside a run: unknown lineage, target at the default F = 1, said so.
    assert summary["stage"] == "unknown" and summary["target"]["kl_factor"] == 1.0
    assert summary["target"]["source"].startswith("the default, since the lineage has no KL factor (saved model ")
    # The base model timed on the same prompts: the speedup is the ratio of the two decode times per token.
    speed = summary["speed_baseline"]
    assert speed["decode_tokens"] > 0 and speed["decode_ms_per_token"] > 0
    assert speed["decode_ms_per_token"] == pytest.approx(1000 * speed["decode_s"] / speed["decode_tokens"])
    assert summary["speedup_vs_base"] == pytest.approx(speed["decode_ms_per_token"] / summary["decode_ms_per_token"])

    md, page = report(ReportConfig(dirs=[str(base_dir), str(tmp_path / "exits")], out=str(tmp_path / "report")))
    assert md.is_file() and page.is_file()
    html = page.read_text()
    assert "base" in html and "run" in html and "data:image/png;base64," in html
    assert len(list((tmp_path / "report" / "figures").glob("exit_hist_*.png"))) == 2
    assert len(list((tmp_path / "report" / "tokens").glob("*.html"))) == 2


def test_cli_yaml_without_target_and_no_exits(tiny_dir, tmp_path):
    """A trained model at --offset=-inf never exits; target: false in the YAML skips the target."""
    EarlyExitModel.from_base(str(tiny_dir), ExitConfig(exit_layers=[3])).save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "eval.yaml").write_text("target: false\nn: 2\nmax_new_tokens: 4\nshow: 0\n")
    main(
        [
            "eval",
            "--config",
            str(tmp_path / "eval.yaml"),
            "--model",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "out"),
            "--offset=-inf",
            "--no-speed-baseline",
        ]
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["label"] == "run" and summary["offset"] is None
    assert summary["early_exit_rate"] == 0.0 and summary["exit_hist"] == {"3": 0.0, "6": 1.0}
    assert summary["target_hist"] is None and summary["tv_distance"] is None and summary["kl_factor"] is None
    assert summary["target"] is None
    assert summary["speed_baseline"] == {"skipped": "speed_baseline is off"} and summary["speedup_vs_base"] is None
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["offset"] is None and config["n"] == 2


def test_lenient_answers_reach_the_task(tiny_dir, tmp_path, monkeypatch):
    """Strict answer extraction unless asked: the flag is passed to the real task (spied, not replaced)."""
    import thinkaloud.data.tasks as tasks_module  # the eval reads its task with tasks.load_items

    real, built = tasks_module.get_task, []
    monkeypatch.setattr(tasks_module, "get_task", lambda spec, **kw: built.append(real(spec, **kw)) or built[-1])
    for lenient in (True, False):
        evaluate(
            EvalConfig(
                model=str(tiny_dir),
                out=str(tmp_path / str(lenient)),
                task="rg:chain_sum",
                n=1,
                max_new_tokens=2,
                target=False,
                lenient_answers=lenient,
                show=0,
            )
        )
        assert json.loads((tmp_path / str(lenient) / "config.json").read_text())["lenient_answers"] is lenient
    assert [task.lenient for task in built] == [True, False]


def test_token_strings_add_up_to_the_decoded_text():
    tokenizer = tiny_tokenizer()
    ids = tokenizer("héllo 4 + 7 = 11 ü€", add_special_tokens=False)["input_ids"]
    pieces = token_strings(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == "héllo 4 + 7 = 11 ü€"
    assert " 11" in pieces and "€" in pieces  # multi-byte characters land whole on the token completing them
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, len(tokenizer), (60,), generator=g).tolist()  # invalid byte runs, special tokens
    pieces = token_strings(tokenizer, noise)
    assert len(pieces) == 60
    assert "".join(pieces) == tokenizer.decode(noise, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_judge_spec_and_config_validation(tmp_path):
    assert parse_judge_spec("openai:http://localhost:8000/v1#qwen") == ("openai", "http://localhost:8000/v1", "qwen")
    assert parse_judge_spec("hf:smollm2-135m") == ("hf", "smollm2-135m", None)
    for bad in ("openai:http://x/v1", "openai:localhost#m", "hf:", "gpt-4"):
        with pytest.raises(ValueError, match="judge must be"):
            parse_judge_spec(bad)
    ok = dict(model="m", out=str(tmp_path))
    for bad in (
        {"n": 0},
        {"split": "dev"},
        {"temperature": 0.0},
        {"top_p": 1.5},
        {"kl_factor": -1.0},
        {"offset": float("inf")},
        {"judge": "gpt-4"},
        {"rubric": "gpt"},
    ):
        with pytest.raises(ValueError):
            EvalConfig(**ok, **bad)
    with pytest.raises(ValueError, match="kl_factor must be > 0"):
        EvalConfig(**ok, kl_factor=0.0)  # F = 0 was accepted and gave a target of 1 everywhere
    with pytest.raises(ValueError, match="not a directory"):
        ReportConfig(dirs=[str(tmp_path / "missing")], out=str(tmp_path))


def test_cli_help_lists_the_fields_and_the_paper_settings(capsys):
    for verb, flags in (
        (
            "eval",
            [
                "--model",
                "--kl-factor",
                "--target",
                "--no-target",
                "--judge",
                "--rubric",
                "--do-sample",
                "--show",
                "--speed-baseline",
                "--lenient-answers",
                "paper: up to 400",
                "paper: 50 GSM8K",
                "paper: GPT-5",
            ],
        ),
        ("sweep", ["--rubric", "--lenient-answers", "paper: up to 400", "paper: 50 GSM8K", "paper: GPT-5"]),
        ("report", ["--dirs", "--out"]),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([verb, "--help"])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert all(flag in text for flag in flags), text


def test_the_target_line_says_plainly_where_its_kl_factor_comes_from():
    config = EvalConfig(model="smollm2-135m", out="unused")
    base = resolve_target(config, Lineage("base", "base model smollm2-135m"))
    assert describe_target(base) == (
        "KL factor 1 — the default, since the lineage has no KL factor (base model smollm2-135m)"
    )
    rl = Lineage("rl", "sft run runs/sft", kl_factor=0.25, via=("runs/rl",))
    assert describe_target(resolve_target(config, rl)) == "KL factor 0.25 — sft run runs/sft (via RL run runs/rl)"
    given = EvalConfig(model="smollm2-135m", out="unused", kl_factor=2.0)
    assert describe_target(resolve_target(given, rl)) == "KL factor 2 — kl_factor given"


def test_eval_on_a_named_file_uses_every_row_and_says_so(tiny_dir, tmp_path, capsys):
    data = tmp_path / "test.jsonl"  # three questions that a hash split would all put in "train"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in (3, 4, 5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(n=3, max_new_tokens=2, measures=[], speed_baseline=False, target=False, show=0)
    summary = evaluate(EvalConfig(model=str(tiny_dir), out=str(tmp_path / "out"), task=f"gsm8k:{data}", **common))
    assert summary["n"] == 3 and summary["split"] == "test"
    assert summary["data"] == {"file": str(data), "split_by_hash": False, "rows_in_file": 3, "rows_used": 3}
    shown = " ".join(capsys.readouterr().out.split())
    assert "data: 3 items drawn from" in shown and ": all its 3 rows" in shown
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["data"] == summary["data"]
    generated = evaluate(EvalConfig(model=str(tiny_dir), out=str(tmp_path / "rg"), task="rg:chain_sum", **common))
    assert generated["data"] is None and "items drawn from" not in capsys.readouterr().out
