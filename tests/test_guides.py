"""Every guide runs to the end as a user would run it (a fresh process)."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

NEEDS = {"05_distributed.py": "jax", "06_ray.py": "ray"}  # guides of optional engines
GUIDES = sorted((pathlib.Path(__file__).parent.parent / "guides").glob("[0-9][0-9]_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES, ids=[g.name for g in GUIDES])
def test_guide_runs(guide, tmp_path):
    needs = NEEDS.get(guide.name)
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{guide.name} needs {needs} (an optional extra, installed in the jax env)")
    env = dict(os.environ)
    result = subprocess.run([sys.executable, str(guide)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip()
