"""Installation: unique import names, presets shipped with the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_envs_and_agents_install_under_rl_maml(tmp_path):
    probe = (
        "import importlib.util as u, json\n"
        "out = {n: (s.origin if (s := u.find_spec(n)) else None) for n in ('agents', 'envs')}\n"
        "import rl_maml.agents, rl_maml.envs, rl_maml.experiments\n"
        "out['rl_maml.agents'] = rl_maml.agents.__file__\n"
        "print(json.dumps(out))\n"
    )
    # Run from an unrelated folder so the repository itself is not on sys.path.
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    import json

    found = json.loads(out.stdout)
    for generic in ("agents", "envs"):
        assert found[generic] is None or not found[generic].startswith(str(REPO)), (
            f"a top-level {generic!r} package from this project is importable: {found[generic]}"
        )
    origin = Path(found["rl_maml.agents"]).resolve()
    # Editable installs map rl_maml.agents to the repository's agents/; wheels to rl_maml/agents/.
    assert origin in (REPO / "agents" / "__init__.py",) or origin.parent.parent.name == "rl_maml"


def test_presets_are_package_data():
    from rl_maml.experiments.cli import presets

    assert {"sinusoid", "sinusoid_k5", "sinusoid_k20"} <= set(presets())
