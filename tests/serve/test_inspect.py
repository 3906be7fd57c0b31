"""The Inspect model provider on a tiny saved model, offline: ``inspect_ai.eval`` of a local task by the
registered name ``thinkaloud/<folder>``, then the log read back: every sample carries its exits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

inspect_ai = pytest.importorskip("inspect_ai")

from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.log import read_eval_log
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig, get_model
from inspect_ai.scorer import match
from inspect_ai.solver import generate

from tests.tiny import tiny_model_dir
from thinkaloud import EarlyExitModel, ExitConfig
from thinkaloud.serve.inspect_provider import conversation

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A saved early-exit model whose heads fire half the time at layers 2 and 4 (of 6)."""
    root = tmp_path_factory.mktemp("inspect")
    model = EarlyExitModel.from_base(tiny_model_dir(root / "base"), ExitConfig(exit_every=2))
    with torch.no_grad():
        model.heads.bias.fill_(0.0)
    return model.save_pretrained(root / "saved")


def tiny_task() -> Task:
    return Task(
        dataset=[Sample(input="2+2=", target="4"), Sample(input="3+3=", target="6"), Sample(input="1+1=", target="2")],
        solver=[generate()],
        scorer=match(),
        config=GenerateConfig(max_tokens=6),
    )


def test_inspect_eval_puts_exits_in_each_sample(saved, tmp_path):
    logs = inspect_eval(
        tiny_task(),
        model=f"thinkaloud/{saved}",  # an absolute path: "thinkaloud//tmp/…"
        model_args={"offset": 1},
        log_dir=str(tmp_path / "logs"),
        display="none",
    )
    assert logs[0].status == "success", logs[0].error
    log = read_eval_log(logs[0].location)
    assert len(log.samples) == 3 and log.results.scores[0].name == "match"
    exited = 0
    for sample in log.samples:
        meta = sample.output.metadata
        layers = meta["exit_layers"]
        assert 0 < len(layers) <= 6 and set(layers) <= {2, 4, 6}
        assert meta["num_layers"] == 6 and meta["exit_heads"] == [2, 4] and meta["offset"] == 1
        assert meta["exit_rate"] == pytest.approx(sum(x < 6 for x in layers) / len(layers))
        assert meta["als"] == pytest.approx(1 - sum(layers) / (6 * len(layers)))
        assert sample.output.usage.output_tokens == len(layers)
        exited += sum(x < 6 for x in layers)
    assert exited > 0  # heads at bias 0 and offset 1 fire often


def test_exits_off_and_reproducible(saved):
    model = get_model(f"thinkaloud/{saved}", offset="-inf", memoize=False)
    again = get_model(f"thinkaloud/{saved}", memoize=False)
    sample = [ChatMessageUser(content="5+1=")]

    off = asyncio.run(model.generate(sample, config=GenerateConfig(max_tokens=5)))
    assert off.metadata["offset"] is None and off.metadata["exit_rate"] == 0.0
    assert set(off.metadata["exit_layers"]) == {6}
    a = asyncio.run(again.generate(sample, config=GenerateConfig(max_tokens=5)))
    b = asyncio.run(again.generate(sample, config=GenerateConfig(max_tokens=5)))
    assert a.metadata["exit_layers"] == b.metadata["exit_layers"] and a.completion == b.completion
    assert a.metadata["offset"] == 0.0 and "default" in a.metadata["offset_source"]


def test_conversation_and_bad_arguments(saved):
    system, turns = conversation([ChatMessageSystem(content="Be brief."), ChatMessageUser(content="Hi")])
    assert system == "Be brief." and turns == [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="unknown model arguments"):
        get_model(f"thinkaloud/{saved}", temperature_of_exits=2, memoize=False)
    with pytest.raises(ValueError, match="offset"):
        get_model(f"thinkaloud/{saved}", offset="nan", memoize=False)
