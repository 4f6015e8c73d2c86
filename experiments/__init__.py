"""Entry points, presets and benchmark scripts (installed as ``rl_maml.experiments``).

``rl-maml train <preset-or-yaml> --run-dir DIR [key=value ...]`` and ``rl-maml eval DIR`` dispatch
on the config's ``benchmark`` key to the experiment modules registered in :mod:`.registry`.
"""
