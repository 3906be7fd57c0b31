"""The coherence judge: strict parser, and the OpenAI-compatible client against a real local server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from thinkaloud.measures.judge import (
    CRITERIA,
    HFJudge,
    Judgement,
    JudgeParseError,
    JudgeResult,
    Legibility,
    OpenAIJudge,
    coherence_summary,
    judge_many,
    legibility_summary,
    make_judge,
    parse_judgement,
    parse_legibility,
)
from thinkaloud.measures.rubrics import judge_messages

GOOD = {"coherence": 8, "completeness": 7, "clarity": 9, "no_repetition": 10, "overall": 8}


# ---------------------------------------------------------------------------------------------------
# Parser


def test_parse_plain_and_fenced():
    expected = Judgement(**GOOD)
    assert parse_judgement(json.dumps(GOOD)) == expected
    assert parse_judgement(f"  ```json\n{json.dumps(GOOD)}\n```  ") == expected
    assert parse_judgement(f"```\n{json.dumps(GOOD, indent=2)}\n```") == expected
    assert parse_judgement(f"<think>Looks fine.\n{{}}</think>\n{json.dumps(GOOD)}") == expected


@pytest.mark.parametrize(
    "reply, match",
    [
        (json.dumps({**GOOD, "overall": 11}), "1..10"),
        (json.dumps({**GOOD, "clarity": 0}), "1..10"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "overall"}), "missing keys \\['overall'\\]"),
        (json.dumps({**GOOD, "reason": "ok"}), "unexpected keys"),
        (json.dumps({**GOOD, "overall": 7.5}), "integer"),
        (json.dumps({**GOOD, "overall": "7"}), "integer"),
        (json.dumps({**GOOD, "overall": True}), "integer"),
        ("Here is my verdict: " + json.dumps(GOOD), "not JSON"),
        (json.dumps(GOOD) + "\nThe response is good.", "not JSON"),
        (json.dumps([GOOD]), "JSON object"),
        ("```json\n" + json.dumps(GOOD), "not JSON"),  # unclosed fence
    ],
)
def test_parse_rejects(reply, match):
    with pytest.raises(JudgeParseError, match=match):
        parse_judgement(reply)


def test_prompt_covers_the_rubric():
    system, user = judge_messages("What is 2+2?", "<think>2+2=4</think> 4")
    for key in CRITERIA:
        assert key in system["content"]
    assert "<think>" in system["content"] and "NOT" in system["content"]  # wrappers are not penalised
    assert "do not grade whether the final answer is correct" in " ".join(system["content"].split())
    assert "What is 2+2?" in user["content"] and "<think>2+2=4</think> 4" in user["content"]


def test_paper_rubric_restates_the_write_ups_criteria():
    system, user = judge_messages("What is 2+2?", "<think>2+2=4</think> 4", rubric="paper")
    text = " ".join(system["content"].split())
    for key in CRITERIA:
        assert key in text
    for criterion in (
        "correct and explicit chain of thought",
        "mid-range score (4-7)",
        "factual mistakes",
        "heavy repetition",
        "even if it is unfinished",
        "1 = major breakdown",
        "7 = generally solid",
        "10 = excellent, complete and polished",
        "<|Assistant|>",
        "must not lower",
    ):
        assert criterion in text, criterion
    assert "do not grade whether" not in text
    assert "What is 2+2?" in user["content"] and "<think>2+2=4</think> 4" in user["content"]
    with pytest.raises(ValueError, match="rubric must be one of"):
        judge_messages("q", "r", rubric="gpt5")


# ---------------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server


class ScriptedServer:
    """Answers each POST with the next scripted action, (status, content) or ("sleep", seconds); the last repeats."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                action = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                if action[0] == "sleep":
                    owner.release.wait(action[1])
                    return
                status, content = action
                if status == 200:
                    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                else:
                    payload = {"error": {"message": content}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def judge_for(server, **kw):
    opts = dict(timeout=2.0, max_retries=2, backoff=0.01, concurrency=2)
    return OpenAIJudge(server.base_url, "judge-model", **{**opts, **kw})


def test_well_formed_reply_is_parsed(monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    with ScriptedServer([(200, json.dumps(GOOD))]) as server:
        [result] = judge_many(judge_for(server, api_key_env="TEST_JUDGE_KEY"), [("q", "a response")])
    assert result == JudgeResult(Judgement(**GOOD), None)
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0
    assert req["auth"] == "Bearer sk-test"
    assert "a response" in req["body"]["messages"][-1]["content"]


def test_the_request_carries_the_chosen_rubric():
    with ScriptedServer([(200, json.dumps(GOOD))]) as server:
        judge_many(judge_for(server), [("q", "r")])
        judge_many(judge_for(server, rubric="paper"), [("q", "r")])
        [result] = judge_many(make_judge(f"openai:{server.base_url}#judge-model", rubric="paper"), [("q", "r")])
    assert result.judgement == Judgement(**GOOD)
    ours, paper, made = (req["body"]["messages"] for req in server.requests)
    assert ours == judge_messages("q", "r") and paper == judge_messages("q", "r", rubric="paper") == made
    assert "correct and explicit chain of thought" in paper[0]["content"]
    assert "correct and explicit chain of thought" not in ours[0]["content"]


def test_no_key_no_authorization_header(monkeypatch):
    monkeypatch.delenv("TEST_JUDGE_KEY", raising=False)
    with ScriptedServer([(200, json.dumps(GOOD))]) as server:
        judge_many(judge_for(server, api_key_env="TEST_JUDGE_KEY"), [("q", "r")])
    assert server.requests[0]["auth"] is None


def test_malformed_reply_is_missing_with_parse_reason():
    with ScriptedServer([(200, "I would give it an 8.")]) as server:
        [result] = judge_many(judge_for(server), [("q", "r")])
    assert result.judgement is None
    assert result.missing.startswith("parse: not JSON")
    assert len(server.requests) == 1  # no retry on a parse failure


def test_http_500_then_success_is_retried():
    with ScriptedServer([(500, "overloaded"), (200, json.dumps(GOOD))]) as server:
        [result] = judge_many(judge_for(server), [("q", "r")])
    assert result.judgement == Judgement(**GOOD)
    assert len(server.requests) == 2


def test_persistent_500_gives_up_after_all_tries():
    with ScriptedServer([(500, "down")]) as server:
        [result] = judge_many(judge_for(server, max_retries=2), [("q", "r")])
    assert result == JudgeResult(None, "http 500 after 3 tries")
    assert len(server.requests) == 3


def test_429_is_retried_but_400_is_not():
    with ScriptedServer([(429, "slow down"), (200, json.dumps(GOOD))]) as server:
        [result] = judge_many(judge_for(server), [("q", "r")])
    assert result.judgement is not None and len(server.requests) == 2
    with ScriptedServer([(400, "bad request")]) as server:
        [result] = judge_many(judge_for(server), [("q", "r")])
    assert result == JudgeResult(None, "http 400")
    assert len(server.requests) == 1


def test_timeout_is_missing():
    with ScriptedServer([("sleep", 5.0)]) as server:
        [result] = judge_many(judge_for(server, timeout=0.2, max_retries=1), [("q", "r")])
    assert result.judgement is None
    assert result.missing == "timeout after 2 tries"
    assert len(server.requests) == 2


def test_connection_refused_is_missing():
    with ScriptedServer([(200, "{}")]) as server:
        url = server.base_url
    result = judge_many(OpenAIJudge(url, "m", timeout=0.5, max_retries=1, backoff=0.01), [("q", "r")])[0]
    assert result.judgement is None and result.missing.startswith("connection error")


def test_many_items_keep_order_and_one_failure_does_not_spoil_the_rest():
    replies = [(200, json.dumps({**GOOD, "overall": k})) for k in (3, 9)] + [(200, "garbage")]
    with ScriptedServer(replies + [(200, json.dumps({**GOOD, "overall": 5}))]) as server:
        judge = judge_for(server, concurrency=1)
        results = judge_many(judge, [(f"q{i}", f"r{i}") for i in range(4)])
    assert [r.judgement.overall if r.judgement else None for r in results] == [3, 9, None, 5]
    assert [r.missing is not None for r in results] == [False, False, True, False]


def test_concurrent_requests_all_answered():
    with ScriptedServer([(200, json.dumps(GOOD))]) as server:
        results = judge_many(judge_for(server, concurrency=4), [("q", f"r{i}") for i in range(12)])
    assert all(r.judgement == Judgement(**GOOD) for r in results)
    assert sorted(req["body"]["messages"][-1]["content"] for req in server.requests) == sorted(
        judge_messages("q", f"r{i}")[-1]["content"] for i in range(12)
    )


# ---------------------------------------------------------------------------------------------------
# Local HF backend (stubs: the plumbing, not a model's judgement) and the summary


class StubTokenizer:
    chat_template = "stub"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kw):
        assert tokenize is False and add_generation_prompt is True
        return "PROMPT:" + messages[-1]["content"]

    def __call__(self, text, return_tensors, add_special_tokens):
        class Batch(dict):
            def to(self, device):
                return self

        return Batch(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))

    def decode(self, ids, skip_special_tokens):
        assert ids.tolist() == [7, 8]  # only the new tokens
        return json.dumps(GOOD)


class StubModel:
    device = torch.device("cpu")

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample):
        assert do_sample is False and max_new_tokens == 32
        return torch.cat([input_ids, torch.tensor([[7, 8]])], dim=1)


def test_hf_judge_decodes_only_new_tokens():
    [result] = judge_many(HFJudge(StubModel(), StubTokenizer(), max_new_tokens=32), [("q", "r")])
    assert result.judgement == Judgement(**GOOD)


def test_coherence_summary():
    results = [JudgeResult(Judgement(**{**GOOD, "overall": s})) for s in (8, 6, 8)]
    results += [
        JudgeResult(None, "timeout after 3 tries"),
        JudgeResult(None, "timeout after 3 tries"),
        JudgeResult(None, "parse: not JSON"),
    ]
    summary = coherence_summary(results)
    assert summary["mean"] == pytest.approx(22 / 3)
    assert summary["n_judged"] == 3 and summary["n_missing"] == 3
    assert summary["hist"]["8"] == 2 and summary["hist"]["6"] == 1 and sum(summary["hist"].values()) == 3
    assert summary["missing_reasons"] == {"timeout after 3 tries": 2, "parse: not JSON": 1}
    assert summary["criteria"]["clarity"] == pytest.approx(9)
    json.dumps(summary)  # goes into summary.json as is
    assert coherence_summary([JudgeResult(None, "http 401")])["mean"] is None


# ---------------------------------------------------------------------------------------------------
# The legibility rubric (Emmons, Zimmermann et al. 2025)


class ScriptedJudge:
    """A judge whose replies are given; it records the messages it was sent."""

    concurrency = 1

    def __init__(self, replies, rubric="legibility"):
        self.replies, self.rubric, self.sent = list(replies), rubric, []

    def complete(self, messages):
        self.sent.append(messages)
        return self.replies.pop(0)


def test_legibility_rubric_asks_for_two_scores_0_to_4_and_parses_them():
    system, user = judge_messages("Where is the ball?", "Mia moved it to the tin.\nAnswer: tin", rubric="legibility")
    text = " ".join(system["content"].split())
    for phrase in ('{"legibility": <0-4>, "coverage": <0-4>}', "not whether it is correct", "every step", "<think>"):
        assert phrase in text, phrase
    assert "Where is the ball?" in user["content"]
    assert parse_legibility('```json\n{"legibility": 4, "coverage": 0}\n```') == Legibility(4, 0)
    for bad, match in (
        ('{"legibility": 5, "coverage": 1}', "0..4"),
        ('{"legibility": -1, "coverage": 1}', "0..4"),
        ('{"legibility": 3}', "missing keys \\['coverage'\\]"),
        (json.dumps(GOOD), "missing keys"),
        ('{"legibility": 3, "coverage": 2.0}', "integer"),
    ):
        with pytest.raises(JudgeParseError, match=match):
            parse_legibility(bad)
    with pytest.raises(JudgeParseError, match="missing keys"):
        parse_judgement('{"legibility": 3, "coverage": 2}')  # a coherence rubric does not read it


def test_judge_parses_by_its_rubric_and_summarises_legibility():
    judge = ScriptedJudge(['{"legibility": 4, "coverage": 3}', '{"legibility": 2, "coverage": 3}', "garbage"])
    results = judge_many(judge, [("q1", "r1"), ("q2", "r2"), ("q3", "r3")])
    assert [r.judgement for r in results[:2]] == [Legibility(4, 3), Legibility(2, 3)]
    assert results[2].judgement is None and results[2].missing.startswith("parse: not JSON")
    assert "coverage" in judge.sent[0][0]["content"]
    summary = legibility_summary(results)
    assert summary["legibility"] == 3.0 and summary["coverage"] == 3.0
    assert summary["n_judged"] == 2 and summary["n_missing"] == 1
    assert summary["hist"]["legibility"] == {"0": 0, "1": 0, "2": 1, "3": 0, "4": 1}
    assert coherence_summary(results)["mean"] is None  # legibility scores are no coherence
    json.dumps(summary)
    coherent = judge_many(ScriptedJudge([json.dumps(GOOD)], rubric="ours"), [("q", "r")])
    assert coherent[0].judgement == Judgement(**GOOD)
