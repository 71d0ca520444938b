"""Access rules: what a matched route requires of the caller's identity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.reasons import Reason

if TYPE_CHECKING:
    from gateway.auth.claims import Identity

__all__ = ["ACCESS_KINDS", "Rule"]

ACCESS_KINDS = ("public", "optional", "authenticated")


@dataclass(frozen=True, slots=True)
class Rule:
    """How a route is guarded: public, optional or authenticated."""

    access: str = "authenticated"

    def evaluate(self, identity: Identity, params: Mapping[str, str]) -> Reason | None:
        """None when the identity satisfies the rule, else the unmet requirement."""
        return None
