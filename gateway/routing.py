"""The route table: match a normalised request path, method and host to the first route.

Paths are matched after `normalize_path` (see gateway/pathnorm.py), case-sensitively unless
`route_options.case_sensitive` is false, and a single trailing slash is ignored (`/admin`
and `/admin/` are the same route). A route matches by `path_prefix` (whole segments:
`/api` matches `/api` and `/api/x`, never `/apix`), `path` (exact) or `path_template`
(`{name}` and `*` match one segment, a final `**` matches zero or more segments).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.auth.policy import ACCESS_KINDS, Rule
from gateway.auth.requirements import parse_requirement
from gateway.config_machine import parse_accepts
from gateway.configreader import Reader
from gateway.pathnorm import MAX_PATH_ESCAPES, MAX_PATH_SEGMENTS, AmbiguousPath, normalize_path

__all__ = [
    "DEFAULT_ROUTE",
    "AmbiguousPath",
    "Route",
    "RouteMatch",
    "RouteOptions",
    "Router",
    "TemplateError",
    "normalize_path",
    "parse_route_options",
    "parse_routes",
    "parse_template",
    "shadows",
]

_NAME = re.compile(r"^[a-z0-9_.-]+$")
_PARAM = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
_METHOD = re.compile(r"^[A-Z]+$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_ROUTE_KEYS = ("path_prefix", "path", "path_template")


class TemplateError(ValueError):
    """A path template is malformed."""


def parse_template(text: str) -> tuple[str, ...]:
    """The segments of a path template; raise TemplateError when it is malformed."""
    if not text.startswith("/"):
        raise TemplateError("must start with /")
    stripped = text.rstrip("/") if text != "/" else text
    segments = tuple(stripped.split("/")[1:]) if stripped != "/" else ()
    names: list[str] = []
    for i, segment in enumerate(segments):
        if not segment:
            raise TemplateError("has an empty segment (//)")
        if segment == "**":
            if i != len(segments) - 1:
                raise TemplateError("** must be the last segment")
            continue
        if segment == "*":
            continue
        param = _PARAM.match(segment)
        if param:
            if param[1] in names:
                raise TemplateError(f"parameter {{{param[1]}}} is used twice")
            names.append(param[1])
            continue
        if "{" in segment or "}" in segment:
            raise TemplateError(f"segment {segment!r} must be a literal, {{name}}, * or **"
                                " (name: lower-case letters, digits, _)")
        if "*" in segment:
            raise TemplateError(f"segment {segment!r}: * and ** must be whole segments")
        _check_literal("/" + segment)
    return segments


def _check_literal(path: str) -> None:
    try:
        normal = normalize_path(path)
    except AmbiguousPath as exc:
        raise TemplateError(f"{path!r} is not a valid path ({exc})") from exc
    if normal.rstrip("/") != path.rstrip("/"):
        raise TemplateError(f"{path!r} is not in normal form (requests would read {normal!r})")


def _host_of(host: str | None) -> str:
    """The lower-case host name of a Host header, without port or trailing dot."""
    if not host:
        return ""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


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
    template: tuple[str, ...] | None = None
    assertion_audience: str | None = None

    @property
    def params(self) -> tuple[str, ...]:
        """The names of the template's parameters."""
        return tuple(m[1] for s in self.template or () if (m := _PARAM.match(s)))

    def host_matches(self, host: str | None) -> bool:
        """True when the route has no host or the request's host fits it."""
        if self.host is None:
            return True
        name = _host_of(host)
        if self.host.startswith("*."):
            return name.endswith(self.host[1:]) and len(name) > len(self.host) - 1
        return name == self.host

    def matches(
        self, method: str, path: str, host: str | None, *, fold: bool = False
    ) -> Mapping[str, str] | None:
        """Path parameters when the route matches a normalised path, else None."""
        if self.methods and method not in self.methods:
            return None
        if not self.host_matches(host):
            return None
        trimmed = path.rstrip("/") or "/"
        if self.template is not None:
            return _match_template(self.template, trimmed, fold)
        probe = trimmed.lower() if fold else trimmed
        want = self.prefix.lower() if fold else self.prefix
        if self.exact:
            return {} if probe == want else None
        if want == "/" or probe == want or probe.startswith(want + "/"):
            return {}
        return None


def _match_template(template: tuple[str, ...], path: str, fold: bool) -> dict[str, str] | None:
    segments = path.split("/")[1:] if path != "/" else []
    params: dict[str, str] = {}
    for i, pattern in enumerate(template):
        if pattern == "**":
            return params
        if i >= len(segments):
            return None
        segment = segments[i]
        if not segment:
            return None
        if pattern == "*":
            continue
        param = _PARAM.match(pattern)
        if param:
            params[param[1]] = segment
        elif (segment.lower() != pattern.lower()) if fold else (segment != pattern):
            return None
    return params if len(segments) == len(template) else None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route a request matched and the path parameters it bound."""

    route: Route
    params: Mapping[str, str]


DEFAULT_ROUTE = Route(name="default")
# Router.locate() remembers at most this many targets of at most this length (a few MB).
_LOCATE_ENTRIES = 4096
_LOCATE_TARGET_BYTES = 256


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """Table-wide routing options: the rule for unmatched requests and case folding."""

    default: Route = DEFAULT_ROUTE
    case_sensitive: bool = True


class Router:
    """Finds the first route matching a request; unmatched requests get the default."""

    def __init__(self, routes: tuple[Route, ...], options: RouteOptions | None = None, *,
                 max_path_escapes: int = MAX_PATH_ESCAPES,
                 max_path_segments: int = MAX_PATH_SEGMENTS) -> None:
        self.routes = routes
        self.options = options or RouteOptions()
        self.default = self.options.default
        self._fold = not self.options.case_sensitive
        self._max_escapes = max_path_escapes
        self._max_segments = max_path_segments
        # (method, target, host) -> (normalised path, match): every caller repeats a few.
        self._located: dict[tuple[str, str, str | None], tuple[str, RouteMatch]] = {}

    def locate(self, method: str, uri: str, host: str | None) -> tuple[str, RouteMatch]:
        """normalize() then match(), remembered for short targets; raise AmbiguousPath."""
        key = (method, uri, host)
        located = self._located.get(key)
        if located is None:
            path = normalize_path(uri, self._max_escapes, self._max_segments)
            located = (path, self.match(method, path, host))
            if len(uri) <= _LOCATE_TARGET_BYTES and (host is None
                                                       or len(host) <= _LOCATE_TARGET_BYTES):
                if len(self._located) >= _LOCATE_ENTRIES:
                    self._located.clear()  # a bound, not a policy: rebuilt from the next ones
                self._located[key] = located
        return located

    def normalize(self, uri: str) -> str:
        """The path to match and forward, within this table's bounds; raise AmbiguousPath."""
        return normalize_path(uri, self._max_escapes, self._max_segments)

    def match(self, method: str, path: str, host: str | None) -> RouteMatch:
        """The first matching route and its parameters."""
        for route in self.routes:
            params = route.matches(method, path, host, fold=self._fold)
            if params is not None:
                return RouteMatch(route, params)
        return RouteMatch(self.default, {})


def _segments_of(route: Route) -> tuple[str, ...]:
    """A route's path as template segments (a prefix ends in **)."""
    if route.template is not None:
        return route.template
    base = tuple(route.prefix.split("/")[1:]) if route.prefix != "/" else ()
    return base if route.exact else (*base, "**")


def _segment_covers(outer: str, inner: str, fold: bool) -> bool:
    if outer == "*" or _PARAM.match(outer):
        return inner != "**"
    if inner == "*" or inner == "**" or _PARAM.match(inner):
        return False
    return outer.lower() == inner.lower() if fold else outer == inner


def _path_covers(outer: tuple[str, ...], inner: tuple[str, ...], fold: bool) -> bool:
    """True when every path the inner pattern matches is matched by the outer one."""
    for i, pattern in enumerate(outer):
        if pattern == "**":
            return True
        if i >= len(inner) or not _segment_covers(pattern, inner[i], fold):
            return False
    return len(inner) == len(outer)


def shadows(earlier: Route, later: Route, fold: bool = False) -> bool:
    """True when `earlier` certainly matches every request `later` could match."""
    if earlier.methods and not (later.methods and later.methods <= earlier.methods):
        return False
    if earlier.host is not None and earlier.host != later.host:
        return False
    return _path_covers(_segments_of(earlier), _segments_of(later), fold)


def _parse_methods(item: Reader) -> frozenset[str]:
    methods = {m.upper() for m in item.str_list("methods")}
    for method in sorted(methods):
        if not _METHOD.match(method):
            item.problem(f"{method!r} is not an HTTP method", "methods")
    if item.has("methods") and not methods:
        item.problem("must list at least one method (or be left out for all)", "methods")
    if "GET" in methods:
        methods.add("HEAD")  # upstreams answer HEAD with their GET handler
    return frozenset(methods)


def _parse_host(item: Reader) -> str | None:
    host = item.text("host")
    if host is None:
        return None
    host = host.lower().rstrip(".")
    if not _HOST.match(host):
        item.problem(f"{host!r} must be a host name, optionally starting with *.", "host")
    return host


def _parse_path(item: Reader) -> tuple[str, bool, tuple[str, ...] | None] | None:
    given = [(k, item.text(k)) for k in _ROUTE_KEYS]
    present = [(k, v) for k, v in given if v is not None]
    if len(present) != 1:
        item.problem("give exactly one of path_prefix, path or path_template")
        return None
    key, text = present[0]
    assert text is not None
    try:
        if key == "path_template":
            return text, False, parse_template(text)
        if not text.startswith("/"):
            raise TemplateError("must start with /")
        _check_literal(text)
    except TemplateError as exc:
        item.problem(str(exc), key)
        return None
    return (text.rstrip("/") or "/"), key == "path", None


def _parse_rule(item: Reader, route: str, params: tuple[str, ...], template: bool,
                issuers: Mapping[str, str]) -> Rule:
    has_require = item.has("require")
    access = item.choice("access", "authenticated", ACCESS_KINDS)
    accepts = parse_accepts(item)
    if has_require and access != "authenticated":
        item.problem(f"require needs access authenticated, not {access}", "require")
        return Rule(access, accepts=accepts)
    if not has_require:
        return Rule(access, accepts=accepts)
    where = f"{item.path}.require"
    require = parse_requirement(item.raw("require"), where, item.problems, issuers)
    if require is None:
        return Rule(access, accepts=accepts)
    for param in dict.fromkeys(require.bound_params()):
        if not template:
            item.problem(f"bind needs a path_template (route {route} has no parameters)",
                         "require")
        elif param not in params:
            item.problem(f"bind refers to {{{param}}}, which the template does not have",
                         "require")
    return Rule(access, require, accepts)


def _parse_route(item: Reader, issuers: Mapping[str, str]) -> tuple[Route, bool]:
    """The route, and whether its path is valid (only then is it checked for shadowing)."""
    name = item.text("name", required=True) or "?"
    if name != "?" and (not _NAME.match(name) or name == DEFAULT_ROUTE.name):
        item.problem(f"{name!r} must match [a-z0-9_.-]+ and not be {DEFAULT_ROUTE.name!r}",
                     "name")
    parsed = _parse_path(item)
    path, exact, template = parsed or ("/", False, None)
    methods = _parse_methods(item)
    host = _parse_host(item)
    upstream = item.text("upstream")
    if upstream is not None and not upstream.startswith(("http://", "https://")):
        item.problem(f"{upstream!r} must be an http:// or https:// URL", "upstream")
    params = tuple(m[1] for s in template or () if (m := _PARAM.match(s)))
    rule = _parse_rule(item, name, params, template is not None, issuers)
    assertion = item.child("assertion")
    audience = assertion.text("audience")
    assertion.check_unknown()
    item.check_unknown()
    route = Route(name=name, prefix=path, exact=exact, methods=methods, host=host, rule=rule,
                  upstream=upstream.rstrip("/") if upstream else None, template=template,
                  assertion_audience=audience)
    return route, parsed is not None


def parse_route_options(root: Reader) -> RouteOptions:
    """Read the top-level `default_access` and `route_options` settings."""
    access = root.text("default_access", "authenticated") or "authenticated"
    if access not in ACCESS_KINDS:
        root.problems.append(
            f"default_access: must be one of {', '.join(ACCESS_KINDS)}, got {access!r}")
        access = "authenticated"
    options = root.child("route_options")
    case_sensitive = options.flag("case_sensitive", True)
    options.check_unknown()
    return RouteOptions(Route(name=DEFAULT_ROUTE.name, rule=Rule(access)), case_sensitive)


def parse_routes(
    root: Reader,
    problems: list[str],
    issuers: Mapping[str, str] | None = None,
    options: RouteOptions | None = None,
) -> tuple[Route, ...]:
    """Read and check the `routes` list: every problem is reported, shadowed routes too.

    `issuers` maps issuer names to URLs (for `issuer` requirements).
    """
    issuer_map: Mapping[str, str] = issuers if issuers is not None else {}
    fold = options is not None and not options.case_sensitive
    readers = root.children("routes")
    parsed = [_parse_route(item, issuer_map) for item in readers]
    routes = [route for route, _ in parsed]
    names: dict[str, int] = {}
    for i, (route, valid) in enumerate(parsed):
        where = readers[i].path
        if route.name in names and route.name != "?":
            problems.append(f"{where}.name: {route.name!r} is already used by "
                            f"routes[{names[route.name]}]")
        names.setdefault(route.name, i)
        for j, (earlier, earlier_valid) in enumerate(parsed[:i]):
            if valid and earlier_valid and shadows(earlier, route, fold):
                problems.append(
                    f"{where}: route {route.name!r} is unreachable: every request it matches "
                    f"is matched first by routes[{j}] ({earlier.name!r})")
                break
    return tuple(routes)

