"""A reader over a parsed YAML mapping that collects every problem instead of stopping."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Reader", "Secret", "check_key_url", "is_loopback_host"]

@dataclass(frozen=True)
class Secret:
    """A secret string that never shows itself in repr or str."""

    value: str

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MISSING = object()


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback addresses (where plain http is allowed)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_key_url(url: str) -> str | None:
    """Return a problem if a key or discovery URL is not https (loopback http is allowed)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None
    return f"{url!r} must be an https URL (plain http only for loopback hosts)"


class Reader:
    """Typed access to one mapping of the configuration, recording problems by path."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.problem(f"must be a mapping, got {type(data).__name__}")
            data = {}
        self.data: Mapping[str, Any] = data

    def problem(self, message: str, key: str | None = None) -> None:
        """Record one problem at this path (or at one key below it)."""
        where = self._join(key) if key else self.path
        self.problems.append(f"{where}: {message}" if where else message)

    def has(self, key: str) -> bool:
        """True when the key is present (and marks it as known)."""
        self._seen.add(key)
        return key in self.data and self.data[key] is not None

    def raw(self, key: str, default: Any = None) -> Any:
        """The raw value of a key, marking it as known."""
        self._seen.add(key)
        value = self.data.get(key, _MISSING)
        return default if value is _MISSING or value is None else value

    def child(self, key: str) -> Reader:
        """A reader for a nested mapping."""
        return Reader(self.raw(key, {}), self._join(key), self.problems)

    def children(self, key: str) -> list[Reader]:
        """Readers for a list of mappings."""
        value = self.raw(key, [])
        if not isinstance(value, list):
            self.problem("must be a list", key)
            return []
        base = self._join(key)
        return [Reader(item, f"{base}[{i}]", self.problems) for i, item in enumerate(value)]

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        """A string value."""
        value = self.raw(key, _MISSING)
        if value is _MISSING:
            if required:
                self.problem("is required", key)
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(f"must be a string, got {type(value).__name__}", key)
            return default
        text = str(value).strip()
        if required and not text:
            self.problem("must not be empty", key)
        return text or default

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """A number within optional bounds."""
        value = self.raw(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                self.problem(f"must be a number, got {value!r}", key)
                return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(f"must be a number, got {type(value).__name__}", key)
            return default
        if minimum is not None and value < minimum:
            self.problem(f"must be at least {minimum:g}, got {value:g}", key)
            return default
        if maximum is not None and value > maximum:
            self.problem(f"must be at most {maximum:g}, got {value:g}", key)
            return default
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        """A whole number within optional bounds."""
        value = self.number(key, default, minimum=minimum, maximum=maximum)
        if value != int(value):
            self.problem(f"must be a whole number, got {value:g}", key)
            return default
        return int(value)

    def flag(self, key: str, default: bool) -> bool:
        """A boolean (YAML true/false, or the strings true/false/1/0/yes/no)."""
        value = self.raw(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"false", "0", "no", "off"}:
            return False
        self.problem(f"must be true or false, got {value!r}", key)
        return default

    def str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list of strings (a comma-separated string is accepted too)."""
        value = self.raw(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if not isinstance(value, list) or not all(
            isinstance(item, str | int) and not isinstance(item, bool) for item in value
        ):
            self.problem("must be a list of strings", key)
            return default
        return tuple(str(item).strip() for item in value if str(item).strip())

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        """One string out of a fixed set."""
        value = self.text(key, default)
        if value not in choices:
            self.problem(f"must be one of {', '.join(choices)}, got {value!r}", key)
            return default
        return value

    def header_name(self, key: str, value: str) -> bool:
        """Check a header name's syntax, recording a problem when it is not a token."""
        if _HEADER_NAME.match(value):
            return True
        self.problem(f"{value!r} is not a valid header name", key)
        return False

    def check_unknown(self) -> None:
        """Report every key of this mapping that no reader asked for."""
        for key in self.data:
            if key not in self._seen:
                self.problem("unknown setting", str(key))

    def _join(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key
