"""Bad input and traps end in one line ``error: ...``, exit status 2, and nothing written to ``output_dir``.

Most cases call the CLI entry point in-process (``run_cli(train.main, argv)``: what ``python -m nanosft.train``
runs after its imports; the session's tokenizer stands in for loading one), so the file stays fast. Real
processes: ``python -m nanosft.train``, ``python -m nanosft.chat``, and ``python -m nanosft.launch``
(``accelerate launch``) with two CPU processes.
"""

import json
import logging
import os
import subprocess
import sys

import pytest
from conftest import free_port  # noqa: E402  (rendezvous port of the multi-process tests)

from nanosft import train
from nanosft.data.mixture import DatasetSpec, load_mixture
from nanosft.errors import EXIT_USER_ERROR, UserError, option, run_cli, use_cli_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("NANOSFT_DEBUG", None)

GOOD = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
NO_ASSISTANT = [{"role": "user", "content": "hi"}]


def jsonl(path, lines):
    """Write raw lines (strings are written as they are, anything else as JSON)."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture
def make_config(tmp_path, data_dir):
    """Write a tiny config (a fresh 1-layer model; one jsonl dataset) with overrides; returns (path, output_dir)."""

    def make(text=None, rows=(GOOD, GOOD), **keys):
        out = tmp_path / "out"
        data = jsonl(tmp_path / "data.jsonl", rows)
        if text is None:
            cfg = {"model_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                    "num_attention_heads": 2},
                   "tokenizer_name_or_path": f"{data_dir}/nanochat_tokenizer",
                   "datasets": [{"name": "jsonl", "path": str(data)}], "max_length": 64, "max_steps": 1,
                   "report_to": "none", "output_dir": str(out), "optimizer": "adamw"}
            cfg.update(keys)
            text = json.dumps(cfg)  # JSON is YAML
        path = tmp_path / "c.yaml"
        path.write_text(text)
        return str(path), out

    return make


def check_one_line(code, err, out_dir, *needles, before=None):
    """Exit 2, no traceback, exactly one ``error:`` line (the last one) holding ``needles``; out_dir untouched."""
    assert code == EXIT_USER_ERROR, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    if before is None:
        assert not os.path.exists(out_dir), sorted(os.listdir(out_dir))
    else:
        assert sorted(os.listdir(out_dir)) == before
    return errors[0]


@pytest.fixture(autouse=True)
def session_tokenizer(monkeypatch, nanochat_tokenizer):
    """In-process runs reuse the session's tokenizer (building it is most of a run's cost before the error)."""
    monkeypatch.setattr(train, "load_tokenizer", lambda cfg: nanochat_tokenizer)


def run_train(capfd, config, *sets):
    argv = ["--config", config] + [x for s in sets for x in ("--set", s)]
    code = run_cli(train.main, argv)
    return code, capfd.readouterr().err


# --- config keys and types, missing files, invalid rows, invalid JSON, unknown datasets (in-process) ---

CONFIG_CASES = {
    "unknown key": ({"learning_rte": 0.1}, ["unknown key 'learning_rte'", "learning_rate", "c.yaml"]),
    "wrong type": ({"max_steps": "ten"}, ["'max_steps' expects int", "c.yaml"]),
    "unknown dataset": ({"datasets": [{"name": "gsm9k"}]}, ["unknown dataset name 'gsm9k'", "datasets[0]"]),
    "unknown ChatCORE task": ({"chatcore_tasks": ["ARC-Hard"]}, ["unknown ChatCORE task 'ARC-Hard'"]),
    "missing data file": ({"datasets": [{"name": "jsonl", "path": "/nonexistent/x.jsonl"}]},
                          ["data file not found: /nonexistent/x.jsonl", "`path:`"]),
    "missing model folder": ({"model_config": None, "model_name_or_path": "runs/nope",
                              "datasets": [{"name": "jsonl", "path": "/nonexistent/x.jsonl"}]},
                             ["model_name_or_path: local folder", "runs/nope does not exist"]),
    "missing resume checkpoint": ({"resume_from_checkpoint": "/nonexistent/checkpoint-5"},
                                  ["resume_from_checkpoint", "not a complete checkpoint folder"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_errors_are_one_line(make_config, capfd, case):
    keys, needles = CONFIG_CASES[case]
    config, out = make_config(**keys)
    check_one_line(*run_train(capfd, config), out, *needles)


def test_missing_config_file_and_invalid_yaml(tmp_path, make_config, capfd):
    check_one_line(*run_train(capfd, str(tmp_path / "none.yaml")), tmp_path / "out", "config file not found")
    config, out = make_config(text="max_steps: [1,\n  2\nfoo: : bar\n")  # a multi-line YAML parser message
    check_one_line(*run_train(capfd, config), out, "invalid YAML", "c.yaml")


def test_a_bad_override_is_one_line(make_config, capfd):
    config, out = make_config()
    check_one_line(*run_train(capfd, config, "max_stepz=3"), out, "--set: unknown key 'max_stepz'")


ROW_CASES = {  # bad line (the 3rd line of the file, after two good rows) -> reason in the message
    "no assistant": (NO_ASSISTANT, "no assistant message"),
    "empty assistant string": ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
                               "message 1 (assistant): empty content"),
    "empty list of parts": ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": []}],
                            "message 1 (assistant): empty content"),
    "bare JSON string": ('""', "expected a list of messages, got str"),
    "JSON number": ("42", "expected a list of messages, got int"),
    "invalid JSON": ('[{"role": "user", "content": "hi"', "invalid JSON"),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_invalid_rows_name_the_1_based_line(make_config, capfd, case):
    bad, reason = ROW_CASES[case]
    config, out = make_config(rows=[GOOD, GOOD, bad, GOOD])
    line = check_one_line(*run_train(capfd, config), out, reason, "data.jsonl[train], line 3", "skip_invalid")
    assert "row 2" not in line


def test_blank_lines_do_not_shift_line_numbers(make_config, capfd):
    config, out = make_config(rows=[GOOD, "", "   ", NO_ASSISTANT])
    check_one_line(*run_train(capfd, config), out, "data.jsonl[train], line 4", "no assistant message")


def test_nothing_left_after_skipping(make_config, capfd):
    config, out = make_config(rows=[NO_ASSISTANT, "{oops"], skip_invalid=True)
    check_one_line(*run_train(capfd, config), out, "no valid conversations", "2 invalid")


def test_output_dir_with_checkpoints_is_refused_naming_both_options(make_config, capfd):
    config, out = make_config(rows=[NO_ASSISTANT])  # the refusal comes before the data
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    before = sorted(os.listdir(out))
    check_one_line(*run_train(capfd, config), out, f"output_dir {out} already holds checkpoints (checkpoint-4)",
                   "resume_from_checkpoint: auto", "overwrite_output_dir: true", before=before)
    # with either option the run gets past the check (to the invalid row)
    for option_set in ("resume_from_checkpoint=auto", "overwrite_output_dir=true"):
        check_one_line(*run_train(capfd, config, option_set), out, "no assistant message", before=before)


def test_hub_datasets_report_their_row_index(tmp_path, make_config, capfd):
    hub = tmp_path / "hubds"  # a dataset folder that datasets.load_dataset reads like a Hub repo
    hub.mkdir()
    jsonl(hub / "train.jsonl", [{"messages": GOOD}, {"messages": NO_ASSISTANT}])
    config, out = make_config(datasets=[{"name": "hub", "hub_id": str(hub)}])
    check_one_line(*run_train(capfd, config), out, f"Hub dataset {hub}, row index 1", "no assistant message")


# --- skip_invalid: invalid JSON is skipped and counted; BOM accepted; positions and reasons listed ---

def test_skip_invalid_counts_invalid_json_and_lists_positions(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n{oops\n\n"
                     + json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": []}]).encode()
                     + b"\n\xff\xfe\n" + json.dumps(GOOD).encode() + b"\n")
    spec = DatasetSpec.from_dict({"name": "jsonl", "path": str(path)})
    with caplog.at_level(logging.WARNING, logger="nanosft.data.mixture"):
        convs, _ = load_mixture([spec], data_dir=None, skip_invalid=True)
    assert len(convs) == 2  # line 1 (after the BOM) and line 6
    msg = caplog.text
    assert "skipped 3 invalid rows of 5" in msg
    assert "m.jsonl[train]: skipped 3 invalid rows of 5 (skip_invalid): line 2: invalid JSON" in msg
    assert "; line 4: message 1 (assistant): empty content" in msg
    assert "; line 5: not UTF-8 text" in msg


def test_skip_summary_lists_only_the_first_few(tmp_path, caplog):
    path = jsonl(tmp_path / "m.jsonl", [GOOD] + [NO_ASSISTANT] * 8)
    with caplog.at_level(logging.WARNING, logger="nanosft.data.mixture"):
        load_mixture([DatasetSpec.from_dict({"name": "jsonl", "path": str(path)})], None, skip_invalid=True)
    assert "line 6:" in caplog.text and "line 7:" not in caplog.text and "(3 more)" in caplog.text


# --- the error machinery itself ---

def test_internal_errors_keep_their_traceback():
    def main(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(main)


def test_nanosft_debug_adds_the_traceback(monkeypatch, capfd):
    def main(argv):
        raise UserError("bad thing, here,\n do this")

    monkeypatch.setenv("NANOSFT_DEBUG", "1")
    assert run_cli(main) == EXIT_USER_ERROR
    err = capfd.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: bad thing, here, do this"


def test_eval_messages_name_its_flags(monkeypatch):
    monkeypatch.setattr("nanosft.errors._OPTION_NAMES", {})
    assert option("data_dir") == "`data_dir:` in the config"
    from nanosft.eval.__main__ import CLI_OPTIONS

    use_cli_options(CLI_OPTIONS)
    assert option("data_dir") == "--data-dir"


def test_eval_cli_errors_are_one_line(capfd):
    from nanosft.eval import __main__ as eval_cli

    try:
        code = run_cli(eval_cli.main, ["--model", "runs/nope", "--tasks", "GSM8K"])
        err = capfd.readouterr().err
        check_one_line(code, err, "/nonexistent", "--model: local folder", "runs/nope does not exist")
        code = run_cli(eval_cli.main, ["--model", "runs/nope", "--tasks", "GSM9K"])
        check_one_line(code, capfd.readouterr().err, "/nonexistent", "--tasks: unknown task(s) ['GSM9K']")
    finally:
        use_cli_options({})


# --- real processes: python -m and accelerate launch ---

def run(cmd, cwd=REPO, env=ENV):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.slow
def test_python_m_train_unreachable_hub_dataset(make_config):
    config, out = make_config(datasets=[{"name": "hub", "hub_id": "nanosft-test/no-such-dataset"}])
    check_one_line(*run([sys.executable, "-m", "nanosft.train", "--config", config]), out,
                   "could not load Hub dataset 'nanosft-test/no-such-dataset'", "`data_dir:` in the config")


def test_python_m_chat_missing_model_folder(tmp_path):
    code, err = run([sys.executable, "-m", "nanosft.chat", "--model", "runs/nope", "--prompt", "hi"], cwd=str(tmp_path))
    check_one_line(code, err, tmp_path / "out", f"--model: local folder {tmp_path}/runs/nope does not exist")


def test_launcher_relays_the_user_error_status(monkeypatch):
    """One process: accelerate raises CalledProcessError; several: torch raises ChildFailedError. Status 2 of
    the (first failed) worker becomes a quiet exit 2, any other failure stays accelerate's exception."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from nanosft import launch

    def failing(exc):
        def launch_command(args):
            raise exc
        return launch_command

    argv = ["--num_processes", "1", "-m", "nanosft.train", "--config", "x.yaml"]
    monkeypatch.setattr("accelerate.commands.launch.launch_command", failing(subprocess.CalledProcessError(2, "x")))
    assert launch.main(argv) == EXIT_USER_ERROR
    monkeypatch.setattr("accelerate.commands.launch.launch_command", failing(subprocess.CalledProcessError(1, "x")))
    with pytest.raises(subprocess.CalledProcessError):
        launch.main(argv)
    for code, relayed in ((2, True), (1, False)):
        failure = ProcessFailure(local_rank=0, pid=1, exitcode=code, error_file="")
        monkeypatch.setattr("accelerate.commands.launch.launch_command",
                            failing(ChildFailedError("nanosft.train", {0: failure})))
        if relayed:
            assert launch.main(argv) == EXIT_USER_ERROR
        else:
            with pytest.raises(ChildFailedError):
                launch.main(argv)


@pytest.mark.slow
def test_two_process_cpu_launch_is_made_distributed(make_config):
    """``--multi_gpu`` on a machine with no accelerator: both ranks join one gloo group (use_cpu), then the
    invalid row ends the run with one line (rank 0 prints it) and exit 2."""
    import torch

    if torch.accelerator.is_available():
        pytest.skip("the automatic use_cpu fix applies only where no accelerator exists")
    config, out = make_config(rows=[GOOD, "{oops"])
    cmd = [sys.executable, "-m", "nanosft.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
           "-m", "nanosft.train", "--config", config]
    code, err = run(cmd)
    check_one_line(code, err, out, "data.jsonl[train], line 2", "invalid JSON")
    assert "warning: 2 processes launched without --cpu" in err


# --- a run that gets through: overwrite_output_dir, the summary line, file modes ---

@pytest.mark.slow
def test_overwrite_then_summary_line_and_umask_modes(make_config, capfd):
    """One tiny in-process run: ``overwrite_output_dir`` deletes the earlier run's checkpoints, the last
    stdout line sums the run up, and every written file has mode 0666 & ~umask (0640 under umask 027)."""
    config, out = make_config(save_steps=1, overwrite_output_dir=True)
    (out / "checkpoint-7").mkdir(parents=True)
    (out / "tmp-checkpoint-8").mkdir()
    old = os.umask(0o027)
    try:
        assert run_cli(train.main, ["--config", config]) == 0
    finally:
        os.umask(old)
    printed = capfd.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("done at step 1: final loss ")
    assert printed[-1].endswith(f"model {out}, report {out}/report.md")
    assert not (out / "checkpoint-7").exists() and not (out / "tmp-checkpoint-8").exists()
    assert (out / "checkpoint-1").is_dir() and (out / "report.md").is_file()
    for folder in (out, out / "checkpoint-1"):
        for name in ("model.safetensors", "config.json", "run_config.json", "nanosft_state.json"):
            if (folder / name).exists():
                assert oct((folder / name).stat().st_mode & 0o777) == oct(0o640), (folder / name)
    assert (out / "model.safetensors").exists() and (out / "checkpoint-1" / "nanosft_state.json").exists()


def test_a_non_distributed_multi_process_launch_is_refused_with_the_fixing_flag(monkeypatch):
    """Where an accelerator exists the launch is not fixed automatically: a Trainer that runs alone in a
    2-process launch is refused, naming ``--cpu`` / ``use_cpu``."""
    from types import SimpleNamespace

    from nanosft import recipe
    from nanosft.training.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"2 processes were launched but the Trainer runs 1 .*`--cpu`.*use_cpu"):
        recipe.check_distributed(SimpleNamespace(world_size=1, device="cuda:0"))
    recipe.check_distributed(SimpleNamespace(world_size=2, device="cpu"))  # distributed: accepted
    monkeypatch.setattr("torch.accelerator.is_available", lambda: True)
    assert "use_cpu" not in recipe.cpu_launch_fix({"max_steps": 1})  # an accelerator exists: no silent change
    monkeypatch.setattr("torch.accelerator.is_available", lambda: False)
    assert recipe.cpu_launch_fix({"max_steps": 1})["use_cpu"] is True
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert "use_cpu" not in recipe.cpu_launch_fix({"max_steps": 1})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # use_cpu would turn DeepSpeed off
    assert "use_cpu" not in recipe.cpu_launch_fix({"max_steps": 1})


def test_summary_line_names_the_chatcore_of_its_task_set():
    from types import SimpleNamespace

    from nanosft.train import summary_line

    history = [{"loss": 2.5, "step": 1}, {"chatcore_metric/nanochat": 0.125, "chatcore/GSM8K": 0.5, "step": 2},
               {"loss": 1.25, "step": 2}]
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=history, global_step=2))
    line = summary_line(trainer, SimpleNamespace(output_dir="runs/x"))
    assert line == ("done at step 2: final loss 1.2500, ChatCORE (nanochat) 0.1250, model runs/x, "
                    "report runs/x/report.md")
    partial = [{"loss": 1.0, "step": 1}, {"chatcore/GSM8K": 0.5, "step": 1}]  # a partial set has no ChatCORE
    trainer.state = SimpleNamespace(log_history=partial, global_step=1)
    assert "ChatCORE" not in summary_line(trainer, SimpleNamespace(output_dir="runs/x"))
