"""nanosft/data/tasks/registry.py: one entry per named dataset serves SFT mixtures, ChatCORE and the data cache."""

import pytest

from nanosft.data.mixture import DATASETS, FORMAT_LOADERS, DatasetSpec
from nanosft.data.tasks import DataSourceError, gpteacher
from nanosft.data.tasks.registry import REGISTRY
from nanosft.errors import ConfigError
from nanosft.eval import chatcore


def test_chatcore_and_the_mixture_read_the_same_entries():
    assert list(chatcore.TASKS) == ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]
    for title, name in [("GSM8K", "gsm8k"), ("MMLU", "mmlu"), ("SpellingBee", "spellingbee")]:
        assert chatcore.get_task(title) is REGISTRY[name] is DATASETS[name]  # one object, both uses
    assert sorted(DATASETS) == ["arc", "files", "gpteacher", "gsm8k", "hub", "identity", "jsonl", "mmlu",
                                "simplespelling", "smoltalk", "spellingbee"]
    assert set(FORMAT_LOADERS) == {"hub", "smoltalk", "files", "jsonl"}
    assert {t: (chatcore.get_task(t).kind, chatcore.get_task(t).baseline) for t in chatcore.TASKS} == {
        "ARC-Easy": ("categorical", 0.25), "ARC-Challenge": ("categorical", 0.25), "MMLU": ("categorical", 0.25),
        "GSM8K": ("generative", 0.0), "HumanEval": ("generative", 0.0), "SpellingBee": ("generative", 0.0)}
    assert [t for t in chatcore.TASKS if chatcore.get_task(t).runs_code] == ["HumanEval"]


def test_eval_only_tasks_are_not_training_datasets():
    with pytest.raises(ConfigError, match="unknown dataset name 'humaneval'"):
        DatasetSpec.from_dict({"name": "humaneval"})


def test_gsm8k_problems_carry_the_final_answer(data_dir):
    problems = REGISTRY["gsm8k"].load("test", data_dir)
    first = problems[0]
    assert first["reference"] == first["messages"][1]["content"][-1]["text"].split("#### ")[-1].replace(",", "")


def test_gpteacher_subsets_are_local_only():
    """The Hub copy is another GPTeacher module: reading it would ignore `subset`, so it is refused."""
    with pytest.raises(DataSourceError, match=r"data.dir"):  # data_dir, or --data-dir after an eval CLI test
        gpteacher.load_conversations("train", None, subset="roleplay")
