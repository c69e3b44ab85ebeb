"""nanosft: nanochat-style supervised fine-tuning as a first-class Hugging Face citizen.

Components (one concept per module):

- ``models/``       model classes (``nanochat_gpt``: the current nanochat GPT), registered on import
- ``tokenizer.py``  the nanochat special tokens; build/extend HF tokenizers
- ``template.py``   the nanochat chat format: direct renderer + jinja chat template
- ``data.py``       conversation datasets (local folder or Hub) and the shuffled mixture
- ``packing.py``    BOS-aligned best-fit packing collator
- ``muon.py``       MuonAdamW optimizer; ``schedule.py`` the LR recipe
- ``chatcore.py``   ChatCORE tasks and scoring; ``sandbox.py`` code execution
- ``trainer.py``    ``NanoSFTTrainer`` (a ``trl.SFTTrainer``); ``config.py`` ``NanoSFTConfig``
- ``train.py``      the recipe: ``accelerate launch -m nanosft.train --config configs/tiny.yaml``
- ``errors.py``     user errors: one line ``error: ...``, exit 2; ``launch.py`` ``accelerate launch`` that keeps it so
"""

__version__ = "0.1.0"

from . import models  # noqa: E402,F401  registers model_type nanochat_gpt with transformers' Auto classes
