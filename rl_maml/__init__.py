"""rl_maml: Model-Agnostic Meta-Learning with every meta-batch batched over tasks.

The engine: functional parameter handling (:mod:`rl_maml.functional`), the inner update
(:mod:`rl_maml.inner`), the MAML objective (:mod:`rl_maml.maml`), task distributions
(:mod:`rl_maml.tasks`), networks (:mod:`rl_maml.nn`), configuration, checkpoints, logging and
seeding. Agents live in :mod:`rl_maml.agents`, environments in :mod:`rl_maml.envs`, entry points
in :mod:`rl_maml.experiments`.
"""

__version__ = "0.1.0"

# Register the meta-environments with Gymnasium (cheap: no MuJoCo import happens here).
from rl_maml.envs import registration as _registration  # noqa: E402,F401
