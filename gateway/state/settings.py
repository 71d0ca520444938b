"""Where shared state lives: the `state_dir` and `shared_state` settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gateway.configreader import Reader
from gateway.state.schema import default_state_dir

__all__ = ["parse_state"]

_OFF = {"false", "0", "no", "off"}
_ON = {"true", "1", "yes", "on"}


def parse_state(root: Reader, env: Mapping[str, str]) -> tuple[str, bool]:
    """(the state directory, made absolute; whether workers share state through it).

    ``GATEWAY_STATE_DIR`` overrides ``state_dir:``; ``GATEWAY_SHARED_STATE`` overrides
    ``shared_state:``. No I/O: the directory is checked by `check_state_dir` at start."""
    from_file = root.text("state_dir") or ""
    text = env.get("GATEWAY_STATE_DIR") or from_file
    if "\x00" in text:
        root.problem("must be a directory path", "state_dir")
        text = ""
    path = Path(text).expanduser() if text else default_state_dir(env)
    shared = root.flag("shared_state", True)
    flag = (env.get("GATEWAY_SHARED_STATE") or "").strip().lower()
    if flag in _OFF | _ON:
        shared = flag in _ON
    elif flag:
        root.problems.append(f"GATEWAY_SHARED_STATE: {flag!r} must be true or false")
    return os.path.abspath(path), shared
