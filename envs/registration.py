"""Registration of the meta-environments with Gymnasium, and a factory for their batched forms.

Kept free of MuJoCo imports so that registering costs nothing: entry points are strings.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

FAMILIES = {
    "Navigation2D": "rl_maml.envs.navigation:Navigation2DEnv",
    "HalfCheetahVel": "rl_maml.envs.locomotion:HalfCheetahVelEnv",
    "HalfCheetahDir": "rl_maml.envs.locomotion:HalfCheetahDirEnv",
    "AntVel": "rl_maml.envs.locomotion:AntVelEnv",
    "AntDir": "rl_maml.envs.locomotion:AntDirEnv",
    "AntGoal": "rl_maml.envs.locomotion:AntGoalEnv",
}
ENV_IDS = {name: f"rl_maml/{name}-v0" for name in FAMILIES}
# The registered specs' max_episode_steps: the longest default horizon of the family's conventions
# (locomotion: maml 200, gym 100; navigation: 100). Every env also truncates itself at its own
# horizon, so a shorter one ends first; a longer ``horizon=`` override needs
# ``gymnasium.make(..., max_episode_steps=...)`` as well (``rl_maml.agents.rl_baselines`` does that).
MAX_EPISODE_STEPS = {name: 100 if name == "Navigation2D" else 200 for name in FAMILIES}


def register_envs() -> None:
    """Register every family as ``rl_maml/<Name>-v0`` (idempotent)."""
    for name, entry_point in FAMILIES.items():
        if ENV_IDS[name] not in registry:
            register(id=ENV_IDS[name], entry_point=entry_point, max_episode_steps=MAX_EPISODE_STEPS[name])


def _family(name: str) -> str:
    key = name.removeprefix("rl_maml/").removesuffix("-v0")
    if key not in FAMILIES:
        raise ValueError(f"unknown environment family {name!r}; known: {sorted(FAMILIES)}")
    return key


def single_env_class(name: str) -> type:
    import importlib

    module, cls = FAMILIES[_family(name)].split(":")
    return getattr(importlib.import_module(module), cls)


BACKENDS = ("mujoco", "warp")


def make_batched(name: str, num_envs: int, backend: str = "mujoco", **kwargs: Any):
    """The batched counterpart of family ``name`` (``"AntVel"`` or ``"rl_maml/AntVel-v0"``).

    ``backend`` steps the locomotion families: ``mujoco`` (MuJoCo's threaded CPU batch,
    :class:`~rl_maml.envs.batched.BatchedLocomotion`) or ``warp`` (MuJoCo Warp on the ``device``
    given, :class:`~rl_maml.envs.warp_locomotion.WarpLocomotion`; needs ``rl_maml[warp]``).
    Navigation2D is plain torch and runs on any device with the default backend.
    """
    family = _family(name)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if family == "Navigation2D":
        if backend != "mujoco":
            raise ValueError("Navigation2D is plain torch (it runs on any device as it is); backend=warp applies "
                             "to the MuJoCo families only")
        from rl_maml.envs.navigation import BatchedNavigation2D

        return BatchedNavigation2D(num_envs, **kwargs)
    if backend == "warp":
        from rl_maml.envs.warp_locomotion import WarpLocomotion

        return WarpLocomotion(single_env_class(family), num_envs, **kwargs)
    from rl_maml.envs.batched import BatchedLocomotion

    return BatchedLocomotion(single_env_class(family), num_envs, **kwargs)


register_envs()
