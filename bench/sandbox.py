"""Per-run cost of the code sandbox in each mode vs the sandbox before user namespaces and Landlock.

    python bench/sandbox.py [--runs 20] [--baseline-commit 959ef2d]

The baseline is ``nanosft/eval/sandbox.py`` as of ``--baseline-commit`` (root namespaces + seccomp, about
70 ms per run on an idle machine), read with ``git show`` and imported next to the current module, so
both run in the same process on the same load. Each round runs one trivial program (``pass``: the
cost is the sandbox, not the code) through every variant in turn; the table gives the median wall
time per run and its ratio to the baseline's default path. The acceptance bound is 2x.

Modes (``nanosft.eval.sandbox.MODES``): ``default`` (what this machine gives: root namespaces here),
``user_ns`` (forced user namespaces, the path of an ordinary user), ``landlock`` (forced: no namespaces
at all), ``weak`` (seccomp, rlimits and Python guards only; opt-in). The process runs as whatever user
starts it; as root the ``user_ns`` mode maps root to itself. To measure an ordinary user's paths:

    setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp /usr/bin/python3 bench/sandbox.py

Measured on the 2-core CPU box while other jobs loaded it (load average ~8.5, so absolute times are
about 3x an idle machine's; the ratios are what to read), 20 runs per variant:

| variant | root: median ms | ratio | uid 65534: median ms | ratio |
|---|---|---|---|---|
| baseline (old default) | 240.3 | 1.00 | 221.8 | 1.00 |
| default | 226.2 | 0.94 | 232.6 | 1.05 |
| user_ns | 236.6 | 0.98 | 238.3 | 1.07 |
| landlock | 219.2 | 0.91 | 194.6 | 0.88 |
| weak | 229.3 | 0.95 | 191.8 | 0.87 |

Layers obtained there: root default ``netns,mountns_ro,pidns,landlock,landlock_net,landlock_scope,
seccomp``; uid 65534 default = ``user_ns`` = the same plus ``userns``; ``landlock``: ``landlock,
landlock_net,landlock_scope,seccomp``; ``weak``: ``seccomp``. The old sandbox as uid 65534 had seccomp
only. Every mode stays within the 2x bound (the largest ratio is 1.07).
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanosft.eval import sandbox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_baseline(commit: str):
    """The module ``nanosft/eval/sandbox.py`` at ``commit``, or None outside a git checkout."""
    try:
        # safe.directory: run as another user (e.g. uid 65534) git refuses a checkout it does not own
        git = ["git", "-c", f"safe.directory={REPO}", "-C", REPO, "show", f"{commit}:nanosft/eval/sandbox.py"]
        text = subprocess.run(git, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(), "sandbox_baseline.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("sandbox_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sandbox_baseline"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20, help="rounds (each runs every variant once)")
    p.add_argument("--baseline-commit", default="959ef2d", help="commit of the pre-issue-17 sandbox")
    args = p.parse_args(argv)

    variants = {}
    baseline = load_baseline(args.baseline_commit)
    if baseline is not None:
        variants["baseline"] = lambda: baseline.execute_code("pass")
    for mode, disable in sandbox.MODES.items():
        variants[mode] = lambda d=disable: sandbox.execute_code("pass", disable=d, allow_weak=True)
    layers = {m: ",".join(sandbox.probe(disable=d).layers) for m, d in sandbox.MODES.items()}
    times = {name: [] for name in variants}
    for fn in variants.values():  # warm-up (page cache, imports)
        fn()
    for _ in range(args.runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
            assert result.success, (name, result.error)
    ref = statistics.median(times["baseline"]) if baseline is not None else 0.070
    print(f"uid {os.geteuid()}, load average {os.getloadavg()[0]:.1f}, {args.runs} runs per variant; "
          f"reference: {'baseline median' if baseline is not None else 'the documented 70 ms'}")
    print(f"{'variant':<10} {'median ms':>10} {'p90 ms':>8} {'ratio':>6}  layers")
    for name, ts in times.items():
        med, p90 = statistics.median(ts), sorted(ts)[int(0.9 * (len(ts) - 1))]
        print(f"{name:<10} {1000 * med:>10.1f} {1000 * p90:>8.1f} {med / ref:>6.2f}  {layers.get(name, 'old default')}")


if __name__ == "__main__":
    main()
