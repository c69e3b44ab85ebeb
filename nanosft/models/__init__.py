"""Model classes nanosft adds to transformers, registered with the Auto classes on ``import nanosft``.

- ``nanochat_gpt``: the current nanochat GPT (value embeddings, lambdas, smear, backout, sliding windows).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .nanochat_gpt import NanoChatGPTConfig, NanoChatGPTForCausalLM, NanoChatGPTModel


def register() -> None:
    """Register ``nanochat_gpt`` with AutoConfig / AutoModel / AutoModelForCausalLM (idempotent)."""
    AutoConfig.register(NanoChatGPTConfig.model_type, NanoChatGPTConfig, exist_ok=True)
    AutoModel.register(NanoChatGPTConfig, NanoChatGPTModel, exist_ok=True)
    AutoModelForCausalLM.register(NanoChatGPTConfig, NanoChatGPTForCausalLM, exist_ok=True)
    # save_pretrained then copies configuration_/modeling_nanochat_gpt.py next to the weights and writes
    # config.auto_map, so trust_remote_code=True loads the model where nanosft is not installed.
    NanoChatGPTConfig.register_for_auto_class()
    NanoChatGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")


register()

__all__ = ["NanoChatGPTConfig", "NanoChatGPTForCausalLM", "NanoChatGPTModel", "register"]
