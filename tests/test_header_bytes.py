"""Never a 500, whatever the bytes: arbitrary bytes in every header the gateway reads.

Hypothesis sends raw requests whose header values are any bytes (undecodable UTF-8,
control characters, Unicode digits, NULs; only CR and LF are left out, which would end the
header) to both listeners: the public one through the fast door, the aiohttp door and the
proxy, and the admin one (webhooks, admin API, health). Every answer is a status below
500 (or an honest 503 the gateway documents) with a JSON body naming a reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.door_support import DOORS, Doors, exchange, head, port_of, three_doors
from tests.proxy_support import Upstream
from tests.revocation_support import ADMIN_TOKEN, WEBHOOK_SECRET, delivery

ROUTES: dict[str, Any] = {"routes": [
    {"name": "public", "path_prefix": "/public", "access": "public"},
    {"name": "maybe", "path_prefix": "/maybe", "access": "optional"},
]}
ENV = {"CLERK_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
PUBLIC_HEADERS = (
    b"Authorization", b"Cookie", b"X-Forwarded-Uri", b"X-Forwarded-Method",
    b"X-Forwarded-Host", b"X-Original-URI", b"X-Original-Method", b"X-Request-Id", b"Host",
    b"Connection", b"Upgrade", b"X-Forwarded-For", b"X-Forwarded-Proto", b"Forwarded",
    b"Accept", b"Sec-WebSocket-Key", b"X-Real-Ip",
)
PREFIXES = (b"", b"Bearer ", b"bearer\t", b"__session=", b"a=1; __session=", b"/", b"GET")
# Any byte but CR and LF (which would end the header line).
header_bytes = st.binary(max_size=48).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
unicode_digits = st.text(st.sampled_from("0123456789\u00b2\u00b3\u00b9\u0663\u09ea\uff11"),
                         min_size=1, max_size=12).map(str.encode)
values = st.one_of(header_bytes, unicode_digits,
                   st.tuples(st.sampled_from(PREFIXES), header_bytes).map(b"".join))
# Public documented refusals the fuzzed values can reach (503 is keys/revocation only).
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_answered(status: int, body: dict[str, Any], context: Any,
                    parser_text: bool = False) -> None:
    """An HTTP answer below 500 with, for a refusal, a JSON body naming its reason.

    `parser_text`: the admin listener runs aiohttp's own server, whose HTTP parser answers
    a request it cannot parse (a NUL in a header) with a plain-text 400 before any handler.
    """
    assert 200 <= status < 500, (status, body, context)
    if parser_text and status == 400 and not body:
        return
    if status >= 400:
        assert body.get("reason") and body.get("request_id"), (status, body, context)
        assert set(body) >= {"error", "reason", "message", "request_id"}, (body, context)


@pytest.fixture
async def doors(clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream) -> Doors:
    """Every public door (admin listeners too, with webhooks and the admin API on)."""
    return await three_doors(clerk, make_gateway, upstream, ROUTES, ENV)


@FUZZ
@given(door=st.sampled_from(DOORS),
       fields=st.lists(st.tuples(st.sampled_from(PUBLIC_HEADERS), values), min_size=1,
                       max_size=4),
       path=st.sampled_from([b"/app", b"/maybe/x", b"/public/x"]),
       with_token=st.booleans())
async def test_any_bytes_in_public_headers_get_an_answer_never_a_500(
    doors: Doors, door: str, fields: list[tuple[bytes, bytes]], path: bytes, with_token: bool
) -> None:
    lines = [name + b": " + value for name, value in fields]
    if with_token:
        lines.append(b"Authorization: Bearer " + doors.token.encode())
    status, body = await exchange(doors.ports[door], head(lines, path))
    assert_answered(status, body, (door, lines))


def admin_port(doors: Doors) -> int:
    """The admin listener of the forward-auth gateway."""
    running: Running = doors.gateways["fast_door"]
    return port_of(running, admin=True)


@FUZZ
@given(name=st.sampled_from([b"svix-id", b"svix-timestamp", b"svix-signature",
                             b"webhook-timestamp", b"X-Request-Id", b"Content-Type"]),
       value=values)
async def test_any_bytes_in_webhook_headers_get_an_answer_never_a_500(
    doors: Doors, name: bytes, value: bytes
) -> None:
    body, headers = delivery("user.deleted", {"id": "user_1"})
    fields = {k.encode(): v.encode() for k, v in headers.items()}
    fields[name] = value
    lines = [k + b": " + v for k, v in fields.items()]
    status, answer = await exchange(admin_port(doors),
                                    head(lines, b"/_gateway/webhooks/clerk", b"POST", body))
    assert_answered(status, answer, (name, value), parser_text=True)


@FUZZ
@given(name=st.sampled_from([b"Authorization", b"X-Request-Id", b"Content-Type", b"Accept",
                             b"Host"]),
       value=st.one_of(values, st.tuples(st.just(b"Bearer " + ADMIN_TOKEN.encode()),
                                         header_bytes).map(b"".join)),
       method=st.sampled_from([b"GET", b"POST", b"DELETE"]))
async def test_any_bytes_in_admin_api_headers_get_an_answer_never_a_500(
    doors: Doors, name: bytes, value: bytes, method: bytes
) -> None:
    lines = [b"Authorization: Bearer " + ADMIN_TOKEN.encode(), name + b": " + value]
    path = b"/admin/revocations/user/user_1" if method == b"DELETE" else b"/admin/revocations"
    body = b'{"kind": "user", "id": "user_1"}' if method == b"POST" else b""
    status, answer = await exchange(admin_port(doors), head(lines, path, method, body))
    assert_answered(status, answer, (name, value, method), parser_text=True)


@pytest.mark.parametrize(("lines", "status"), [
    ([b"svix-timestamp: \xc2\xb2\xc2\xb2"], 400),  # '²²': isdigit() but not int()
    ([b"svix-timestamp: " + b"9" * 5000], 400),  # more digits than int() takes
    ([b"svix-id: msg_\xff"], 400),
    ([b"svix-signature: v1,\xff\xfe"], 401),
])
async def test_named_webhook_header_bytes_are_refused_as_documented(
    doors: Doors, lines: list[bytes], status: int
) -> None:
    body, headers = delivery("user.deleted", {"id": "user_1"})
    names = {line.split(b":", 1)[0].lower() for line in lines}
    kept = [f"{k}: {v}".encode() for k, v in headers.items() if k.encode() not in names]
    got, answer = await exchange(admin_port(doors), head(
        kept + lines, b"/_gateway/webhooks/clerk", b"POST", body))
    assert got == status, answer
    assert answer["reason"] and answer["request_id"]


async def test_an_admin_authorization_with_undecodable_bytes_is_401(doors: Doors) -> None:
    for value in (b"Bearer \xff\xfe", b"Bearer " + ADMIN_TOKEN.encode() + b"\xe9", b"\xff"):
        got, answer = await exchange(admin_port(doors), head(
            [b"Authorization: " + value], b"/admin/revocations"))
        assert got == 401, (value, answer)
        assert answer["reason"] == "admin_token_required"
