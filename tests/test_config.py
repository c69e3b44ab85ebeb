"""Config validation: unknown keys, wrong types and missing data fail early, naming the key or path."""

import os

import pytest

from nanosft.training.config import ConfigError, load_config, read_config_dict
from nanosft.data.mixture import DatasetSpec, load_mixture
from nanosft.data.tasks import DataSourceError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


BASE = "model_config: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2}}\noutput_dir: {out}\n"


def test_unknown_key_is_rejected_with_its_name_and_a_suggestion(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path) + "learning_rte: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rte' \(did you mean 'learning_rate'\?\)"):
        read_config_dict(path)


def test_wrong_type_is_rejected_with_the_key_name(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path) + "max_steps: three\n")
    with pytest.raises(ConfigError, match="key 'max_steps' expects int, got str"):
        read_config_dict(path)


def test_bool_is_not_accepted_as_int(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path) + "per_device_train_batch_size: true\n")
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        read_config_dict(path)


def test_unknown_dataset_name_and_key_are_rejected(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path) + "datasets: [{name: smoltolk}]\n")
    with pytest.raises(ValueError, match="unknown dataset name 'smoltolk'"):
        read_config_dict(path)
    path = write(tmp_path, BASE.format(out=tmp_path) + "datasets: [{name: gsm8k, epoch: 2}]\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\]"):
        read_config_dict(path)


def test_set_overrides_single_keys_and_is_validated(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path))
    cfg = load_config(path, ["max_steps=3", "attention=causal", f"data_dir={tmp_path}"])
    assert (cfg.max_steps, cfg.attention, cfg.data_dir) == (3, "causal", str(tmp_path))
    with pytest.raises(ConfigError, match="--set: unknown key 'max_stepz'"):
        load_config(path, ["max_stepz=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["max_steps"])


def test_yaml_no_stays_a_string_for_string_keys(tmp_path):
    # YAML 1.1 reads `no` as false; TrainingArguments' eval_strategy/save_strategy take "no"
    path = write(tmp_path, BASE.format(out=tmp_path) + "save_strategy: no\n")
    cfg = load_config(path, ["eval_strategy=no"])
    assert cfg.eval_strategy == "no" and cfg.save_strategy == "no"
    assert load_config(path, ["use_cpu=true"]).use_cpu is True


def test_bad_enum_value_is_rejected(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path) + "attention: bidirectional\n")
    with pytest.raises(ConfigError, match="attention"):
        load_config(path)


def test_missing_data_file_names_the_path_and_how_to_get_it(tmp_path):
    specs = [DatasetSpec.from_dict({"name": "gsm8k"})]
    with pytest.raises(DataSourceError) as e:
        load_mixture(specs, str(tmp_path))
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "gsm8k", "train.jsonl") in msg and "grade-school-math" in msg


def test_missing_data_fails_before_the_model_loads(tmp_path, monkeypatch):
    """The recipe reads data before building the model: a missing file never costs a model load."""
    import nanosft.train as train

    def boom(*a, **k):
        raise AssertionError("model loaded before data were checked")

    monkeypatch.setattr(train, "load_model", boom)
    tok = os.path.join(REPO, "nanosft", "resources", "data", "nanochat_tokenizer")
    path = write(tmp_path, BASE.format(out=tmp_path / "out") + f"tokenizer_name_or_path: {tok}\ndata_dir: {tmp_path}\n")
    with pytest.raises(DataSourceError, match="train.jsonl"):
        train.main(["--config", path])


def test_missing_data_dir_or_tokenizer_path_is_one_line_naming_key_and_path(tmp_path, monkeypatch):
    path = write(tmp_path, BASE.format(out=tmp_path))
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=f"data_dir: folder not found: {missing}$"):
        load_config(path, [f"data_dir={missing}"])
    monkeypatch.chdir(tmp_path)  # a relative path is named with the working directory it was resolved from
    with pytest.raises(ConfigError) as e:
        load_config(path, ["tokenizer_name_or_path=../shared/data/nanochat_tokenizer"])
    assert str(e.value).endswith(f"tokenizer_name_or_path: path not found: ../shared/data/nanochat_tokenizer "
                                 f"(relative to the working directory {tmp_path})")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="data_dir: pkg://nanosft/no_such_folder: .* does not exist"):
        load_config(path, ["data_dir=pkg://nanosft/no_such_folder"])
    # a Hub id is left to the Hub; pkg:// resolves inside the installed package, from any working directory
    cfg = load_config(path, ["tokenizer_name_or_path=HuggingFaceTB/SmolLM2-135M",
                             "data_dir=pkg://nanosft/resources/data"])
    assert cfg.tokenizer_name_or_path == "HuggingFaceTB/SmolLM2-135M"
    assert os.path.samefile(cfg.data_dir, os.path.join(REPO, "nanosft", "resources", "data"))


def test_tiny_config_reads_the_embedded_data_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(os.path.join(REPO, "configs", "tiny.yaml"), [f"output_dir={tmp_path}"])
    assert os.path.isfile(os.path.join(cfg.tokenizer_name_or_path, "tokenizer.tiktoken"))
    assert os.path.isfile(os.path.join(cfg.data_dir, "gsm8k", "train.jsonl"))


def test_chatcore_tasks_takes_a_set_name_or_task_names(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path))
    assert load_config(path, ["chatcore_tasks=nanochat"]).chatcore_tasks == "nanochat"
    assert load_config(path, ["chatcore_tasks=[GSM8K, MMLU]"]).chatcore_tasks == ["GSM8K", "MMLU"]
    with pytest.raises(ConfigError, match="chatcore_tasks: unknown ChatCORE task set 'nanochat5'"):
        load_config(path, ["chatcore_tasks=nanochat5"])
    with pytest.raises(ConfigError, match="chatcore_tasks: unknown ChatCORE task 'GSM9K'"):
        load_config(path, ["chatcore_tasks=[GSM9K]"])


@pytest.mark.parametrize("name,dim,rows", [("d12", 768, 32), ("d20", 1280, 16), ("d26", 1664, 8)])
def test_gpu_recipes_parse_and_resolve(name, dim, rows):
    # use_cpu: this machine has no GPU, and TrainingArguments refuses bf16 on a CPU it was not told about
    cfg = load_config(os.path.join(REPO, "configs", f"{name}.yaml"), ["use_cpu=true"])
    assert cfg.max_length == 2048 and cfg.per_device_train_batch_size == rows
    # nanochat: grad accumulation = total_batch_size / (B * T * world) = 524288 / (rows * 2048 * 1)
    assert cfg.gradient_accumulation_steps == 524288 // (rows * 2048)
    assert (cfg.init_lr_frac, cfg.warmdown_ratio, cfg.final_lr_frac, cfg.weight_decay) == (0.8, 0.5, 0.0, 0.0)
    assert cfg.optimizer == "muon" and cfg.bf16 is True and cfg.attention == "document"
    specs = [DatasetSpec.from_dict(d) for d in cfg.datasets]
    assert {s.name for s in specs} >= {"smoltalk", "gsm8k", "identity", "spellingbee"}
    assert f"model_dim {dim}" in open(os.path.join(REPO, "configs", f"{name}.yaml")).read()


@pytest.mark.parametrize("key,value,instead", [
    ("packing", "true", "nanosft always packs (packing_strategy: nanochat|bfd)"),
    ("padding_free", "true", "attention: document|causal"),
    ("assistant_only_loss", "true", "assistant tokens only"),
    ("completion_only_loss", "false", "assistant tokens only"),
    ("loss_type", "dft", "cross-entropy on supervised tokens"),
    ("label_smoothing_factor", "0.1", "unsmoothed"),
    ("use_liger_kernel", "true", "logits only at supervised positions"),
    ("truncation_mode", "keep_end", "overlong: truncate|split"),
    ("eos_token", "<|im_end|>", "<|assistant_end|>"),
])
def test_trl_options_nanosft_replaces_are_refused_naming_the_equivalent(tmp_path, key, value, instead):
    import re

    path = write(tmp_path, BASE.format(out=tmp_path) + f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(path)}: {key}: .*{re.escape(instead)}"):
        load_config(path)


def test_trl_options_left_at_their_defaults_are_accepted(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path) + "packing: false\nloss_type: nll\nuse_liger_kernel: false\n"
                 "completion_only_loss: null\n")
    cfg = load_config(path)
    assert (cfg.packing, cfg.loss_type, cfg.optimizer) == (False, "nll", "auto")


def test_total_batch_size_must_divide(tmp_path):
    path = write(tmp_path, BASE.format(out=tmp_path) + "max_length: 64\nper_device_train_batch_size: 3\n"
                 "total_batch_size: 1000\n")
    with pytest.raises(ConfigError, match="total_batch_size"):
        load_config(path)
