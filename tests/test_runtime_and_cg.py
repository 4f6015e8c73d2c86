"""Process settings (rl_maml.runtime), conjugate gradient's warm start and tolerance, and the
closed-form Fisher-vector products inside the meta-step."""

import subprocess
import sys

import pytest
import torch

from rl_maml import runtime
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.rl.episodes import Episodes
from rl_maml.rl.maml_trpo import MAMLTRPO, TRPOSettings
from rl_maml.rl.policy import GaussianMLPPolicy
from rl_maml.rl.trpo import conjugate_gradient


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)


def test_openmp_wait_policy_is_set_only_when_the_user_chose_none():
    env = {}
    assert runtime.configure_openmp_wait(env) == runtime.SPINCOUNT and env["GOMP_SPINCOUNT"] == runtime.SPINCOUNT
    for mine in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(mine)
        assert runtime.configure_openmp_wait(env) is None and env == mine


def test_importing_rl_maml_sets_the_wait_policy_before_torch_loads():
    code = ("import os, rl_maml, torch; print(os.environ.get('GOMP_SPINCOUNT')); "
            "print(rl_maml._runtime.apply()['malloc_tuned'])")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.pop("RL_MAML_TUNE_MALLOC", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == [runtime.SPINCOUNT, "False"]  # importing the library leaves the allocator alone
    env["RL_MAML_TUNE_MALLOC"], env["OMP_WAIT_POLICY"] = "1", "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["None", "True" if sys.platform.startswith("linux") else "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU libgomp")
def test_training_warns_once_when_torch_loaded_first_left_openmp_spinning(tmp_path):
    """torch imported before rl_maml: the wait policy could not be set, and training says so once,
    with the fix, at the user's line that started training; rl_maml first, or a policy of the user's own, trains silently."""
    code = ("import warnings; warnings.simplefilter('always')\n{imports}\n"
            "from rl_maml.api import load_config, meta_train\n"
            "cfg = load_config('navigation', ['train.num_iterations=2', 'train.meta_batch_size=2', "
            "'train.fast_batch_size=2', 'env.horizon=4', 'policy.hidden_sizes=[4]'])\n"
            "meta_train(cfg, {run!r}, progress=False); meta_train(cfg, {run2!r}, progress=False)")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    for n, (imports, extra, warned) in enumerate([("import torch, rl_maml", {}, True),
                                                  ("import rl_maml, torch", {}, False),
                                                  ("import torch, rl_maml", {"GOMP_SPINCOUNT": "300000"}, False)]):
        run = subprocess.run([sys.executable, "-c", code.format(imports=imports, run=str(tmp_path / f"a{n}"),
                                                                run2=str(tmp_path / f"b{n}"))],
                             capture_output=True, text=True, env={**env, **extra}, check=True)
        assert run.stderr.count("torch was imported before rl_maml") == (1 if warned else 0), (imports, run.stderr)
        if warned:
            assert "export GOMP_SPINCOUNT=10000" in run.stderr and "GOMP_SPINCOUNT=300000" in run.stderr
            assert "<string>:5: RuntimeWarning" in run.stderr, run.stderr  # the user's line, not the library's


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize("choice, tuned", [(None, True), ("0", False), ("1", True)])
def test_the_command_line_reuses_freed_memory_unless_told_not_to(choice, tuned):
    """``rl-maml`` tunes the allocator (RL_MAML_TUNE_MALLOC=0 opts out); with it, the pages of a
    freed 256 MB tensor are reused by the next ones instead of being faulted in again."""
    code = ("import resource, sys, torch; from rl_maml.experiments import cli; from rl_maml import runtime; "
            "cli.main(['presets']); faults = []\n"
            "for _ in range(5):\n"
            "    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t = torch.ones(1 << 26); del t\n"
            "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)\n"
            "print(runtime.apply()['malloc_tuned'], faults[-1], file=sys.stderr)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    env.pop("RL_MAML_TUNE_MALLOC", None)
    if choice is not None:
        env["RL_MAML_TUNE_MALLOC"] = choice
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stderr.split()
    assert err[-2] == str(tuned)
    faults = int(err[-1])  # 65,536 pages of 4 kB when the block is mapped afresh (after warm-up rounds)
    assert (faults < 1000) if tuned else (faults > 10000)
    bad = subprocess.run([sys.executable, "-c", "import rl_maml"], capture_output=True, text=True,
                         env={**env, "RL_MAML_TUNE_MALLOC": "yes"})
    assert bad.returncode != 0 and "RL_MAML_TUNE_MALLOC must be 0 or 1" in bad.stderr


def test_conjugate_gradient_warm_start_and_relative_tolerance():
    A, b = _spd(12, 0), torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.linalg.solve(A, b)
    info = {}
    x, r = conjugate_gradient(lambda v: A @ v, b, iters=50, residual_tol=0.0, rel_tol=1e-3, info=info)
    assert info["residual"] <= 1e-3 and info["products"] < 12
    torch.testing.assert_close(r, b - A @ x)
    # From the exact solution the residual is already zero: one product (for it), no iteration.
    info = {}
    x, _ = conjugate_gradient(lambda v: A @ v, b, iters=10, residual_tol=1e-20, x0=exact, info=info)
    assert info["products"] == 1 and torch.allclose(x, exact)
    # An ill-conditioned system: a warm start near the solution needs far fewer products than a
    # cold start for the same tolerance (what the previous meta-step's direction offers).
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    A = q @ torch.diag(torch.logspace(0, 4, 200, dtype=torch.float64)) @ q.T
    b = torch.randn(200, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(A, b)
    near = exact * (1 + 1e-4 * torch.randn(200, generator=g, dtype=torch.float64))
    cold, warm = {}, {}
    conjugate_gradient(lambda v: A @ v, b, iters=300, residual_tol=0.0, rel_tol=1e-3, info=cold)
    conjugate_gradient(lambda v: A @ v, b, iters=300, residual_tol=0.0, rel_tol=1e-3, x0=near, info=warm)
    assert warm["residual"] <= 1e-3 and cold["residual"] <= 1e-3
    assert warm["products"] < cold["products"] / 2
    # A guess worse than zero is dropped: the same iterates as a cold start, one product more.
    bad, cold_x = {}, conjugate_gradient(lambda v: A @ v, b, iters=5, residual_tol=0.0)[0]
    x, _ = conjugate_gradient(lambda v: A @ v, b, iters=5, residual_tol=0.0, x0=-10 * exact, info=bad)
    assert bad["products"] == 6 and torch.equal(x, cold_x)


def test_trpo_settings_check_the_new_options():
    with pytest.raises(ValueError, match="cg_tolerance"):
        TRPOSettings(cg_tolerance=1.0)
    with pytest.raises(ValueError, match="fvp must be"):
        TRPOSettings(fvp="fast")


def tiny_episodes(seed, T=6, M=3, B=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(T, M, B, dtype=torch.float64)
    mask[4:, 0, 1] = 0
    eps = Episodes(torch.randn(T, M, B, 2, generator=g, dtype=torch.float64),
                   torch.randn(T, M, B, 2, generator=g, dtype=torch.float64),
                   torch.randn(T, M, B, generator=g, dtype=torch.float64) * mask, mask)
    eps.advantages = torch.randn(T, M, B, generator=g, dtype=torch.float64) * mask
    return eps


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_meta_step_is_the_same_with_closed_form_and_autograd_products(activation):
    """The whole meta-step (CG, line search) in float64 gives the same parameters either way."""
    out = {}
    for method in ("closed_form", "autograd"):
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(2, 2, (8, 6), activation).double()
        meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.2), 1), TRPOSettings(fvp=method, max_kl=0.05))
        train, valid = [tiny_episodes(seed=1)], tiny_episodes(seed=2)
        logs = meta.meta_step(train, valid)
        out[method] = (torch.cat([p.detach().flatten() for p in policy.parameters()]), logs)
    # CG with the default damping (1e-5) amplifies rounding: 1e-10 apart per product, about 1e-9 here
    torch.testing.assert_close(out["closed_form"][0], out["autograd"][0], rtol=1e-6, atol=1e-8)
    assert out["closed_form"][1]["charts/cg_products"] == 10


def test_closed_form_is_refused_for_a_policy_it_does_not_cover():
    policy = GaussianMLPPolicy(2, 2, (4,))
    policy.log_std.requires_grad_(False)  # not meta-trained: the closed form assumes every tensor is
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.1), 1), TRPOSettings(fvp="closed_form"))
    with pytest.raises(ValueError, match="trpo.fvp=closed_form"):
        meta.closed_form_curvature(list(meta.params()))
    auto = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.1), 1), TRPOSettings(fvp="auto"))
    assert not auto.closed_form_curvature(list(auto.params()))


def test_torch_threads_sets_the_count_for_the_block_and_restores_it():
    torch_threads = runtime.torch_threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError, match="inside"):
            with torch_threads(2):
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 1  # restored when the block fails too
        with torch_threads(None):
            assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match=">= 1"):
            with torch_threads(0):
                pass
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("hardware, warned", [(False, True), (True, False), (None, False)])
def test_bfloat16_products_warn_once_on_a_cpu_that_emulates_bfloat16(monkeypatch, hardware, warned):
    """Without bfloat16 matrix units (AVX2 only) torch emulates bfloat16 and the products run many
    times slower than float32: the first bfloat16 meta-step says so, with the fix, once per
    process; a CPU with the units, or one torch cannot probe, stays silent, as float32 always does."""
    import warnings

    monkeypatch.setattr(runtime, "cpu_multiplies_bfloat16", lambda: hardware)
    monkeypatch.setattr(runtime, "_warned_bfloat16", False)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (8,)).double()
    caught = []
    for dtype in ("same", "bfloat16", "bfloat16"):
        meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.2), 1), TRPOSettings(fvp_dtype=dtype))
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            meta.meta_step([tiny_episodes(seed=1)], tiny_episodes(seed=2))
        caught.append([str(w.message) for w in got if "bfloat16 matrix units" in str(w.message)])
    assert [len(c) for c in caught] == ([0, 1, 0] if warned else [0, 0, 0])
    if warned:
        assert "Set trpo.fvp_dtype=same" in caught[1][0] and "--resume trpo.fvp_dtype=same" in caught[1][0]


def test_cpu_multiplies_bfloat16_reads_the_hardware():
    """On Linux x86 the answer agrees with the kernel's CPU flags (an independent reading: the
    instruction sets bfloat16 matrix products use); elsewhere it is None, never a guess."""
    import platform

    answer = runtime.cpu_multiplies_bfloat16()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if not x86 or not hasattr(torch.cpu, "_is_amx_tile_supported"):
        assert answer is None
    elif sys.platform.startswith("linux"):
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
        assert answer == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}), sorted(flags)
    else:
        assert isinstance(answer, bool)
