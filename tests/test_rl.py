"""The RL stage (nanosft/training/rl_trainer.py, nanosft/eval/rewards.py, nanosft/rl.py).

- Objective: on a hand-built batch (2 problems x 4 samples, one sample with a calculator call), the
  parameter gradients of ``policy_gradient_loss`` over the training passes equal a hand-written REINFORCE
  (per-sample forward without padding, sum of logp * advantage over the sampled positions listed by
  hand, divided by trained tokens of the pass * passes * examples), fp32, 1e-6; prompt, tool-output and
  padding positions get exactly zero gradient on their logits.
- Tool masks: a scripted model calls the calculator; the forced tokens come back masked.
- pass@k and the unbiased estimator on fixed outcome lists, against values worked out by hand.
- Distributed: 2 processes (accelerate + gloo) give the same first-step gradient and update as 1.
"""

import os
import subprocess
import sys

import pytest
from conftest import free_port  # noqa: E402  (rendezvous port of the multi-process tests)
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from nanosft.eval.rewards import answer_reward, pass_at_k, pass_at_k_unbiased, resolve_reward
from nanosft.training.rl_trainer import build_training_batch, policy_gradient_loss, rollout_seed, sample_completions
from nanosft.format.tokenizer import special_token_ids

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed"))
from ckpt_common import ENV, REPO, bin_path  # noqa: E402


@pytest.fixture(scope="module")
def ids(nanochat_tokenizer):
    return special_token_ids(nanochat_tokenizer)


def _enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def hand_batch(tok, ids):
    """2 problems x 4 samples: (prompt, [(completion tokens, sampled positions)], rewards)."""
    problems = []
    for q, rewards in (("What is 12 times 3?", [1.0, 0.0, 0.0, 1.0]), ("Spell cat", [0.0, 1.0, 0.0, 0.0])):
        prompt = [ids["<|bos|>"], ids["<|user_start|>"], *_enc(tok, q), ids["<|user_end|>"], ids["<|assistant_start|>"]]
        samples = []
        for j, text in enumerate(["#### 36", "It is 35, so #### 35", "no", "12*3 is #### 36"]):
            toks = _enc(tok, text + " " * j)
            samples.append((toks, list(range(len(toks)))))
        problems.append((prompt, samples, rewards))
    # sample 1 of problem 0 calls the calculator: 3 forced tokens (output_start, "36", output_end)
    pre, expr, post = _enc(tok, "Compute "), _enc(tok, "12*3"), _enc(tok, " so #### 36")
    toks = pre + [ids["<|python_start|>"]] + expr + [ids["<|python_end|>"]]
    forced_at = len(toks)
    toks += [ids["<|output_start|>"], *_enc(tok, "36"), ids["<|output_end|>"]] + post
    n_forced = 2 + len(_enc(tok, "36"))
    sampled = [i for i in range(len(toks)) if not forced_at <= i < forced_at + n_forced]
    problems[0][1][1] = (toks, sampled)
    return problems


def test_policy_gradient_equals_hand_written_reinforce(nanochat_tokenizer, ids, tiny_nanochat):
    tok = nanochat_tokenizer
    problems = hand_batch(tok, ids)
    model = tiny_nanochat(seed=1).float()
    passes, rows, examples = 2, 2, len(problems)

    # nanosft: build_training_batch + policy_gradient_loss per pass, as NanoRLTrainer.training_step does
    model.zero_grad()
    for prompt, samples, rewards in problems:
        r = torch.tensor(rewards)
        adv = r - r.mean()
        masks = [[1 if i in set(pos) else 0 for i in range(len(t))] for t, pos in samples]
        inp, tgt = build_training_batch(prompt, [t for t, _ in samples], masks, ids["<|assistant_end|>"])
        for p in range(passes):
            sl = slice(p * rows, (p + 1) * rows)
            loss, _ = policy_gradient_loss(model, inp[sl], tgt[sl], adv[sl], passes * examples)
            loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    # hand-written REINFORCE: one unpadded sequence at a time, sampled positions listed by hand
    model.zero_grad()
    for prompt, samples, rewards in problems:
        mean = sum(rewards) / len(rewards)
        for p in range(passes):
            chunk = list(range(p * rows, (p + 1) * rows))
            n_pass = sum(len(samples[i][1]) for i in chunk)
            for i in chunk:
                toks, sampled = samples[i]
                seq = torch.tensor([prompt + toks])
                logp = F.log_softmax(model(input_ids=seq).logits.float()[0], -1)
                term = sum(logp[len(prompt) + s - 1, toks[s]] for s in sampled)
                (-(rewards[i] - mean) * term / (n_pass * passes * examples)).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-6, rtol=0), (n, (got[n] - p.grad).abs().max())
    assert max(g.abs().max() for g in got.values()) > 1e-4  # the check is not vacuous


class FullLogits(torch.nn.Module):
    """Ignores ``logits_to_keep`` and keeps the [B, T, V] logits with their gradient."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, logits_to_keep=None, use_cache=False):
        out = self.model(input_ids=input_ids, use_cache=False)
        out.logits.retain_grad()
        self.logits = out.logits
        return out


def test_prompt_tool_output_and_padding_get_zero_gradient(nanochat_tokenizer, ids, tiny_nanochat):
    tok = nanochat_tokenizer
    prompt, samples, rewards = hand_batch(tok, ids)[0]
    model = FullLogits(tiny_nanochat(seed=2).float())
    masks = [[1 if i in set(pos) else 0 for i in range(len(t))] for t, pos in samples]
    inp, tgt = build_training_batch(prompt, [t for t, _ in samples], masks, ids["<|assistant_end|>"])
    r = torch.tensor(rewards)
    loss, n = policy_gradient_loss(model, inp, tgt, r - r.mean(), 1.0)
    loss.backward()
    grad = model.logits.grad.abs().sum(-1)  # [S, L-1]: position t predicts token t+1
    trained = torch.zeros_like(grad, dtype=torch.bool)
    for row, (toks, sampled) in enumerate(samples):
        for s in sampled:
            trained[row, len(prompt) + s - 1] = True
    assert n == int(trained.sum()) == sum(len(s) for _, s in samples)
    assert (grad[~trained] == 0).all()
    assert (grad[trained] > 0).all()  # every advantage here is nonzero
    # the tool sample: its forced positions are untrained, the python_end before them is trained
    toks = samples[1][0]
    start = toks.index(ids["<|output_start|>"])
    end = toks.index(ids["<|output_end|>"])
    assert not trained[1, len(prompt) + start - 1 : len(prompt) + end].any()
    assert trained[1, len(prompt) + start - 2]


class Scripted(LogitsProcessor):
    """Row r emits scripts[r], skipping steps the tool forced (see tests/test_engine.py)."""

    def __init__(self, script, prompt_len, ids):
        self.script, self.prompt_len, self.ids = script, prompt_len, ids

    def __call__(self, input_ids, scores):
        for r in range(input_ids.shape[0]):
            k, inside = 0, False
            for t in input_ids[r, self.prompt_len:].tolist():
                if t == self.ids["<|output_start|>"]:
                    inside = True
                elif t == self.ids["<|output_end|>"]:
                    inside = False
                elif not inside:
                    k += 1
            scores[r] = -1e9
            scores[r, self.script[min(k, len(self.script) - 1)]] = 0.0
        return scores


def test_sampled_completions_mask_the_forced_tool_output(nanochat_tokenizer, ids, tiny_nanochat):
    tok = nanochat_tokenizer
    script = _enc(tok, "So ") + [ids["<|python_start|>"]] + _enc(tok, "6*7") + [ids["<|python_end|>"]] + \
        _enc(tok, " #### 42") + [ids["<|assistant_end|>"]]
    prompt = [ids["<|bos|>"], ids["<|assistant_start|>"]]
    tokens, masks = sample_completions(tiny_nanochat().float(), tok, prompt, 4, 2, lambda b: b, max_new_tokens=30,
                                       temperature=1.0, logits_processors=[Scripted(script, 2, ids)])
    forced = [ids["<|output_start|>"], *_enc(tok, "42"), ids["<|output_end|>"]]
    for t, m in zip(tokens, masks):
        assert tok.decode(t) == "So <|python_start|>6*7<|python_end|><|output_start|>42<|output_end|> #### 42"
        assert [x for x, keep in zip(t, m) if not keep] == forced
        assert sum(m) == len(t) - len(forced)
    assert answer_reward({"reference": "42"}, tok.decode(tokens[0])) == 1.0


def test_rollout_seed_depends_on_step_problem_batch_only():
    seeds = {rollout_seed(42, s, p, b) for s in range(3) for p in range(3) for b in range(2)}
    assert len(seeds) == 18 and all(0 <= x < 2**31 for x in seeds)
    assert rollout_seed(42, 1, 2, 0) == rollout_seed(42, 1, 2, 0) != rollout_seed(42, 1, 2, 0, "eval")


def test_pass_at_k_on_fixed_outcomes():
    F_, T_ = False, True
    outcomes = [[F_, T_, F_, F_], [F_, F_, F_, F_], [T_, T_, T_, T_]]
    assert pass_at_k(outcomes, 1) == pytest.approx(1 / 3)
    assert pass_at_k(outcomes, 2) == pytest.approx(2 / 3)
    assert pass_at_k(outcomes, 4) == pytest.approx(2 / 3)
    # 1 - C(n-c,k)/C(n,k): problem 0 (n=4, c=1): k=1 -> 1 - 3/4; k=2 -> 1 - 3/6; k=4 -> 1
    assert pass_at_k_unbiased(outcomes, 1) == pytest.approx((0.25 + 0 + 1) / 3)
    assert pass_at_k_unbiased(outcomes, 2) == pytest.approx((0.5 + 0 + 1) / 3)
    assert pass_at_k_unbiased(outcomes, 4) == pytest.approx((1 + 0 + 1) / 3)
    with pytest.raises(ValueError):
        pass_at_k(outcomes, 5)


def test_rewards_are_pluggable():
    assert resolve_reward("gsm8k") is answer_reward and resolve_reward("spellingbee") is answer_reward
    assert resolve_reward("os.path:basename") is os.path.basename
    assert resolve_reward("os.path.basename") is os.path.basename
    with pytest.raises(ValueError, match="cannot import"):
        resolve_reward("nanosft.eval.rewards.nope")
    assert answer_reward({"reference": "1000"}, "so #### 1,000") == 1.0
    assert answer_reward({"reference": "7"}, "#### 8") == 0.0


FIRST_STEP = os.path.join(REPO, "tests", "distributed", "rl_first_step.py")


def first_step(launch, out, data_dir, **extra):
    sets = {"output_dir": str(out), "data_dir": data_dir,
            "tokenizer_name_or_path": os.path.join(data_dir, "nanochat_tokenizer")}
    sets.update(extra)
    argv = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.run(launch + [FIRST_STEP, str(out / "first_step.pt"), *argv], cwd=REPO,
                          env={**ENV, "TORCH_COMPILE_DISABLE": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return torch.load(out / "first_step.pt")


def test_two_processes_give_the_first_step_update_of_one(tmp_path, data_dir):
    acc = bin_path("accelerate")
    one = first_step([acc, "launch", "--num_processes", "1"], tmp_path / "one", data_dir)
    two = first_step([acc, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", free_port()],
                     tmp_path / "two", data_dir, use_cpu="true")
    assert one["world"] == 1 and two["world"] == 2
    assert one["problems"] == two["problems"]  # the same 4 problems in the step, rank r every 2nd
    assert one["reward"] == two["reward"]  # the same samples (seeded per step, problem, batch)
    for name in one["grad"]:
        assert torch.allclose(one["grad"][name], two["grad"][name], atol=1e-5, rtol=0), name
        assert torch.allclose(one["update"][name], two["update"][name], atol=1e-5, rtol=0), name
    assert max(g.abs().max() for g in one["grad"].values()) > 1e-4


def run_rl(tmp_path, data_dir, out, **extra):
    """``nanosft.rl.main`` in this process on the tiny first-step config (toy reward), ``extra`` as --set."""
    from rl_first_step import TINY

    from nanosft import rl

    config = tmp_path / "rl.yaml"
    config.write_text(TINY)
    sets = {"output_dir": str(out), "data_dir": data_dir,
            "tokenizer_name_or_path": os.path.join(data_dir, "nanochat_tokenizer"), "max_steps": 2,
            "save_strategy": "steps", "save_steps": 1, **extra}
    assert rl.main(["--config", str(config), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]) == 0


def test_resume_is_exact_and_the_record_says_rl(tmp_path, data_dir):
    import json

    from safetensors.torch import load_file

    import shutil

    run_rl(tmp_path, data_dir, tmp_path / "full")
    # a run killed after step 1 leaves exactly checkpoint-1 behind; resume it to the same 2 steps
    shutil.copytree(tmp_path / "full" / "checkpoint-1", tmp_path / "cut" / "checkpoint-1")
    run_rl(tmp_path, data_dir, tmp_path / "cut", resume_from_checkpoint="auto")
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(tmp_path / "full" / "checkpoint-1" / "model.safetensors")
    assert any(not torch.equal(a[k], first[k]) for k in a)  # step 2 changed the weights
    record = json.loads((tmp_path / "full" / "checkpoint-2" / "nanosft_state.json").read_text())
    assert record["stage"] == "rl" and record["global_step"] == 2
    history = json.loads((tmp_path / "full" / "metrics.json").read_text())["log_history"]
    logged = [h for h in history if "reward" in h]
    assert len(logged) == 2 and all(k in logged[0] for k in ("completion_length", "tool_use_fraction", "learning_rate"))
    assert (tmp_path / "full" / "reward.png").is_file()
    card = (tmp_path / "full" / "checkpoint-2" / "README.md").read_text()
    assert "`chat_rl`" in card and "- rl" in card


@pytest.mark.parametrize("extra, message", [
    ("num_samples: 5\ndevice_batch_size: 4\n", "num_samples (5) must be a multiple of device_batch_size (4)"),
    ("reward: nosuchpkg.fn\n", "reward 'nosuchpkg.fn': cannot import"),
    ("num_sample: 4\n", "unknown key 'num_sample' (did you mean 'num_samples'?)"),
    ("per_device_train_batch_size: 2\n", "per_device_train_batch_size: RL takes one problem per micro-batch"),
])
def test_config_errors_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    from nanosft import rl
    from nanosft.errors import run_cli

    config = tmp_path / "bad.yaml"
    config.write_text("model_config: {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4}\n"
                      f"output_dir: {tmp_path / 'out'}\n" + extra)
    assert run_cli(rl.main, ["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()
