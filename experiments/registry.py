"""Benchmarks known to the command line, by the value of a config's ``benchmark`` key.

Each entry is a module exposing ``CONFIG`` (its top-level config dataclass), ``train(cfg, run_dir,
resume, progress)`` and ``evaluate(cfg, run_dir, checkpoint)``. Modules are imported on demand.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rl_maml.config import ConfigError

BENCHMARKS = {
    "sinusoid": "rl_maml.experiments.sinusoid",
    "metarl": "rl_maml.experiments.metarl",
    "fewshot": "rl_maml.experiments.fewshot",
}


def benchmark_module(name: object) -> ModuleType:
    if name not in BENCHMARKS:
        raise ConfigError(
            f"benchmark: {name!r} is not a known benchmark; choose one of {sorted(BENCHMARKS)} "
            "(every config file names its benchmark at the top, e.g. 'benchmark: sinusoid')"
        )
    return importlib.import_module(BENCHMARKS[str(name)])
