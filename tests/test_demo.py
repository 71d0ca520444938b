"""The README's demo command works with no account and no network."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import free_port


def test_demo_self_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--check",
         "--port", str(free_port()), "--admin-port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "allowed request: 200" in result.stdout
    assert "request without a token: 401" in result.stdout
    assert "request with an API key: 200" in result.stdout
    assert '"X-Token-Type": "api_key"' in result.stdout
