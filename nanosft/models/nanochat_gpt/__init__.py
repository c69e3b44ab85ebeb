"""The current nanochat GPT as a transformers model (``model_type: nanochat_gpt``); see ``modeling_nanochat_gpt``."""

from .configuration_nanochat_gpt import NanoChatGPTConfig
from .modeling_nanochat_gpt import NanoChatGPTForCausalLM, NanoChatGPTModel, NanoChatGPTPreTrainedModel

__all__ = ["NanoChatGPTConfig", "NanoChatGPTForCausalLM", "NanoChatGPTModel", "NanoChatGPTPreTrainedModel"]
