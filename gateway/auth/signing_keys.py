"""The gateway's own signing key: from a PEM file, or generated once in the state directory.

Every worker and every restart signs with the same key: a generated key is written to a
temporary file and linked into place, so when several workers start at once exactly one
key wins and the others read it. Public keys are published from
``<state_dir>/signing/published/<kid>.json``; a key that stops being the current one keeps
being published until ``retire_at`` (at least one assertion lifetime later), so assertions
it signed still verify while they live.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

__all__ = [
    "SigningKey",
    "SigningKeyError",
    "generated_key_path",
    "jwk_thumbprint",
    "load_signing_key",
    "planned_key_source",
    "publish_key",
    "published_keys",
]

_ALGORITHMS = get_default_algorithms()
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"),
                       "RSA": ("e", "kty", "n")}
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class SigningKeyError(Exception):
    """The signing key cannot be read, does not fit the algorithm, or cannot be kept."""


@dataclass(frozen=True)
class SigningKey:
    """A private key, its algorithm, its RFC 7638 key id and its public JWK."""

    private_key: PrivateKey
    algorithm: str
    kid: str
    public_jwk: dict[str, Any]
    source: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode("utf-8")).digest())


def _fits(algorithm: str, key: Any) -> bool:
    if algorithm == "ES256":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PrivateKey)
    return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048


def _generate(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_jwk(key: PrivateKey, algorithm: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(_ALGORITHMS[algorithm].to_jwk(key.public_key()))
    jwk = {k: v for k, v in jwk.items() if k not in {"key_ops", "alg", "use", "kid"}}
    kid = jwk_thumbprint(jwk)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


def _from_pem(data: bytes, algorithm: str, source: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{source}: not an unencrypted PEM private key") from exc
    if not _fits(algorithm, key):
        raise SigningKeyError(
            f"{source}: the key does not fit {algorithm} (ES256: P-256 EC key, EdDSA: Ed25519, "
            "RS256: RSA of 2048 bits or more)")
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
                      | rsa.RSAPrivateKey)
    jwk = _public_jwk(key, algorithm)
    return SigningKey(key, algorithm, jwk["kid"], jwk, source)


def generated_key_path(state_dir: str, algorithm: str) -> Path:
    """Where the generated key for an algorithm is kept."""
    return Path(state_dir) / "signing" / f"{algorithm.lower()}.pem"


def planned_key_source(key_file: str | None, state_dir: str, algorithm: str) -> str:
    """A description of where the key comes from, without reading or creating it."""
    if key_file:
        return f"file {key_file}"
    return f"generated once and kept in {generated_key_path(state_dir, algorithm)}"


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"signing key file {path}: cannot be read ({exc.strerror})") from exc


def _keep_generated(path: Path, algorithm: str) -> bytes:
    """The PEM at `path`, generating it first when absent (the first writer wins)."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = _generate(algorithm).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)  # atomic: a worker that lost the race reads the winner's key
    finally:
        os.unlink(temp)
    return path.read_bytes()


def load_signing_key(key_file: str | None, state_dir: str, algorithm: str) -> SigningKey:
    """The configured key file's key, or the state directory's generated key."""
    if key_file:
        return _from_pem(_read_file(key_file), algorithm, f"file {key_file}")
    path = generated_key_path(state_dir, algorithm)
    try:
        pem = _keep_generated(path, algorithm)
    except OSError as exc:
        raise SigningKeyError(
            f"state directory {state_dir}: cannot keep the signing key ({exc.strerror})") from exc
    return _from_pem(pem, algorithm, str(path))


def _published_dir(state_dir: str) -> Path:
    return Path(state_dir) / "signing" / "published"


def _write_json(path: Path, value: dict[str, Any]) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".pub-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(value, handle)
    os.replace(temp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("jwk"), dict) else None


def publish_key(state_dir: str, key: SigningKey, keep_seconds: float,
                clock: Callable[[], float]) -> None:
    """Publish the current key; retire the others `keep_seconds` from now (once)."""
    folder = _published_dir(state_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = clock()
        for path in folder.glob("*.json"):
            entry = _read_json(path)
            if entry is None or path.stem == key.kid:
                continue
            retire_at = entry.get("retire_at")
            if retire_at is None:
                _write_json(path, {**entry, "retire_at": now + keep_seconds})
            elif isinstance(retire_at, int | float) and retire_at <= now:
                path.unlink(missing_ok=True)
        _write_json(folder / f"{key.kid}.json", {"jwk": key.public_jwk, "retire_at": None})
    except OSError as exc:
        raise SigningKeyError(
            f"state directory {state_dir}: cannot publish the signing key ({exc.strerror})"
        ) from exc


def published_keys(state_dir: str, current: SigningKey, clock: Callable[[], float]
                   ) -> list[dict[str, Any]]:
    """The current public key first, then every other key not yet retired."""
    keys = [current.public_jwk]
    now = clock()
    folder = _published_dir(state_dir)
    with contextlib.suppress(OSError):
        for path in sorted(folder.glob("*.json")):
            entry = _read_json(path)
            if entry is None or path.stem == current.kid:
                continue
            retire_at = entry.get("retire_at")
            if retire_at is None or (isinstance(retire_at, int | float) and retire_at > now):
                keys.append(entry["jwk"])
    return keys
