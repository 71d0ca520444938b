"""A local Clerk-like issuer: RSA keys, JWKS, discovery, Backend API stubs, token minting.

It also plays WorkOS AuthKit: access tokens under `<url>/user_management/<client_id>`, keys
at `<url>/sso/jwks/<client_id>`, and `WorkOS-Signature`-signed webhook deliveries.

Used by `clerk-gateway demo` and by the tests (where it is the fake identity provider): it is
a real aiohttp server that counts its hits, can rotate keys and can be told to fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["DevIssuer", "SigningKey"]


@dataclass
class SigningKey:
    """An RSA key pair with its kid."""

    kid: str
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        """The public JWK (as Clerk publishes it)."""
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        return jwk

    def public_pem(self) -> str:
        """The public key as PEM (what CLERK_JWT_KEY holds)."""
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


class DevIssuer:
    """A local identity provider serving JWKS and minting Clerk-style session tokens."""

    def __init__(self, issuer: str = "", key: SigningKey | None = None) -> None:
        self.issuer = issuer
        self.keys: list[SigningKey] = [key or SigningKey(kid=f"ins_{uuid.uuid4().hex[:24]}")]
        self.hits: Counter[str] = Counter()
        self.fail_status: int | None = None
        self.delay = 0.0
        self.cache_control = "public, max-age=300"
        self.secret_key = "sk_test_devissuer"
        self.machine_secret_key = "ak_devissuer_machine_secret"
        self.machine_tokens: dict[str, dict[str, Any]] = {}  # opaque credentials it issued
        self.machine_fail_status: int | None = None
        self.machine_body: bytes | None = None  # answered (200) instead of the real verdict
        self.sessions: dict[str, str] = {}
        self.session_fail_status: int | None = None
        self.retry_after: int | None = None
        self.workos_client_id = "client_01DEVISSUERWORKOS"

    @property
    def key(self) -> SigningKey:
        """The key new tokens are signed with."""
        return self.keys[-1]

    def rotate(self, keep_old: bool = True) -> SigningKey:
        """Add a new signing key (optionally dropping the old ones) and return it."""
        new = SigningKey(kid=f"ins_{uuid.uuid4().hex[:24]}")
        self.keys = [*self.keys, new] if keep_old else [new]
        return new

    def claims(
        self,
        *,
        version: int = 2,
        sub: str = "user_2demo",
        sid: str | None = "sess_2demo",
        org_id: str | None = None,
        org_slug: str | None = None,
        role: str | None = None,
        permissions: tuple[str, ...] = (),
        features: str | None = None,
        org_permissions_v2: str | None = None,
        fpm: str | None = None,
        plan: str | None = None,
        azp: str | None = "http://localhost:3000",
        lifetime: int = 60,
        **extra: Any,
    ) -> dict[str, Any]:
        """Clerk v1 or v2 session-token claims with times relative to now."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + lifetime,
        }
        if sid is not None:
            claims["sid"] = sid
        if azp is not None:
            claims["azp"] = azp
        if version == 2:
            claims.update(v=2, jti=uuid.uuid4().hex[:20], fva=[0, -1], sts="active")
            if plan:
                claims["pla"] = plan
            if features is not None:
                claims["fea"] = features
            if org_id:
                org: dict[str, Any] = {"id": org_id}
                if org_slug:
                    org["slg"] = org_slug
                if role:
                    org["rol"] = role.removeprefix("org:")
                if org_permissions_v2 is not None:
                    org["per"] = org_permissions_v2
                if fpm is not None:
                    org["fpm"] = fpm
                claims["o"] = org
        elif org_id:
            claims.update(org_id=org_id, org_slug=org_slug or org_id,
                          org_role=role or "org:member", org_permissions=list(permissions))
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], *, key: SigningKey | None = None,
             headers: dict[str, Any] | None = None, algorithm: str = "RS256") -> str:
        """Sign claims with a key of this issuer (the current one by default)."""
        signer = key or self.key
        return jwt.encode(claims, signer.private, algorithm=algorithm,
                          headers={"kid": signer.kid, **(headers or {})})

    def token(self, **kwargs: Any) -> str:
        """Mint a signed session token (see `claims` for the options)."""
        return self.sign(self.claims(**kwargs))

    @property
    def workos_issuer(self) -> str:
        """The `iss` of WorkOS-shaped tokens (api_url + /user_management/<client_id>)."""
        return f"{self.issuer}/user_management/{self.workos_client_id}"

    def workos_claims(
        self,
        *,
        sub: str = "user_01DEMO",
        sid: str | None = "session_01DEMO",
        org_id: str | None = None,
        role: str | None = None,
        roles: list[str] | None = None,
        permissions: list[str] | None = None,
        entitlements: list[str] | None = None,
        feature_flags: list[str] | None = None,
        act: dict[str, str] | None = None,
        lifetime: int = 300,
        **extra: Any,
    ) -> dict[str, Any]:
        """WorkOS AuthKit access-token claims with times relative to now."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.workos_issuer, "sub": sub, "sid": sid, "jti": uuid.uuid4().hex[:26],
            "org_id": org_id, "role": role, "roles": roles, "permissions": permissions,
            "entitlements": entitlements, "feature_flags": feature_flags, "act": act,
            "iat": now, "exp": now + lifetime,
        }
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def workos_token(self, **kwargs: Any) -> str:
        """Mint a signed WorkOS-shaped access token (see `workos_claims`)."""
        return self.sign(self.workos_claims(**kwargs))

    @staticmethod
    def workos_delivery(
        secret: str,
        event: str,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        timestamp_ms: int | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A WorkOS webhook body and its `WorkOS-Signature` header, signed as WorkOS signs."""
        body = json.dumps({
            "id": event_id or f"event_{uuid.uuid4().hex[:26].upper()}", "event": event,
            "data": data, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "object": "event"}).encode()
        stamp = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
        mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        return body, {"WorkOS-Signature": f"t={stamp}, v1={mac}",
                      "Content-Type": "application/json"}

    def app(self) -> web.Application:
        """The issuer's HTTP application."""
        app = web.Application()
        app.router.add_get("/sso/jwks/{client_id}", self._workos_jwks)
        app.router.add_get("/_demo/workos-token", self._demo_workos_token)
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/v1/jwks", self._backend_jwks)
        app.router.add_get("/v1/sessions/{sid}", self._session)
        app.router.add_get("/_demo/token", self._demo_token)
        self._add_machine_routes(app)
        return app

    async def _fail_or_wait(self) -> web.Response | None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_status is not None:
            return web.json_response({"error": "injected failure"}, status=self.fail_status)
        return None

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        failure = await self._fail_or_wait()
        if failure is not None:
            return failure
        return web.json_response(
            {"keys": [k.jwk() for k in self.keys]},
            headers={"Cache-Control": self.cache_control},
        )

    async def _workos_jwks(self, request: web.Request) -> web.Response:
        self.hits["workos_jwks"] += 1
        if request.match_info["client_id"] != self.workos_client_id:
            return web.json_response({"message": "Not Found"}, status=404)
        return await self._jwks(request)

    async def _demo_workos_token(self, request: web.Request) -> web.Response:
        query = request.query
        token = self.workos_token(
            sub=query.get("sub", "user_01DEMO"), org_id=query.get("org", "org_01DEMO"),
            role=query.get("role", "admin"),
            permissions=[p for p in query.get("permissions", "widgets:read").split(",") if p],
            entitlements=[e for e in query.get("entitlements", "audit-logs").split(",") if e],
            lifetime=min(int(query.get("lifetime", "3600") or 3600), 86400),
        )
        return web.Response(text=token + "\n")

    async def _discovery(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        failure = await self._fail_or_wait()
        if failure is not None:
            return failure
        return web.json_response({
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": ["RS256"],
        })

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {self.secret_key}".encode())

    async def _backend_jwks(self, request: web.Request) -> web.Response:
        self.hits["backend_jwks"] += 1
        if not self._authorized(request):
            return web.json_response({"errors": [{"code": "unauthorized"}]}, status=401)
        return await self._jwks(request)

    async def _session(self, request: web.Request) -> web.Response:
        self.hits["session"] += 1
        if not self._authorized(request):
            return web.json_response({"errors": [{"code": "unauthorized"}]}, status=401)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.session_fail_status is not None:
            headers = {"Retry-After": str(self.retry_after)} if self.retry_after else {}
            return web.json_response({"errors": [{"code": "injected"}]},
                                     status=self.session_fail_status, headers=headers)
        sid = request.match_info["sid"]
        status = self.sessions.get(sid)
        if status is None:
            return web.json_response({"errors": [{"code": "resource_not_found"}]}, status=404)
        return web.json_response({"object": "session", "id": sid, "status": status})

    async def _demo_token(self, request: web.Request) -> web.Response:
        query = request.query
        token = self.token(
            sub=query.get("sub", "user_2demo"),
            org_id=query.get("org", "org_2demo"),
            org_slug=query.get("slug", "demo-org"),
            role=query.get("role", "admin"),
            plan=query.get("plan", "o:pro"),
            features=query.get("features", "o:dashboard,o:teams"),
            org_permissions_v2=query.get("per", "manage,read"),
            fpm=query.get("fpm", "3,2"),
            lifetime=min(int(query.get("lifetime", "3600") or 3600), 86400),
        )
        return web.Response(text=token + "\n")

    # -- machine credentials (Clerk's machine authentication) ------------------------------

    def machine_token(self, prefix: str, subject: str, *, scopes: tuple[str, ...] = (),
                      claims: dict[str, Any] | None = None, lifetime: float | None = None,
                      ) -> str:
        """Issue an opaque credential (`ak_`, `mt_` or `oat_`) the verify endpoints know."""
        token = prefix + uuid.uuid4().hex + uuid.uuid4().hex  # 244 random bits
        expiration = None if lifetime is None else int((time.time() + lifetime) * 1000)
        self.machine_tokens[token] = {
            "id": f"{prefix}id_{uuid.uuid4().hex[:16]}", "subject": subject,
            "scopes": list(scopes), "claims": claims, "revoked": False,
            "revocation_reason": None, "expired": False, "expiration": expiration,
        }
        return token

    def api_key(self, subject: str = "user_2demo", **kwargs: Any) -> str:
        """Issue an API key (`ak_...`) owned by a user or an organization."""
        return self.machine_token("ak_", subject, **kwargs)

    def m2m_token(self, subject: str = "mch_2demo", **kwargs: Any) -> str:
        """Issue an opaque machine-to-machine token (`mt_...`)."""
        return self.machine_token("mt_", subject, **kwargs)

    def oauth_token(self, subject: str = "user_2demo", **kwargs: Any) -> str:
        """Issue an opaque OAuth access token (`oat_...`)."""
        return self.machine_token("oat_", subject, **kwargs)

    def revoke_machine_token(self, token: str) -> None:
        """Revoke an opaque credential (its verify answer says `revoked: true`)."""
        self.machine_tokens[token].update(revoked=True, revocation_reason="revoked in test")

    def _class_token(self, header: dict[str, Any], sub: str, lifetime: int,
                     **extra: Any) -> str:
        """A JWT of a non-session class, with times relative to now (None claims dropped)."""
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "iat": now, "nbf": now - 5,
                  "exp": now + lifetime, "jti": uuid.uuid4().hex[:20], **extra}
        return self.sign({k: v for k, v in claims.items() if v is not None}, headers=header)

    def template_token(self, sub: str = "user_2demo", lifetime: int = 60, **extra: Any) -> str:
        """A JWT-template token (`cat` cl_B7d4PD222AAA) with custom claims."""
        return self._class_token({"cat": "cl_B7d4PD222AAA"}, sub, lifetime, **extra)

    def m2m_jwt(self, sub: str = "mch_2demo", scopes: str = "", lifetime: int = 300,
                **extra: Any) -> str:
        """An M2M JWT (`cat` cl_B7d4PD333AAA, `sub` mch_...) with space-separated scopes."""
        return self._class_token({"cat": "cl_B7d4PD333AAA"}, sub, lifetime,
                                 scopes=scopes or None, **extra)

    def oauth_jwt(self, sub: str = "user_2demo", scope: str = "", lifetime: int = 300,
                  **extra: Any) -> str:
        """An OAuth JWT access token (RFC 9068: `typ` at+jwt)."""
        return self._class_token({"typ": "at+jwt"}, sub, lifetime, scope=scope or None,
                                 client_id="oauth_app_demo", **extra)

    def _machine_authorized(self, request: web.Request, machine: bool) -> bool:
        given = request.headers.get("Authorization", "").encode()
        keys = [self.secret_key, *([self.machine_secret_key] if machine else [])]
        return any(hmac.compare_digest(given, f"Bearer {k}".encode()) for k in keys)

    async def _verify_machine(self, request: web.Request, prefix: str, field: str,
                              hit: str) -> web.Response:
        self.hits[hit] += 1
        if not self._machine_authorized(request, prefix == "mt_"):
            return web.json_response({"errors": [{"code": "unauthorized"}]}, status=401)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.machine_fail_status is not None:
            headers = {"Retry-After": str(self.retry_after)} if self.retry_after else {}
            return web.json_response({"errors": [{"code": "injected"}]},
                                     status=self.machine_fail_status, headers=headers)
        if self.machine_body is not None:
            return web.Response(body=self.machine_body, content_type="application/json")
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"errors": [{"code": "form_param_missing"}]}, status=400)
        token = body.get(field) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.startswith(prefix):
            return web.json_response({"errors": [{"code": "resource_not_found"}]}, status=404)
        record = self.machine_tokens.get(token)
        if record is None:
            return web.json_response({"errors": [{"code": "resource_not_found"}]}, status=404)
        answer = dict(record)
        if answer["expiration"] is not None and answer["expiration"] <= time.time() * 1000:
            answer["expired"] = True
        return web.json_response(answer)

    async def _verify_api_key(self, request: web.Request) -> web.Response:
        return await self._verify_machine(request, "ak_", "secret", "api_keys_verify")

    async def _verify_m2m(self, request: web.Request) -> web.Response:
        return await self._verify_machine(request, "mt_", "secret", "m2m_tokens_verify")

    async def _verify_oauth(self, request: web.Request) -> web.Response:
        return await self._verify_machine(request, "oat_", "access_token",
                                          "oauth_tokens_verify")

    def _add_machine_routes(self, app: web.Application) -> None:
        """Clerk's verify endpoints for opaque machine credentials, and the demo's minting."""
        app.router.add_post("/v1/api_keys/verify", self._verify_api_key)
        app.router.add_post("/v1/m2m_tokens/verify", self._verify_m2m)
        app.router.add_post("/v1/oauth_applications/access_tokens/verify", self._verify_oauth)
        app.router.add_get("/_demo/api_key", self._demo_api_key)
        app.router.add_get("/_demo/credential", self._demo_credential)

    async def _demo_api_key(self, request: web.Request) -> web.Response:
        query = request.query
        scopes = tuple(s for s in query.get("scopes", "read").split(",") if s)
        return web.Response(text=self.api_key(query.get("sub", "user_2demo"),
                                              scopes=scopes) + "\n")

    async def _demo_credential(self, request: web.Request) -> web.Response:
        """Any credential type: ?type=api_key|m2m_token|oauth_token|m2m_jwt|oauth_jwt|
        jwt_template, with sub and scopes (comma list)."""
        query = request.query
        kind = query.get("type", "api_key")
        scopes = tuple(s for s in query.get("scopes", "read").split(",") if s)
        machine = {"api_key": ("ak_", "user_2demo"), "m2m_token": ("mt_", "mch_2demo"),
                   "oauth_token": ("oat_", "user_2demo")}
        if kind in machine:
            prefix, subject = machine[kind]
            token = self.machine_token(prefix, query.get("sub", subject), scopes=scopes)
        elif kind == "m2m_jwt":
            token = self.m2m_jwt(query.get("sub", "mch_2demo"), scopes=" ".join(scopes))
        elif kind == "oauth_jwt":
            token = self.oauth_jwt(query.get("sub", "user_2demo"), scope=" ".join(scopes))
        elif kind == "jwt_template":
            token = self.template_token(query.get("sub", "user_2demo"), lifetime=3600)
        else:
            return web.json_response({"error": f"unknown type {kind!r}"}, status=400)
        return web.Response(text=token + "\n")
