"""The state directory and its database: where it is, its schema, and checks at start.

The database is ``<state_dir>/state.sqlite3``, marked with its own SQLite application id and
a schema version (``PRAGMA user_version``), so a foreign or newer file is refused instead of
being written over. ``check_state_dir`` is what `serve` and `check-config` run before
starting: every problem it finds is one line of the configuration error.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_SECONDS",
    "DATABASE_NAME",
    "SCHEMA_VERSION",
    "StateError",
    "check_state_dir",
    "connect",
    "database_path",
    "default_state_dir",
]

DATABASE_NAME = "state.sqlite3"
APPLICATION_ID = 0x434C4B47  # "CLKG"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 5.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (ns TEXT NOT NULL, key TEXT NOT NULL, "
    "value TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at)",
    "CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "ns TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL, value TEXT, expires_at REAL, "
    "at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS changes_at ON changes (at)",
)


class StateError(Exception):
    """The state directory or its database cannot be used."""


def default_state_dir(env: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/clerk-gateway, else ~/.local/state/clerk-gateway."""
    xdg = env.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "clerk-gateway"
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".local" / "state" / "clerk-gateway"


def database_path(state_dir: Path) -> Path:
    """The database file inside a state directory."""
    return state_dir / DATABASE_NAME


def connect(path: Path, create: bool) -> sqlite3.Connection:
    """Open the state database (WAL, FULL sync, busy timeout), creating or checking its schema.

    Raises StateError with a sentence an operator can act on."""
    if not create and not path.exists():
        raise StateError(f"{path} does not exist")
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise StateError(f"{path} cannot be opened ({exc})") from exc
    try:
        _prepare(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StateError(
            f"{path} is corrupt or not an SQLite database ({exc}); move it away to start "
            "afresh (the revocations it held are then forgotten)") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    app_id, version = _marks(conn)
    if app_id not in (0, APPLICATION_ID):
        raise StateError(f"{path} is not a clerk-gateway state database (application id "
                         f"{app_id:#x}); point state_dir at a directory of its own")
    if version > SCHEMA_VERSION:
        raise StateError(f"{path} has schema version {version}, newer than this gateway's "
                         f"{SCHEMA_VERSION}; run the newer gateway or another state_dir")
    if app_id == 0 and version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        if tables.fetchone()[0]:
            raise StateError(f"{path} is an SQLite database of another program; point "
                             "state_dir at a directory of its own")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {check}")
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _marks(conn)[1] < SCHEMA_VERSION:  # another worker may have just done it
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _marks(conn: sqlite3.Connection) -> tuple[int, int]:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    return int(app_id), int(version)


def check_state_dir(state_dir: Path, *, create: bool) -> list[str]:
    """Every problem with a state directory (and its database); [] when it is usable.

    With ``create`` the directory (mode 0700) and the database are created when missing;
    without, only what exists is checked (what `check-config` does)."""
    where = f"state_dir {state_dir}"
    if state_dir.exists() and not state_dir.is_dir():
        return [f"{where}: exists and is not a directory"]
    if not state_dir.exists():
        if not create:
            parent = next((p for p in state_dir.parents if p.exists()), None)
            if parent is None or not os.access(parent, os.W_OK | os.X_OK):
                return [f"{where}: does not exist and cannot be created (parent {parent} "
                        "is not writable by this user)"]
            return []
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            return [f"{where}: cannot be created ({exc.strerror})"]
    try:
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as exc:
        return [f"{where}: is not writable by this user (uid {os.getuid()}): {exc.strerror}"]
    database = database_path(state_dir)
    if not create and not database.exists():
        return []
    try:
        connect(database, create).close()
    except StateError as exc:
        return [f"{where}: {exc}"]
    return []
