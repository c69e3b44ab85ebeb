"""Run ``nanosft.train`` but die by SIGKILL in the middle of saving checkpoint ``NANOSFT_CRASH_STEP``.

The crash comes after the Trainer wrote the model and optimizer of that checkpoint and before its RNG
state and ``trainer_state.json`` (``Trainer._save_rng_state`` is patched), i.e. while the folder is
half written - what a power cut or an OOM kill during a save leaves. Used by tests/test_checkpoint.py:

    NANOSFT_CRASH_STEP=4 python tests/distributed/ckpt_crash_in_save.py --config ... --set ...
"""

import os
import signal
import sys

import transformers

CRASH_STEP = int(os.environ["NANOSFT_CRASH_STEP"])
_save_rng_state = transformers.Trainer._save_rng_state


def crashing_save_rng_state(self, output_dir):
    if self.state.global_step == CRASH_STEP:
        print(f"CRASHING_IN_SAVE {output_dir}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return _save_rng_state(self, output_dir)


transformers.Trainer._save_rng_state = crashing_save_rng_state

if __name__ == "__main__":
    from nanosft.train import main

    sys.exit(main(sys.argv[1:]))
