"""The engine benchmark script runs and reports every measurement (a smoke test, not a timing)."""

from __future__ import annotations

from rl_maml.experiments.benchmark_engine import run


def test_benchmark_rows_are_complete():
    rows = run(["sinusoid"], repeats=1)
    assert [(r["case"], r["order"]) for r in rows] == [("sinusoid", "second"), ("sinusoid", "first")]
    for r in rows:
        assert r["ways"] is None and r["meta_batch"] == 25
        for key in ("adapt_batched_ms", "adapt_loop_ms", "iter_batched_ms", "iter_loop_ms"):
            assert r[key] > 0
