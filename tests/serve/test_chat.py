"""``thinkaloud generate`` and ``thinkaloud chat`` on a tiny saved model, used as a person uses them:
the chat driven in tmux (keys in, screen out), generate's JSON records, prompt files and streaming."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from tests.eval.test_run import tiny_tokenizer as bpe_tokenizer
from tests.tiny import tiny_model_dir, tiny_tokenizer
from thinkaloud.cli import main
from thinkaloud.config import ExitConfig
from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.task import render_prompt
from thinkaloud.errors import UserError
from thinkaloud.eval.decode import token_strings
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.recorded import record_offset
from thinkaloud.serve.chat import RECORD_KEYS
from thinkaloud.serve.chat_input import read_prompts, render_conversation
from thinkaloud.serve.stream import TokenStream

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny Llama with exit heads at layers 2 and 4 that fire half the time (bias 0), saved as a folder."""
    root = tmp_path_factory.mktemp("chat")
    model = EarlyExitModel.from_base(tiny_model_dir(root / "base"), ExitConfig(exit_every=2))
    with torch.no_grad():
        model.heads.bias.fill_(0.0)
    return model.save_pretrained(root / "saved")


# ---------------------------------------------------------------------------------------------------
# thinkaloud chat in tmux


class Tmux:
    """One tmux server of our own (its own socket), one window running a command."""

    def __init__(self, command: str):
        self.socket = f"thinkaloud-test-{os.getpid()}"
        self.tmux("new-session", "-d", "-s", "t", "-x", "110", "-y", "50", command)
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True).stdout

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t", *(["-e"] if escapes else []))

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def wait(self, done, what: str, timeout: float = 180.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.screen()
            if done(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_chat_in_tmux(saved):
    command = (
        f"cd {REPO} && HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 COLORTERM=truecolor {sys.executable} -m thinkaloud "
        f"chat --model {saved} --max-new-tokens 400; echo chat exited with status $?"
    )
    term = Tmux(command)
    try:
        screen = term.wait(lambda s: "you>" in s, "the prompt")
        assert "exit layers 2, 4 of 6" in screen and "offset 0: the default" in screen
        assert "layer 2 / 6" in screen and "layer 6 / 6 (no exit)" in screen  # the legend

        # Ctrl-C while the answer streams: the answer stops, its statistics show, the chat goes on.
        term.keys("Hello, how are you", "Enter")
        term.wait(lambda s: len(s.split("you> Hello, how are you")[-1].strip()) > 30, "the answer to stream")
        term.keys("C-c")
        screen = term.wait(lambda s: s.count("you>") == 2, "the prompt after Ctrl-C")
        stats = [line for line in screen.splitlines() if "tokens · exit rate" in line]
        assert len(stats) == 1 and stats[0].endswith("· stopped"), screen
        assert 0 < int(stats[0].split()[0]) < 400  # stopped before max_new_tokens

        colored = term.screen(escapes=True)
        assert "48;2;68;1;84" in colored  # layer 2's colour (viridis at 0): a token exited there
        assert "48;2;230;230;230" in colored  # no exit: grey

        # /offset -inf: no exits, so every token of the next answer runs all layers.
        term.keys("/offset -inf", "Enter")
        term.wait(lambda s: "offset -inf" in s.split("/offset -inf")[-1], "the new offset")
        term.keys("2+2?", "Enter")
        screen = term.wait(lambda s: s.count("you>") == 4, "the second answer")
        stats = [line for line in screen.splitlines() if "tokens · exit rate" in line]
        assert len(stats) == 2 and "exit rate 0.0% · ALS 0.0%" in stats[1] and "stopped" not in stats[1]

        term.keys("/quit", "Enter")
        screen = term.wait(lambda s: "chat exited with status" in s, "chat to end")
        assert "chat exited with status 0" in screen and "Traceback" not in screen
    finally:
        term.close()


# ---------------------------------------------------------------------------------------------------
# thinkaloud generate --json


def test_generate_json_records(saved, capsys):
    prompts = ["Hello, world", "2+2?", "Name a colour."]
    assert (
        main(
            [
                "generate",
                "--model",
                str(saved),
                *prompts,
                "--json",
                "--max-new-tokens",
                "12",
                "--seed",
                "3",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in records] == prompts  # one record per prompt; the comma stays in its prompt
    assert all(tuple(r) == RECORD_KEYS for r in records)

    # The same as calling the engine with the same settings: batches of 2, one generator seeded with 3.
    model = EarlyExitModel.from_pretrained(saved).eval()
    tok = tiny_tokenizer()
    generator = torch.Generator().manual_seed(3)
    for s in (0, 2):
        ids, mask = encode_prompts(tok, [render_prompt(p, tok) for p in prompts[s : s + 2]])
        out = model.generate(
            ids, mask, max_new_tokens=12, do_sample=False, offset=0.0, pad_token_id=0, generator=generator
        )
        for i, r in enumerate(records[s : s + 2]):
            n = int(out.lengths[i])
            assert r["token_ids"] == out.new_tokens[i, :n].tolist()
            assert r["exit_layers"] == out.exit_layers[i, :n].tolist()
            assert r["token_logprobs"] == pytest.approx(out.token_logprobs[i, :n].tolist(), abs=1e-6)
            assert r["exit_logprobs"] == pytest.approx(out.exit_logprobs[i, :n].tolist(), abs=1e-6)
            assert r["tokens"] == token_strings(tok, r["token_ids"])
            assert r["text"] == tok.decode(r["token_ids"], skip_special_tokens=True)
    assert {e for r in records for e in r["exit_layers"]} <= {2, 4, 6}
    assert all(r["offset"] == 0.0 and r["num_layers"] == 6 for r in records)


def test_generate_reads_a_jsonl_file_and_stdin_and_uses_the_recorded_offset(saved, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    record_offset(folder, -math.inf, {"epsilon": 0.1, "delta": 0.1, "risk": "token", "task": "rg:chain_sum"})
    (tmp_path / "p.jsonl").write_text('{"prompt": "a, b", "id": "x1"}\n\n{"prompt": "c"}\n')
    assert (
        main(
            ["generate", "--model", str(folder), "--file", str(tmp_path / "p.jsonl"), "--json", "--max-new-tokens", "4"]
        )
        == 0
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["prompt"]) for r in records] == [("x1", "a, b"), (None, "c")]
    assert all(r["offset"] is None and set(r["exit_layers"]) == {6} for r in records)  # recorded: exits off

    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n"))
    assert main(["generate", "--model", str(folder), "--json", "--max-new-tokens", "2", "--offset", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in records] == ["first", "second"] and records[0]["offset"] == 1.0


def test_generate_in_the_terminal_streams_the_answers(saved, capsys):
    assert main(["generate", "--model", str(saved), "one", "two", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "1/2 · one" in out and "2/2 · two" in out and out.count("tokens · exit rate") == 2
    assert "layer 4 / 6" in out  # the legend


def test_prompt_files(tmp_path):
    (tmp_path / "plain.txt").write_text("What is 2+2?\n\n{not json\n")
    assert read_prompts(tmp_path / "plain.txt") == [{"prompt": "What is 2+2?"}, {"prompt": "{not json"}]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: expected an object with a \"prompt\" string"):
        read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "ok"}\n{"prompt": "x"\n')
    with pytest.raises(UserError, match=r"broken.jsonl:2: invalid JSON"):
        read_prompts(tmp_path / "broken.jsonl")


def test_generate_user_errors(saved, capsys, tmp_path):
    assert main(["generate", "--model", str(saved), "--file", str(tmp_path / "none.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["generate", "--model", str(saved), "a", "--file", "f"]) == 2
    assert "as arguments or with --file, not both" in capsys.readouterr().err
    assert main(["chat", "--model", str(saved), "--dtype", "int8"]) == 2


def test_a_conversation_is_rendered_with_the_chat_template():
    tok = tiny_tokenizer()
    one = [{"role": "user", "content": "hi"}]
    assert render_conversation(one, tok, "be brief") == render_prompt("hi", tok, "be brief")
    turns = one + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]
    assert render_conversation(turns, tok) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_streamed_pieces_are_the_decoded_text_even_inside_a_character():
    tok = bpe_tokenizer()  # byte-level: "é" and "€" are several tokens each
    ids = tok("café costs 3 € — naïve", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(ids) > len("café costs 3 € — naïve") - 5
    buffer = io.StringIO()
    stream = TokenStream(
        tok, Console(file=buffer, color_system=None, width=200), [2, 4], 6, stop_ids=[tok.eos_token_id]
    )
    for i, t in enumerate(ids):
        stream.push(t, [2, 4, 6][i % 3])
    line = stream.finish()
    assert buffer.getvalue().splitlines()[0] == "".join(token_strings(tok, ids[:-1])) == "café costs 3 € — naïve"
    assert stream.text == "café costs 3 € — naïve" and line.startswith(f"{len(ids)} tokens · exit rate 66.7%")
