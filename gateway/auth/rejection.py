"""The one exception every credential verifier raises to refuse a token."""

from __future__ import annotations

from gateway.reasons import Reason

__all__ = ["TokenRejected"]


class TokenRejected(Exception):
    """The token is not acceptable (or not verifiable now), for one reason of the closed set."""

    def __init__(self, reason: Reason, detail: str = "", retry_after: int | None = None,
                 token_type: str | None = None) -> None:
        super().__init__(detail or reason.label)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        self.token_type = token_type
