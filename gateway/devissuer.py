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
