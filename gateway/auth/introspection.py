"""Session introspection: ask Clerk's Backend API whether a session is still active.

A session id not seen for ``introspection_ttl_seconds`` is looked up with
``GET {api}/v1/sessions/{id}``; only status ``active`` passes (404 counts as revoked).
Concurrent requests for one session share one call; a 429 stops all calls until its
``Retry-After``; when the API cannot answer, the last known answer is used for
``introspection_grace_seconds`` past its TTL, then ``introspection_failure_mode`` applies.

With a shared store (``share``) this holds for all workers together: a worker without a
fresh answer first reads the shared one (and the shared 429 back-off), and only the worker
that claims the session's lease calls Clerk; the others wait for its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs

from gateway.config import RevocationSettings, Secret
from gateway.metrics import Metrics
from gateway.numbers import whole_number
from gateway.reasons import Reason
from gateway.redaction import describe_error
from gateway.state.introspection_share import IntrospectionShare, SharedAnswer
from gateway.state.store import StoreUnavailable

__all__ = ["SessionIntrospector"]

log = logging.getLogger("gateway.introspection")

_DEFAULT_RETRY_AFTER = 10.0
_MAX_RETRY_AFTER = 600.0
_WAIT_SECONDS = 0.05  # how often a worker waiting on another's call looks for its answer


@dataclass(frozen=True, slots=True)
class _Answer:
    status: str
    fetched_at: float

    @property
    def active(self) -> bool:
        return self.status == "active"


def retry_after_seconds(value: str | None, now: float) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), bounded."""
    if not value:
        return _DEFAULT_RETRY_AFTER
    value = value.strip()
    seconds = whole_number(value)
    if seconds is not None:
        return min(float(seconds), _MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return _DEFAULT_RETRY_AFTER
    return min(max(0.0, when - now), _MAX_RETRY_AFTER)


class SessionIntrospector:
    """Cached, single-flight, rate-limit-aware session status look-ups."""

    def __init__(
        self,
        settings: RevocationSettings,
        api_url: str,
        secret: Secret,
        session: Callable[[], aiohttp.ClientSession | None],
        metrics: Metrics,
        clock: Callable[[], float],
        share: IntrospectionShare | None = None,
    ) -> None:
        self._share = share
        self._lease_seconds = settings.introspection_timeout_seconds + 1.0
        self._ttl = settings.introspection_ttl_seconds
        self._grace = settings.introspection_grace_seconds
        self._fail_open = settings.introspection_failure_mode == "fail_open"
        self._timeout = aiohttp.ClientTimeout(total=settings.introspection_timeout_seconds)
        self._max_entries = settings.introspection_cache_size
        self._url = api_url.rstrip("/") + "/v1/sessions/"
        self._auth = f"Bearer {secret.value}"
        self._session = session
        self._clock = clock
        self._answers: dict[str, _Answer] = {}
        self._inflight: dict[str, asyncio.Task[bool]] = {}
        self.blocked_until = 0.0
        self._calls = {r: metrics.introspection_calls.labels(r) for r in (
            "active", "inactive", "not_found", "rate_limited", "error")}
        self._fail_open_counter = metrics.fail_open.labels("introspection")

    async def check(self, session_id: str) -> tuple[bool, Reason | None, bool]:
        """(answered from cache, None | REVOKED | REVOCATION_UNAVAILABLE, let through only
        by the fail-open choice)."""
        fresh = self.answer_now(session_id)
        if fresh is not False:
            return True, fresh, False
        if self._clock() >= self.blocked_until:
            task = self._inflight.get(session_id)
            if task is None:
                task = asyncio.create_task(self._fetch(session_id))
                self._inflight[session_id] = task
            if await asyncio.shield(task):
                answer = self._answers[session_id]
                return False, None if answer.active else Reason.REVOKED, False
        return self._fallback(self._answers.get(session_id), self._clock())

    def answer_now(self, session_id: str) -> Reason | Literal[False] | None:
        """A fresh cached answer (None or REVOKED), or False when `check` must ask."""
        answer = self._answers.get(session_id)
        if answer is None or self._clock() - answer.fetched_at >= self._ttl:
            return False
        return None if answer.active else Reason.REVOKED

    def _fallback(self, answer: _Answer | None, now: float
                  ) -> tuple[bool, Reason | None, bool]:
        if answer is not None and now - answer.fetched_at <= self._ttl + self._grace:
            return True, None if answer.active else Reason.REVOKED, False
        if self._fail_open:
            self._fail_open_counter.inc()
            return False, None, True
        return False, Reason.REVOCATION_UNAVAILABLE, False

    async def _fetch(self, session_id: str) -> bool:
        try:
            if self._share is not None:
                answer = await self._ask_shared(self._share, session_id)
            else:
                answer = await self._ask(session_id)
        finally:
            self._inflight.pop(session_id, None)
        if answer is None:
            return False
        self._remember(session_id, answer)
        return True

    def _remember(self, session_id: str, answer: _Answer) -> None:
        held = self._answers.get(session_id)
        if held is not None and held.fetched_at > answer.fetched_at:
            return
        self._answers.pop(session_id, None)
        self._answers[session_id] = answer
        if len(self._answers) > self._max_entries:
            for old in list(self._answers)[: max(1, self._max_entries // 10)]:
                del self._answers[old]

    async def _ask(self, session_id: str) -> _Answer | None:
        status = await self._call(session_id)
        return None if status is None else _Answer(status, self._clock())

    async def _ask_shared(self, share: IntrospectionShare, session_id: str) -> _Answer | None:
        """A fresh answer from the shared store, or from Clerk when this worker wins the
        session's lease; None while rate limited or when the caller's answer does not come.
        Without the store, this worker asks Clerk itself."""
        deadline = self._clock() + self._lease_seconds
        while True:
            try:
                view = await share.view(session_id)
                now = self._clock()
                if view.answer is not None:
                    answer = _Answer(view.answer.status, view.answer.fetched_at)
                    if now - answer.fetched_at < self._ttl:
                        return answer
                    self._remember(session_id, answer)  # older: still good for the grace
                if view.blocked_until > now:
                    self.blocked_until = max(self.blocked_until, view.blocked_until)
                    return None
                if not view.leased and await share.claim(session_id, self._lease_seconds):
                    break
            except StoreUnavailable:
                return await self._ask(session_id)
            if now >= deadline:
                return None
            await asyncio.sleep(_WAIT_SECONDS)
        try:
            called = await self._ask(session_id)
            with contextlib.suppress(StoreUnavailable):
                if called is not None:
                    await share.publish(session_id, SharedAnswer(called.status,
                                                                 called.fetched_at),
                                        self._ttl + self._grace)
                elif self.blocked_until > self._clock():
                    await share.block(self.blocked_until)
        finally:
            await share.release(session_id)
        return called

    async def _call(self, session_id: str) -> str | None:
        """The session's status, "not_found", or None when there is no usable answer."""
        session = self._session()
        if session is None:
            self._calls["error"].inc()
            return None
        url = self._url + quote(session_id, safe="")
        try:
            async with session.get(url, headers={hdrs.AUTHORIZATION: self._auth},
                                   timeout=self._timeout, allow_redirects=False) as response:
                if response.status == 404:
                    self._calls["not_found"].inc()
                    return "not_found"
                if response.status == 429:
                    wait = retry_after_seconds(response.headers.get(hdrs.RETRY_AFTER),
                                               self._clock())
                    self.blocked_until = self._clock() + wait
                    self._calls["rate_limited"].inc()
                    log.warning("session introspection rate limited",
                                extra={"retry_after": wait})
                    return None
                if response.status != 200:
                    self._calls["error"].inc()
                    log.warning("session introspection failed",
                                extra={"status": response.status})
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._calls["error"].inc()
            log.warning("session introspection unreachable",
                        extra={"error": describe_error(exc)})
            return None
        status = body.get("status") if isinstance(body, dict) else None
        if not isinstance(status, str) or not status:
            self._calls["error"].inc()
            return None
        self._calls["active" if status == "active" else "inactive"].inc()
        return status[:32]
