"""One RL step of ``nanosft.rl`` on a fresh tiny model; saves what tests/test_rl.py compares across world sizes.

    accelerate launch [--multi_gpu --num_processes 2] tests/distributed/rl_first_step.py OUT.pt --set k=v ...

Writes (rank 0) ``OUT.pt``: {"world", "problems" (every rank's problem indices of step 0, sorted),
"reward" (mean over all ranks), "grad" (after the cross-rank reduction), "update" (parameters after
the optimizer step minus before)}. The reward is a toy one (parity of the completion's length), so the
advantages are not all zero on an untrained model.
"""

import os
import sys

import torch
from transformers import TrainerCallback

TINY = """model_config: {hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4}
task: gsm8k
max_problems: 8
reward: rl_first_step.length_parity
num_samples: 4
device_batch_size: 2
max_new_tokens: 12
examples_per_step: 4
eval_every: -1
max_steps: 1
save_strategy: "no"
bf16: false
report_to: none
disable_tqdm: true
dataloader_num_workers: 0
seed: 42
"""


def length_parity(problem, completion):
    return float(len(completion) % 2)


class Probe(TrainerCallback):
    def __init__(self):
        self.trainer, self.before, self.out, self.problems = None, None, {}, []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if state.global_step == 0:
            self.out["grad"] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_optimizer_step(self, args, state, control, model=None, **kw):
        if state.global_step == 0:
            self.out["update"] = {n: p.detach() - self.before[n] for n, p in model.named_parameters()}
            self.out["reward"] = self.trainer._metrics["train"]["reward"][0]


def main():
    from accelerate.utils import gather_object

    from nanosft import rl
    from nanosft.training import rl_trainer

    out_path, overrides = sys.argv[1], sys.argv[2:]
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    config = os.path.join(os.path.dirname(out_path), "rl_first_step.yaml")
    with open(config, "w") as f:
        f.write(TINY)
    probe = Probe()

    class ProbedTrainer(rl_trainer.NanoRLTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            probe.trainer = self
            self.add_callback(probe)

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.state.global_step == 0:
                probe.problems += inputs["problem_index"].tolist()
            return super().training_step(model, inputs, num_items_in_batch)

    rl.NanoRLTrainer = ProbedTrainer  # the name nanosft.rl's main() uses
    assert rl.main(["--config", config, *overrides]) == 0
    trainer = probe.trainer
    problems = sorted(gather_object(probe.problems)) if trainer.accelerator.num_processes > 1 else probe.problems
    if trainer.is_world_process_zero():
        torch.save({**probe.out, "problems": sorted(problems), "world": trainer.accelerator.num_processes}, out_path)


if __name__ == "__main__":
    main()
