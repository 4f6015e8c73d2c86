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
    out = run(monkeypatch, capsys, "--iterations", "1", "--tasks", "2", "--episodes", "1", "--device", "cpu")
    shares = [int(s) for s in re.findall(r"\| (\d+)% \|", out)]
    assert len(shares) == 3 and 98 <= sum(shares) <= 102  # sampling, inner update, meta-step
    # 2 tasks x 1 episode x horizon 100 ('gym' convention), training and validation episodes.
    assert "env steps per iteration: 400;" in out
    assert re.search(r"ratio \d+%", out) and "device cpu" in out


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
