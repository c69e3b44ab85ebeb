"""nanosft: nanochat-style supervised fine-tuning as a first-class Hugging Face citizen.

Layers, each importing only those below it (setup.cfg ``[importlinter]``):

- ``report/``    the run report; ``training/`` config, trainers, checkpoints, model card
- ``eval/``      ChatCORE, generation engine, sandbox, callbacks, rewards
- ``optim/``     Muon, LR schedule, warm start; ``models/`` loading, conversion, LoRA, model classes (registered
  with the Auto classes on import)
- ``data/``      task registry, row formats, mixture, packing, prepared-data cache
- ``format/``    special tokens, tokenizers, chat template and renderer
- ``files.py``   atomic JSON writes; ``errors.py`` user errors: one line ``error: ...``, exit 2

Command-line modules on top: ``train`` (the recipe), ``rl``, ``eval``, ``chat``, ``baseline``, ``merge``, ``prepare``,
``convert``, ``inspect_data``, ``report``, ``launch``.
"""

__version__ = "0.1.0"

from . import models  # noqa: E402,F401  registers model_type nanochat_gpt with transformers' Auto classes
