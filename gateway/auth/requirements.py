"""Route requirements: what an identity must hold, composable with all_of / any_of.

Each leaf checks one thing and names the Reason it fails with; `AllOf` reports its first
unmet child, `AnyOf` (when every child fails) reports its first child's unmet leaf. A list
inside a leaf (``role: [admin, billing]``) means any of the listed values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.reasons import Reason

if TYPE_CHECKING:
    from gateway.auth.claims import Identity

__all__ = [
    "BIND_FIELDS",
    "REQUIREMENT_KINDS",
    "AllOf",
    "AnyOf",
    "Bind",
    "FeatureIn",
    "IssuerIn",
    "OrganizationActive",
    "PermissionIn",
    "PlanIn",
    "Requirement",
    "RoleIn",
    "ScopeIn",
    "Unmet",
    "parse_requirement",
]

REQUIREMENT_KINDS = (
    "all_of", "any_of", "role", "permission", "plan", "feature", "organization", "issuer",
    "bind", "scope",
)
BIND_FIELDS = ("org_id", "org_slug", "user_id")
_MAX_DEPTH = 8
_VALUE = re.compile(r"^[A-Za-z0-9_.:/-]+$")
_SCOPED = re.compile(r"^(?:(?P<scope>[ou]):)?(?P<name>[A-Za-z0-9_.-]+)$")
_PARAM = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Unmet:
    """The requirement an identity failed, and the reason it maps to."""

    reason: Reason
    requirement: str


class Requirement:
    """Base of every requirement node."""

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """None when the identity satisfies the requirement, else what is unmet."""
        raise NotImplementedError

    def bound_params(self) -> Iterator[str]:
        """The path parameters this requirement reads."""
        return iter(())


@dataclass(frozen=True, slots=True)
class AllOf(Requirement):
    """Every child must hold; the first one that does not is reported."""

    items: tuple[Requirement, ...]

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """The first unmet child, or None."""
        for item in self.items:
            unmet = item.check(identity, params)
            if unmet is not None:
                return unmet
        return None

    def bound_params(self) -> Iterator[str]:
        """Parameters read by any child."""
        for item in self.items:
            yield from item.bound_params()


@dataclass(frozen=True, slots=True)
class AnyOf(Requirement):
    """At least one child must hold; when none does, the first child's failure is reported."""

    items: tuple[Requirement, ...]

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """None as soon as one child holds, else the first child's unmet leaf."""
        first: Unmet | None = None
        for item in self.items:
            unmet = item.check(identity, params)
            if unmet is None:
                return None
            first = first or unmet
        return first

    def bound_params(self) -> Iterator[str]:
        """Parameters read by any child."""
        for item in self.items:
            yield from item.bound_params()


def _bare_role(role: str) -> str:
    return role.removeprefix("org:")


@dataclass(frozen=True, slots=True)
class RoleIn(Requirement):
    """The active organization role (or one of the token's `roles`) is one of these
    (`admin` and `org:admin` are equal)."""

    roles: frozenset[str]

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """MISSING_ROLE unless the role is listed."""
        role = identity.org_role
        if role is not None and _bare_role(role) in self.roles:
            return None
        if any(_bare_role(held) in self.roles for held in identity.roles):
            return None
        return Unmet(Reason.MISSING_ROLE, "role " + "|".join(sorted(self.roles)))


@dataclass(frozen=True, slots=True)
class PermissionIn(Requirement):
    """The identity holds one of these organization permissions (`org:<feature>:<perm>`)."""

    permissions: frozenset[str]

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """MISSING_PERMISSION unless one is held."""
        if not self.permissions.isdisjoint(identity.org_permissions):
            return None
        return Unmet(Reason.MISSING_PERMISSION, "permission " + "|".join(sorted(self.permissions)))


def _scoped_holds(wanted: tuple[str | None, str], held: Iterable[str]) -> bool:
    """True when a held scoped entry (`o:pro`, `u:free`, `ou:x`, or unscoped) satisfies."""
    scope, name = wanted
    for entry in held:
        entry_scope, sep, entry_name = entry.partition(":")
        if not sep:
            entry_scope, entry_name = "", entry
        if entry_name == name and (scope is None or scope in entry_scope):
            return True
    return False


def _scoped_text(values: tuple[tuple[str | None, str], ...]) -> str:
    return "|".join(f"{s}:{n}" if s else n for s, n in values)


@dataclass(frozen=True, slots=True)
class PlanIn(Requirement):
    """The plan (`pla`) is one of these; `pro` matches any scope, `o:pro` only organizations."""

    plans: tuple[tuple[str | None, str], ...]

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """MISSING_PLAN unless the plan matches."""
        held = [p.strip() for p in (identity.plan or "").split(",") if p.strip()]
        if any(_scoped_holds(plan, held) for plan in self.plans):
            return None
        return Unmet(Reason.MISSING_PLAN, "plan " + _scoped_text(self.plans))


@dataclass(frozen=True, slots=True)
class FeatureIn(Requirement):
    """One of these features (`fea`) is enabled; scope rules as for plans."""

    features: tuple[tuple[str | None, str], ...]

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """MISSING_FEATURE unless a feature matches."""
        if any(_scoped_holds(feature, identity.features) for feature in self.features):
            return None
        return Unmet(Reason.MISSING_FEATURE, "feature " + _scoped_text(self.features))


@dataclass(frozen=True, slots=True)
class OrganizationActive(Requirement):
    """An organization is active in the session."""

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """ORGANIZATION_REQUIRED when no organization is active."""
        if identity.org_id:
            return None
        return Unmet(Reason.ORGANIZATION_REQUIRED, "organization")


@dataclass(frozen=True, slots=True)
class IssuerIn(Requirement):
    """The token came from one of these issuers (URLs; names are resolved when parsing)."""

    issuers: frozenset[str]

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """ISSUER_NOT_ALLOWED unless the issuer is listed."""
        if identity.issuer in self.issuers:
            return None
        return Unmet(Reason.ISSUER_NOT_ALLOWED, "issuer")


@dataclass(frozen=True, slots=True)
class Bind(Requirement):
    """A path parameter must equal an identity field (org_id, org_slug or user_id)."""

    param: str
    field: str

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """ORGANIZATION_REQUIRED / ORGANIZATION_MISMATCH / USER_MISMATCH when unequal."""
        value = getattr(identity, self.field)
        given = params.get(self.param)
        what = f"bind {self.param}={self.field}"
        if self.field == "user_id":
            return None if value and given == value else Unmet(Reason.USER_MISMATCH, what)
        if not identity.org_id:
            return Unmet(Reason.ORGANIZATION_REQUIRED, what)
        return None if value and given == value else Unmet(Reason.ORGANIZATION_MISMATCH, what)

    def bound_params(self) -> Iterator[str]:
        """The one parameter this binding reads."""
        yield self.param


@dataclass(frozen=True, slots=True)
class ScopeIn(Requirement):
    """The credential carries one of these scopes (API keys, M2M and OAuth tokens)."""

    scopes: frozenset[str]

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """MISSING_SCOPE unless one is held."""
        if not self.scopes.isdisjoint(identity.scopes):
            return None
        return Unmet(Reason.MISSING_SCOPE, "scope " + "|".join(sorted(self.scopes)))


class _Parser:
    """Turns the YAML form of a requirement into Requirement nodes, collecting problems."""

    def __init__(self, problems: list[str], issuers: Mapping[str, str]) -> None:
        self.problems = problems
        self.issuers = issuers

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def node(self, value: Any, where: str, depth: int = 0) -> Requirement | None:
        if depth > _MAX_DEPTH:
            self.problem(where, f"nested more than {_MAX_DEPTH} levels deep")
            return None
        if isinstance(value, list):
            return self._group(AllOf, value, where, depth)
        if not isinstance(value, Mapping) or not value:
            self.problem(where, "must be a non-empty mapping of requirement kinds (or a list)")
            return None
        items: list[Requirement] = []
        for key, item in value.items():
            at = f"{where}.{key}"
            if key not in REQUIREMENT_KINDS:
                self.problem(at, "unknown requirement kind (expected one of "
                             f"{', '.join(REQUIREMENT_KINDS)})")
                continue
            parsed = self._kind(str(key), item, at, depth)
            if parsed is not None:
                items.append(parsed)
        if len(items) != len(value):
            return None
        return items[0] if len(items) == 1 else AllOf(tuple(items))

    def _group(self, kind: type[AllOf] | type[AnyOf], value: Any, where: str,
               depth: int) -> Requirement | None:
        if not isinstance(value, list) or not value:
            self.problem(where, "must be a non-empty list of requirements")
            return None
        items = [self.node(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if any(item is None for item in items):
            return None
        return kind(tuple(i for i in items if i is not None))

    def _values(self, value: Any, where: str) -> tuple[str, ...]:
        values = [value] if isinstance(value, str) else value
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, str) and _VALUE.match(v) for v in values)):
            self.problem(where, "must be a name or a non-empty list of names "
                         "(letters, digits and _ . : / -)")
            return ()
        return tuple(values)

    def _scoped(self, value: Any, where: str) -> tuple[tuple[str | None, str], ...]:
        out: list[tuple[str | None, str]] = []
        for text in self._values(value, where):
            match = _SCOPED.match(text)
            if match is None:
                self.problem(where, f"{text!r} must be a name, optionally scoped as o:<name> "
                             "or u:<name>")
                return ()
            out.append((match["scope"], match["name"]))
        return tuple(out)

    def _kind(self, kind: str, value: Any, where: str, depth: int) -> Requirement | None:
        if kind == "all_of":
            return self._group(AllOf, value, where, depth)
        if kind == "any_of":
            return self._group(AnyOf, value, where, depth)
        if kind == "role":
            roles = self._values(value, where)
            bare = [_bare_role(r) for r in roles]
            if not all(bare) or any(":" in r for r in bare):
                self.problem(where, "roles are written admin or org:admin")
                return None
            return RoleIn(frozenset(bare)) if roles else None
        if kind == "permission":
            permissions = self._values(value, where)
            return PermissionIn(frozenset(permissions)) if permissions else None
        if kind == "plan":
            plans = self._scoped(value, where)
            return PlanIn(plans) if plans else None
        if kind == "feature":
            features = self._scoped(value, where)
            return FeatureIn(features) if features else None
        if kind == "organization":
            if value is not True:
                self.problem(where, "must be true (an active organization is required)")
                return None
            return OrganizationActive()
        if kind == "issuer":
            return self._issuer(value, where)
        if kind == "scope":
            scopes = self._values(value, where)
            return ScopeIn(frozenset(scopes)) if scopes else None
        return self._bind(value, where)

    def _issuer(self, value: Any, where: str) -> Requirement | None:
        urls: set[str] = set()
        known = set(self.issuers.values())
        for item in self._values(value, where):
            url = self.issuers.get(item, item)
            if url not in known:
                self.problem(where, f"{item!r} is not the name or URL of a configured issuer")
                return None
            urls.add(url)
        return IssuerIn(frozenset(urls)) if urls else None

    def _bind(self, value: Any, where: str) -> Requirement | None:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            value = {v: v for v in value} if all(isinstance(v, str) for v in value) else None
        if not isinstance(value, Mapping) or not value:
            self.problem(where, "must map path parameters to identity fields, "
                         "e.g. {org_id: org_id}")
            return None
        binds: list[Requirement] = []
        for param, field in value.items():
            if not isinstance(param, str) or not _PARAM.match(param):
                self.problem(where, f"{param!r} is not a path parameter name")
            elif field not in BIND_FIELDS:
                self.problem(f"{where}.{param}",
                             f"must be one of {', '.join(BIND_FIELDS)}, got {field!r}")
            else:
                binds.append(Bind(param, str(field)))
        if len(binds) != len(value):
            return None
        return binds[0] if len(binds) == 1 else AllOf(tuple(binds))


def parse_requirement(
    value: Any, where: str, problems: list[str], issuers: Mapping[str, str]
) -> Requirement | None:
    """Parse a `require` value; problems are appended, None returned when it is invalid."""
    return _Parser(problems, issuers).node(value, where)
