"""The closed vocabulary of decision reasons, and how each maps to HTTP."""

from __future__ import annotations

import enum

__all__ = ["Category", "Reason"]


class Category(enum.Enum):
    """How a reason is answered over HTTP."""

    # Members are singletons equal only to themselves: hash them by identity, in C (Enum's
    # own __hash__ is a Python call, paid on every request's counter look-ups).
    __hash__ = object.__hash__

    ALLOW = "allow"
    NO_TOKEN = "no_token"  # 401, plain Bearer challenge
    INVALID_TOKEN = "invalid_token"  # 401, error="invalid_token"
    BAD_REQUEST = "invalid_request"  # 400, error="invalid_request"
    FORBIDDEN = "insufficient_scope"  # 403, error="insufficient_scope"
    UNAVAILABLE = "temporarily_unavailable"  # 503 with Retry-After
    PROXY = "proxy"  # upstream and body errors: status given per reason
    PROTOCOL = "protocol"  # HTTP-level problems found before any decision
    RATE_LIMITED = "rate_limited"  # 429 with Retry-After


class Reason(enum.Enum):
    """Why a request was allowed or denied; the only values of the `reason` label."""

    __hash__ = object.__hash__  # as Category's: by identity, in C

    OK = ("ok", Category.ALLOW, 200)
    ANONYMOUS = ("anonymous", Category.ALLOW, 200)
    PUBLIC = ("public", Category.ALLOW, 200)
    PREFLIGHT = ("preflight", Category.ALLOW, 200)  # a CORS preflight an allowed origin sent

    MISSING_TOKEN = ("missing_token", Category.NO_TOKEN, 401)

    MALFORMED_TOKEN = ("malformed_token", Category.INVALID_TOKEN, 401)
    TOKEN_TOO_LARGE = ("token_too_large", Category.INVALID_TOKEN, 401)
    UNSUPPORTED_ALGORITHM = ("unsupported_algorithm", Category.INVALID_TOKEN, 401)
    UNSUPPORTED_HEADER = ("unsupported_header", Category.INVALID_TOKEN, 401)
    MISSING_KEY_ID = ("missing_key_id", Category.INVALID_TOKEN, 401)
    UNKNOWN_KEY = ("unknown_key", Category.INVALID_TOKEN, 401)
    BAD_SIGNATURE = ("bad_signature", Category.INVALID_TOKEN, 401)
    EXPIRED = ("expired", Category.INVALID_TOKEN, 401)
    NOT_YET_VALID = ("not_yet_valid", Category.INVALID_TOKEN, 401)
    LIFETIME_TOO_LONG = ("lifetime_too_long", Category.INVALID_TOKEN, 401)
    WRONG_ISSUER = ("wrong_issuer", Category.INVALID_TOKEN, 401)
    WRONG_AUDIENCE = ("wrong_audience", Category.INVALID_TOKEN, 401)
    WRONG_AUTHORIZED_PARTY = ("wrong_authorized_party", Category.INVALID_TOKEN, 401)
    INVALID_CLAIMS = ("invalid_claims", Category.INVALID_TOKEN, 401)
    SESSION_PENDING = ("session_pending", Category.INVALID_TOKEN, 401)
    REVOKED = ("revoked", Category.INVALID_TOKEN, 401)
    WRONG_TOKEN_TYPE = ("wrong_token_type", Category.INVALID_TOKEN, 401)
    TOKEN_TYPE_NOT_ACCEPTED = ("token_type_not_accepted", Category.INVALID_TOKEN, 401)
    INVALID_CREDENTIAL = ("invalid_credential", Category.INVALID_TOKEN, 401)

    AMBIGUOUS_TOKEN = ("ambiguous_token", Category.BAD_REQUEST, 400)
    AMBIGUOUS_PATH = ("ambiguous_path", Category.BAD_REQUEST, 400)

    MISSING_ROLE = ("missing_role", Category.FORBIDDEN, 403)
    MISSING_PERMISSION = ("missing_permission", Category.FORBIDDEN, 403)
    MISSING_PLAN = ("missing_plan", Category.FORBIDDEN, 403)
    MISSING_FEATURE = ("missing_feature", Category.FORBIDDEN, 403)
    MISSING_SCOPE = ("missing_scope", Category.FORBIDDEN, 403)
    ORGANIZATION_REQUIRED = ("organization_required", Category.FORBIDDEN, 403)
    ORGANIZATION_MISMATCH = ("organization_mismatch", Category.FORBIDDEN, 403)
    USER_MISMATCH = ("user_mismatch", Category.FORBIDDEN, 403)
    ISSUER_NOT_ALLOWED = ("issuer_not_allowed", Category.FORBIDDEN, 403)
    METHOD_NOT_ALLOWED = ("method_not_allowed", Category.FORBIDDEN, 403)
    ACCESS_DENIED = ("access_denied", Category.FORBIDDEN, 403)
    ROLE_NOT_ALLOWED = ("role_not_allowed", Category.FORBIDDEN, 403)

    KEYS_UNAVAILABLE = ("keys_unavailable", Category.UNAVAILABLE, 503)
    REVOCATION_UNAVAILABLE = ("revocation_unavailable", Category.UNAVAILABLE, 503)
    TOKEN_VERIFICATION_UNAVAILABLE = (
        "token_verification_unavailable", Category.UNAVAILABLE, 503)

    TOKEN_LOOKUPS_EXHAUSTED = ("token_lookups_exhausted", Category.RATE_LIMITED, 429)

    BODY_TOO_LARGE = ("body_too_large", Category.PROXY, 413)
    UPSTREAM_UNAVAILABLE = ("upstream_unavailable", Category.PROXY, 502)
    UPSTREAM_TIMEOUT = ("upstream_timeout", Category.PROXY, 504)
    BODY_TIMEOUT = ("body_timeout", Category.PROXY, 408)
    UPSTREAM_BUSY = ("upstream_busy", Category.PROXY, 503)
    TOO_MANY_REQUESTS = ("too_many_requests", Category.PROXY, 429)
    SERVER_BUSY = ("server_busy", Category.UNAVAILABLE, 503)

    MALFORMED_REQUEST = ("malformed_request", Category.PROTOCOL, 400)
    NOT_FOUND = ("not_found", Category.PROTOCOL, 404)
    UNSUPPORTED_METHOD = ("unsupported_method", Category.PROTOCOL, 405)
    REQUEST_TIMEOUT = ("request_timeout", Category.PROTOCOL, 408)
    HEADERS_TOO_LARGE = ("headers_too_large", Category.PROTOCOL, 431)
    INTERNAL_ERROR = ("internal_error", Category.PROTOCOL, 500)

    def __init__(self, label: str, category: Category, status: int) -> None:
        self.label = label
        self.category = category
        self.status = status
        self.allowed = category is Category.ALLOW  # True for the reasons that let through
