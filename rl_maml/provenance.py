"""What produced a result: package versions, Python, platform, device and the git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("rl_maml", "torch", "numpy", "gymnasium", "mujoco", "stable_baselines3", "tensorboard")


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), with ``-dirty`` when
    tracked files differ from it; ``None`` outside a checkout or without git."""
    where = Path(path or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str | None = None) -> dict[str, Any]:
    """Versions of the packages a run depends on, the Python, the platform, the device and the commit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from rl_maml import runtime

    out: dict[str, Any] = {"packages": versions, "python": platform.python_version(),
                           "platform": platform.platform(), "git_commit": git_commit(),
                           "runtime": runtime.apply()}
    if device is not None:
        out["device"] = device
        if str(device).startswith("cuda"):
            try:
                import torch

                out["device_name"] = torch.cuda.get_device_name(torch.device(device))
            except Exception:  # noqa: BLE001 - a name is a nicety
                pass
    return out


def provenance_comment(device: str | None = None) -> str:
    """:func:`provenance` as YAML comment lines (for the head of a run's config.yaml)."""
    info = provenance(device)
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    lines = [f"# written by {packages}; Python {info['python']} on {info['platform']}",
             f"# git commit: {info['git_commit'] or 'unknown'}" + (f"; device: {device}" if device else "")]
    return "\n".join(lines) + "\n"
