"""The command line: user errors as one line with status 2, bugs with their traceback, positional
fields, ``python -m thinkaloud``, and the rule that tells a model folder from a hub id."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from thinkaloud import cli
from thinkaloud.errors import DataError, ModelNotFoundError, UsageError, UserError
from thinkaloud.hub import looks_like_path, resolve_model_path
from thinkaloud.model.loading import load_model


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Exit status and the stderr lines of ``thinkaloud argv…``, run in-process."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def assert_user_error(capsys, argv: list[str], *words: str) -> str:
    code, lines = run_cli(capsys, *argv)
    assert code == 2, lines
    assert len(lines) == 1, lines
    verb = argv[0] if argv and argv[0] in cli.VERBS else None
    assert lines[0].startswith(f"thinkaloud {verb}: error: " if verb else "thinkaloud: error: "), lines
    assert all(w in lines[0] for w in words), lines
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# User errors of the real verbs: one line, status 2


def test_missing_config_file(capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    assert_user_error(capsys, ["eval", "--config", str(missing)], "no such file", str(missing))


def test_missing_gsm8k_file(capsys, tmp_path):
    assert_user_error(
        capsys,
        ["eval", "--model", "m", "--out", str(tmp_path), "--task", "gsm8k:/nonexistent.jsonl"],
        "/nonexistent.jsonl",
        "does not exist",
    )


def test_malformed_gsm8k_line_is_named(capsys, tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "2\\n#### 2"}\n{"question": "no answer"\n')
    assert_user_error(
        capsys,
        ["eval", "--model", "m", "--out", str(tmp_path / "o"), "--task", f"gsm8k:{data}", "--n", "1"],
        f"{data}:2",
        "invalid JSON",
    )


def test_unknown_task_and_unknown_reasoning_gym_dataset(capsys, tmp_path):
    assert_user_error(
        capsys,
        ["eval", "--model", "m", "--out", str(tmp_path), "--task", "nosuch"],
        "unknown task 'nosuch'",
        "gsm8k",
        "tom",
    )
    assert_user_error(
        capsys,
        ["calibrate", "--out", str(tmp_path), "--task", "rg:chain_sun"],
        "unknown reasoning-gym dataset 'chain_sun'",
        "chain_sum",
    )


class _Stop(Exception):
    """Raised where a job would load its model: what it read before is all it reads of its inputs."""


def _stop(*args, **kwargs):
    raise _Stop


def test_eval_reads_its_data_file_once_and_the_job_raises_its_errors(capsys, tmp_path, monkeypatch):
    from thinkaloud.data import gsm8k
    from thinkaloud.eval import run

    data = tmp_path / "test.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "2\\n#### 2"}\n')
    reads = []
    real = gsm8k.read_gsm8k_jsonl
    monkeypatch.setattr(gsm8k, "read_gsm8k_jsonl", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(run, "load_model", _stop)
    with pytest.raises(_Stop):
        cli.main(["eval", "--model", "m", "--out", str(tmp_path / "o"), "--task", f"gsm8k:{data}", "--n", "1"])
    assert reads == [data]  # by the job, not once more by the command line before it
    data.write_text('{"question": "no answer"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:1: expected an object") as e:
        run.evaluate(run.EvalConfig(model="m", out=str(tmp_path / "o"), task=f"gsm8k:{data}", n=1))
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    data.write_text('{"question": "1 + 1?", "answer": "2\\n#### 2"}\n')
    with pytest.raises(DataError, match="asked for 2 GSM8K items"):
        run.evaluate(run.EvalConfig(model="m", out=str(tmp_path / "o"), task=f"gsm8k:{data}", n=2))


def test_sft_reads_its_calibration_once_and_the_job_raises_its_errors(tmp_path, monkeypatch):
    from thinkaloud.data import calibrate
    from thinkaloud.train import sft

    calib = tmp_path / "calib"
    calib.mkdir()
    manifest = {"complete": True, "shards": [], "config": {"model": "m"}, "exit_layers": [2], "items": []}
    (calib / "manifest.json").write_text(json.dumps(manifest))
    reads = []
    real = calibrate.load_calibration
    counting = lambda path: reads.append(path) or real(path)  # noqa: E731 (one spy for both names)
    monkeypatch.setattr(calibrate, "load_calibration", counting)
    monkeypatch.setattr(sft, "load_calibration", counting)
    monkeypatch.setattr(sft, "load_model", _stop)
    with pytest.raises(_Stop):
        cli.main(["sft", "--calib", str(calib), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert len(reads) == 1
    (calib / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(DataError, match="incomplete calibration"):
        sft.train_sft(sft.SFTConfig(calib=str(calib), out=str(tmp_path / "o"), device="cpu"))


def test_unsupported_model_lists_the_families(capsys, tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16).save_pretrained(tmp_path / "gpt2")
    assert_user_error(
        capsys,
        ["eval", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "o")],
        "'gpt2' is not supported",
        "llama, qwen2, qwen3, mistral",
    )


def test_a_folder_that_is_no_calibration(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(
        capsys,
        ["sft", "--calib", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
        str(tmp_path / "empty"),
        "manifest.json",
        "thinkaloud calibrate",
    )


def test_a_model_path_that_does_not_exist(capsys, tmp_path):
    assert_user_error(
        capsys, ["eval", "--model", "/nonexistent", "--out", str(tmp_path)], "no such model folder: /nonexistent"
    )
    assert_user_error(
        capsys,
        ["rl", "--model", "./runs/nothing-here", "--out", str(tmp_path)],
        "no such model folder: ./runs/nothing-here",
    )


def test_bad_flag_values_and_config_validation(capsys, tmp_path):
    common = ["--model", "m", "--out", str(tmp_path)]
    assert_user_error(capsys, ["eval", *common, "--n", "abc"], "argument --n", "invalid int value: 'abc'")
    assert_user_error(
        capsys,
        ["sweep", "--calib", "c", "--out", "o", "--kl-factors", "1,x"],
        "argument --kl-factors",
        "invalid comma-separated float value",
    )
    assert_user_error(capsys, ["eval", *common, "--n", "0"], "n must be >= 1, got 0")
    assert_user_error(capsys, ["eval", *common, "--no-such-flag"], "unrecognized arguments: --no-such-flag")
    assert_user_error(capsys, ["eval", "--out", str(tmp_path)], "required", "--model")
    assert_user_error(capsys, ["nosuch"], "invalid choice: 'nosuch'")
    assert_user_error(capsys, [], "required", "VERB")


def test_config_file_errors(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("model: m\nout: o\nnumber: 3\n")
    assert_user_error(capsys, ["eval", "--config", str(tmp_path / "bad.yaml")], "unknown fields ['number']")
    (tmp_path / "list.yaml").write_text("- model\n")
    assert_user_error(capsys, ["eval", "--config", str(tmp_path / "list.yaml")], "expected a mapping")
    (tmp_path / "broken.yaml").write_text("model: [m\n")
    assert_user_error(capsys, ["eval", "--config", str(tmp_path / "broken.yaml")], "while parsing")
    (tmp_path / "typed.yaml").write_text("model: m\nout: o\nn: many\n")
    assert_user_error(capsys, ["eval", "--config", str(tmp_path / "typed.yaml")])  # n: "many" < 1 fails


# ---------------------------------------------------------------------------------------------------
# The rule, on a toy verb: which exceptions of a running job are the user's


@dataclass
class ToyConfig:
    name: str = field(metadata={"help": "required; from the command line or the YAML file"})
    folders: list[str] = field(default_factory=list, metadata={"help": "folders", "positional": True})
    scale: float = field(default=1.0, metadata={"help": "a number"})
    fail: str = field(default="none", metadata={"help": "what the job raises"})


def toy_job(config: ToyConfig):
    failures = {
        "user": UserError("the toy needs a better name"),
        "path": FileExistsError(f"{config.name} exists"),
        "bug": ValueError("an internal shape mismatch"),
        "interrupt": KeyboardInterrupt(),
    }
    if config.fail in failures:
        raise failures[config.fail]
    print(f"{config.name} {config.folders} {config.scale}")
    return 0


@pytest.fixture
def toy_verb(monkeypatch):
    monkeypatch.setitem(cli.VERBS, "toy", (__name__, "ToyConfig", "toy_job", "a toy job"))


def test_user_errors_of_a_running_job_are_one_line(capsys, toy_verb):
    assert_user_error(capsys, ["toy", "--name", "x", "--fail", "user"], "the toy needs a better name")
    assert_user_error(capsys, ["toy", "--name", "x", "--fail", "path"], "x exists")


def test_a_bug_keeps_its_traceback(toy_verb):
    with pytest.raises(ValueError, match="internal shape mismatch"):
        cli.main(["toy", "--name", "x", "--fail", "bug"])


def test_debug_shows_the_traceback_before_the_line(capsys, toy_verb):
    for argv in (
        ["--debug", "toy", "--name", "x", "--fail", "user"],
        ["toy", "--name", "x", "--fail", "user", "--debug"],
    ):
        code, lines = run_cli(capsys, *argv)
        assert code == 2 and lines[0].startswith("Traceback") and len(lines) > 3
        assert lines[-1] == "thinkaloud toy: error: the toy needs a better name"


def test_keyboard_interrupt(capsys, toy_verb):
    code, lines = run_cli(capsys, "toy", "--name", "x", "--fail", "interrupt")
    assert code == 130 and lines == ["thinkaloud toy: interrupted"]


def test_required_field_from_the_config_file(capsys, toy_verb, tmp_path):
    (tmp_path / "toy.yaml").write_text("name: from-yaml\nscale: 2.0\n")
    assert cli.main(["toy", "--config", str(tmp_path / "toy.yaml"), "--scale", "3"]) == 0
    assert capsys.readouterr().out.strip() == "from-yaml [] 3.0"
    assert_user_error(capsys, ["toy", "--scale", "3"], "the following arguments are required: --name")


# ---------------------------------------------------------------------------------------------------
# Positional fields


def toy_parser() -> argparse.ArgumentParser:
    parser = cli._Parser(prog="toy")
    cli.add_dataclass_arguments(parser, ToyConfig)
    return parser


def parse_toy(*argv: str) -> ToyConfig:
    return cli.build_config(ToyConfig, toy_parser().parse_intermixed_args(list(argv)))


def test_positional_field_fills_the_same_list_as_its_flag():
    by_flag = parse_toy("--name", "n", "--folders", "runs/a,runs/b")
    assert by_flag.folders == ["runs/a", "runs/b"]
    assert parse_toy("runs/a", "runs/b", "--name", "n") == by_flag
    assert parse_toy("--name", "n", "runs/a", "runs/b") == by_flag
    assert parse_toy("runs/a", "--name", "n", "runs/b") == by_flag  # interleaved with flags
    assert parse_toy("--name", "n").folders == []  # the field's default
    with pytest.raises(UsageError, match="as arguments or with --folders, not both"):
        parse_toy("runs/a", "--name", "n", "--folders", "runs/b")
    assert "FOLDERS" in toy_parser().format_help()


def test_a_required_positional_field_names_both_forms():
    @dataclass
    class Needs:
        dirs: list[str] = field(metadata={"help": "folders", "positional": True})

    parser = cli._Parser(prog="needs")
    cli.add_dataclass_arguments(parser, Needs)
    with pytest.raises(UsageError, match=r"required: --dirs \(or DIRS arguments\)"):
        cli.build_config(Needs, parser.parse_intermixed_args([]))
    assert cli.build_config(Needs, parser.parse_intermixed_args(["a", "b"])).dirs == ["a", "b"]

    @dataclass
    class NotAList:
        name: str = field(metadata={"positional": True})

    with pytest.raises(TypeError, match="only a list field can be positional"):
        cli.add_dataclass_arguments(cli._Parser(prog="x"), NotAList)


# ---------------------------------------------------------------------------------------------------
# Model names: a path or a hub id


def test_looks_like_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "local-model").mkdir()
    for spec in (
        "/nonexistent",
        "./x",
        "../x",
        "~/models/x",
        ".hidden",
        "a/b/c",
        "runs/sft",
        "local-model",
        "name with space",
        "a\\b",
    ):
        assert looks_like_path(spec), spec
    for spec in ("Qwen/Qwen3-4B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "gpt2", "smollm2-135m"):
        assert not looks_like_path(spec), spec
    assert resolve_model_path("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    assert resolve_model_path("local-model") == "local-model"
    with pytest.raises(ModelNotFoundError, match="no such model folder: runs/sft"):
        resolve_model_path("runs/sft")


def test_load_model_names_the_missing_folder():
    with pytest.raises(ModelNotFoundError, match="no such model folder: /nonexistent"):
        load_model("/nonexistent")
    assert issubclass(ModelNotFoundError, FileNotFoundError)  # callers catching FileNotFoundError still do


def test_load_model_with_an_unreachable_hub_id_says_so_in_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: fails at once
    with pytest.raises(ModelNotFoundError, match="cannot load model 'nosuchorg/nosuchmodel'") as info:
        load_model("nosuchorg/nosuchmodel")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# python -m thinkaloud


def run_module(*argv: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "thinkaloud", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_python_dash_m_is_the_command(tmp_path):
    shown = run_module("--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: thinkaloud")
    assert all(verb in shown.stdout for verb in cli.VERBS)
    failed = run_module("eval", "--model", "m", "--out", str(tmp_path / "o"), "--n", "0", cwd=tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == ["thinkaloud eval: error: n must be >= 1, got 0"]
