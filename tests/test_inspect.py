"""nanosft/inspect_data.py: samples with supervision markers and per-dataset statistics, as training sees them."""

import re

import pytest

from nanosft.inspect_data import GREEN, RED, RESET, format_conversation, main, mask_spans
from nanosft.format.template import ChatRenderer

CONV = [{"role": "user", "content": "What is 48/2?"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is "}, {"type": "python", "text": "48/2"},
                                          {"type": "python_output", "text": "24"}, {"type": "text", "text": "24]"}]}]


def test_mask_spans_groups_runs():
    assert mask_spans([1, 2, 3, 4, 5], [0, 0, 1, 1, 0]) == [(0, [1, 2]), (1, [3, 4]), (0, [5])]


def test_plain_markers_show_exactly_the_supervised_tokens(nanochat_tokenizer):
    ids, mask = ChatRenderer(nanochat_tokenizer).render(CONV)
    text = format_conversation(nanochat_tokenizer, ids, mask, color=False)
    assert text == ("[-<|bos|><|user_start|>What is 48/2?<|user_end|><|assistant_start|>]"
                    "[+It is <|python_start|>48/2<|python_end|>][-<|output_start|>24<|output_end|>]"
                    "[+24\\]<|assistant_end|>]")


def test_color_mode_uses_ansi_green_for_supervised_and_red_for_the_rest(nanochat_tokenizer):
    ids, mask = ChatRenderer(nanochat_tokenizer).render(CONV)
    text = format_conversation(nanochat_tokenizer, ids, mask, color=True)
    assert text.startswith(RED + "<|bos|>") and f"{GREEN}It is <|python_start|>" in text
    assert text.endswith(f"{GREEN}24]<|assistant_end|>{RESET}")


def test_cli_prints_samples_and_per_dataset_table(tmp_path, data_dir, capsys):
    tok_dir = f"{data_dir}/nanochat_tokenizer"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model_config: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2}}\n"
        f"tokenizer_name_or_path: {tok_dir}\n"
        f"data_dir: {data_dir}\n"
        "datasets:\n  - {name: gsm8k, max_rows: 30}\n  - {name: identity, max_rows: 10}\n"
        f"max_length: 256\noutput_dir: {tmp_path / 'out'}\nreport_to: none\n"
    )
    assert main(["--config", str(cfg), "--n", "2", "--set", "mixture_seed=1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # captured stdout is not a TTY: plain markers
    assert out.count("=== gsm8k[train] #") == 2 and out.count("=== identity[train] #") == 2
    assert "[+" in out and "[-<|bos|><|user_start|>" in out
    row = re.search(r"^gsm8k\[train\]\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)%\s+(\d+)$", out, re.MULTILINE)
    assert row and row.group(1) == "30" and 0 < float(row.group(4)) < 100 and int(row.group(3)) <= 257
    ident = re.search(r"^identity\[train\]\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)%\s+(\d+)$", out, re.MULTILINE)
    assert ident and ident.group(1) == "10" and int(ident.group(3)) <= 257 and int(ident.group(5)) > 0
    assert re.search(r"^all\s+40\s", out, re.MULTILINE)


def test_cli_color_always(tmp_path, data_dir, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model_config: {{hidden_size: 32}}\ntokenizer_name_or_path: {data_dir}/nanochat_tokenizer\n"
                   f"data_dir: {data_dir}\n"
                   "datasets: [{name: gsm8k, max_rows: 3}]\nmax_length: 128\n"
                   f"output_dir: {tmp_path / 'out'}\nreport_to: none\n")
    main(["--config", str(cfg), "--n", "1", "--color", "always"])
    out = capsys.readouterr().out
    assert GREEN in out and RED in out


def test_cli_reports_invalid_rows_like_training(tmp_path, data_dir):
    from nanosft.data.mixture import DataValidationError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('[{"role": "user", "content": "hi"}]\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model_config: {{hidden_size: 32}}\ntokenizer_name_or_path: {data_dir}/nanochat_tokenizer\n"
                   f"datasets: [{{name: jsonl, path: {bad}}}]\nmax_length: 128\n"
                   f"output_dir: {tmp_path / 'out'}\nreport_to: none\n")
    with pytest.raises(DataValidationError, match=r"no assistant message.*bad.jsonl\[train\], line 1;"):
        main(["--config", str(cfg), "--n", "1"])
