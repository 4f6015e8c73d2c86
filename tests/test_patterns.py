"""Lambda patterns: what adapts, what is skipped, and the selection rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rl_maml.functional import TaskBatchedModel, params_of
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.nn import MLP, Conv4
from rl_maml.patterns import (
    LayerPattern,
    adapt_with_pattern,
    anil,
    full_maml,
    select_pattern,
    subset_family,
    top_k_family,
)


def conv_case(seed=0):
    torch.manual_seed(seed)
    net = Conv4(1, 5, hidden=6)
    g = torch.Generator().manual_seed(seed)
    support = (torch.randn(3, 5, 1, 28, 28, generator=g), torch.arange(5).expand(3, 5))
    query = (torch.randn(3, 10, 1, 28, 28, generator=g), torch.arange(5).repeat(2).expand(3, 10))
    return net, support, query


PATTERNS = [anil(5, 2), full_maml(5, 2),
            LayerPattern("mixed", ((False, False, True, False, True), (False, False, False, True, True)))]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_frozen_prefix_and_mask_give_the_masked_loop_meta_gradient(float64, pattern):
    """Computing the frozen prefix once changes nothing: same adapted tensors, same meta-gradient."""
    net, support, query = conv_case()
    model = TaskBatchedModel(net, F.cross_entropy)
    params = params_of(net)
    adapted, q_features, k = adapt_with_pattern(model, params, ConstantStepSize(0.4), pattern, support, query[0])
    fast = model.task_losses_from(adapted, (q_features, query[1]), k).mean()
    inner = InnerLoop(ConstantStepSize(0.4), 2, mask=pattern.mask(net.layer_groups()))
    slow_adapted = inner.adapt(params, model.task_losses, support, num_tasks=3)
    slow = model.task_losses(slow_adapted, query).mean()
    assert k == pattern.frozen_prefix
    for n in params:
        assert (adapted[n] - slow_adapted[n]).abs().max() < 1e-12, n
    for n, a, b in zip(params, torch.autograd.grad(fast, list(params.values())),
                       torch.autograd.grad(slow, list(params.values()))):
        assert (a - b).abs().max() < 1e-10, n


def test_frozen_tensors_are_unchanged_and_left_out_of_the_inner_graph():
    net, support, query = conv_case()
    model = TaskBatchedModel(net, F.cross_entropy)
    params = {k: v.detach() for k, v in params_of(net).items()}  # evaluation: nothing needs a graph
    pattern = LayerPattern("top2", ((False, False, False, True, True),))
    adapted, _, k = adapt_with_pattern(model, params, ConstantStepSize(0.4), pattern, support, query[0],
                                       create_graph=False)
    frozen = [n for g in net.layer_groups()[:3] for n in g]
    for n in frozen:
        assert torch.equal(adapted[n][0], params[n]) and not adapted[n].requires_grad
    # A convolution's bias before batch norm on batch statistics cancels (its gradient is exactly
    # zero; Conv4.forward_tasks leaves it out), so the adapted tensors that change are the others.
    for n in net.layer_groups()[3] + net.layer_groups()[4]:
        assert torch.equal(adapted[n][0], params[n]) == (n == "features.9.bias"), n
    # the prefix features were computed without a graph: no backward can reach the frozen layers
    features = model.forward_range({n: v.unsqueeze(0).expand(3, *v.shape) for n, v in params.items()},
                                   support[0], 0, k)
    assert not features.requires_grad and k == 3


def test_anil_head_equals_an_explicit_head_only_computation(float64):
    torch.manual_seed(0)
    net = MLP(2, 3, (8, 8))
    model = TaskBatchedModel(net, F.cross_entropy)
    params = params_of(net)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 6, 2, generator=g), torch.randint(0, 3, (4, 6), generator=g)
    adapted, _, k = adapt_with_pattern(model, params, ConstantStepSize(0.3), anil(3, 1), (x, y))
    assert k == 2
    for m in range(4):
        h = torch.relu(torch.relu(x[m] @ params["layers.0.weight"].T + params["layers.0.bias"])
                       @ params["layers.2.weight"].T + params["layers.2.bias"])
        w, b = params["layers.4.weight"], params["layers.4.bias"]
        gw, gb = torch.autograd.grad(F.cross_entropy(h @ w.T + b, y[m]), (w, b))
        assert torch.allclose(adapted["layers.4.weight"][m], w - 0.3 * gw, atol=1e-12)
        assert torch.allclose(adapted["layers.4.bias"][m], b - 0.3 * gb, atol=1e-12)
        assert torch.equal(adapted["layers.0.weight"][m], params["layers.0.weight"])


def test_families_and_named_patterns():
    assert len(subset_family(5, 1)) == 31 and len(subset_family(3, 2)) == 7
    fam = top_k_family(3, 2)
    assert [str(p) for p in fam] == ["..x / ..x", ".xx / ..x", ".xx / .xx", "xxx / ..x", "xxx / xxx"]
    assert anil(5, 1).frozen_prefix == 4 and full_maml(5, 3).frozen_prefix == 0
    with pytest.raises(ValueError, match="has 5 layers; the model has 3"):
        anil(5, 1).mask([["a"], ["b"], ["c"]])


def test_search_picks_the_fastest_admissible_pattern():
    rows = [
        {"name": "maml", "seconds_per_task": 10.0, "score": 98.0},
        {"name": "anil", "seconds_per_task": 1.0, "score": 95.0},    # too inaccurate for eps <= 2
        {"name": "top2", "seconds_per_task": 3.0, "score": 97.2},    # within 1 point
        {"name": "top3", "seconds_per_task": 5.0, "score": 97.7},    # within 0.5 points
        {"name": "odd", "seconds_per_task": 12.0, "score": 98.5},    # slower than maml
    ]
    assert select_pattern(rows, 0.5)["name"] == "top3"
    assert select_pattern(rows, 1.0)["name"] == "top2"
    assert select_pattern(rows, 3.0)["name"] == "anil"
    assert select_pattern(rows, 0.0)["name"] == "maml"
    errors = [dict(r, score=100 - r["score"]) for r in rows]  # an error: lower is better
    assert select_pattern(errors, 1.0, higher_is_better=False)["name"] == "top2"


def test_parse_pattern_and_errors():
    from rl_maml.patterns import parse_pattern

    assert parse_pattern("anil", 3, 2).table == ((False, False, True),) * 2
    assert parse_pattern(".xx/..x", 3, 2).table == ((False, True, True), (False, False, True))
    assert parse_pattern("..x", 3, 3).num_steps == 3
    with pytest.raises(ValueError, match="rows of 3 characters"):
        parse_pattern("..xx", 3, 1)
    with pytest.raises(ValueError, match="adapts nothing"):
        parse_pattern("...", 3, 1)
    with pytest.raises(ValueError, match="one per inner step"):
        parse_pattern("..x/.xx", 3, 3)


def test_variants_are_chosen_in_the_config_and_train_side_by_side(tmp_path, capsys):
    """MAML, Alpha MAML and Lambda MAML (ANIL) train on the same sinusoid batches via the CLI."""
    import json

    from rl_maml.experiments.cli import main

    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run), "methods=[maml,alpha_maml,lambda_maml]",
                 "variant.pattern=anil", "variant.alpha_hyper_lr=1e-6", "train.num_iterations=30",
                 "train.log_every=10", "eval.num_tasks=20", "eval.max_steps=2", "--no-progress"]) == 0
    assert main(["eval", "--overwrite", str(run)]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["methods"]) == {"maml", "alpha_maml", "lambda_maml"}
    assert "| Alpha MAML |" in capsys.readouterr().out
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "bad"), "methods=[lambda_maml]",
                 "variant.pattern=xx", "--no-progress"]) == 2
    assert "lambda_maml: pattern 'xx'" in capsys.readouterr().err


def test_pattern_search_script_on_a_sinusoid_run(tmp_path):
    from rl_maml.experiments import lambda_patterns
    from rl_maml.experiments.cli import main

    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run), "methods=[maml]", "train.num_iterations=20",
                 "inner.num_inner_steps=2", "--no-progress"]) == 0
    results = lambda_patterns.main([str(run), "--family", "topk", "--val-tasks", "20", "--timing-tasks", "8",
                                    "--repeats", "2"])
    rows = {r["pattern"]: r for r in results["rows"]}
    assert "xxx / xxx" in rows and rows["xxx / xxx"]["speedup"] == 1.0
    assert rows["..x / ..x"]["frozen_prefix"] == 2
    assert set(results["selected"]) == {"0.5", "1.0", "2.0"}
    assert (run / "lambda" / "results.md").read_text().count("(full MAML)") == 1


def test_pattern_search_script_on_a_navigation_run(tmp_path):
    from rl_maml.experiments import lambda_patterns
    from rl_maml.experiments.cli import main

    run = tmp_path / "nav"
    assert main(["train", "navigation", "--run-dir", str(run), "--no-progress", "train.num_iterations=1",
                 "train.meta_batch_size=2", "train.fast_batch_size=2", "env.horizon=8", "policy.hidden_sizes=[8]",
                 "eval.fast_batch_size=2", "inner.num_inner_steps=1"]) == 0
    results = lambda_patterns.main([str(run), "--val-tasks", "2", "--repeats", "1"])
    assert results["benchmark"] == "metarl" and len(results["rows"]) == 3  # 2^2 - 1 subsets of 2 layers
    assert {r["pattern"] for r in results["rows"]} == {"xx", ".x", "x."}
