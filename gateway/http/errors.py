"""Turn a denied Decision (or any Reason) into an HTTP response: the only place that does."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway.http.headers import REQUEST_ID, request_id
from gateway.reasons import Category, Reason

__all__ = [
    "JSON_CONTENT_TYPE", "MESSAGES", "admin_error", "error_body", "error_response",
    "hasura_refusal",
    "json_errors", "json_response", "refusal_parts",
]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

MESSAGES: dict[Reason, str] = {
    Reason.MISSING_TOKEN: "A session token is required.",
    Reason.MALFORMED_TOKEN: "The session token is malformed.",
    Reason.TOKEN_TOO_LARGE: "The session token is too large.",
    Reason.UNSUPPORTED_ALGORITHM: "The session token's algorithm is not accepted.",
    Reason.UNSUPPORTED_HEADER: "The session token uses an unsupported header parameter.",
    Reason.MISSING_KEY_ID: "The session token does not name its signing key.",
    Reason.UNKNOWN_KEY: "The session token was signed by an unknown key.",
    Reason.BAD_SIGNATURE: "The session token's signature is invalid.",
    Reason.EXPIRED: "The session token has expired.",
    Reason.NOT_YET_VALID: "The session token is not valid yet.",
    Reason.LIFETIME_TOO_LONG: "The session token's lifetime exceeds the allowed maximum.",
    Reason.WRONG_ISSUER: "The session token was issued by an untrusted issuer.",
    Reason.WRONG_AUDIENCE: "The session token is not meant for this audience.",
    Reason.WRONG_AUTHORIZED_PARTY: "The session token was issued to an unauthorized party.",
    Reason.INVALID_CLAIMS: "The session token's claims are invalid.",
    Reason.SESSION_PENDING: "The session has pending tasks and is treated as signed out.",
    Reason.REVOKED: "The session has been revoked.",
    Reason.WRONG_TOKEN_TYPE: "The token is not a credential of a type accepted here.",
    Reason.TOKEN_TYPE_NOT_ACCEPTED: "This route does not accept this type of credential.",
    Reason.MISSING_SCOPE: "A required scope is missing.",
    Reason.INVALID_CREDENTIAL: "Clerk does not know this credential.",
    Reason.TOKEN_LOOKUPS_EXHAUSTED: "Too many unknown credentials; try again later.",
    Reason.TOKEN_VERIFICATION_UNAVAILABLE:
        "The credential cannot be verified right now; try again shortly.",
    Reason.AMBIGUOUS_TOKEN: "The request carries more than one session token.",
    Reason.AMBIGUOUS_PATH: "The request path is ambiguous.",
    Reason.MISSING_ROLE: "The organization role does not allow this.",
    Reason.MISSING_PERMISSION: "A required organization permission is missing.",
    Reason.MISSING_PLAN: "The current plan does not include this.",
    Reason.MISSING_FEATURE: "A required feature is not enabled.",
    Reason.ORGANIZATION_REQUIRED: "An active organization is required.",
    Reason.ORGANIZATION_MISMATCH: "The path belongs to another organization.",
    Reason.USER_MISMATCH: "The path belongs to another user.",
    Reason.ISSUER_NOT_ALLOWED: "Tokens from this issuer may not use this route.",
    Reason.METHOD_NOT_ALLOWED: "This method is not allowed on this route.",
    Reason.ACCESS_DENIED: "Access is denied.",
    Reason.ROLE_NOT_ALLOWED: "The requested role is not one of the identity's allowed roles.",
    Reason.KEYS_UNAVAILABLE: "The signing keys are unavailable; try again shortly.",
    Reason.REVOCATION_UNAVAILABLE: "The revocation status is unavailable; try again shortly.",
    Reason.BODY_TOO_LARGE: "The request body is too large.",
    Reason.UPSTREAM_UNAVAILABLE: "The upstream service is unavailable.",
    Reason.UPSTREAM_TIMEOUT: "The upstream service did not answer in time.",
    Reason.BODY_TIMEOUT: "The request body stopped arriving.",
    Reason.UPSTREAM_BUSY: "Every connection to the upstream service is busy; try again shortly.",
    Reason.TOO_MANY_REQUESTS: "This client has too many requests in progress; try again shortly.",
    Reason.SERVER_BUSY: "The gateway is busy; try again shortly.",
    Reason.MALFORMED_REQUEST: "The request is not valid HTTP.",
    Reason.NOT_FOUND: "Nothing is served at this path.",
    Reason.UNSUPPORTED_METHOD: "This method is not supported at this path.",
    Reason.REQUEST_TIMEOUT: "The request headers did not arrive in time.",
    Reason.HEADERS_TOO_LARGE: "The request headers are too large.",
    Reason.INTERNAL_ERROR: "The gateway could not handle the request.",
}


def _challenge(reason: Reason, realm: str) -> str | None:
    category = reason.category
    if category is Category.NO_TOKEN:
        return f'Bearer realm="{realm}"'
    if category in (Category.INVALID_TOKEN, Category.BAD_REQUEST, Category.FORBIDDEN):
        return (f'Bearer realm="{realm}", error="{category.value}", '
                f'error_description="{reason.label}"')
    return None


def json_response(status: int, request_id: str, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer carrying the request id, never cached."""
    body["request_id"] = request_id
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json",
        headers={hdrs.CACHE_CONTROL: "no-store", REQUEST_ID: request_id, **(headers or {})})


def admin_error(status: int, request_id: str, error: str, reason: str, message: str,
                headers: dict[str, str] | None = None, **details: Any) -> web.Response:
    """A refusal of the admin listener's endpoints (admin API, webhooks).

    The same four fields as every other error body (`error`, `reason`, `message`,
    `request_id`), plus details such as `problems`.
    """
    return json_response(status, request_id, {
        "error": error, "reason": reason, "message": message, **details}, headers)


def error_body(reason: Reason) -> dict[str, Any]:
    """The JSON body of a refusal (the request id is added when it is sent)."""
    category = reason.category
    error = "unauthorized" if category is Category.NO_TOKEN else category.value
    if category in (Category.PROXY, Category.PROTOCOL):
        error = reason.label
    return {
        "error": error,
        "reason": reason.label,
        "message": MESSAGES.get(reason, "The request was refused."),
    }


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such path, wrong method) as JSON like every other one."""
    # Protocol refusals carry no WWW-Authenticate challenge, so no realm is needed.
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(Reason.NOT_FOUND, request_id(request.headers), realm="")
    except web.HTTPMethodNotAllowed as exc:
        response = error_response(
            Reason.UNSUPPORTED_METHOD, request_id(request.headers), realm="")
        response.headers[hdrs.ALLOW] = ",".join(sorted(exc.allowed_methods))
        return response


def refusal_parts(
    reason: Reason,
    request_id: str,
    realm: str,
    retry_after: int | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body of the refusal for a reason (shared by every door)."""
    headers = {hdrs.CACHE_CONTROL: "no-store", REQUEST_ID: request_id}
    challenge = _challenge(reason, realm)
    if challenge:
        headers[hdrs.WWW_AUTHENTICATE] = challenge
    if reason.status in (429, 503):
        headers[hdrs.RETRY_AFTER] = str(max(1, retry_after or 1))
    body = error_body(reason)
    body["request_id"] = request_id
    return reason.status, headers, json.dumps(body).encode()


def error_response(
    reason: Reason,
    request_id: str,
    realm: str,
    retry_after: int | None = None,
) -> web.Response:
    """The JSON error response for a reason: never the token, never a stack trace."""
    status, headers, body = refusal_parts(reason, request_id, realm, retry_after)
    headers[hdrs.CONTENT_TYPE] = JSON_CONTENT_TYPE
    return web.Response(status=status, body=body, headers=headers)


def hasura_refusal(
    reason: Reason,
    request_id: str,
    realm: str,
    retry_after: int | None = None,
) -> web.Response:
    """A refusal for Hasura's auth-webhook contract: every denial is a 401 (Hasura and DDN
    recognise only 200 and 401); outages keep their 503 so Hasura fails the request."""
    status, headers, body = refusal_parts(reason, request_id, realm, retry_after)
    headers[hdrs.CONTENT_TYPE] = JSON_CONTENT_TYPE
    return web.Response(status=401 if status < 500 else status, body=body, headers=headers)
