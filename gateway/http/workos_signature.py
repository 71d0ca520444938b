"""The `WorkOS-Signature` header: `t=<unix ms>, v1=<hex HMAC-SHA256 of "<t>.<raw body>">`.

WorkOS's SDKs (workos-python `webhooks/_verification.py`, workos-node `webhooks.ts`) split
the header on ", ", key the HMAC with the endpoint secret's UTF-8 bytes, and accept a
delivery up to 180 seconds old. The parser here is stricter and bounded: at most 4096
characters, `t` exactly once and all digits, one or more 64-digit hex `v1` values; other keys
are ignored (room for a future scheme), anything malformed raises BadSignatureHeader.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

__all__ = [
    "MAX_HEADER_CHARS",
    "TOLERANCE_SECONDS",
    "BadSignatureHeader",
    "SignatureHeader",
    "parse_signature_header",
    "signature_matches",
]

TOLERANCE_SECONDS = 180
MAX_HEADER_CHARS = 4096
_HEX = frozenset("0123456789abcdef")


class BadSignatureHeader(ValueError):
    """The WorkOS-Signature header is missing a part or malformed."""


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """The parsed header: the timestamp text as sent (it is signed verbatim) and the MACs."""

    timestamp: str
    signatures: tuple[str, ...]

    @property
    def seconds(self) -> float:
        """The timestamp in unix seconds."""
        return int(self.timestamp) / 1000


def parse_signature_header(value: str) -> SignatureHeader:
    """Parse `t=<ms>, v1=<hex>[, v1=<hex>...]`; raise BadSignatureHeader when malformed."""
    if len(value) > MAX_HEADER_CHARS:
        raise BadSignatureHeader("the header is too long")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            raise BadSignatureHeader("each part must be key=value")
        if key == "t":
            timestamps.append(item)
        elif key == "v1":
            signatures.append(item.lower())
    if len(timestamps) != 1:
        raise BadSignatureHeader("t= must appear exactly once")
    timestamp = timestamps[0]
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 16:
        raise BadSignatureHeader("t= must be unix milliseconds")
    if not signatures:
        raise BadSignatureHeader("v1= is required")
    for signature in signatures:
        if len(signature) != 64 or not _HEX.issuperset(signature):
            raise BadSignatureHeader("v1= must be 64 hex digits")
    return SignatureHeader(timestamp, tuple(signatures))


def signature_matches(secret: bytes, header: SignatureHeader, body: bytes) -> bool:
    """True when one v1 value is the HMAC of `<t>.<body>` (compared in constant time)."""
    expected = hmac.new(secret, header.timestamp.encode("ascii") + b"." + body,
                        hashlib.sha256).hexdigest()
    found = False
    for signature in header.signatures:
        found |= hmac.compare_digest(signature, expected)
    return found
