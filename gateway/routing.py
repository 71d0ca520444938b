"""The route table: normalise the request path, find the first matching route."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.policy import ACCESS_KINDS, Rule
from gateway.configreader import Reader

__all__ = [
    "DEFAULT_ROUTE",
    "AmbiguousPath",
    "Route",
    "RouteMatch",
    "Router",
    "normalize_path",
    "parse_routes",
]


class AmbiguousPath(ValueError):
    """The path cannot be normalised without guessing how the upstream reads it."""


@dataclass(frozen=True, slots=True)
class Route:
    """A named route: what it matches and the rule that guards it."""

    name: str
    prefix: str = "/"
    exact: bool = False
    methods: frozenset[str] = frozenset()
    host: str | None = None
    rule: Rule = field(default_factory=Rule)
    upstream: str | None = None

    def matches(self, method: str, path: str, host: str | None) -> Mapping[str, str] | None:
        """Path parameters when the route matches, else None."""
        if self.methods and method not in self.methods:
            return None
        if self.host is not None and (host or "").split(":")[0].lower() != self.host:
            return None
        if self.exact:
            return {} if path == self.prefix else None
        if path == self.prefix or path.startswith(self.prefix.rstrip("/") + "/"):
            return {}
        return None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route a request matched and the path parameters it bound."""

    route: Route
    params: Mapping[str, str]


DEFAULT_ROUTE = Route(name="default")


def normalize_path(raw: str) -> str:
    """Remove dot segments and repeated slashes; reject NUL and encoded slashes."""
    path = raw.split("?", 1)[0].split("#", 1)[0] or "/"
    lowered = path.lower()
    if "\x00" in path or "%00" in lowered or "%2f" in lowered or "%5c" in lowered or "\\" in path:
        raise AmbiguousPath(path)
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    normalized = "/" + "/".join(out)
    if path.endswith("/") and out:
        normalized += "/"
    return normalized


class Router:
    """Finds the first route matching a request; unmatched requests get the default."""

    def __init__(self, routes: tuple[Route, ...], default: Route = DEFAULT_ROUTE) -> None:
        self.routes = routes
        self.default = default

    def match(self, method: str, path: str, host: str | None) -> RouteMatch:
        """The first matching route and its parameters."""
        for route in self.routes:
            params = route.matches(method, path, host)
            if params is not None:
                return RouteMatch(route, params)
        return RouteMatch(self.default, {})


def parse_routes(root: Reader, problems: list[str]) -> tuple[Route, ...]:
    """Read the `routes` list of the configuration file."""
    routes: list[Route] = []
    for item in root.children("routes"):
        name = item.text("name", required=True) or "?"
        prefix = item.text("path_prefix")
        exact = item.text("path")
        if bool(prefix) == bool(exact):
            item.problem("give exactly one of path_prefix or path")
        path: Any = prefix or exact or "/"
        if not str(path).startswith("/"):
            item.problem(f"{path!r} must start with /")
        methods = frozenset(m.upper() for m in item.str_list("methods"))
        access = item.choice("access", "authenticated", ACCESS_KINDS)
        routes.append(Route(
            name=name, prefix=str(path), exact=bool(exact), methods=methods,
            host=(item.text("host") or "").lower() or None, rule=Rule(access),
            upstream=item.text("upstream"),
        ))
        item.check_unknown()
    return tuple(routes)
