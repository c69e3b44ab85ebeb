"""Hub push through the Trainer's own integration, offline: huggingface_hub's HTTP client is replaced by an
in-memory fake Hub (``huggingface_hub.set_client_factory`` with an ``httpx2.MockTransport``), so our code, the
Trainer's upload code and huggingface_hub's commit code all run for real. The card must describe the run and
the token must authenticate every call yet appear in no file and no log.
"""

import base64
import json
import os
import sys
import threading

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed"))
from ckpt_common import REPO, tiny_overrides  # noqa: E402

TOKEN = "hf_nanosftTESTtoken0123456789abcdefXYZ"
REPO_ID = "nanosft-user/tiny-chat"


class FakeHub:
    """Answers the Hub API calls that create_repo and upload_folder make; records commits and auth headers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []  # (method, path, authorization)
        self.commits = []  # [{"summary": ..., "files": {path: bytes}}]

    def __call__(self, request):
        import httpx2

        path = request.url.path
        with self.lock:
            self.requests.append((request.method, path, request.headers.get("authorization")))
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{REPO_ID}", "name": REPO_ID})
        if path == "/api/validate-yaml":  # huggingface_hub checks a README's metadata before committing it
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                          "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            commit = {"summary": None, "files": {}}
            for line in lines:
                if line["key"] == "header":
                    commit["summary"] = line["value"]["summary"]
                elif line["key"] == "file":
                    commit["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            with self.lock:
                self.commits.append(commit)
            return httpx2.Response(200, json={"commitUrl": f"https://huggingface.co/{REPO_ID}/commit/abc",
                                              "commitOid": "a" * 40, "pullRequestUrl": None})
        return httpx2.Response(404, json={"error": f"fake hub: no route for {request.method} {path}"})


@pytest.fixture
def fake_hub(monkeypatch):
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    hub = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub), follow_redirects=True))
    yield hub
    _http.set_client_factory(_http.default_client_factory)


def test_push_to_hub_uploads_the_card_and_never_writes_the_token(fake_hub, tmp_path, data_dir, capfd, caplog):
    import logging

    from nanosft.train import main

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "run"
    args = ["--config", os.path.join(REPO, "configs/tiny.yaml")] + tiny_overrides(
        data_dir, str(out), max_steps=2, save_steps=2, push_to_hub="true", hub_model_id=REPO_ID, hub_token=TOKEN,
        logging_steps=1)
    assert main(args) == 0
    printed = capfd.readouterr()

    # every call authenticated with the token, the repo was created, checkpoints and the final model committed
    writes = [r for r in fake_hub.requests if r[0] == "POST"]
    assert writes and all(a == f"Bearer {TOKEN}" for _, _, a in writes), fake_hub.requests
    assert ("POST", "/api/repos/create", f"Bearer {TOKEN}") in fake_hub.requests
    summaries = [c["summary"] for c in fake_hub.commits]
    assert "Training in progress, step 2" in summaries, summaries  # hub_strategy every_save: the checkpoint push
    final = fake_hub.commits[-1]
    assert final["summary"] == "End of training" or "Model save" in final["summary"], [c["summary"] for c in fake_hub.commits]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(final["files"])
    assert not [f for c in fake_hub.commits for f in c["files"] if f.startswith(("checkpoint-", "tmp-checkpoint-"))]

    card = final["files"]["README.md"].decode()
    for text in ("## Base model", "## Data mixture", "| gsm8k | train |",
                 "## Recipe", "optimizer: muon", "## Evaluation", "## How to load and chat",
                 f'AutoModelForCausalLM.from_pretrained("{REPO_ID}")', "apply_chat_template", "- torch:"):
        assert text in card, (text, card)
    assert card == (out / "README.md").read_text()

    # the token is nowhere: not in any written file (incl. pickled training_args.bin), log, output or upload
    for root, _, files in os.walk(out):
        for name in files:
            data = open(os.path.join(root, name), "rb").read()
            assert TOKEN.encode() not in data, os.path.join(root, name)
    assert TOKEN not in printed.out and TOKEN not in printed.err and TOKEN not in caplog.text
    assert not [p for c in fake_hub.commits for p, data in c["files"].items() if TOKEN.encode() in data]


def test_card_has_the_chatcore_table(tmp_path):
    from types import SimpleNamespace

    from nanosft.training.config import NanoSFTConfig
    from nanosft.training.hub import build_model_card

    args = NanoSFTConfig(output_dir=str(tmp_path), model_name_or_path="karpathy/nanochat-d20", report_to="none")
    history = [{"loss": 1.0, "step": 1},
               {"val_bpb": 0.91, "chatcore/ARC-Easy": 0.4, "chatcore/GSM8K": 0.05, "chatcore_metric/nanochat": 0.12,
                "step": 200}]
    trainer = SimpleNamespace(args=args, state=SimpleNamespace(log_history=history, global_step=200, max_steps=400),
                              hub_model_id=None, _tokens_seen=[1000, 600], base_model_path=None)
    card = build_model_card(trainer)
    assert "base_model: karpathy/nanochat-d20" in card
    assert "| ARC-Easy | 0.4000 | 0.2000 |" in card  # centered: (0.4 - 0.25) / 0.75
    assert "| GSM8K | 0.0500 | 0.0500 |" in card and "| **chatcore_metric (nanochat)** | | **0.1200** |" in card
    assert "val_bpb: 0.9100 (step 200)" in card
    history[-1].pop("chatcore_metric/nanochat")  # a partial run: per-task rows only, and the card says so
    card = build_model_card(trainer)
    assert "| ARC-Easy | 0.4000 | 0.2000 |" in card and "partial task set: no ChatCORE" in card
    assert "chatcore_metric" not in card


@pytest.mark.parametrize("key, value, secret", [
    ("hub_token", TOKEN, True), ("HF_TOKEN", "abc", True), ("wandb_api_key", "0123456789abcdef" * 2, True),
    ("api_key", "k", True), ("client_secret", "s", True), ("db_password", "p", True),
    ("model_name_or_path", f"https://user:{TOKEN}@example.com/m", True),  # an hf_ token under any key
    ("hub_token", "", False), ("max_length", "128", False), ("monkey", "banana", False),
    ("model_name_or_path", "hf_short", False), ("hub_model_id", "org/tiny", False)])
def test_records_overrides_and_report_redact_the_same_secrets(key, value, secret):
    from nanosft.training.checkpoint import redact, redact_overrides
    from nanosft.report.report import config_table

    expected = "<redacted>" if secret else value
    assert redact({key: value, "datasets": [{"name": "x", key: value}]}) == \
        {key: expected, "datasets": [{"name": "x", key: expected}]}
    assert redact_overrides([f"{key}={value}", "seed=1"]) == [f"{key}={expected}", "seed=1"]
    rows = "\n".join(config_table({"config": {"datasets": [{key: value}]}, "overrides": [f"{key}={value}"]}))
    assert f"`{key}={expected}`" in rows and json.dumps([{key: expected}]) in rows  # the report redacts too
