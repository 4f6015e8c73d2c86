"""Agents: compositions of a model, an inner loop and an outer optimiser behind one protocol.

Installed as ``rl_maml.agents``. Variants are sibling classes with the same verbs
(``train_step``, ``trajectory``, ``evaluate``, ``state_dict``, ``load_state_dict``); the math they
use lives in :mod:`rl_maml`.
"""

from rl_maml.agents.alpha_maml import AlphaMAMLLearner
from rl_maml.agents.supervised import (
    LambdaMAMLLearner,
    MAMLLearner,
    OracleLearner,
    PretrainedLearner,
    SupervisedLearner,
)

__all__ = ["SupervisedLearner", "MAMLLearner", "AlphaMAMLLearner", "LambdaMAMLLearner", "PretrainedLearner",
           "OracleLearner"]


def make_supervised_learner(method: str, module, criterion, inner_config, variant_config, outer_lr: float,
                            finetune_lr: float = 0.01, task_keys: tuple[str, ...] = (), mamlpp=None,
                            num_iterations: int | None = None) -> SupervisedLearner:
    """Build the learner a config names (``maml``, ``alpha_maml``, ``lambda_maml``, ``pretrained``,
    ``oracle``): the variants are sibling classes; this table is the only place that chooses."""
    from rl_maml.config import ConfigError
    from rl_maml.inner import make_inner_loop
    from rl_maml.patterns import parse_pattern

    def maml():
        inner, learned = make_inner_loop(inner_config, dict(module.named_parameters()))
        device = next(module.parameters()).device
        return MAMLLearner(module, criterion, inner, outer_lr, learned.to(device) if learned is not None else None,
                           mamlpp=mamlpp, num_iterations=num_iterations)

    def alpha_maml():
        v = variant_config
        return AlphaMAMLLearner(module, criterion, inner_config.inner_lr, outer_lr, inner_config.num_inner_steps,
                                inner_config.first_order, v.alpha_granularity, v.alpha_hyper_lr, v.beta_hyper_lr,
                                v.outer)

    def lambda_maml():
        inner, _ = make_inner_loop(inner_config, dict(module.named_parameters()))
        pattern = parse_pattern(variant_config.pattern, len(module.layer_groups()), max(inner.num_steps, 1))
        return LambdaMAMLLearner(module, criterion, inner, outer_lr, pattern)

    factories = {
        "maml": maml,
        "alpha_maml": alpha_maml,
        "lambda_maml": lambda_maml,
        "pretrained": lambda: PretrainedLearner(module, criterion, outer_lr, finetune_lr),
        "oracle": lambda: OracleLearner(module, criterion, outer_lr, task_keys),
    }
    if method not in factories:
        raise ConfigError(f"unknown method {method!r}; choose one of {sorted(factories)}")
    if mamlpp is not None and mamlpp.enabled() and method != "maml":
        raise ConfigError(f"the mamlpp options apply to method maml only, not {method!r}; switch them off or use "
                          "method: maml")
    if inner_config.step_size == "learned_per_step" and method not in ("maml",):
        raise ConfigError(f"inner.step_size=learned_per_step applies to method maml only, not {method!r}")
    try:
        return factories[method]()
    except ValueError as e:
        raise ConfigError(f"{method}: {e}") from None
