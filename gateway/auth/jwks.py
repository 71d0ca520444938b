"""Key sets per issuer: fetched asynchronously, refreshed in the background, single-flight.

An unknown `kid` triggers at most one refetch shared by every concurrent request, then a
cooldown during which further unknown kids are rejected without fetching. A failed fetch
keeps the last good keys.

With a shared store (``share``), the key set and its fetch time are one truth for every
worker: a fetched set is published and adopted by the others from the change feed; a worker
meeting an unknown kid first looks at the shared set, then claims the refetch lease, so the
cooldown holds for all workers together; start-up and background refreshes adopt a set
another worker fetched recently instead of fetching again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.config import IssuerSettings, KeySettings
from gateway.configreader import check_key_url
from gateway.metrics import Metrics
from gateway.state.keysets import KeySetShare, SharedKeySet
from gateway.state.store import StoreUnavailable
from gateway.tasks import stop_task

__all__ = ["IssuerKeys", "KeyEntry", "KeysUnavailable"]

log = logging.getLogger("gateway.keys")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
_MAX_JWKS_BYTES = 1 << 20
_LOOK_SECONDS = 0.1  # at most one read of the shared key set per issuer this often


class KeysUnavailable(Exception):
    """No key has ever been obtained for the issuer; retry after the given seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"keys unavailable, retry after {retry_after}s")
        self.retry_after = retry_after


class FetchError(Exception):
    """A key set could not be fetched or parsed."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One public key and the algorithm its JWK pins, if any."""

    key: Any
    algorithm: str | None = None


def _parse_jwks(document: Any) -> dict[str, KeyEntry]:
    """The usable signing keys of a JWKS document, by kid."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("not a JWKS document")
    keys: dict[str, KeyEntry] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("skipping unusable key", extra={"kid": kid[:64]})
            continue
        if getattr(parsed.key, "private_numbers", None) or isinstance(parsed.key, bytes):
            continue  # never accept symmetric or private key material as a verifier
        alg = jwk.get("alg")
        keys[kid] = KeyEntry(parsed.key, alg if isinstance(alg, str) else None)
    if not keys:
        raise FetchError("JWKS holds no usable signing key")
    return keys


def _max_age(header: str | None, settings: KeySettings) -> float:
    """Refresh interval from Cache-Control max-age, within configured bounds."""
    match = _MAX_AGE.search(header or "")
    seconds = float(match.group(1)) if match else settings.refresh_seconds
    return min(max(seconds, settings.min_refresh_seconds), settings.max_refresh_seconds)


class IssuerKeys:
    """The current keys of one issuer, with background refresh and unknown-kid refetch."""

    def __init__(
        self,
        issuer: IssuerSettings,
        settings: KeySettings,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        share: KeySetShare | None = None,
    ) -> None:
        self.issuer = issuer
        self._share = share
        self._version = float("-inf")  # when the held set was fetched (the share's clock)
        self._look: asyncio.Task[bool] | None = None
        self._next_look = float("-inf")
        self._unfollow: Callable[[], None] | None = None
        self.settings = settings
        self._session = session
        self._metrics = metrics
        self._clock = clock
        self._keys: dict[str, KeyEntry] = {}
        self._static: KeyEntry | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_forced: float | None = None
        self._failures = 0
        self._next_retry_at = 0.0
        self._refresh_in = settings.refresh_seconds
        self._jwks_uri: str | None = None
        self._task: asyncio.Task[None] | None = None
        for result in ("success", "error"):
            metrics.key_fetches.labels(issuer.name, result)  # series exist from 0 for alerts
        if issuer.jwt_key:
            self._static = KeyEntry(load_pem_public_key(issuer.jwt_key.encode()))
            self._metrics.keys.labels(issuer.name).set(1)

    @property
    def ready(self) -> bool:
        """True once a key is held for this issuer."""
        return self._static is not None or bool(self._keys)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys held now (none for a pinned PEM key)."""
        return tuple(self._keys)

    @property
    def source(self) -> str:
        """Where the keys come from: the URL fetched, or the pinned key."""
        if self._static is not None:
            return "a pinned PEM key (CLERK_JWT_KEY / jwt_key)"
        if self.issuer.key_source == "backend_api":
            return f"{self.issuer.backend_api_url}/v1/jwks"
        if self.issuer.key_source == "discovery":
            return self._jwks_uri or (
                self.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration")
        return self._jwks_url()

    def _jwks_url(self) -> str:
        return self.issuer.jwks_url or self.issuer.issuer.rstrip("/") + "/.well-known/jwks.json"

    @property
    def needs_kid(self) -> bool:
        """True when tokens must name their key (every source but a pinned PEM key)."""
        return self._static is None

    def get(self, kid: str | None) -> KeyEntry | None:
        """The key for a kid from what is held now, without fetching."""
        if self._static is not None:
            return self._static
        return self._keys.get(kid) if kid is not None else None

    async def lookup_unknown(self, kid: str) -> KeyEntry | None:
        """Refetch once (shared, rate-limited by the cooldown) for a kid not held now."""
        if self._static is not None:
            return self._static
        if self._share is not None and await self._look_shared():
            entry = self._keys.get(kid)
            if entry is not None:
                return entry  # another worker fetched it already
        if self._inflight is None:
            now = self._clock()
            cooling = (
                self._last_forced is not None
                and now - self._last_forced < self.settings.unknown_kid_cooldown_seconds
            )
            if cooling:
                self._raise_if_empty()
                return None
            self._last_forced = now
            self._start_refresh(self._refetch)
        assert self._inflight is not None
        await asyncio.shield(self._inflight)
        entry = self._keys.get(kid)
        if entry is None:
            self._raise_if_empty()
        return entry

    def _raise_if_empty(self) -> None:
        if not self._keys:
            wait = max(1, int(self._next_retry_at - self._clock() + 0.999))
            raise KeysUnavailable(wait)

    def _start_refresh(
        self, job: Callable[[], Coroutine[Any, Any, bool]] | None = None
    ) -> asyncio.Task[bool]:
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task((job or self._refresh)())
            self._inflight.add_done_callback(self._clear_inflight)
        return self._inflight

    def _clear_inflight(self, _task: asyncio.Task[bool]) -> None:
        self._inflight = None

    async def refresh(self, *, fetch: bool = False) -> bool:
        """Refresh the key set now (joining a refresh already under way); True on success.
        ``fetch`` asks the issuer even when another worker shared a recent set."""
        if self._static is not None:
            return True
        return await asyncio.shield(self._start_refresh(self._fetch_and_share if fetch else None))

    async def _look_shared(self) -> bool:
        """Adopt the shared key set when another worker published a newer one (one read at
        a time, at most every _LOOK_SECONDS); True when it did."""
        if self._look is None:
            now = self._clock()
            if now < self._next_look:
                return False
            self._next_look = now + _LOOK_SECONDS
            self._look = asyncio.get_running_loop().create_task(self._load_shared(0.0))
            self._look.add_done_callback(self._clear_look)
        return await asyncio.shield(self._look)

    def _clear_look(self, _task: asyncio.Task[bool]) -> None:
        self._look = None

    async def _load_shared(self, recent: float) -> bool:
        """Adopt the shared set if newer than ours (and, when ``recent`` > 0, fetched less
        than ``recent`` of its max-age ago)."""
        assert self._share is not None
        try:
            shared = await self._share.load()
        except StoreUnavailable:
            return False
        if shared is None or shared.fetched_at <= self._version:
            return False
        if recent and self._share.clock() - shared.fetched_at >= shared.max_age * recent:
            return False
        return self._adopt(shared)

    def _adopt(self, shared: SharedKeySet) -> bool:
        """Hold a key set another worker fetched; False when it is not usable."""
        if shared.fetched_at <= self._version:
            return False
        try:
            keys = _parse_jwks(shared.document)
        except FetchError:
            return False
        assert self._share is not None
        age = max(0.0, self._share.clock() - shared.fetched_at)
        self._keys, self._version, self._failures = keys, shared.fetched_at, 0
        self._refresh_in = max(self.settings.min_refresh_seconds, shared.max_age - age)
        self._metrics.keys.labels(self.issuer.name).set(len(keys))
        log.info("keys adopted from the shared store",
                 extra={"issuer": self.issuer.name, "keys": len(keys)})
        return True

    async def _refetch(self) -> bool:
        """The unknown-kid refetch: only by the worker that claims this cooldown's lease."""
        if self._share is not None:
            try:
                if not await self._share.claim_refetch(
                        self.settings.unknown_kid_cooldown_seconds):
                    return False  # another worker fetches (or fetched) within the cooldown
            except StoreUnavailable:
                pass  # no shared lease: this worker's own cooldown still bounds its fetches
        return await self._fetch_and_share()

    async def _refresh(self) -> bool:
        """Start-up and background refresh: adopt a set another worker fetched in the first
        half of its max-age, else fetch."""
        if self._share is not None and await self._load_shared(0.5):
            return True
        return await self._fetch_and_share()

    async def _fetch_and_share(self) -> bool:
        name = self.issuer.name
        try:
            keys, max_age, document = await self._fetch()
        except FetchError as exc:
            self._failures += 1
            backoff = min(
                self.settings.retry_max_seconds,
                self.settings.retry_min_seconds * 2 ** min(self._failures - 1, 16),
            )
            self._next_retry_at = self._clock() + backoff
            self._metrics.key_fetches.labels(name, "error").inc()
            log.warning("key fetch failed", extra={"issuer": name, "error": str(exc),
                                                   "retry_in": round(backoff, 2)})
            return False
        self._keys = keys
        self._failures = 0
        self._refresh_in = max_age
        if self._share is not None:
            fetched_at = self._share.clock()
            self._version = fetched_at
            try:
                await self._share.publish(document, fetched_at, max_age)
            except StoreUnavailable:
                log.warning("could not share fetched keys", extra={"issuer": name})
        self._metrics.key_fetches.labels(name, "success").inc()
        self._metrics.keys.labels(name).set(len(keys))
        self._metrics.key_last_success.labels(name).set(time.time())
        log.info("keys fetched", extra={"issuer": name, "keys": len(keys)})
        return True

    async def _get_json(self, url: str, headers: dict[str, str]) -> tuple[Any, str | None]:
        timeout = aiohttp.ClientTimeout(total=self.settings.fetch_timeout_seconds)
        try:
            async with self._session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise FetchError(f"{url} answered {response.status}")
                body = await response.content.read(_MAX_JWKS_BYTES + 1)
                if len(body) > _MAX_JWKS_BYTES:
                    raise FetchError(f"{url} sent more than {_MAX_JWKS_BYTES} bytes")
                cache_control = response.headers.get("Cache-Control")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise FetchError(f"{url}: {type(exc).__name__}") from exc
        try:
            return json.loads(body), cache_control
        except (ValueError, RecursionError) as exc:
            raise FetchError(f"{url} did not send JSON") from exc

    async def _discover(self) -> str:
        if self._jwks_uri:
            return self._jwks_uri
        url = self.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document, _ = await self._get_json(url, {})
        if not isinstance(document, dict) or document.get("issuer") != self.issuer.issuer:
            raise FetchError(f"{url} names a different issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or check_key_url(jwks_uri):
            raise FetchError(f"{url} has no usable https jwks_uri")
        self._jwks_uri = jwks_uri
        return jwks_uri

    async def _fetch(self) -> tuple[dict[str, KeyEntry], float, Any]:
        source = self.issuer.key_source
        headers: dict[str, str] = {"Accept": "application/json"}
        if source == "backend_api":
            url = f"{self.issuer.backend_api_url}/v1/jwks"
            assert self.issuer.secret_key is not None
            headers["Authorization"] = f"Bearer {self.issuer.secret_key.value}"
        elif source == "discovery":
            url = await self._discover()
        else:
            url = self._jwks_url()
        document, cache_control = await self._get_json(url, headers)
        return _parse_jwks(document), _max_age(cache_control, self.settings), document

    def next_delay(self) -> float:
        """Seconds until the background refresher should run again."""
        if self._failures:
            base = max(0.0, self._next_retry_at - self._clock())
        else:
            base = self._refresh_in * 0.8
        return base * (0.9 + 0.2 * random.random())  # noqa: S311 - jitter, not security

    async def run(self) -> None:
        """Background refresher: fetch again before the keys go stale, or retry with backoff."""
        if self._static is not None:
            return
        while True:
            await asyncio.sleep(self.next_delay())
            await self.refresh()

    def start(self) -> None:
        """Start the background refresher."""
        if self._task is None and self._static is None:
            self._task = asyncio.get_running_loop().create_task(self.run())
            if self._share is not None and self._unfollow is None:
                self._unfollow = self._share.follow(self._adopt)

    async def stop(self) -> None:
        """Stop the background refresher (and following the shared key set)."""
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        await stop_task(self._task)
        self._task = None
