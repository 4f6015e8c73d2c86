"""Gymnasium meta-environments (installed as ``rl_maml.envs``).

The task families (2D navigation, HalfCheetah and Ant velocity/direction/goal) and their batched
counterparts are the subject of the environments issue; this package holds them once written.
"""
