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


def test_bench_samplers_quality_quick_digits_scores_every_sampler_with_the_judge(tmp_path, capsys):
    """(c), --digits --skip-2d --quick: every sampler (and ddim with clipped eps) at every budget, DDPM last,
    scored by the judge's Frechet distance and accuracy; NFE counted as in (b)."""
    import bench_samplers_quality as bench

    record = bench.main(["--quick", "--digits", "--skip-2d", "--out", str(tmp_path)])
    rows = {(r["sampler"], r["budget"]): r for r in record["digits_rows"]}
    labels = [label for label, *_ in bench.SAMPLERS + bench.DIGITS_EXTRA]
    assert set(rows) == {(label, b) for label in labels for b in (5, 10)} | {("ddpm (1000 steps)", 1000)}
    for (label, budget), row in rows.items():
        assert row["frechet_distance"] >= 0 and 0 <= row["accuracy"] <= 1 or row["frechet_distance"] == float("inf")
        assert row.get("nfe", budget) in (budget, budget - 1)
    assert rows[("ddpm (1000 steps)", 1000)]["nfe"] == 1000
    assert record["digits_frechet_baseline"] > 0 and 0 < record["digits_judge_accuracy"] <= 1
    out = capsys.readouterr().out
    assert "(c) digits: Frechet distance" in out and "| ddim (clipped eps) |" in out
