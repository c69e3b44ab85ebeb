"""Chat with a checkpoint: ``python -m nanosft.chat --model runs/tiny [--prompt "Hi"]``.

Plain transformers only (``AutoModelForCausalLM``, ``AutoTokenizer``, ``apply_chat_template``,
``generate`` with a ``TextStreamer``), so what works here works in any HF serving stack. Interactive
by default (``/clear`` resets the conversation, ``/quit`` or Ctrl-D exits); ``--prompt`` answers once.
Tool calls are shown as the model writes them; the calculator runs only in ``nanosft.eval``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

from .errors import run_cli
from .models.pretrained import check_model_source


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m nanosft.chat", description="Chat with a nanosft checkpoint.")
    p.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    return p.parse_args(argv)


def reply(model, tokenizer, messages, args) -> str:
    """Generate and stream one assistant reply to ``messages``; returns its text (no special tokens)."""
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k} if args.temperature > 0 \
        else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, streamer=streamer, **sampling)
    new = out[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_model_source(args.model, "--model")  # a missing folder, named as such, before loading anything

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).to(device).eval()
    if args.prompt is not None:
        reply(model, tokenizer, [{"role": "user", "content": args.prompt}], args)
        return 0
    messages: list[dict] = []
    print("nanosft chat: /clear resets, /quit exits", file=sys.stderr)
    while True:
        try:
            text = input("\nUser: ").strip()
        except EOFError:
            return 0
        if text in ("/quit", "/exit"):
            return 0
        if text == "/clear":
            messages = []
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("Assistant: ", end="", flush=True)
        messages.append({"role": "assistant", "content": reply(model, tokenizer, messages, args)})


if __name__ == "__main__":
    sys.exit(run_cli(main))
