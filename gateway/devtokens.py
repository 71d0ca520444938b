"""`clerk-gateway dev-issuer` and `clerk-gateway token`: a local issuer whose key lives on disk.

The key (and the issuer URL it signs for) is kept in a state directory, so tokens minted by
`token` keep verifying across restarts of `dev-issuer`, and a test suite or a CI job can point a
gateway at it without a Clerk account. Never use it in production: whoever reads the directory
can mint any identity.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.devissuer import DevIssuer, SigningKey
from gateway.startup import listen_problem

__all__ = [
    "DEFAULT_AZP", "DEFAULT_PORT", "DevState", "StateError", "add_commands", "encode_v2_org",
    "mint", "run_dev_issuer", "state_dir",
]

DEFAULT_PORT = 8790
DEFAULT_AZP = "http://localhost:3000"
_KEY_FILE = "signing-key.pem"
_ISSUER_FILE = "issuer.json"


class StateError(Exception):
    """The state directory or a token option cannot be used (one line, for the user)."""


def state_dir(given: str | None) -> Path:
    """The state directory: --state-dir, else $CLERK_GATEWAY_DEV_DIR, else the XDG state dir."""
    if given:
        return Path(given)
    if os.environ.get("CLERK_GATEWAY_DEV_DIR"):
        return Path(os.environ["CLERK_GATEWAY_DEV_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clerk-gateway" / "dev-issuer"


@dataclass
class DevState:
    """The issuer URL and signing key kept in a state directory."""

    directory: Path
    issuer: str
    key: SigningKey

    @classmethod
    def open(cls, directory: Path, issuer: str | None = None) -> DevState:
        """Load the key (made once, kept 0600) and issuer URL; a given issuer is saved."""
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            key_path = directory / _KEY_FILE
            if key_path.exists():
                private = serialization.load_pem_private_key(key_path.read_bytes(), None)
                if not isinstance(private, rsa.RSAPrivateKey):
                    raise StateError(f"{key_path}: not an RSA private key")
            else:
                private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                pem = private.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as sink:
                    sink.write(pem)
            issuer_path = directory / _ISSUER_FILE
            if issuer is not None:
                issuer_path.write_text(json.dumps({"issuer": issuer}) + "\n", encoding="utf-8")
            elif issuer_path.exists():
                issuer = str(json.loads(issuer_path.read_text(encoding="utf-8"))["issuer"])
            else:
                issuer = f"http://127.0.0.1:{DEFAULT_PORT}"
        except (OSError, ValueError, KeyError) as exc:
            raise StateError(f"dev-issuer state {directory}: {exc}") from exc
        return cls(directory, issuer, SigningKey(kid=_kid_of(private), private=private))

    def issuer_server(self) -> DevIssuer:
        """A DevIssuer signing with the kept key."""
        return DevIssuer(self.issuer, key=self.key)


def _kid_of(private: rsa.RSAPrivateKey) -> str:
    """A stable key id derived from the public key (Clerk's are `ins_...`)."""
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return "ins_dev" + hashlib.sha256(der).hexdigest()[:20]


def encode_v2_org(permissions: Sequence[str], features: Sequence[str]) -> dict[str, str]:
    """Clerk v2 `fea`, `o.per` and `o.fpm` for `org:<feature>:<permission>` names."""
    org_features: list[str] = []
    names: list[str] = []
    grants: dict[str, set[str]] = {}
    for permission in permissions:
        parts = permission.split(":")
        if len(parts) != 3 or parts[0] != "org" or not parts[1] or not parts[2]:
            raise StateError(f"--permission {permission!r}: a v2 token needs "
                             "org:<feature>:<permission>")
        feature, name = parts[1], parts[2]
        if feature not in org_features:
            org_features.append(feature)
        if name not in names:
            names.append(name)
        grants.setdefault(feature, set()).add(name)
    others: list[str] = []
    for feature in features:
        scope, _, name = feature.partition(":")
        if not name:
            scope, name = "o", feature
        if "o" in scope and name not in org_features:
            org_features.append(name)
        elif "o" not in scope:
            others.append(f"{scope}:{name}")
    masks = [sum(1 << j for j, n in enumerate(names) if n in grants.get(f, ()))
             for f in org_features]
    return {"fea": ",".join([*(f"o:{f}" for f in org_features), *others]),
            "per": ",".join(names), "fpm": ",".join(str(m) for m in masks)}


def mint(state: DevState, args: argparse.Namespace) -> str:
    """A signed session token for the `token` command's options."""
    issuer = state.issuer_server()
    extra: dict[str, Any] = {}
    if args.token_version == 2:
        extra["sts"] = args.session_status
    org = encode_v2_org(args.permission, args.feature) if args.token_version == 2 else None
    role = args.role
    if args.token_version == 1 and role and not role.startswith("org:"):
        role = f"org:{role}"  # v1 carries the prefixed role
    claims = issuer.claims(
        version=args.token_version, sub=args.user, sid=args.session, org_id=args.org,
        org_slug=args.org_slug, role=role,
        permissions=tuple(args.permission),
        features=org["fea"] if org and org["fea"] else None,
        org_permissions_v2=org["per"] if org and args.org else None,
        fpm=org["fpm"] if org and args.org else None,
        plan=args.plan, azp=args.azp or None, lifetime=args.lifetime, **extra)
    return issuer.sign(claims)


def environment(state: DevState, azp: str) -> str:
    """The environment that points a gateway at this issuer."""
    return "\n".join((
        f"CLERK_ISSUER={state.issuer}",
        f"CLERK_JWKS_URL={state.issuer}/.well-known/jwks.json",
        f"CLERK_AUTHORIZED_PARTIES={azp}",
    ))


async def run_dev_issuer(state: DevState, host: str, port: int, azp: str,
                         ready: asyncio.Event | None = None) -> None:
    """Serve the issuer until cancelled, after printing the gateway's environment."""
    runner = web.AppRunner(state.issuer_server().app(), access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise listen_problem(host, port, "dev issuer", exc) from exc
        print(f"# clerk-gateway dev-issuer: key {state.key.kid} kept in {state.directory}")
        print("# point a gateway at it with (e.g. `export $(clerk-gateway dev-issuer ... | "
              "grep -v '^#')`):")
        print(environment(state, azp))
        print(f"# mint tokens: clerk-gateway token --state-dir {state.directory} --user user_1",
              flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _dev_issuer(args: argparse.Namespace) -> int:
    state = DevState.open(state_dir(args.state_dir), f"http://{args.host}:{args.port}")
    asyncio.run(run_dev_issuer(state, args.host, args.port, args.azp))
    return 0


def _token(args: argparse.Namespace) -> int:
    state = DevState.open(state_dir(args.state_dir))
    print(mint(state, args))
    return 0


def add_commands(commands: Any) -> None:
    """Register `dev-issuer` and `token` on the CLI's sub-command parser."""
    issuer = commands.add_parser(
        "dev-issuer", help="run a local issuer whose key is kept on disk (never in production)")
    issuer.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    issuer.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; part of the issuer URL)")
    issuer.add_argument("--azp", default=DEFAULT_AZP,
                        help=f"authorized party printed for the gateway (default {DEFAULT_AZP})")
    issuer.set_defaults(handler=_dev_issuer)
    token = commands.add_parser("token", help="mint a session token signed by the dev issuer")
    token.add_argument("--token-version", type=int, choices=(1, 2), default=2,
                       help="Clerk session token version (default 2)")
    token.add_argument("--user", default="user_dev", help="sub (default user_dev)")
    token.add_argument("--session", default="sess_dev", help="sid (default sess_dev)")
    token.add_argument("--org", help="active organization id (org_...)")
    token.add_argument("--org-slug", help="organization slug")
    token.add_argument("--role", help="organization role (admin or org:admin)")
    token.add_argument("--permission", action="append", default=[],
                       help="org:<feature>:<permission> (repeatable)")
    token.add_argument("--feature", action="append", default=[],
                       help="feature, scoped o:/u: (default o:); repeatable (v2)")
    token.add_argument("--plan", help="plan, e.g. o:pro or u:free (v2)")
    token.add_argument("--session-status", default="active", choices=("active", "pending"),
                       help="v2 sts (default active)")
    token.add_argument("--lifetime", type=int, default=3600,
                       help="seconds until exp (default 3600; negative: already expired)")
    token.add_argument("--azp", default=DEFAULT_AZP,
                       help=f"authorized party (default {DEFAULT_AZP}; empty: none)")
    token.set_defaults(handler=_token)
    for sub in (issuer, token):
        sub.add_argument("--state-dir", help="where the key is kept (default "
                         "$CLERK_GATEWAY_DEV_DIR, else ~/.local/state/clerk-gateway/dev-issuer)")
