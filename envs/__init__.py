"""Gymnasium meta-environments, installed as ``rl_maml.envs``.

Importing ``rl_maml`` registers every family under the ``rl_maml`` namespace, so
``gymnasium.make("rl_maml/HalfCheetahVel-v0", convention="maml")`` works:

| id | task | batched counterpart |
|---|---|---|
| ``rl_maml/Navigation2D-v0`` | goal position | :class:`~rl_maml.envs.navigation.BatchedNavigation2D` (torch, any device) |
| ``rl_maml/HalfCheetahVel-v0`` | target velocity | :class:`~rl_maml.envs.batched.BatchedLocomotion` (``mujoco.batch``) |
| ``rl_maml/HalfCheetahDir-v0`` | direction | idem |
| ``rl_maml/AntVel-v0`` | target velocity | idem |
| ``rl_maml/AntDir-v0`` | direction | idem |
| ``rl_maml/AntGoal-v0`` | goal position | idem |

The horizon depends on the convention chosen at construction (``maml``: 200, ``gym``: 100; 100
for navigation) and every env truncates its episodes itself at that horizon; the registered specs'
``max_episode_steps`` is the longest default (200 for locomotion, 100 for navigation), so pass
``max_episode_steps=`` too when overriding ``horizon`` above it.

Every batched env satisfies :class:`~rl_maml.envs.protocol.BatchedTaskEnv`, the interface the
sampler, the evaluation and the baselines use; :class:`~rl_maml.envs.vector.VectorTaskEnv` gives
any registered Gymnasium meta-env (with ``sample_tasks`` / ``set_task``) that interface.
"""

from __future__ import annotations

from rl_maml.envs.protocol import BatchedTaskEnv, check_batched_env
from rl_maml.envs.registration import ENV_IDS, FAMILIES, make_batched, register_envs
from rl_maml.envs.vector import VectorTaskEnv

__all__ = ["ENV_IDS", "FAMILIES", "BatchedTaskEnv", "VectorTaskEnv", "check_batched_env", "make_batched",
           "register_envs"]
