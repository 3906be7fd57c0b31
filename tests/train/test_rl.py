"""Stage-2 RL loop on tiny models: exactly on-policy, moves exits earlier, exact resume, CLI, DDP."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import build_tiny, free_port, tiny_model_dir
from thinkaloud.cli import main as cli_main
from thinkaloud.config import ExitConfig
from thinkaloud.data.env import Prompt, Scored
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.train import rl
from thinkaloud.train.rl import train_rl
from thinkaloud.train.rl_config import RLConfig

BASE = build_tiny("llama")  # 6 layers; exits at 2 and 4 below


pytestmark = pytest.mark.usefixtures("one_thread")


def make_tiny(head_init_bias: float = -1.0):
    """A fresh early-exit model on a copy of the same tiny base (LoRA A drawn from the run's seed)."""
    return lambda: EarlyExitModel.from_base(
        copy.deepcopy(BASE), ExitConfig(exit_every=2, head_init_bias=head_init_bias)
    )


class DepthOnlyEnv:
    """Random-token prompts and a task reward of 0: the reward is −λ·depth (− β·KL) only."""

    pad_token_id = 0
    stop_token_ids = None  # the tiny model's EOS (2)

    def prompts(self, start: int, n: int) -> list[Prompt]:
        out = []
        for i in range(start, start + n):
            g = torch.Generator().manual_seed(i)
            length = int(torch.randint(3, 9, (1,), generator=g))
            out.append(Prompt(torch.randint(3, 97, (length,), generator=g).tolist()))
        return out

    def score(self, prompts, out) -> Scored:
        zero = torch.zeros(len(prompts))
        return Scored(reward=zero, accuracy=zero)


def config(out, **kw) -> RLConfig:
    base = dict(
        model="tiny",
        out=str(out),
        lam=1.0,
        beta=0.0,
        k=4,
        prompts_per_step=2,
        steps=10,
        max_new_tokens=12,
        head_lr=5e-2,
        lora_lr=1e-3,
        base_prompts=0,
        save_every=2,
        device="cpu",
    )
    base.update(kw)
    return RLConfig(**base)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_loss_uses_the_log_probs_recorded_at_sampling(tmp_path, monkeypatch):
    """Spy on the rollouts and on the loss's inputs: teacher-forced log-probs equal the sampled ones."""
    seen, rollouts = [], []
    sample, loss = rl.sample_rollouts, rl.policy_loss
    monkeypatch.setattr(rl, "sample_rollouts", lambda *a, **kw: rollouts.append(sample(*a, **kw)) or rollouts[-1])
    monkeypatch.setattr(rl, "policy_loss", lambda *a: seen.append(a) or loss(*a))
    train_rl(config(tmp_path, steps=3, beta=0.1), env=DepthOnlyEnv(), make_model=make_tiny())
    assert len(seen) == len(rollouts) == 3
    exits = torch.cat([out.exit_layers[out.completion_mask] for out in rollouts])
    assert len(set(exits.tolist())) == 3, "exits at both exit layers and no exit expected"
    for out, (token_lp, exit_lp, mask, advantages) in zip(rollouts, seen):
        assert torch.equal(mask, out.completion_mask)
        torch.testing.assert_close(token_lp[mask], out.token_logprobs[mask], atol=1e-4, rtol=0)
        torch.testing.assert_close(exit_lp[mask], out.exit_logprobs[mask], atol=1e-4, rtol=0)
        assert token_lp.requires_grad and exit_lp.requires_grad
        torch.testing.assert_close(advantages.view(2, 4).sum(-1), torch.zeros(2), atol=1e-6, rtol=0)
    log = rows(tmp_path / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["logprob_err"] < 1e-4 for r in log)
    assert log[-1]["kl"] != 0.0  # the adapter has moved away from the reference


def test_depth_penalty_moves_exits_earlier(tmp_path):
    train_rl(config(tmp_path, head_lr=0.2), env=DepthOnlyEnv(), make_model=make_tiny())
    depth = [r["depth_frac"] for r in rows(tmp_path / "log.jsonl")]
    assert len(depth) == 10
    start, end = sum(depth[:3]) / 3, sum(depth[-3:]) / 3  # moving averages over 3 steps
    assert end < start - 0.05, depth  # seeds 0-4 all give a drop of 0.20-0.24
    saved = EarlyExitModel.from_pretrained(tmp_path / "model", base=copy.deepcopy(BASE))
    assert (saved.heads.bias > -1.0).all(), saved.heads.bias  # both heads learnt to exit more


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    train_rl(config(tmp_path / "full", steps=4, beta=0.1), env=DepthOnlyEnv(), make_model=make_tiny())

    def kill(run, step, row):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_rl(
            config(tmp_path / "killed", steps=4, beta=0.1), env=DepthOnlyEnv(), make_model=make_tiny(), on_step=kill
        )
    assert not (tmp_path / "killed" / "model").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train_rl(config(tmp_path / "killed", steps=4, beta=0.1), env=DepthOnlyEnv(), make_model=make_tiny())
    root = tmp_path / "killed" / "checkpoints"  # what a kill during the step-3 checkpoint write leaves
    (root / ".step-000003.tmp").mkdir()
    (root / ".step-000003.tmp" / "state.pt").write_bytes(b"partial")
    (root / ".latest.json.x7y8z9.tmp").write_text('{"step": 3')
    train_rl(config(tmp_path / "killed", steps=4, beta=0.1, resume=True), env=DepthOnlyEnv(), make_model=make_tiny())
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-000002", "step-000004"]
    for name in ("exit_heads.safetensors", "adapter/adapter_model.safetensors"):
        a = load_file(str(tmp_path / "full" / "model" / name))
        b = load_file(str(tmp_path / "killed" / "model" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert strip(rows(tmp_path / "killed" / "log.jsonl")) == strip(rows(tmp_path / "full" / "log.jsonl"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("rl") / "model")


def test_heldout_prompts_of_one_file_must_not_be_the_training_prompts(tiny_dir, tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"  # a file is used whole: its train and test prompts are the same rows
    data.write_text(
        "".join(json.dumps({"question": f"{i} + {i}?", "answer": f"#### {2 * i}"}) + "\n" for i in range(8))
    )
    argv = ["rl", "--model", tiny_dir, "--lam", "1", "--beta", "0", "--steps", "1", "--device", "cpu"]
    argv += ["--eval-every", "1", "--eval-n", "2", "--out", str(tmp_path / "rl")]
    assert cli_main([*argv, "--task", f"gsm8k:{data}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(held-out) prompts of" in err[0] and "share 2 questions" in err[0], err
    assert not (tmp_path / "rl" / "log.jsonl").exists()


def test_cli_runs_a_task_with_several_seeds(tiny_dir, tmp_path):
    out = tmp_path / "rl"
    code = cli_main(
        [
            "rl",
            "--model",
            tiny_dir,
            "--task",
            "rg:chain_sum",
            "--lam",
            "1.5",
            "--beta",
            "0.25",
            "--k",
            "2",
            "--steps",
            "2",
            "--runs",
            "2",
            "--max-new-tokens",
            "6",
            "--base-prompts",
            "2",
            "--head-init-bias",
            "-1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for r in (0, 1):
        assert (out / f"run-{r}" / "model" / "thinkaloud.json").exists()
        assert [x["step"] for x in rows(out / f"run-{r}" / "log.jsonl")] == [1, 2]
    log = rows(out / "log.jsonl")
    assert sorted((x["run"], x["step"]) for x in log) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    keys = {"run", "step", "reward", "accuracy", "depth_frac", "als", "early_exit_rate", "kl", "length", "coherence"}
    assert all(keys <= x.keys() for x in log)
    assert all(abs(x["als"] + x["depth_frac"] - 1) < 1e-9 and 0 <= x["accuracy"] <= 1 for x in log)
    assert log[0] != log[2]  # runs differ (seeds)
    base = json.loads((out / "base.json").read_text())
    assert base["depth_frac"] == 1.0 and base["n"] == 4 and 0 <= base["accuracy"] <= 1
    assert (out / "figures" / "rl_dynamics.png").stat().st_size > 0
    assert (out / "figures" / "rl_dynamics.svg").exists() and (out / "config.yaml").exists()
    table = rl.step_table(log)
    assert [t["step"] for t in table] == [1, 2] and all(t["runs"] == 2 for t in table)


def test_env_and_report_live_in_their_own_modules():
    from thinkaloud.data import env
    from thinkaloud.train import rl_report

    assert (rl.Env, rl.Prompt, rl.Scored, rl.TaskEnv) == (env.Env, env.Prompt, env.Scored, env.TaskEnv)
    assert rl.step_table is rl_report.step_table
    for module in (rl, env, rl_report):
        assert len(Path(module.__file__).read_text().splitlines()) < 400, module.__name__


def test_rewards_use_strict_answers_unless_lenient(tiny_dir, tmp_path, monkeypatch):
    """The task is built with ``lenient=config.lenient_answers`` (default False: strict extraction)."""
    from thinkaloud.data import tasks

    assert RLConfig(model="m", out="o").lenient_answers is False
    seen, get_task = [], tasks.get_task
    monkeypatch.setattr(tasks, "get_task", lambda spec, **kw: seen.append(kw) or get_task(spec, **kw))
    for lenient in (False, True):
        train_rl(
            RLConfig(
                model=tiny_dir,
                out=str(tmp_path / f"lenient-{lenient}"),
                task="rg:chain_sum",
                k=2,
                prompts_per_step=1,
                steps=1,
                max_new_tokens=4,
                base_prompts=0,
                device="cpu",
                lenient_answers=lenient,
            )
        )
    assert seen == [{"lenient": False}, {"lenient": True}]


@pytest.mark.parametrize("lenient", [False, True])
def test_format_penalty_fires_without_an_answer_marker(lenient):
    """With strict answers a response without a marker has no answer: score 0, minus the penalty."""
    from tests.tiny import tiny_tokenizer
    from thinkaloud.data.env import TaskEnv
    from thinkaloud.data.tasks import get_task
    from thinkaloud.model.generation_output import GenerationOutput

    tok = tiny_tokenizer()
    env = TaskEnv(get_task("rg:chain_sum", lenient=lenient), tok, seed=0, pool=1, format_penalty=0.5)
    prompt = env.prompts(0, 1)[0]
    texts = [f"Answer: {prompt.item.answer}", f"so it is\n{prompt.item.answer}"]
    new = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    N, P = max(map(len, new)), len(prompt.ids)
    sequences = torch.tensor([prompt.ids + r + [0] * (N - len(r)) for r in new])  # (2, P+N)
    lengths = torch.tensor([len(r) for r in new])
    zeros = torch.zeros(2, N)
    out = GenerationOutput(
        sequences=sequences,
        attention_mask=(torch.arange(P + N) < P + lengths[:, None]).long(),
        prompt_length=P,
        exit_layers=torch.full((2, N), 6),
        token_logprobs=zeros,
        exit_logprobs=zeros,
        lengths=lengths,
        num_layers=6,
    )
    scored = env.score([prompt, prompt], out)
    assert scored.texts == texts
    assert scored.accuracy.tolist() == ([1.0, 1.0] if lenient else [1.0, 0.0])
    assert scored.reward.tolist() == ([1.0, 1.0] if lenient else [1.0, -0.5])


def test_help_says_where_defaults_differ_from_the_paper(capsys):
    with pytest.raises(SystemExit):
        cli_main(["rl", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for part in (
        "(paper: 1.5)",
        "(paper: 0.25)",
        "(paper: up to 400)",
        "(paper: 1e-5;",
        "(paper: 1e-4)",
        "any response without an answer marker",
        "--lenient-answers",
    ):
        assert part in text, part


def test_config_validation():
    with pytest.raises(ValueError, match="k must be >= 2"):
        RLConfig(model="m", out="o", k=1)
    with pytest.raises(ValueError, match="offset must be finite"):
        RLConfig(model="m", out="o", offset=float("-inf"))
    with pytest.raises(ValueError, match="judge"):
        RLConfig(model="m", out="o", judge_url="http://localhost:8000/v1")


DDP_ENTRY = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from thinkaloud.train import rl
    from thinkaloud.train.common import trainable_state
    from tests.train.test_rl import DepthOnlyEnv, config, make_tiny

    made = []
    def make():
        made.append(make_tiny()())
        return made[-1]
    rl.train_rl(config(sys.argv[1], steps=2), env=DepthOnlyEnv(), make_model=make)
    torch.save(trainable_state(made[-1]), f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
    dist.barrier()
    dist.destroy_process_group()
""")


def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(DDP_ENTRY)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(str(Path(__file__).parents[2] / p) for p in (".", "src")),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        str(script),
        str(tmp_path / "ddp"),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "ddp" / "rank0.pt"), torch.load(tmp_path / "ddp" / "rank1.pt")
    assert r0.keys() == r1.keys() and len(r0) > 0
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    log = rows(tmp_path / "ddp" / "log.jsonl")
    assert [x["step"] for x in log] == [1, 2]
    fresh = make_tiny()()
    assert not torch.equal(r0["heads.bias"], fresh.heads.bias.detach())


@pytest.mark.slow
def test_smollm2_short_run_is_on_policy(tmp_path):
    out = train_rl(
        RLConfig(
            model="smollm2-135m",
            task="tom",
            out=str(tmp_path),
            k=2,
            prompts_per_step=1,
            steps=2,
            max_new_tokens=16,
            base_prompts=1,
            device="cpu",
        )
    )
    log = rows(out / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["logprob_err"] < 1e-4 for r in log), [r["logprob_err"] for r in log]
    assert (out / "model" / "thinkaloud.json").exists() and (out / "base.json").exists()
    assert (out / "figures" / "rl_dynamics.png").exists()


def test_logged_base_nll_is_minus_the_mean_reference_logprob(tmp_path, monkeypatch):
    """The fluency proxy of a step reuses the KL term's reference log-probs: −mean over the step's tokens."""
    from thinkaloud.measures.fluency import response_nll
    from thinkaloud.measures.responses import from_generation

    refs, rollouts = [], []
    reference, sample = rl.reference_logprobs, rl.sample_rollouts
    monkeypatch.setattr(
        rl, "reference_logprobs", lambda p, out, **kw: refs.append((p, out, reference(p, out, **kw))) or refs[-1][2]
    )
    monkeypatch.setattr(rl, "sample_rollouts", lambda *a, **kw: rollouts.append(sample(*a, **kw)) or rollouts[-1])
    train_rl(config(tmp_path, steps=2, beta=0.1), env=DepthOnlyEnv(), make_model=make_tiny())
    assert len(refs) == 2  # one reference pass per step, no extra one for the proxy
    for row, (policy, out, ref) in zip(rows(tmp_path / "log.jsonl"), refs):  # noqa: B007 (the last policy is used below)
        mask = out.completion_mask
        assert row["base_nll"] == pytest.approx(-ref[mask].mean().item(), rel=1e-6)
    # and it is the eval's fluency NLL (base model, adapter off, no exits) of the same completions
    sums = response_nll(policy, from_generation(out))
    assert row["base_nll"] == pytest.approx(sum(s for s, _ in sums) / sum(n for _, n in sums), rel=1e-4)


class HeldoutEnv(DepthOnlyEnv):
    """Fixed prompts from another part of the random stream, scored 1 when the first token is even."""

    def prompts(self, start: int, n: int) -> list[Prompt]:
        return super().prompts(1000 + start, n)

    def score(self, prompts, out) -> Scored:
        acc = (out.new_tokens[:, 0] % 2 == 0).float()
        return Scored(reward=acc, accuracy=acc)


def test_heldout_evaluation_at_step_0_every_n_and_last(tmp_path):
    from thinkaloud.train.rl_heldout import evaluate_policy

    train_rl(
        config(tmp_path, steps=5, eval_every=2, eval_n=3, head_lr=0.2),
        env=DepthOnlyEnv(),
        make_model=make_tiny(),
        heldout_env=HeldoutEnv(),
    )
    held = rows(tmp_path / "heldout.jsonl")
    assert [r["step"] for r in held] == [0, 2, 4, 5] and all(r["n"] == 3 for r in held)
    assert all(abs(r["als"] + r["depth_frac"] - 1) < 1e-9 and r["base_nll"] > 0 for r in held)
    assert held[-1]["depth_frac"] < held[0]["depth_frac"]  # the depth penalty shows on the held-out prompts
    # step 0 is the starting model: the same numbers as evaluating it directly
    start = evaluate_policy(
        make_tiny()().eval(),
        HeldoutEnv(),
        HeldoutEnv().prompts(0, 3),
        max_new_tokens=12,
        offset=0.0,
        seed=0,
        batch_size=8,
    )
    for key, value in start.items():
        assert held[0][key] == pytest.approx(value), key
    assert len(held[0]["prompt_depth_frac"]) == len(held[0]["prompt_accuracy"]) == 3
    assert sum(held[0]["prompt_accuracy"]) / 3 == pytest.approx(held[0]["accuracy"])
    base = json.loads((tmp_path / "heldout_base.json").read_text())
    assert base["depth_frac"] == 1.0 and base["early_exit_rate"] == 0.0 and base["n"] == 3
    assert (tmp_path / "figures" / "rl_heldout.png").stat().st_size > 0
    with pytest.raises(ValueError, match="heldout_env"):
        train_rl(config(tmp_path / "x", eval_every=2), env=DepthOnlyEnv(), make_model=make_tiny())
    with pytest.raises(ValueError, match="eval_split"):
        config(tmp_path, eval_every=1, eval_split="train")


def test_a_run_from_the_same_start_reuses_the_step_0_and_base_heldout_rows(tmp_path, monkeypatch):
    """``heldout_from``: runs that differ only in λ, β … evaluate their common start once; another start is refused."""
    from thinkaloud.errors import UserError
    from thinkaloud.train import rl_heldout

    kw = dict(steps=2, eval_every=2, eval_n=3, runs=2)
    train_rl(config(tmp_path / "a", **kw), env=DepthOnlyEnv(), make_model=make_tiny(), heldout_env=HeldoutEnv())
    evaluated = []
    evaluate = rl_heldout.evaluate_policy
    monkeypatch.setattr(rl_heldout, "evaluate_policy", lambda *a, **k: evaluated.append(k) or evaluate(*a, **k))
    b = config(tmp_path / "b", **kw, lam=3.0, heldout_from=str(tmp_path / "a"))
    train_rl(b, env=DepthOnlyEnv(), make_model=make_tiny(), heldout_env=HeldoutEnv())
    assert len(evaluated) == 2  # step 2 of each run; neither step 0 nor the base model
    held_a, held_b = rows(tmp_path / "a" / "heldout.jsonl"), rows(tmp_path / "b" / "heldout.jsonl")
    assert [r for r in held_b if r["step"] == 0] == [r for r in held_a if r["step"] == 0]
    assert [(r["run"], r["step"]) for r in held_b] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    assert (tmp_path / "b" / "heldout_base.json").read_text() == (tmp_path / "a" / "heldout_base.json").read_text()
    with pytest.raises(UserError, match="eval_n 3, not 2"):
        other = config(tmp_path / "c", **{**kw, "eval_n": 2}, heldout_from=str(tmp_path / "a"))
        train_rl(other, env=DepthOnlyEnv(), make_model=make_tiny(), heldout_env=HeldoutEnv())
    with pytest.raises(UserError, match="no RL run"):
        nowhere = config(tmp_path / "d", **kw, heldout_from=str(tmp_path / "nowhere"))
        train_rl(nowhere, env=DepthOnlyEnv(), make_model=make_tiny(), heldout_env=HeldoutEnv())


def test_resume_keeps_heldout_rows_up_to_the_checkpoint(tmp_path):
    kw = dict(steps=4, beta=0.1, eval_every=1, eval_n=2)
    train_rl(config(tmp_path / "full", **kw), env=DepthOnlyEnv(), make_model=make_tiny(), heldout_env=HeldoutEnv())

    def kill(run, step, row):
        if step == 3:  # after the step-3 held-out row, with the last checkpoint at step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_rl(
            config(tmp_path / "killed", **kw),
            env=DepthOnlyEnv(),
            make_model=make_tiny(),
            heldout_env=HeldoutEnv(),
            on_step=kill,
        )
    assert [r["step"] for r in rows(tmp_path / "killed" / "heldout.jsonl")] == [0, 1, 2, 3]
    train_rl(
        config(tmp_path / "killed", **kw, resume=True),
        env=DepthOnlyEnv(),
        make_model=make_tiny(),
        heldout_env=HeldoutEnv(),
    )
    assert rows(tmp_path / "killed" / "heldout.jsonl") == rows(tmp_path / "full" / "heldout.jsonl")


def test_a_run_charges_the_chosen_depth_penalty_and_logs_it(tmp_path, monkeypatch):
    """``depth_penalty="max"``: each completion's reward charges λ · its deepest ℓ_t/L, and the log's
    ``depth_penalty`` is the step's mean of those, next to the unchanged token-weighted ``depth_frac``."""
    rollouts, charged = [], []
    sample, rewards = rl.sample_rollouts, rl.completion_rewards
    monkeypatch.setattr(rl, "sample_rollouts", lambda *a, **kw: rollouts.append(sample(*a, **kw)) or rollouts[-1])
    monkeypatch.setattr(rl, "completion_rewards", lambda *a: charged.append(a[1]) or rewards(*a))
    train_rl(config(tmp_path, steps=2, depth_penalty="max"), env=DepthOnlyEnv(), make_model=make_tiny())
    log = rows(tmp_path / "log.jsonl")
    for out, depth, r in zip(rollouts, charged, log, strict=True):
        mask = out.completion_mask
        frac = out.exit_layers.float() / 6  # (B, N)
        deepest = torch.stack([frac[b][mask[b]].max() for b in range(len(frac))])  # (B,)
        torch.testing.assert_close(depth, deepest)
        assert r["depth_penalty"] == pytest.approx(deepest.mean().item())
        assert r["depth_frac"] == pytest.approx(frac[mask].mean().item())
    assert any(r["depth_penalty"] > r["depth_frac"] for r in log)  # some token runs deeper than the mean


def test_depth_penalty_must_be_a_known_shape():
    assert RLConfig(model="m", out="o").depth_penalty == "mean"
    with pytest.raises(ValueError, match="depth_penalty must be one of mean, sum, max"):
        RLConfig(model="m", out="o", depth_penalty="median")
