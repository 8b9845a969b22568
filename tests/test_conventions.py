"""Conventions every CLI user expects (issue 14): --version, python -m, and the like."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from ocrd_models.modelsync import __version__


def test_version_is_one_value_everywhere(sandbox):
    assert __version__ == version("ocrd-modelsync")  # the installed metadata reads the package's value
    r = sandbox.run("--version")
    assert r.code == 0 and r.out.strip() == f"modelsync {__version__}"


def test_python_dash_m_runs_the_cli(sandbox):
    for module in ("ocrd_models.modelsync",):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                              cwd=sandbox.project, env=sandbox.env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"modelsync {__version__}"
