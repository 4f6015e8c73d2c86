"""The curvature benchmark runs at a tiny size, and every method gives the closed form's product."""

import re
import sys

import pytest

from rl_maml.experiments import benchmark_curvature


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch.func's own
def test_every_method_agrees_and_is_timed(monkeypatch, capsys):
    res = benchmark_curvature.run(tasks=3, steps=40, obs=4, act=2, repeats=1)
    assert res["gap"] < 1e-4  # float32
    assert {"forward-over-reverse (torch.func)", "double backward", "closed form"} <= set(res)
    monkeypatch.setattr(sys, "argv", ["benchmark_curvature", "--tasks", "2", "--steps", "20", "--repeats", "1"])
    benchmark_curvature.main()
    out = capsys.readouterr().out
    assert len(re.findall(r"^\| .+ \| \d+ \| \d+\.\dx \|$", out, flags=re.M)) == 4
