"""Access rules: what a matched route requires of the caller's identity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.auth.requirements import Requirement, Unmet
from gateway.reasons import Reason

if TYPE_CHECKING:
    from gateway.auth.claims import Identity

__all__ = ["ACCESS_KINDS", "Rule"]

# public: no token read; optional: a valid token adds identity, none passes anonymously;
# authenticated: a valid token is needed (and `require` must hold); deny: always 403.
ACCESS_KINDS = ("public", "optional", "authenticated", "deny")


@dataclass(frozen=True, slots=True)
class Rule:
    """How a route is guarded: its access kind, the credential types it accepts and, when
    authenticated, its requirements."""

    access: str = "authenticated"
    require: Requirement | None = None
    accepts: frozenset[str] | None = None  # credential types (None: the top-level token_types)

    def check(self, identity: Identity, params: Mapping[str, str]) -> Unmet | None:
        """None when the identity satisfies the rule, else the unmet requirement."""
        if self.require is None:
            return None
        return self.require.check(identity, params)

    def evaluate(self, identity: Identity, params: Mapping[str, str]) -> Reason | None:
        """None when the identity satisfies the rule, else the reason it does not."""
        unmet = self.check(identity, params)
        return None if unmet is None else unmet.reason
