"""The meta-iteration benchmark runs at a tiny size and reports its split (a smoke test, not a timing)."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from rl_maml.experiments import benchmark_metarl


def run(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["benchmark_metarl", *args])
    benchmark_metarl.main()
    return capsys.readouterr().out


def test_tiny_benchmark_reports_the_phases_and_the_ratio(monkeypatch, capsys):
    out = run(monkeypatch, capsys, "--iterations", "1", "--tasks", "2", "--episodes", "1", "--device", "cpu",
              "--contend", "1")
    phases = [line for line in out.splitlines() if line.startswith(("| sampling", "| inner update", "| TRPO"))]
    shares = [[int(s) for s in re.findall(r"\| (\d+)% ", line)] for line in phases]
    assert len(shares) == 3 and all(len(s) == 2 for s in shares)  # alone and with a busy process beside
    assert 98 <= sum(s[0] for s in shares) <= 102 and 98 <= sum(s[1] for s in shares) <= 102
    assert "1 busy process(es) beside: seconds" in out and re.search(r"iteration \d+\.\d\dx its time alone", out)
    # 2 tasks x 1 episode x horizon 100 ('gym' convention), training and validation episodes: 400 steps.
    assert re.search(r"\| share of the stepper's raw rate \| \d+% \|", out) and "device cpu" in out
    assert re.search(r"\| CG products, final residual .* \| 10, \d\.\de[-+]\d\d \|", out)
    assert re.search(r"products at \d+% of the bmm rate", out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, capsys, "--device", "cuda")
    assert exit_info.value.code == 2
    assert "--device is 'cuda' but CUDA is not available" in capsys.readouterr().err


def test_a_malformed_device_is_a_clear_error(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, capsys, "--device", "gpu")
    assert exit_info.value.code == 2
    assert "--device 'gpu' is not a torch device" in capsys.readouterr().err


def test_navigation_workload_reports_its_split_without_a_stepper(monkeypatch, capsys):
    out = run(monkeypatch, capsys, "--workload", "navigation", "--iterations", "1", "--cg-iters", "2")
    assert "2D navigation with the MAML paper's workload" in out and "raw" not in out
    assert re.search(r"\| CG products, final residual .* \| 2, ", out)


def test_a_preset_is_timed_as_it_trains(monkeypatch, capsys):
    out = run(monkeypatch, capsys, "--preset", "half_cheetah_vel_maml", "--tasks", "1", "--iterations", "1",
              "--cg-iters", "2", "--no-products")
    assert "preset half_cheetah_vel_maml (HalfCheetahVel, maml convention, 1 tasks" in out
    assert re.search(r"\| CG products, final residual .* \| 2, ", out)
    assert re.search(r"batched stepper raw \(N = 10\)", out)  # the preset's 10 episodes per task
    assert "allocator tuned" in out and "bmm" not in out  # --no-products


def test_bfloat16_products_are_set_beside_both_bmm_rates(monkeypatch, capsys):
    out = run(monkeypatch, capsys, "--iterations", "1", "--tasks", "2", "--episodes", "1", "--cg-iters", "2",
              "--fvp-dtype", "bfloat16")
    assert "fvp auto (bfloat16)" in out
    assert re.search(r"products at \d+% of the bmm rate", out)
    assert re.search(r"the same bmm in bfloat16: [\d.]+ GFLOP/s; products at \d+% of it", out)
