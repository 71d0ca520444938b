"""Route table: templates, matching, shadowing, and check-config reporting every problem."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_settings
from gateway.configreader import Reader
from gateway.pathnorm import AmbiguousPath
from gateway.routing import (
    _LOCATE_ENTRIES,
    _LOCATE_TARGET_BYTES,
    Router,
    TemplateError,
    parse_route_options,
    parse_routes,
    parse_template,
    shadows,
)

ISSUER = {"CLERK_ISSUER": "https://clerk.example.test"}


def table(routes: list[dict[str, Any]], **top: Any) -> Router:
    """A router from YAML-shaped routes; fails the test on any problem."""
    problems: list[str] = []
    root = Reader({"routes": routes, **top}, "", problems)
    options = parse_route_options(root)
    parsed = parse_routes(root, problems, {"clerk": "https://clerk.example.test"}, options)
    assert problems == []
    return Router(parsed, options)


def problems_of(config: dict[str, Any], tmp_path: Path) -> list[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        load_settings(ISSUER, str(path))
    return caught.value.problems


@pytest.mark.parametrize(("template", "path", "params"), [
    ("/orgs/{org_id}/**", "/orgs/o1", {"org_id": "o1"}),
    ("/orgs/{org_id}/**", "/orgs/o1/", {"org_id": "o1"}),
    ("/orgs/{org_id}/**", "/orgs/o1/a/b/c", {"org_id": "o1"}),
    ("/orgs/{org_id}/**", "/orgs", None),
    ("/orgs/{org_id}/**", "/orgsx/o1", None),
    ("/users/{user_id}/settings", "/users/u1/settings", {"user_id": "u1"}),
    ("/users/{user_id}/settings", "/users/u1/settings/", {"user_id": "u1"}),
    ("/users/{user_id}/settings", "/users/u1/settings/x", None),
    ("/users/{user_id}/settings", "/users//settings", None),
    ("/a/*/c", "/a/b/c", {}),
    ("/a/*/c", "/a/b/b/c", None),
    ("/{a}/{b}", "/x/y", {"a": "x", "b": "y"}),
    ("/**", "/", {}),
    ("/**", "/anything/at/all", {}),
])
def test_template_matching(template: str, path: str, params: dict[str, str] | None) -> None:
    router = table([{"name": "t", "path_template": template, "access": "public"}])
    match = router.match("GET", path, None)
    if params is None:
        assert match.route.name == "default"
    else:
        assert match.route.name == "t"
        assert dict(match.params) == params


@pytest.mark.parametrize(("template", "problem"), [
    ("/orgs/{org_id", "must be a literal"),
    ("/orgs/org_id}/x", "must be a literal"),
    ("/orgs/{Org}/x", "must be a literal"),
    ("/orgs/{}/x", "must be a literal"),
    ("/a/{id}/b/{id}", "used twice"),
    ("/a/**/b", "** must be the last segment"),
    ("/a/x*", "whole segments"),
    ("/a//b", "empty segment"),
    ("a/b", "must start with /"),
    ("/a/../b", "not in normal form"),
    ("/a/%61", "not in normal form"),
    ("/a/%2F", "not a valid path"),
    ("/pre{id}", "must be a literal"),
])
def test_malformed_templates(template: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(problem)):
        parse_template(template)


def test_prefix_matches_whole_segments_and_ignores_a_trailing_slash() -> None:
    router = table([{"name": "api", "path_prefix": "/api/", "access": "public"}])
    assert [router.match("GET", p, None).route.name for p in ("/api", "/api/", "/api/x")] == [
        "api", "api", "api"]
    assert router.match("GET", "/apix", None).route.name == "default"


def test_first_match_wins() -> None:
    router = table([
        {"name": "exact", "path": "/a/b", "access": "public"},
        {"name": "broad", "path_prefix": "/a", "access": "deny"},
    ])
    assert router.match("GET", "/a/b", None).route.name == "exact"
    assert router.match("GET", "/a/c", None).route.name == "broad"


def test_get_implies_head_and_methods_are_case_insensitive_in_config() -> None:
    router = table([{"name": "r", "path": "/r", "methods": ["get"], "access": "public"}])
    assert router.match("HEAD", "/r", None).route.name == "r"
    assert router.match("POST", "/r", None).route.name == "default"


@pytest.mark.parametrize(("pattern", "host", "hit"), [
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "API.EXAMPLE.COM:443", True),
    ("api.example.com", "api.example.com.", True),
    ("api.example.com", "evil-api.example.com", False),
    ("api.example.com", None, False),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
])
def test_host_matching(pattern: str, host: str | None, hit: bool) -> None:
    router = table([{"name": "h", "path_prefix": "/", "host": pattern, "access": "public"}])
    assert (router.match("GET", "/", host).route.name == "h") is hit


def test_default_access_is_configurable() -> None:
    router = table([], default_access="deny")
    assert router.match("GET", "/x", None).route.rule.access == "deny"
    assert router.default.name == "default"


def test_case_insensitive_option_folds_literals_but_keeps_parameter_values() -> None:
    router = table([
        {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}},
        {"name": "org", "path_template": "/Orgs/{org_id}/**",
         "require": {"bind": "org_id"}},
    ], route_options={"case_sensitive": False})
    assert router.match("GET", "/ADMIN/x", None).route.name == "admin"
    match = router.match("GET", "/orgs/ORG_1/x", None)
    assert match.route.name == "org" and match.params == {"org_id": "ORG_1"}
    strict = table([{"name": "admin", "path_prefix": "/admin", "access": "deny"}])
    assert strict.match("GET", "/ADMIN", None).route.name == "default"


def _route(**kwargs: Any) -> Any:
    return table([{"name": "r", "access": "public", **kwargs}]).routes[0]


@pytest.mark.parametrize(("earlier", "later", "shadowed"), [
    ({"path_prefix": "/api"}, {"path_prefix": "/api/orders"}, True),
    ({"path_prefix": "/api"}, {"path": "/api"}, True),
    ({"path_prefix": "/"}, {"path_template": "/x/{id}"}, True),
    ({"path_prefix": "/api"}, {"path_template": "/api/{id}/**"}, True),
    ({"path_prefix": "/api"}, {"path_prefix": "/apix"}, False),
    ({"path_prefix": "/api/orders"}, {"path_prefix": "/api"}, False),
    ({"path": "/a"}, {"path": "/a/"}, True),
    ({"path": "/a"}, {"path_prefix": "/a"}, False),
    ({"path_template": "/o/{id}/**"}, {"path_template": "/o/{x}/invoices/**"}, True),
    ({"path_template": "/o/{id}/**"}, {"path_prefix": "/o/1/x"}, True),
    ({"path_template": "/o/{id}/**"}, {"path_prefix": "/o"}, False),
    ({"path_template": "/o/{id}"}, {"path_template": "/o/*"}, True),
    ({"path_template": "/o/{id}"}, {"path_template": "/o/**"}, False),
    ({"path_template": "/o/*/x"}, {"path": "/o/1/x"}, True),
    ({"path_template": "/o/1/x"}, {"path_template": "/o/*/x"}, False),
    ({"path_prefix": "/api", "methods": ["GET"]}, {"path_prefix": "/api/x"}, False),
    ({"path_prefix": "/api", "methods": ["GET"]},
     {"path_prefix": "/api/x", "methods": ["GET"]}, True),
    ({"path_prefix": "/api"}, {"path_prefix": "/api/x", "methods": ["POST"]}, True),
    ({"path_prefix": "/api", "host": "a.example.com"}, {"path_prefix": "/api/x"}, False),
    ({"path_prefix": "/api", "host": "a.example.com"},
     {"path_prefix": "/api/x", "host": "a.example.com"}, True),
    ({"path_prefix": "/api"}, {"path_prefix": "/api/x", "host": "a.example.com"}, True),
])
def test_shadowing_is_flagged_only_when_certain(
    earlier: dict[str, Any], later: dict[str, Any], shadowed: bool
) -> None:
    assert shadows(_route(**earlier), _route(**later)) is shadowed


def test_config_reports_every_route_problem_at_once(tmp_path: Path) -> None:
    config = {
        "default_access": "sometimes",
        "route_options": {"case_sensitive": "maybe", "extra": 1},
        "routes": [
            {"name": "api", "path_prefix": "/api"},
            {"name": "orders", "path_prefix": "/api/orders"},  # shadowed by api
            {"name": "Bad Name", "path": "/x"},
            {"name": "dup", "path": "/d1"},
            {"name": "dup", "path": "/d2"},
            {"name": "both", "path": "/b", "path_prefix": "/b"},
            {"name": "none"},
            {"name": "tpl", "path_template": "/o/{org_id/x"},
            {"name": "twice", "path_template": "/o/{id}/{id}"},
            {"name": "stars", "path_template": "/o/**/x"},
            {"name": "bind", "path_template": "/o/{org}/**", "require": {"bind": "org_id"}},
            {"name": "bindp", "path_prefix": "/p", "require": {"bind": {"org_id": "org_id"}}},
            {"name": "kind", "path": "/k", "require": {"scopes": "read"}},
            {"name": "field", "path_template": "/u/{u}", "require": {"bind": {"u": "email"}}},
            {"name": "iss", "path": "/i", "require": {"issuer": "nobody"}},
            {"name": "org", "path": "/g", "require": {"organization": False}},
            {"name": "empty", "path": "/e", "require": {"any_of": []}},
            {"name": "scope", "path": "/s", "require": {"plan": "x:pro"}},
            {"name": "role", "path": "/r", "require": {"role": "org:"}},
            {"name": "pub", "path": "/pu", "access": "public", "require": {"role": "admin"}},
            {"name": "acc", "path": "/ac", "access": "sometimes"},
            {"name": "meth", "path": "/m", "methods": ["GET", "get me"]},
            {"name": "host", "path": "/h", "host": "bad host!"},
            {"name": "up", "path": "/up", "upstream": "ftp://x"},
            {"name": "unk", "path": "/u", "color": "blue"},
            {"name": "default", "path": "/default"},
            {"name": "dots", "path_prefix": "/a/../b"},
            {"name": "rel", "path": "relative"},
        ],
    }
    problems = problems_of(config, tmp_path)
    expected = [
        "default_access: must be one of",
        "route_options.case_sensitive: must be true or false",
        "route_options.extra: unknown setting",
        "routes[1]: route 'orders' is unreachable: every request it matches is matched "
        "first by routes[0] ('api')",
        "routes[2].name: 'Bad Name' must match [a-z0-9_.-]+",
        "routes[4].name: 'dup' is already used by routes[3]",
        "routes[5]: give exactly one of path_prefix, path or path_template",
        "routes[6]: give exactly one of path_prefix, path or path_template",
        "routes[7].path_template: segment '{org_id' must be a literal",
        "routes[8].path_template: parameter {id} is used twice",
        "routes[9].path_template: ** must be the last segment",
        "routes[10].require: bind refers to {org_id}, which the template does not have",
        "routes[11].require: bind needs a path_template",
        "routes[12].require.scopes: unknown requirement kind",
        "routes[13].require.bind.u: must be one of org_id, org_slug, user_id, got 'email'",
        "routes[14].require.issuer: 'nobody' is not the name or URL of a configured issuer",
        "routes[15].require.organization: must be true",
        "routes[16].require.any_of: must be a non-empty list",
        "routes[17].require.plan: 'x:pro' must be a name, optionally scoped",
        "routes[18].require.role: roles are written admin or org:admin",
        "routes[19].require: require needs access authenticated, not public",
        "routes[20].access: must be one of public, optional, authenticated, deny",
        "routes[21].methods: 'GET ME' is not an HTTP method",
        "routes[22].host: 'bad host!' must be a host name",
        "routes[23].upstream: 'ftp://x' must be an http:// or https:// URL",
        "routes[24].color: unknown setting",
        "routes[25].name: 'default' must match [a-z0-9_.-]+ and not be 'default'",
        "routes[26].path_prefix: '/a/../b' is not in normal form",
        "routes[27].path: must start with /",
    ]
    for fragment in expected:
        assert any(p.startswith(fragment) for p in problems), (fragment, problems)
    # Routes with a broken path are not also reported as shadowing or shadowed.
    assert sum("unreachable" in p for p in problems) == 1


def test_a_valid_table_loads(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "default_access": "deny",
        "upstream": "http://127.0.0.1:8000",
        "routes": [
            {"name": "health", "path": "/healthz", "access": "public"},
            {"name": "org", "path_template": "/orgs/{org_id}/**", "methods": ["GET", "POST"],
             "host": "api.example.com", "upstream": "http://127.0.0.1:9000/",
             "require": [{"bind": {"org_id": "org_id"}},
                         {"any_of": [{"role": ["admin", "org:billing"]},
                                     {"permission": ["org:invoices:read"]}]},
                         {"issuer": "clerk", "plan": "o:pro", "feature": ["teams"]}]},
        ],
    }))
    settings = load_settings(ISSUER, str(path))
    org = settings.routes[1]
    assert org.params == ("org_id",) and org.upstream == "http://127.0.0.1:9000"
    assert org.methods == frozenset({"GET", "HEAD", "POST"})
    assert settings.route_options.default.rule.access == "deny"


def test_check_config_command_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"routes": [
        {"name": "api", "path_prefix": "/api"},
        {"name": "orders", "path_prefix": "/api/orders"},
        {"name": "bad", "path_template": "/o/{id}/**/x", "require": {"nope": 1}},
    ]}))
    env = {**os.environ, **ISSUER, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("invalid configuration:")
    assert "routes[1]: route 'orders' is unreachable" in done.stderr
    assert "routes[2].path_template: ** must be the last segment" in done.stderr
    assert "routes[2].require.nope: unknown requirement kind" in done.stderr


_LOCATE_ROUTES: list[dict[str, Any]] = [
    {"name": "orders", "path_template": "/orders/{id}", "methods": ["GET"], "access": "public"},
    {"name": "admin", "path": "/admin", "host": "admin.example.test", "access": "deny"},
    {"name": "api", "path_prefix": "/api"},
]


@settings(max_examples=300, deadline=None)
@given(target=st.one_of(
    st.text(alphabet="/.%2eAaFfpio?=&-_~", max_size=40).map(lambda t: "/" + t),
    st.sampled_from(["/orders/7", "/orders/%2e%2e/admin", "/api/../admin", "/ADMIN", "/api//x",
                     "/orders/7?x=1", "/%2F", "/a/./b/../", "/admin"])))
def test_locate_is_normalize_then_match_every_time(target: str) -> None:
    """Remembered or not, locate() answers as normalize() then match() (or raises as it),
    for every method and host asking about the same target in turn."""
    router = table(_LOCATE_ROUTES)
    asks = [(method, host) for method in ("GET", "HEAD", "POST", "DELETE")
            for host in (None, "admin.example.test", "api.example.test", "ADMIN.example.test")]
    for method, host in asks * 2:  # the second round comes from what the first remembered
        try:
            path = router.normalize(target)
        except AmbiguousPath:
            with pytest.raises(AmbiguousPath):
                router.locate(method, target, host)
            continue
        expected = router.match(method, path, host)
        located, match = router.locate(method, target, host)
        assert (located, match.route.name, dict(match.params)) == (
            path, expected.route.name, dict(expected.params))


def test_locate_remembers_a_bounded_number_of_short_targets() -> None:
    """Unique targets from one client cannot grow the table past its bound; long ones are
    never kept."""
    router = table(_LOCATE_ROUTES)
    for n in range(_LOCATE_ENTRIES + 10):
        router.locate("GET", f"/api/{n}", None)
    assert 0 < len(router._located) <= _LOCATE_ENTRIES
    router._located.clear()
    long_target = "/api/" + "x" * _LOCATE_TARGET_BYTES
    assert router.locate("GET", long_target, None)[1].route.name == "api"
    assert router._located == {}
