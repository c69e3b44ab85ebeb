"""bench/optimizer_ab.py: the noise it prints, and the README's A/B claims, from the committed eval files."""

import importlib.util
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "optimizer_ab")


def load_bench():
    spec = importlib.util.spec_from_file_location("optimizer_ab", os.path.join(ROOT, "bench", "optimizer_ab.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agresti_caffo_standard_error_by_hand():
    bench = load_bench()
    # 80/100 vs 63/100 -> 81/102 and 64/102: sqrt(.7941 * .2059 / 102 + .6275 * .3725 / 102) = 0.0624
    assert math.isclose(bench.difference_se(80, 100, 63, 100), 0.06241, abs_tol=1e-4)
    # 0 of 100 twice still has noise: 2 * (1/102)(101/102) / 102 -> 0.0138
    assert math.isclose(bench.difference_se(0, 100, 0, 100), 0.01380, abs_tol=1e-4)


def test_table_from_the_committed_results_backs_the_readme(capsys):
    bench = load_bench()
    arms = [f"{a}={os.path.join(RESULTS, a)}" for a in ("muon", "adamw", "auto-adamw", "lora")]
    bench.main(["--evals", RESULTS, "base", *arms])
    out = capsys.readouterr().out
    against_muon = out.split("Changes against muon:")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in against_muon.splitlines() if line.startswith("| ")}
    assert "| 0.800 (100) |" in rows["muon"] and rows["muon"].endswith("| 0.1382 |")
    assert "0.630 (100) -0.170+-0.062" in rows["adamw"]
    assert "0.620 (100) -0.180+-0.063" in rows["lora"] and "0.390 (100) -0.410+-0.063" in rows["auto-adamw"]
    assert "| 0.5608 |" in rows["adamw"] and "| 0.5281 |" in rows["lora"]  # val bpb at step 48
