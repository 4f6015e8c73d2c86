"""rl_maml: Model-Agnostic Meta-Learning with every meta-batch batched over tasks.

The public API (importing ``rl_maml`` stays cheap: these names load on first use):

- meta-RL: :func:`load_config`, :func:`meta_train`, :class:`MetaPolicy` (load, ``adapt``,
  ``predict``), :class:`AdaptedPolicy`; envs: :class:`BatchedTaskEnv` (the protocol),
  :class:`VectorTaskEnv` (any Gymnasium meta-env), :func:`make_batched` (the built-in families);
  :func:`adapt_policy`, the adaptation routine itself.
- supervised MAML on your own ``nn.Module``: :class:`TaskBatchedModel`, :class:`InnerLoop`,
  :class:`ConstantStepSize`, :func:`meta_loss`, :func:`params_of`, :func:`expand_params`.

The engine's modules: functional parameter handling (:mod:`rl_maml.functional`), the inner update
(:mod:`rl_maml.inner`), the MAML objective (:mod:`rl_maml.maml`), task distributions
(:mod:`rl_maml.tasks`), networks (:mod:`rl_maml.nn`), meta-RL (:mod:`rl_maml.rl`),
configuration, checkpoints, logging and seeding. Agents live in :mod:`rl_maml.agents`,
environments in :mod:`rl_maml.envs`, entry points in :mod:`rl_maml.experiments`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# OpenMP's wait policy must be set before torch loads (rl_maml.runtime; a wait policy of your own
# wins); the allocator is tuned only when RL_MAML_TUNE_MALLOC=1 (the command line tunes it too).
from rl_maml import runtime as _runtime  # noqa: E402

_runtime.apply()

# Register the meta-environments with Gymnasium (cheap: no MuJoCo import happens here).
from rl_maml.envs import registration as _registration  # noqa: E402,F401

_EXPORTS = {
    "load_config": "rl_maml.api",
    "meta_train": "rl_maml.api",
    "MetaPolicy": "rl_maml.api",
    "AdaptedPolicy": "rl_maml.api",
    "BatchedTaskEnv": "rl_maml.envs.protocol",
    "check_batched_env": "rl_maml.envs.protocol",
    "VectorTaskEnv": "rl_maml.envs.vector",
    "make_batched": "rl_maml.envs.registration",
    "adapt_policy": "rl_maml.rl.adaptation",
    "Adaptation": "rl_maml.rl.adaptation",
    "GaussianMLPPolicy": "rl_maml.rl.policy",
    "TaskBatchedModel": "rl_maml.functional",
    "params_of": "rl_maml.functional",
    "expand_params": "rl_maml.functional",
    "InnerLoop": "rl_maml.inner",
    "ConstantStepSize": "rl_maml.inner",
    "meta_loss": "rl_maml.maml",
    "ConfigError": "rl_maml.config",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rl_maml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
