"""The model card: README.md beside the weights, in the Hugging Face format, with what a reader needs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.tiny import build_tiny
from thinkaloud.cli import main
from thinkaloud.config import ExitConfig
from thinkaloud.model.card import CARD_FILE, hub_base_model
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.recorded import record_offset, recorded_offset

pytestmark = pytest.mark.usefixtures("one_thread")


def split_card(text: str) -> tuple[dict, str]:
    """(YAML front matter, body) of a model card."""
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def sft_run(root, kl_factor: float = 0.5):
    """A run folder as `thinkaloud sft` leaves it: config.yaml, then model/ saved at the end."""
    root.mkdir()
    (root / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "calib": "runs/calib",
                "out": str(root),
                "model": None,
                "kl_factor": kl_factor,
                "exit_loss": "expected",
                "steps": 30,
                "batch_size": 4,
                "head_lr": 1e-3,
                "lora_lr": 1e-4,
                "seed": 0,
            }
        )
    )
    model = EarlyExitModel.from_base(build_tiny("qwen3"), ExitConfig(exit_layers=[2, 4], lora_r=4, lora_alpha=8))
    return model, model.save_pretrained(root / "model")


def test_a_saved_model_explains_itself(tmp_path):
    _, saved = sft_run(tmp_path / "sft")
    meta, body = split_card((saved / CARD_FILE).read_text())
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"thinkaloud", "early-exit", "lora", "qwen3", "sft"} <= set(meta["tags"])
    assert "base_model" not in meta  # a model built in memory has no hub id to link
    saved_meta = json.loads((saved / "thinkaloud.json").read_text())
    assert f"| base model hash (unembedding) | `{saved_meta['unembedding_hash']}` |" in body
    assert "| decoder layers L | 6 |" in body
    assert "| exit layers | 2, 4 (no exit = 6) |" in body
    assert "| LoRA | r=4, alpha=8, dropout=0.05, targets q_proj, k_proj, v_proj, o_proj |" in body
    assert "| training stage | sft |" in body and "| sft: kl_factor | 0.5 |" in body
    assert "| sft: calib | runs/calib |" in body and "| sft: steps | 30 |" in body
    assert "Last evaluation" not in body  # none known yet
    assert "thinkaloud chat --model" in body and "python -m thinkaloud.serve.harness" in body


def test_the_card_verb_adds_an_eval_and_the_recorded_offset(tmp_path, capsys):
    _, saved = sft_run(tmp_path / "sft")
    record_offset(
        saved,
        1.5,
        {
            "epsilon": 0.1,
            "delta": 0.05,
            "risk": "token",
            "task": "rg:chain_sum",
            "split": "val",
            "n": 64,
            "max_new_tokens": 128,
        },
    )
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "summary.json").write_text(
        json.dumps(
            {
                "task": "rg:chain_sum",
                "split": "test",
                "n": 32,
                "offset": 1.5,
                "accuracy": 0.625,
                "early_exit_rate": 0.4,
                "als": 0.125,
                "flop_savings": 0.1,
                "tokens_per_s": 88.0,
                "speedup_vs_base": 1.2,
                "coherence": {"mean": 7.25},
            }
        )
    )
    assert main(["card", "--model", str(tmp_path / "sft"), str(ev)]) == 0
    _, body = split_card((saved / CARD_FILE).read_text())
    assert f"## Last evaluation ({ev})" in body
    for row in (
        "| accuracy | 62.5% |",
        "| ALS (average layer savings) | 12.5% |",
        "| early-exit rate | 40.0% |",
        "| decode speedup vs base | 1.20× |",
        "| coherence (judge overall, 1–10) | 7.25 |",
        "| items | 32 |",
    ):
        assert row in body, row
    assert "| recorded offset | 1.5: chosen by `thinkaloud risk`: token risk <= 0.1" in body
    assert recorded_offset(saved) is not None  # the card is not part of the weights' fingerprint

    # Without eval folders given, the newest summary.json inside the run folder is found.
    ev.rename(tmp_path / "sft" / "eval")
    assert main(["card", "--model", str(saved)]) == 0
    assert f"## Last evaluation ({tmp_path / 'sft' / 'eval'})" in (saved / CARD_FILE).read_text()
    assert main(["card", "--model", str(saved), str(tmp_path / "nothing")]) == 2
    assert "no summary.json in" in capsys.readouterr().err


def test_saving_again_keeps_the_card_current(tmp_path):
    model, saved = sft_run(tmp_path / "sft")
    with torch.no_grad():
        model.heads.bias.fill_(-1.0)
    (tmp_path / "sft" / "config.yaml").write_text(
        yaml.safe_dump({"model": "runs/sft", "lam": 1.5, "task": "tom", "steps": 10, "offset": 0.0, "kl_target": 0.75})
    )
    model.save_pretrained(saved)
    meta, body = split_card((saved / CARD_FILE).read_text())
    assert "rl" in meta["tags"] and "| training stage | rl |" in body and "| rl: lam | 1.5 |" in body
    assert "| rl: kl_target | 0.75 |" in body  # the KL budget, when RL had one


def test_base_model_names_for_the_hub(tmp_path):
    assert hub_base_model("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_base_model("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    assert hub_base_model(str(tmp_path)) is None and hub_base_model("./models/x") is None


def test_an_unreadable_summary_in_the_run_never_stops_a_save(tmp_path):
    model, saved = sft_run(tmp_path / "sft")
    (tmp_path / "sft" / "eval").mkdir()
    (tmp_path / "sft" / "eval" / "summary.json").write_text('{"accuracy": 0.5')  # cut off mid-write
    (tmp_path / "sft" / "config.yaml").write_text("calib: [unclosed\n")
    model.save_pretrained(saved)
    _, body = split_card((saved / CARD_FILE).read_text())
    assert "Last evaluation" not in body and "| training stage | untrained |" in body
