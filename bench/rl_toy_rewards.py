"""Toy rewards for the "it learns" check of the RL stage (bench/rl_learns.sh, README "After SFT: RL on GSM8K").

A 2-layer model SFT'd for a few minutes scores 0 on GSM8K and SpellingBee, so policy gradient has nothing
to climb; these rewards are reachable by such a model and show that the update moves the policy.
Name them in a config as ``reward: bench.rl_toy_rewards.<function>`` (run from the repository root).
"""


def uses_tool(problem: dict, completion: str) -> float:
    """1.0 when the completion calls the calculator (``<|python_start|>`` in the decoded text), else 0.0."""
    return float("<|python_start|>" in completion)


def has_answer_marker(problem: dict, completion: str) -> float:
    """1.0 when the completion writes a final-answer line ``#### ``, whatever the number, else 0.0."""
    return float("#### " in completion)
