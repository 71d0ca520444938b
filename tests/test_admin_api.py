"""Admin API: refused without a configured token, 401 with a wrong one; add, list, remove."""

from __future__ import annotations

import jwt
import pytest

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory
from tests.revocation_support import ADMIN_TOKEN, admin_headers, reason_of

ENV = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
PATH = "/admin/revocations"


async def test_without_a_configured_token_everything_is_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    for method, path in (("POST", PATH), ("GET", PATH), ("DELETE", f"{PATH}/user/user_1")):
        response = await gw.admin.request(method, path, headers=admin_headers(),
                                          json={"kind": "user", "id": "user_1"})
        assert response.status == 403
        assert (await response.json())["message"] == "admin API disabled"
    assert (await gw.get("/", clerk.token(sub="user_1"))).status == 200


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}",
                                           f"Bearer {ADMIN_TOKEN}x", "Bearer "])
async def test_missing_or_wrong_token_is_401(
    clerk: DevIssuer, make_gateway: GatewayFactory, authorization: str | None
) -> None:
    gw = await make_gateway(env=ENV)
    headers = {"Authorization": authorization} if authorization else {}
    response = await gw.admin.post(PATH, json={"kind": "user", "id": "user_1"}, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"] == "unauthorized"
    assert (await gw.get("/", clerk.token(sub="user_1"))).status == 200


async def test_admin_api_is_not_on_the_public_listener(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    response = await gw.client.post(PATH, json={"kind": "user", "id": "user_1"},
                                    headers=admin_headers())
    assert response.status == 401  # forward-auth decision: no session token, nothing revoked
    listed = await gw.admin.get(PATH, headers=admin_headers())
    assert (await listed.json())["revocations"] == []


async def test_add_list_remove_each_kind(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    token = clerk.token(sub="user_1", sid="sess_1", org_id="org_1")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    bodies = [
        ({"kind": "session", "id": "sess_1"}, "session/sess_1"),
        ({"kind": "user", "id": "user_1", "reason": "offboarded"}, "user/user_1"),
        ({"kind": "token", "id": jti}, f"token/{jti}"),
        ({"kind": "organization", "id": "org_1"}, "organization/org_1"),
        ({"kind": "membership", "org_id": "org_1", "user_id": "user_1"},
         "membership/org_1:user_1"),
    ]
    for body, path in bodies:
        assert (await gw.get("/", token)).status == 200
        added = await gw.admin.post(PATH, json=body, headers=admin_headers())
        assert added.status == 201, await added.text()
        entry = (await added.json())["revocation"]
        assert entry["kind"] == body["kind"]
        assert entry["source"] == "admin"
        denied = await gw.get("/", token)
        assert denied.status == 401
        assert await reason_of(denied) == "revoked"

        listed = await (await gw.admin.get(PATH, headers=admin_headers())).json()
        assert [(e["kind"], e["id"]) for e in listed["revocations"]] == [
            (entry["kind"], entry["id"])]
        removed = await gw.admin.delete(f"{PATH}/{path}", headers=admin_headers())
        assert removed.status == 200
        assert (await gw.get("/", token)).status == 200
        gone = await gw.admin.delete(f"{PATH}/{path}", headers=admin_headers())
        assert gone.status == 404


async def test_list_filters_by_kind(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    for body in ({"kind": "user", "id": "user_1"}, {"kind": "session", "id": "sess_1"}):
        assert (await gw.admin.post(PATH, json=body, headers=admin_headers())).status == 201
    listed = await gw.admin.get(PATH, params={"kind": "session"}, headers=admin_headers())
    assert [e["id"] for e in (await listed.json())["revocations"]] == ["sess_1"]
    bad = await gw.admin.get(PATH, params={"kind": "planet"}, headers=admin_headers())
    assert bad.status == 400


async def test_ttl_seconds_sets_the_expiry_never_below_the_horizon(
    make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV)
    horizon = gw.settings.revocation.horizon_seconds  # 24 h + 2 x leeway by default
    assert horizon == 86400 + 2 * gw.settings.leeway_seconds
    for ttl, lives in ((200_000, 200_000), (120, horizon), (None, horizon)):
        body = {"kind": "user", "id": f"u{ttl}", **({"ttl_seconds": ttl} if ttl else {})}
        added = await gw.admin.post(PATH, json=body, headers=admin_headers())
        entry = (await added.json())["revocation"]
        assert entry["expires_at"] - entry["created_at"] == pytest.approx(lives), ttl


@pytest.mark.parametrize(("body", "problem"), [
    ({"kind": "planet", "id": "x"}, "kind:"),
    ({"kind": "user"}, "id:"),
    ({"kind": "user", "id": ""}, "id:"),
    ({"kind": "user", "id": "a b"}, "id:"),
    ({"kind": "user", "id": 7}, "id:"),
    ({"kind": "user", "id": "x" * 300}, "id:"),
    ({"kind": "user", "id": "u", "ttl_seconds": 0}, "ttl_seconds:"),
    ({"kind": "user", "id": "u", "ttl_seconds": "60"}, "ttl_seconds:"),
    ({"kind": "user", "id": "u", "ttl_seconds": True}, "ttl_seconds:"),
    ({"kind": "user", "id": "u", "reason": 5}, "reason:"),
    ({"kind": "user", "id": "u", "extra": 1}, "extra: unknown field"),
    ({"kind": "user", "id": "u", "org_id": "o"}, "org_id:"),
    ({"kind": "membership", "org_id": "org_1"}, "user_id:"),
    ({"kind": "membership", "org_id": "a:b", "user_id": "u"}, "org_id:"),
    ({"kind": "membership", "id": "org:user", "org_id": "o", "user_id": "u"}, "id:"),
])
async def test_invalid_input_is_400_with_every_problem(
    make_gateway: GatewayFactory, body: dict[str, object], problem: str
) -> None:
    gw = await make_gateway(env=ENV)
    response = await gw.admin.post(PATH, json=body, headers=admin_headers())
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == "invalid_request"
    assert any(p.startswith(problem) for p in payload["problems"]), payload
    listed = await gw.admin.get(PATH, headers=admin_headers())
    assert (await listed.json())["revocations"] == []


async def test_every_problem_is_listed_at_once(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    response = await gw.admin.post(PATH, json={"kind": "planet", "ttl_seconds": -1, "x": 1},
                                   headers=admin_headers())
    problems = (await response.json())["problems"]
    assert [p.split(":")[0] for p in problems] == ["x", "kind", "id", "ttl_seconds"]


@pytest.mark.parametrize(("body", "fields"), [
    ({"kind": ["session"], "id": {"a": 1}}, ["kind", "id"]),
    ({"kind": 7, "org_id": "a:b", "user_id": 3}, ["kind", "org_id", "user_id"]),
    ({"kind": "membership", "id": "x", "org_id": 1}, ["id", "org_id", "user_id"]),
    ({"kind": "user", "id": "", "org_id": "o", "reason": 5}, ["org_id", "id", "reason"]),
])
async def test_every_problem_is_listed_whatever_the_kind(
    make_gateway: GatewayFactory, body: dict[str, object], fields: list[str]
) -> None:
    gw = await make_gateway(env=ENV)
    response = await gw.admin.post(PATH, json=body, headers=admin_headers())
    assert response.status == 400
    payload = await response.json()
    assert [p.split(":")[0] for p in payload["problems"]] == fields
    assert payload["reason"] == "invalid_body"
    assert all(p in payload["message"] for p in payload["problems"])


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'"text"', b""])
async def test_body_must_be_a_json_object(make_gateway: GatewayFactory, raw: bytes) -> None:
    gw = await make_gateway(env=ENV)
    response = await gw.admin.post(PATH, data=raw, headers=admin_headers())
    assert response.status == 400
    assert (await response.json())["problems"] == ["the body must be a JSON object"]


async def test_oversized_body_is_413(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env=ENV)
    response = await gw.admin.post(PATH, data=b"{" + b" " * 70_000 + b"}",
                                   headers=admin_headers())
    assert response.status == 413


@pytest.mark.parametrize("path", ["planet/x", "membership/no-colon", "user/a%20b"])
async def test_delete_validates_its_path(make_gateway: GatewayFactory, path: str) -> None:
    gw = await make_gateway(env=ENV)
    response = await gw.admin.delete(f"{PATH}/{path}", headers=admin_headers())
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"
