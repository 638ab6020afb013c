"""benchmarks/bench_samplers_quality.py --quick runs and records every sampler at every NFE budget.

The full run (the figures of benchmarks/RESULTS.md, a few CPU minutes) is not part of the suite.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_bench_samplers_quality_quick_records_every_sampler_and_counts_nfe(tmp_path, capsys):
    import bench_samplers_quality as bench

    record = bench.main(["--quick", "--out", str(tmp_path)])
    with open(tmp_path / "samplers_quality.json") as f:
        assert json.load(f)["budgets"] == record["budgets"] == [5, 10]
    rows = {(r["sampler"], r["budget"]): r for r in record["rows"]}
    for label, sampler, options, steps_of, stochastic in bench.SAMPLERS:
        for budget in (5, 10):
            row = rows[(label, budget)]
            # NFE counted: one per step, heun two per step but the last (the budget or one below)
            assert row["nfe"] == budget or (sampler == "heun" and row["nfe"] == budget - 1 + budget % 2), row
            assert ("ode_error" in row) == (not stochastic)
            assert row["energy"] >= 0 and row["toy_energy"] >= 0
    assert rows[("ddpm (1000 steps)", 1000)]["nfe"] == 1000
    # the exact denoiser: every deterministic sampler lands within the mixture's scale of the ODE solution
    assert all(r["ode_error"] < 10 for r in record["rows"] if "ode_error" in r)
    assert "| dpmpp_2m (karras) |" in capsys.readouterr().out
