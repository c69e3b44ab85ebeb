"""nanosft/data/formats.py through nanosft/data/mixture.py: every format and file type renders exactly like the same
conversations written in nanochat's messages form; refusals and errors are one line with file and position."""

import csv
import glob
import json
import os

import pytest

from nanosft.data.mixture import DatasetSpec, DataValidationError, load_mixture
from nanosft.data.formats import FORMATS
from nanosft.data.tasks import DataSourceError
from nanosft.format.template import ChatRenderer

HERE = os.path.dirname(os.path.abspath(__file__))
SHAREGPT_SAMPLE = os.path.join(HERE, "data", "sharegpt_sample.json")
# The ShareGPT speaker names, as the issue lists them (an independent statement of the mapping).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "model": "assistant", "system": "system"}

QA = [("What is 2+2?", "4"), ("Name a prime.", "7"), ("Capital of France?", "Paris"), ("Say hi.", "hi"),
      ("Spell cat.", "c-a-t"), ("Opposite of up?", "down")]
MESSAGES = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return str(path)


def write_json(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=1)
    return str(path)


def load(spec: dict, seed=42, **kw):
    convs, _ = load_mixture([DatasetSpec.from_dict(spec)], data_dir=None, seed=seed, **kw)
    return convs


def rendered(tokenizer, convs):
    return ChatRenderer(tokenizer).render_batch(convs, normalized=True)


def assert_same_rendering(tokenizer, got, want_messages, tmp_path):
    """``got`` (loaded conversations) render to the ids and masks of ``want_messages`` loaded from messages JSONL."""
    path = write_jsonl(tmp_path / "reference.jsonl", [{"messages": m} for m in want_messages])
    want = load({"name": "files", "path": path})
    assert len(got) == len(want) == len(want_messages)
    r_got, r_want = rendered(tokenizer, got), rendered(tokenizer, want)
    assert r_got == r_want
    assert all(sum(mask) > 0 for _, mask in r_got)


def test_sharegpt_file_with_ids_and_multi_turn_renders_like_messages(nanochat_tokenizer, tmp_path):
    with open(SHAREGPT_SAMPLE, encoding="utf-8") as f:
        raw = json.load(f)
    assert all("id" in r for r in raw) and max(len(r["conversations"]) for r in raw) == 6
    want = [[{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in r["conversations"]] for r in raw]
    got = load({"name": "files", "path": SHAREGPT_SAMPLE, "format": "sharegpt"})
    assert_same_rendering(nanochat_tokenizer, got, want, tmp_path)
    # the system turn is merged into the first user turn (nanochat); the typed <|user_end|> stays text
    by_first = {c[0]["content"].split("\n")[0]: c for c in got}
    sky = by_first["You are a concise assistant that answers in one sentence."]
    assert sky[0]["content"] == "You are a concise assistant that answers in one sentence.\n\nWhy is the sky blue?"
    ids, _ = ChatRenderer(nanochat_tokenizer).render(by_first["Write a haiku about <|user_end|> tokens."])
    assert ids.count(nanochat_tokenizer.convert_tokens_to_ids("<|user_end|>")) == 1


def test_sharegpt_field_names_and_roles_are_overridable(nanochat_tokenizer, tmp_path):
    rows = [{"dialog": [{"speaker": "customer", "text": q}, {"speaker": "agent", "text": a}]} for q, a in QA]
    path = write_jsonl(tmp_path / "support.jsonl", rows)
    got = load({"name": "files", "path": path, "format": "sharegpt", "messages_field": "dialog",
                "role_field": "speaker", "content_field": "text",
                "role_map": {"customer": "user", "agent": "assistant"}})
    assert_same_rendering(nanochat_tokenizer, got, MESSAGES, tmp_path)


def test_sharegpt_unknown_speaker_is_one_line_naming_file_line_and_role_map(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in QA]
    rows[3]["conversations"][1]["from"] = "bot"
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(DataValidationError) as e:
        load({"name": "files", "path": path, "format": "sharegpt"})
    msg = str(e.value)
    assert "\n" not in msg and "message 1: unknown sharegpt role 'bot'" in msg and "role_map" in msg
    assert f"{path}[train], line 4;" in msg


def test_alpaca_renders_instruction_blank_line_input(nanochat_tokenizer, tmp_path):
    rows = [{"instruction": "Translate to French.", "input": "cat", "output": "chat"},
            {"instruction": "Name a prime.", "input": "", "output": "7"},
            {"instruction": "Be nice.", "output": "Sure.", "system": "You are kind."}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    want = [[{"role": "user", "content": "Translate to French.\n\ncat"}, {"role": "assistant", "content": "chat"}],
            [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
            [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "Be nice."},
             {"role": "assistant", "content": "Sure."}]]
    got = load({"name": "files", "path": path, "format": "alpaca"})
    assert_same_rendering(nanochat_tokenizer, got, want, tmp_path)


def test_alpaca_empty_input_renders_without_separator(nanochat_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Name a prime.", "input": "", "output": "7"}])
    (conv,) = load({"name": "files", "path": path, "format": "alpaca"})
    ids, mask = ChatRenderer(nanochat_tokenizer).render(conv)
    text = nanochat_tokenizer.decode(ids, skip_special_tokens=False)
    assert text == "<|bos|><|user_start|>Name a prime.<|user_end|><|assistant_start|>7<|assistant_end|>"
    assert "\n" not in text and sum(mask) == len(nanochat_tokenizer.encode("7", add_special_tokens=False)) + 1


def test_openai_string_content_and_text_parts_render_like_messages(nanochat_tokenizer, tmp_path):
    rows = [{"messages": [{"role": "developer" if i % 2 else "system", "content": "Be brief."},
                          {"role": "user",
                           "content": [{"type": "text", "text": q[:3]}, {"type": "text", "text": q[3:]}]},
                          {"role": "assistant", "content": a, "refusal": None, "tool_calls": None}]}
            for i, (q, a) in enumerate(QA)]
    path = write_jsonl(tmp_path / "o.jsonl", rows)
    want = [[{"role": "system", "content": "Be brief."}, *m] for m in MESSAGES]
    got = load({"name": "files", "path": path, "format": "openai"})
    assert_same_rendering(nanochat_tokenizer, got, want, tmp_path)


@pytest.mark.parametrize("call, reason", [
    ({"role": "assistant", "content": None,
      "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2}"}}]},
     "message 1 has tool_calls"),
    ({"role": "assistant", "content": None, "function_call": {"name": "add", "arguments": "{}"}},
     "message 1 has function_call"),
    ({"role": "tool", "tool_call_id": "c1", "content": "4"}, "message 1 has role 'tool'"),
])
def test_openai_tool_call_row_is_refused_in_one_line(tmp_path, call, reason):
    good = {"messages": MESSAGES[0]}
    path = write_jsonl(tmp_path / "o.jsonl", [good, {"messages": [MESSAGES[1][0], call]}, good])
    with pytest.raises(DataValidationError) as e:
        load({"name": "files", "path": path, "format": "openai"})
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{reason}: OpenAI tool/function calls are JSON, but nanochat's tool is python code" in msg
    assert f"{path}[train], line 2;" in msg
    assert "{type: python}" in msg and "skip_invalid" in msg
    assert len(load({"name": "files", "path": path, "format": "openai"}, skip_invalid=True)) == 2


def test_openai_row_with_nanochat_python_parts_is_accepted(nanochat_tokenizer, tmp_path):
    parts = [{"type": "text", "text": "It is "}, {"type": "python", "text": "48/2"},
             {"type": "python_output", "text": "24"}, {"type": "text", "text": "24."}]
    conv = [{"role": "user", "content": "What is 48/2?"}, {"role": "assistant", "content": parts}]
    path = write_jsonl(tmp_path / "o.jsonl", [{"messages": conv}])
    got = load({"name": "files", "path": path, "format": "openai"})
    assert_same_rendering(nanochat_tokenizer, got, [conv], tmp_path)


def test_system_prompt_is_prepended_only_where_none(nanochat_tokenizer, tmp_path):
    rows = [{"messages": MESSAGES[0]}, {"messages": [{"role": "system", "content": "Own."}, *MESSAGES[1]]}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    got = load({"name": "files", "path": path, "system_prompt": "Answer in English."})
    want = [[{"role": "system", "content": "Answer in English."}, *MESSAGES[0]],
            [{"role": "system", "content": "Own."}, *MESSAGES[1]]]
    assert_same_rendering(nanochat_tokenizer, got, want, tmp_path)
    assert {c[0]["content"] for c in got} == {"Answer in English.\n\nWhat is 2+2?", "Own.\n\nName a prime."}


def test_fractional_epochs_are_a_seeded_reproducible_subset(tmp_path):
    rows = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(40)]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    def users(epochs, seed):
        return [c[0]["content"] for c in load({"name": "files", "path": path, "epochs": epochs}, seed=seed)]

    half = users(0.5, seed=1)
    assert len(half) == 20 == len(set(half))
    assert half == users(0.5, seed=1)  # reproducible for a seed
    assert set(half) != set(users(0.5, seed=2))  # another seed draws another half
    more = users(2.25, seed=1)
    assert len(more) == 90 and all(more.count(f"q{i}") in (2, 3) for i in range(40))
    assert sum(more.count(f"q{i}") == 3 for i in range(40)) == 10
    assert len(users(0.001, seed=1)) == 1  # a positive weight keeps at least one row


def write_table(tmp_path, kind: str, rows: list[dict]) -> str:
    """``rows`` (alpaca dicts) written as ``a.json`` (an array), ``a.parquet`` or ``a.csv``; returns the path."""
    path = str(tmp_path / f"a.{kind}")
    if kind == "json":
        return write_json(path, rows)
    if kind == "parquet":
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(path)
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["instruction", "input", "output"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.parametrize("kind", ["json", "parquet", "csv", "glob", "list"])
def test_file_types_globs_and_lists_load_the_same_conversations(nanochat_tokenizer, tmp_path, kind):
    alpaca = [{"instruction": q, "input": "" if i % 2 else "(context)", "output": a} for i, (q, a) in enumerate(QA)]
    want = [[{"role": "user", "content": r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")},
             {"role": "assistant", "content": r["output"]}] for r in alpaca]
    if kind in ("json", "parquet", "csv"):
        path = write_table(tmp_path, kind, alpaca)
    else:
        for k in range(3):
            write_jsonl(tmp_path / f"part-{k}.jsonl", alpaca[2 * k: 2 * k + 2])
        path = str(tmp_path / "part-*.jsonl")
        if kind == "list":
            path = [str(tmp_path / f"part-{k}.jsonl") for k in range(3)]
            assert sorted(glob.glob(str(tmp_path / "part-*.jsonl"))) == path
    got = load({"name": "files", "path": path, "format": "alpaca"})
    assert_same_rendering(nanochat_tokenizer, got, want, tmp_path)


def test_csv_numbers_stay_text_and_empty_cells_are_empty(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("instruction,input,output\nWhat is 6*7?,,042\nAdd them.,1 2,3\n", encoding="utf-8")
    got = load({"name": "files", "path": str(path), "format": "alpaca"}, seed=0)
    answers = {c[0]["content"]: c[1]["content"][0]["text"] for c in got}
    assert answers == {"What is 6*7?": "042", "Add them.\n\n1 2": "3"}


def test_csv_column_holding_json_messages(nanochat_tokenizer, tmp_path):
    path = str(tmp_path / "m.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "chat"])
        w.writerows([[i, json.dumps(m)] for i, m in enumerate(MESSAGES)])
    got = load({"name": "files", "path": path, "messages_field": "chat"})
    assert_same_rendering(nanochat_tokenizer, got, MESSAGES, tmp_path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([99, "[{not json"])
    with pytest.raises(DataValidationError, match=r"field `chat` is a string but not valid JSON.*m.csv\[train\], row 7;"):
        load({"name": "files", "path": path, "messages_field": "chat"})


@pytest.mark.parametrize("kind, where", [("json", "row 3"), ("parquet", "row 3"), ("csv", "row 3"),
                                         ("glob", "part-1.jsonl, line 1")])
def test_invalid_row_names_file_and_one_based_position(tmp_path, kind, where):
    rows = [{"instruction": q, "input": "", "output": a} for q, a in QA]
    rows[2]["output"] = ""
    if kind in ("json", "parquet", "csv"):
        path = write_table(tmp_path, kind, rows)
    else:
        write_jsonl(tmp_path / "part-0.jsonl", rows[:2])
        write_jsonl(tmp_path / "part-1.jsonl", rows[2:])
        path = str(tmp_path / "part-*.jsonl")
    with pytest.raises(DataValidationError) as e:
        load({"name": "files", "path": path, "format": "alpaca"})
    msg = str(e.value)
    assert "\n" not in msg and "`output` is missing or empty" in msg and f"{where};" in msg
    if kind != "glob":
        assert f"{path}[train], {where};" in msg


def test_file_errors_name_the_path(tmp_path):
    with pytest.raises(DataSourceError, match="no file matches"):
        load({"name": "files", "path": str(tmp_path / "none-*.jsonl")})
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataSourceError, match="unknown file type"):
        load({"name": "files", "path": str(tmp_path / "a.txt")})
    (tmp_path / "obj.json").write_text('{"messages": []}')
    with pytest.raises(DataSourceError, match="must hold a JSON array"):
        load({"name": "files", "path": str(tmp_path / "obj.json")})
    (tmp_path / "bad.json").write_text('[\n{"a": 1},\n{"a": \n]')
    with pytest.raises(DataSourceError, match=r"bad.json, line 4: invalid JSON"):
        load({"name": "files", "path": str(tmp_path / "bad.json")})


def test_gpteacher_reads_its_json_file_like_the_files_loader(tmp_path):
    from nanosft.data.tasks import gpteacher

    (tmp_path / "gpteacher").mkdir()
    path = tmp_path / "gpteacher" / "codegen-instruct.json"
    path.write_text('\ufeff[{"instruction": "Say hi", "input": "", "response": "hi"}]', encoding="utf-8")
    assert gpteacher.load_conversations("train", str(tmp_path)) == [
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]]
    path.write_text('[\n{"instruction": \n]')
    with pytest.raises(DataSourceError, match=r"codegen-instruct.json, line 3: invalid JSON"):
        gpteacher.load_conversations("train", str(tmp_path))
    path.write_text('{"instruction": "x"}')
    with pytest.raises(DataSourceError, match="must hold a JSON array"):
        gpteacher.load_conversations("train", str(tmp_path))


@pytest.mark.parametrize("spec, reason", [
    ({"name": "files", "path": "x.jsonl", "format": "chatml"}, "unknown format 'chatml'"),
    ({"name": "gsm8k", "format": "sharegpt"}, "apply to datasets"),
    ({"name": "files", "path": "x.jsonl", "format": "alpaca", "role_field": "who"}, "has no field(s) ['role']"),
    ({"name": "files", "path": "x.jsonl", "role_map": {"bot": "robot"}}, "maps to unknown role"),
    ({"name": "files", "path": "x.jsonl", "epochs": 0}, "must be a positive number"),
    ({"name": "files", "path": "x.jsonl", "epochs": True}, "must be a positive number"),
    ({"name": "files", "path": 3}, "must be a file, a glob or a list"),
    ({"name": "identity", "path": ["a.jsonl", "b.jsonl"]}, "a list `path` apply to"),
    ({"name": "files", "path": "x.jsonl", "system_prompt": ["a"]}, "`system_prompt` of dataset 'files' must be a string"),
])
def test_config_errors_name_the_key(spec, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        DatasetSpec.from_dict(spec)


def test_hub_rows_take_the_format_and_report_row_index(monkeypatch, nanochat_tokenizer, tmp_path):
    import datasets

    import nanosft.data.tasks.registry

    rows = [{"id": str(i), "extra": i, "chat": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            for i, (q, a) in enumerate(QA)]
    seen = {}

    def fake_hub(repo_id, *args, split):
        seen["args"] = (repo_id, args, split)
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(nanosft.data.tasks.registry, "load_hub", fake_hub)
    spec = {"name": "hub", "hub_id": "org/chats", "format": "sharegpt", "messages_field": "chat"}
    got = load(spec)
    assert seen["args"] == ("org/chats", (), "train")
    assert_same_rendering(nanochat_tokenizer, got, MESSAGES, tmp_path)
    rows[4]["chat"][1]["from"] = "narrator"
    with pytest.raises(DataValidationError, match=r"message 1: unknown sharegpt role.*Hub dataset org/chats, row index 4;"):
        load(spec)


def test_every_format_has_a_readme_example(nanochat_tokenizer, tmp_path):
    import re

    import yaml

    readme = open(os.path.join(HERE, "..", "README.md"), encoding="utf-8").read()
    section = readme[readme.index("## Datasets"):readme.index("\n## ", readme.index("## Datasets") + 3)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    lines = [line for block in blocks for line in block.split("\n") if line.strip().startswith("- ")]
    entries = [yaml.safe_load(line)[0] for line in lines]
    assert {e.get("format", "messages") for e in entries} == set(FORMATS)
    for e in entries:  # every README entry is a valid dataset spec
        DatasetSpec.from_dict(e)
    for name, fmt in FORMATS.items():
        assert fmt.example in section
        path = write_jsonl(tmp_path / f"{name}.jsonl", [json.loads(fmt.example)])
        (conv,) = load({"name": "files", "path": path, "format": name})
        assert rendered(nanochat_tokenizer, [conv])[0][1].count(1) > 0


def test_inspect_shows_a_row_of_each_format(tmp_path, data_dir, capsys):
    from nanosft.inspect_data import main

    lines = []
    for name, fmt in FORMATS.items():
        path = write_jsonl(tmp_path / f"{name}.jsonl", [json.loads(fmt.example)])
        lines.append(f"  - {{name: files, path: {path}, format: {name}}}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model_config: {{hidden_size: 32}}\ntokenizer_name_or_path: {data_dir}/nanochat_tokenizer\n"
                   "datasets:\n" + "\n".join(lines) + f"\nmax_length: 128\noutput_dir: {tmp_path / 'out'}\n")
    assert main(["--config", str(cfg), "--n", "1"]) == 0
    out = capsys.readouterr().out
    for name in FORMATS:
        assert f"=== files/{tmp_path / name}.jsonl[train] #1 (format {name}, " in out
    assert ("[-<|bos|><|user_start|>Translate to French.\n\ncat<|user_end|><|assistant_start|>]"
            "[+chat<|assistant_end|>]") in out


def test_lazy_jsonl_rows_equal_read_jsonl_row_by_row(tmp_path):
    """``read_files`` parses a JSON-lines file when each row is indexed (``JsonlLines``): same rows, same
    InvalidLine reasons and 1-based lines as reading it whole, blank lines (also Unicode blanks) skipped."""
    from nanosft.data.formats import read_files
    from nanosft.data.tasks import InvalidLine, JsonlLines, read_jsonl

    path = tmp_path / "mixed.jsonl"
    good = {"messages": MESSAGES[0]}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good).encode() + b"\n\n  \n" + "\u00a0\n".encode()
                     + b"{oops\n" + b"\xff\xfe\n" + json.dumps(MESSAGES[1]).encode() + b"\n")
    whole = read_jsonl(str(path), keep_invalid=True)
    lazy = JsonlLines(str(path))
    assert list(lazy.numbers) == [1, 5, 6, 7] == whole.segments[0][3]  # lines 2-4 blank
    rows = read_files(str(path))
    assert len(rows) == len(lazy) == len(whole) == 4
    for i in (3, 0, 2, 1):  # any order
        got, ref = rows[i], whole[i]
        if isinstance(ref, InvalidLine):
            assert isinstance(got, InvalidLine) and got.reason == ref.reason
        else:
            assert got == ref
    assert rows[0] == good and rows[3] == MESSAGES[1]
    assert rows[1].reason.startswith("invalid JSON") and rows[2].reason == "not UTF-8 text (byte 1)"
    assert rows.where(2) == f"{path}, line 6"


def test_hub_rows_read_in_blocks_equal_to_list():
    """A Hub dataset's rows are read 1,000 at a time when indexed (``DatasetRows``), equal to ``to_list``."""
    import datasets

    from nanosft.data.tasks.registry import DatasetRows

    rows = [{"id": str(i), "chat": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}],
             "note": None if i % 2 else "x"} for i in range(25)]
    ds = datasets.Dataset.from_list(rows)
    lazy = DatasetRows(ds, block=7)  # blocks [0,7) [7,14) ... [21,25)
    assert len(lazy) == 25
    assert [lazy[i] for i in range(25)] == ds.to_list() == rows
    assert lazy[6] == rows[6] and lazy[24] == rows[24] and lazy[0] == rows[0]  # backwards: block reloaded
