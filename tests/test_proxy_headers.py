"""Header hygiene as a unit: no spelling of a controlled header survives; injected ones do."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import load_settings
from gateway.http.hop import HeaderHygiene, connection_tokens, normalize_name

SETTINGS = load_settings({"CLERK_ISSUER": "https://clerk.example.com",
                          "GATEWAY_UPSTREAM": "http://127.0.0.1:9"})
HYGIENE = HeaderHygiene(SETTINGS)
CONTROLLED = [*SETTINGS.identity_headers.values(), "X-Request-Id", "X-Forwarded-For",
              "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "X-Real-IP"]
INJECTED = (("X-User-Id", "user_real"), ("X-Org-Id", "org_real"))


@st.composite
def spelling(draw: st.DrawFn) -> str:
    """One controlled header name with random case and `-`/`_` choices."""
    name = draw(st.sampled_from(CONTROLLED))
    out = []
    for char in name:
        if char == "-":
            out.append(draw(st.sampled_from("-_")))
        else:
            out.append(char.upper() if draw(st.booleans()) else char.lower())
    return "".join(out)


def build(pairs: list[tuple[str, str]]) -> CIMultiDict[str]:
    return HYGIENE.upstream_headers(
        CIMultiDictProxy(CIMultiDict(pairs)), client_ip="192.0.2.7", scheme="http",
        identity=INJECTED, request_id="req-00000001")


@settings(max_examples=300, deadline=None)
@given(
    spoofs=st.lists(st.tuples(spelling(), st.sampled_from(["evil", "org_evil", "1.2.3.4"])),
                    min_size=1, max_size=8),
    listed=st.lists(spelling(), max_size=4),
)
def test_no_spelling_of_a_controlled_header_survives(
    spoofs: list[tuple[str, str]], listed: list[str]
) -> None:
    pairs = [*spoofs, ("Host", "api.example.com")]
    if listed:
        pairs.append(("Connection", ", ".join(listed)))
    out = build(pairs)
    values = {normalize_name(k): [] for k in out}
    for key, value in out.items():
        values[normalize_name(key)].append(value)
    assert values["x-user-id"] == ["user_real"]
    assert values["x-org-id"] == ["org_real"]
    assert values["x-request-id"] == ["req-00000001"]
    assert values["x-forwarded-for"] == ["192.0.2.7"]
    assert values["x-forwarded-host"] == ["api.example.com"]
    assert "evil" not in " ".join(out.values())
    assert "1.2.3.4" not in " ".join(out.values())
    for name in ("x-role", "x-session-id", "x-plan", "forwarded", "x-real-ip", "connection"):
        assert name not in values, name


def test_connection_tokens_are_normalised_across_repeats() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("Connection", "close, X_Foo"),
                                            ("Connection", " Keep-Alive ,, x-bar")]))
    assert connection_tokens(headers) == {"close", "x-foo", "keep-alive", "x-bar"}


def test_response_hygiene_drops_hop_by_hop_and_connection_named() -> None:
    headers = CIMultiDictProxy(CIMultiDict([
        ("Connection", "X-Internal"), ("X-Internal", "1"), ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("Content-Type", "text/plain")]))
    out = HeaderHygiene.response_headers(headers)
    assert list(out.items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                 ("Content-Type", "text/plain")]


def test_unrelated_underscore_headers_pass() -> None:
    out = build([("X_Custom_Thing", "v"), ("Accept", "*/*")])
    assert out["X_Custom_Thing"] == "v"
    assert out["Accept"] == "*/*"


@settings(max_examples=200, deadline=None)
@given(spoofs=st.lists(st.tuples(st.sampled_from(["X-Tenant-Id", "X-Plan-Name"]),
                                 st.booleans()), min_size=1, max_size=6),
       listed=st.booleans())
def test_identity_names_from_a_reload_are_dropped_in_every_spelling(
    spoofs: list[tuple[str, bool]], listed: bool
) -> None:
    """A reload rebuilds the verifier (new identity header names), not the proxy's hygiene:
    the client's copies of a name the hygiene was not built with go in every spelling too
    (the same spelling is replaced in place, as CIMultiDict's `headers[name] = value`)."""
    pairs = [("Host", "api.example.com")]
    for name, underscore in spoofs:
        pairs.append((name.replace("-", "_") if underscore else name.lower(), "evil"))
    if listed:
        pairs.append(("Connection", "keep-alive"))
    identity = (("X-Tenant-Id", "t_real"), ("X-Plan-Name", "p_real"))
    out = HYGIENE.upstream_headers(CIMultiDictProxy(CIMultiDict(pairs)), client_ip=None,
                                   scheme="http", identity=identity, request_id="r")
    assert sorted((k, v) for k, v in out.items()
                  if normalize_name(k) in ("x-tenant-id", "x-plan-name")) == sorted(identity)
    assert "evil" not in " ".join(out.values())
