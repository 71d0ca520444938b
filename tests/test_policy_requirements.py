"""Requirement leaves on Identity values: scopes, role prefixes, any_of/all_of reporting."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.claims import Identity
from gateway.auth.requirements import parse_requirement
from gateway.reasons import Reason

ISSUERS = {"clerk": "https://clerk.example.test", "partner": "https://partner.example.test"}


def check(require: Any, params: dict[str, str] | None = None, **identity: Any) -> Reason | None:
    problems: list[str] = []
    parsed = parse_requirement(require, "require", problems, ISSUERS)
    assert problems == [] and parsed is not None
    who = Identity(issuer=identity.pop("issuer", ISSUERS["clerk"]), user_id="user_1",
                   expires_at=0.0, **identity)
    unmet = parsed.check(who, params or {})
    return None if unmet is None else unmet.reason


@pytest.mark.parametrize(("wanted", "held", "ok"), [
    ("pro", "u:pro", True),
    ("pro", "o:pro", True),
    ("pro", "pro", True),  # an unscoped plan (plain OIDC claim) matches an unscoped requirement
    ("o:pro", "o:pro", True),
    ("o:pro", "u:pro", False),
    ("o:pro", "ou:pro", True),
    ("u:pro", "uo:pro", True),
    ("u:pro", "pro", False),
    ("pro", "u:free", False),
    ("pro", "u:free,o:pro", True),
    ("pro", None, False),
    ("pro", "u:professional", False),
])
def test_plan_scopes(wanted: str, held: str | None, ok: bool) -> None:
    assert check({"plan": wanted}, plan=held) == (None if ok else Reason.MISSING_PLAN)


@pytest.mark.parametrize(("wanted", "held", "ok"), [
    ("teams", ("o:dashboard", "o:teams"), True),
    ("o:teams", ("u:teams",), False),
    ("u:teams", ("ou:teams",), True),
    (["sso", "teams"], ("o:teams",), True),
    ("teams", (), False),
])
def test_feature_scopes(wanted: Any, held: tuple[str, ...], ok: bool) -> None:
    assert check({"feature": wanted}, features=held) == (None if ok else Reason.MISSING_FEATURE)


@pytest.mark.parametrize(("wanted", "held", "ok"), [
    ("admin", "org:admin", True),
    ("org:admin", "org:admin", True),
    ("org:admin", "admin", True),  # a plain OIDC role claim without the prefix
    ("admin", "org:member", False),
    (["member", "org:admin"], "org:admin", True),
    ("admin", None, False),
])
def test_roles(wanted: Any, held: str | None, ok: bool) -> None:
    assert check({"role": wanted}, org_id="org_1", org_role=held) == (
        None if ok else Reason.MISSING_ROLE)


def test_permission_and_issuer_and_organization() -> None:
    assert check({"permission": "org:a:read"}, org_permissions=("org:a:read",)) is None
    assert check({"permission": "org:a:read"}, org_permissions=("org:a:write",)) == (
        Reason.MISSING_PERMISSION)
    assert check({"issuer": "partner"}, issuer=ISSUERS["partner"]) is None
    assert check({"issuer": ISSUERS["clerk"]}, issuer=ISSUERS["partner"]) == (
        Reason.ISSUER_NOT_ALLOWED)
    assert check({"organization": True}) == Reason.ORGANIZATION_REQUIRED
    assert check({"organization": True}, org_id="org_1") is None


def test_bind_on_slug_and_missing_parameter_fails_closed() -> None:
    bind = {"bind": {"slug": "org_slug"}}
    assert check(bind, {"slug": "acme"}, org_id="org_1", org_slug="acme") is None
    assert check(bind, {"slug": "other"}, org_id="org_1", org_slug="acme") == (
        Reason.ORGANIZATION_MISMATCH)
    assert check(bind, {}, org_id="org_1", org_slug="acme") == Reason.ORGANIZATION_MISMATCH
    assert check({"bind": "user_id"}, {"user_id": ""}) == Reason.USER_MISMATCH


def test_any_of_reports_the_first_childs_reason_and_all_of_the_first_unmet() -> None:
    any_of = {"any_of": [{"plan": "pro"}, {"role": "admin"}, {"feature": "x"}]}
    assert check(any_of) == Reason.MISSING_PLAN
    assert check(any_of, org_id="o", org_role="org:admin") is None
    all_of = {"all_of": [{"organization": True}, {"role": "admin"}]}
    assert check(all_of) == Reason.ORGANIZATION_REQUIRED
    assert check(all_of, org_id="o", org_role="org:member") == Reason.MISSING_ROLE
    # several kinds in one mapping are all required, in the order written
    assert check({"role": "admin", "plan": "pro"}, org_id="o", org_role="org:admin") == (
        Reason.MISSING_PLAN)


def test_nesting_is_bounded() -> None:
    node: Any = {"role": "admin"}
    for _ in range(12):
        node = {"all_of": [node]}
    problems: list[str] = []
    assert parse_requirement(node, "require", problems, ISSUERS) is None
    assert any("nested more than" in p for p in problems)
