"""A model's lineage (base / SFT / RL) from its saved configs, the eval's target read from it, and leakage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.tiny import tiny_calibration, tiny_model_dir
from thinkaloud.config import ExitConfig
from thinkaloud.eval.lineage import LeakageError, lineage
from thinkaloud.eval.run import evaluate
from thinkaloud.measures.config import EvalConfig
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.recorded import META_FILE

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(folder: Path) -> None:
    """A folder that ``load_model`` would read as a saved early-exit model (lineage reads no weights)."""
    folder.mkdir(parents=True)
    (folder / META_FILE).write_text("{}")


def _sft_config(run: Path, calib: str, kl_factor: float) -> Path:
    (run / "config.yaml").write_text(
        yaml.safe_dump({"calib": calib, "out": str(run), "kl_factor": kl_factor, "steps": 3})
    )
    return run


def _sft_run(root: Path, name: str, calib: str, kl_factor: float) -> Path:
    _model(root / name / "model")
    return _sft_config(root / name, calib, kl_factor)


def _rl_config(folder: Path, model: str, task: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"model": model, "out": str(folder), "task": task, "lam": 1.5, "beta": 0.25})
    )


def _calib(folder: Path, task: str, split: str) -> str:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"config": {"task": task, "split": split}, "complete": True}))
    return str(folder)


def test_sft_rl_and_multi_run_rl_lineages(tmp_path):
    calib = _calib(tmp_path / "calib", "gsm8k", "train")
    sft = _sft_run(tmp_path, "sft", calib, 2.0)
    for spec in (sft, sft / "model"):
        got = lineage(str(spec))
        assert (got.stage, got.kl_factor, got.task, got.calib, got.calib_split) == ("sft", 2.0, "gsm8k", calib, "train")
        assert got.source == f"sft run {sft}" and not got.notes

    rl = tmp_path / "rl"
    _model(rl / "model")
    _rl_config(rl, str(sft), "tom")
    got = lineage(str(rl))
    assert (got.stage, got.kl_factor, got.task, got.calib) == ("rl", 2.0, "tom", calib)
    assert got.source == f"sft run {sft} (via RL run {rl})"

    # Several RL runs: the models are OUT/run-<r>/model, the config is OUT/config.yaml; RL on top of RL.
    multi = tmp_path / "multi"
    _model(multi / "run-1" / "model")
    _rl_config(multi, str(rl), "rg:chain_sum")
    got = lineage(str(multi / "run-1" / "model"))
    assert (got.stage, got.kl_factor, got.task) == ("rl", 2.0, "rg:chain_sum")
    assert got.source == f"sft run {sft} (via RL run {rl} → {multi})"


def test_relative_paths_base_and_unknown(tmp_path, monkeypatch):
    # Paths written relative to the training folder are found from elsewhere (here: from inside runs/).
    monkeypatch.chdir(tmp_path)
    _calib(Path("calib"), "rg:leg_counting", "validation")
    sft = _sft_run(Path("runs"), "sft", "calib", 0.5)
    _model(Path("runs/rl/model"))
    _rl_config(Path("runs/rl"), "runs/sft", "rg:chain_sum")
    monkeypatch.chdir(tmp_path / "runs")
    got = lineage("rl")
    assert (got.stage, got.kl_factor, got.task, got.calib_split) == ("rl", 0.5, "rg:chain_sum", "validation")
    assert Path(got.calib).resolve() == (tmp_path / "calib").resolve()
    assert sft.name in got.source

    assert lineage("smollm2-135m").stage == "base"
    assert lineage("smollm2-135m").kl_factor is None
    _model(tmp_path / "loose")  # a saved model outside a run
    got = lineage(str(tmp_path / "loose"))
    assert got.stage == "unknown" and got.kl_factor is None and "config.yaml" in got.notes[0]
    lost = _sft_run(tmp_path, "lost", str(tmp_path / "gone"), 4.0)  # its calibration was deleted
    got = lineage(str(lost))
    assert got.kl_factor == 4.0 and got.calib is None and "not found" in got.notes[0]
    _model(tmp_path / "from-base" / "model")
    _rl_config(tmp_path / "from-base", "smollm2-135m", "tom")
    got = lineage(str(tmp_path / "from-base"))
    assert (got.stage, got.kl_factor, got.task) == ("rl", None, "tom")
    assert got.source == f"base model smollm2-135m (via RL run {tmp_path / 'from-base'})"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real calibration (train split) of a tiny model, an SFT-style run at F = 2 on it and an RL run on top."""
    root = tmp_path_factory.mktemp("lineage")
    base = tiny_model_dir(root / "base")
    tiny_calibration(root / "calib", base, split="train")
    sft = root / "sft"
    EarlyExitModel.from_base(base, ExitConfig(exit_layers=[2, 4])).save_pretrained(sft / "model")
    _sft_config(sft, str(root / "calib"), 2.0)
    EarlyExitModel.from_base(base, ExitConfig(exit_layers=[2, 4])).save_pretrained(root / "rl" / "model")
    _rl_config(root / "rl", str(sft), "rg:chain_sum")
    return root


def test_eval_compares_with_the_target_the_run_was_trained_for(trained, tmp_path):
    common = dict(n=2, max_new_tokens=4, batch_size=2, offset=2.0, speed_baseline=False, show=0)
    sft = evaluate(EvalConfig(model=str(trained / "sft"), out=str(tmp_path / "sft"), **common))
    assert sft["stage"] == "sft" and sft["task"] == "rg:chain_sum"  # the calibration's task
    assert sft["kl_factor"] == 2.0 and sft["target"] == {"kl_factor": 2.0, "source": f"sft run {trained / 'sft'}"}
    rl = evaluate(EvalConfig(model=str(trained / "rl"), out=str(tmp_path / "rl"), **common))
    assert rl["stage"] == "rl" and rl["kl_factor"] == 2.0
    assert rl["target"]["source"] == f"sft run {trained / 'sft'} (via RL run {trained / 'rl'})"
    # The same completions against F = 2 and an explicit F = 0.25: a lower F gives earlier targets.
    low = evaluate(EvalConfig(model=str(trained / "rl"), out=str(tmp_path / "low"), kl_factor=0.25, **common))
    assert low["target"] == {"kl_factor": 0.25, "source": "kl_factor given"}
    assert low["exit_hist"] == rl["exit_hist"] and low["target_hist"] != rl["target_hist"]
    L = str(low["num_layers"])
    assert low["target_hist"][L] < rl["target_hist"][L]
    config = json.loads((tmp_path / "rl" / "config.json").read_text())
    assert config["kl_factor"] is None and config["resolved"]["target"]["kl_factor"] == 2.0
    assert config["resolved"]["lineage"]["stage"] == "rl"


def test_eval_refuses_items_of_the_calibration(trained, tmp_path):
    with pytest.raises(LeakageError, match=r"2 of the 2 eval items are in the calibration .*rg:chain_sum/train") as e:
        evaluate(
            EvalConfig(
                model=str(trained / "rl"), out=str(tmp_path / "leak"), n=2, split="train", max_new_tokens=2, show=0
            )
        )
    assert "--split" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "leak").exists()  # refused before anything ran


def test_calibrating_and_evaluating_on_the_same_file_is_refused(tmp_path):
    """A file is used whole for every split, so the eval's items are the calibration's: the leakage check refuses."""
    data = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": f"Ann has {i} apples and buys {i + 3}. How many?", "answer": f"#### {2 * i + 3}"} for i in range(5)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = tiny_model_dir(tmp_path / "base")
    tiny_calibration(tmp_path / "calib", base, task=f"gsm8k:{data}", n=3, split="train")
    sft = tmp_path / "sft"
    EarlyExitModel.from_base(base, ExitConfig(exit_layers=[2, 4])).save_pretrained(sft / "model")
    _sft_config(sft, str(tmp_path / "calib"), 1.0)
    for task in (None, f"gsm8k:{data}"):  # the lineage's task, or the same file named again
        with pytest.raises(LeakageError, match=r"3 of the 5 eval items are in the calibration") as e:
            evaluate(EvalConfig(model=str(sft), out=str(tmp_path / "eval"), task=task, n=5, split="test", show=0))
        assert "\n" not in str(e.value)
    assert not (tmp_path / "eval").exists()  # refused before anything ran
