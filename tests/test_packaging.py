"""`make demo` installs the project without build warnings (the README's first command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_editable_install_builds_without_setuptools_warnings(tmp_path: Path) -> None:
    # As the Makefile does it (a fresh virtualenv, an editable install), with pip's own
    # build isolation fetching the setuptools pyproject.toml asks for.
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Recent pip shows a build backend's warnings even with --quiet (the Makefile upgrades it).
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                   check=True, timeout=300, capture_output=True)
    result = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "-e", str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for warning in ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "!!"):
        assert warning not in output, output
