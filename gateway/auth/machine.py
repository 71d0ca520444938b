"""Verify opaque machine credentials (`ak_`, `mt_`, `oat_`) at Clerk's Backend API, cheaply.

- a verdict is kept under the token's digest: a valid one until the token's expiration or
  `cache_ttl_seconds`, whichever is first; an invalid one for `negative_ttl_seconds`; a
  revoked or expired one for `cache_ttl_seconds` (those do not come back);
- concurrent requests with one token share one call (single flight);
- a token with no valid verdict costs its client address one look-up (shared by the
  requests joining its single flight) from a token bucket
  (`client_lookups_per_second`, `client_lookup_burst`), and the instance one from another
  (`lookups_per_second`, `lookup_burst`: a flood from many addresses stays bounded too); an
  empty bucket answers 429;
- a 429 from the API stops every call until its `Retry-After`; a failed call stops calls
  for a second;
- while the API cannot answer, a valid verdict serves `grace_seconds` past its freshness,
  then `failure_mode` decides: `fail_closed` (503) or `fail_open` (the last valid verdict
  keeps serving until the token's own expiration, counted in `fail_open_total`). A token
  never verified is never let in, and a refused one stays refused.

With a shared store (``share``, gateway/state/verdict_share.py) verdicts, the single flight
and the back-off hold for every worker together: a worker without a fresh verdict reads the
shared one and the shared back-off, and only the worker that claims the token's lease calls
Clerk; the others wait for its verdict. The look-up budgets (``budgets``,
gateway/state/budget_share.py) hold for every worker too; while the store cannot answer, each
worker spends its own buckets instead (counted in ``state_fallbacks{component=
"lookup_budgets"}``): never unlimited.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.budget import LookupBudgets, lookup_rates
from gateway.auth.claims import ClaimError, Identity
from gateway.auth.classify import TokenType
from gateway.auth.machine_api import MachineApi
from gateway.auth.machine_identity import identity_from_api
from gateway.auth.rejection import TokenRejected
from gateway.auth.verdicts import Verdict, VerdictStore
from gateway.config_machine import MachineTokenSettings
from gateway.metrics import Metrics
from gateway.reasons import Reason
from gateway.state.budget_share import SharedBudgets
from gateway.state.store import StoreUnavailable
from gateway.state.verdict_share import SharedVerdicts

__all__ = ["LOOKUP_RESULTS", "Client", "MachineVerifier", "Verification"]

Client = Callable[[], str | None] | None
"""How to learn the requesting client's address (None: unknown)."""

LOOKUP_RESULTS = ("valid", "invalid", "revoked", "expired", "rate_limited", "failed",
                  "throttled")
_FAILURE_BACKOFF = 1.0
_YEAR = 365 * 86400.0
_WAIT_SECONDS = 0.05  # how often a worker waiting on another's call looks for its verdict


@dataclass(frozen=True, slots=True)
class Verification:
    """A verified machine identity, and until when it may be reused without asking."""

    identity: Identity
    reusable_until: float | None  # None: served from grace or fail-open, do not keep


class MachineVerifier:
    """Cached, single-flight, budgeted verification of opaque machine credentials."""

    def __init__(
        self,
        settings: MachineTokenSettings,
        api: MachineApi,
        store: VerdictStore,
        metrics: Metrics,
        issuer: str,
        clock: Callable[[], float],
        leeway: float = 5.0,
        share: SharedVerdicts | None = None,
        budgets: SharedBudgets | None = None,
    ) -> None:
        self._settings = settings
        self._share = share
        self._lease_seconds = settings.timeout_seconds + 1.0
        self._api = api
        self._store = store
        self._issuer = issuer
        self._clock = clock
        self._leeway = leeway
        self._budgets = LookupBudgets(*lookup_rates(settings))
        self._shared_budgets = budgets
        self._inflight: dict[bytes, asyncio.Task[Verdict | None]] = {}
        self._fail_open = settings.failure_mode == "fail_open"
        self.blocked_until = 0.0
        self._metrics = metrics
        self._fail_open_counter = metrics.fail_open.labels("machine_tokens")
        self._budget_fallbacks = metrics.state_fallbacks.labels("lookup_budgets")

    def _count(self, token_type: TokenType, result: str) -> None:
        self._metrics.machine_token_lookups.labels(token_type.value, result).inc()

    async def verify(self, token: str, key: bytes, token_type: TokenType,
                     client: Client) -> Verification:
        """The identity behind an opaque token; raises TokenRejected. `client` gives the
        address whose budget a look-up spends (asked only when one is paid for)."""
        if not self._api.can_verify(token_type):
            raise TokenRejected(Reason.WRONG_TOKEN_TYPE,
                                 f"no Backend API key to verify {token_type.value}")
        now = self._clock()
        verdict = await self._store.get(key)
        if verdict is not None and now < verdict.fresh_until:
            return self._use(verdict, now, verdict.fresh_until)
        task = self._inflight.get(key)
        if task is None:
            if now < self.blocked_until:
                return self._fallback(verdict, now)
            payer = None
            if verdict is None or not verdict.valid:
                payer = (client() if client is not None else None) or "unknown"
            task = asyncio.create_task(self._budgeted(key, token_type, token, payer, now))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        fresh = await asyncio.shield(task)  # raises the look-up's TokenRejected (429)
        now = self._clock()
        if fresh is None:
            return self._fallback(verdict, now)
        return self._use(fresh, now, fresh.fresh_until)

    def _settled(self, key: bytes, task: asyncio.Task[Verdict | None]) -> None:
        """A look-up ended: the next request starts another (its refusal is retrieved here,
        so one whose requests all went away is not logged as lost)."""
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()

    async def _budgeted(self, key: bytes, token_type: TokenType, token: str,
                        payer: str | None, now: float) -> Verdict | None:
        """The look-up, once ``payer`` (None: a token with a valid verdict) paid for it; every
        request joining it shares the one budget unit, or the 429."""
        if payer is not None:
            wait = await self._take_budget(payer, now)
            if wait > 0:
                self._count(token_type, "throttled")
                raise TokenRejected(Reason.TOKEN_LOOKUPS_EXHAUSTED,
                                     retry_after=max(1, math.ceil(wait)))
        return await self._lookup(key, token_type, token)

    async def _take_budget(self, client: str, now: float) -> float:
        """Spend one look-up from the shared budgets, or this worker's while the store cannot
        answer: 0.0 when allowed, else the seconds until one is available."""
        if self._shared_budgets is not None:
            try:
                return await self._shared_budgets.take(client)
            except StoreUnavailable:
                self._budget_fallbacks.inc()
        return self._budgets.take(client, now)

    def _use(self, verdict: Verdict, now: float, reusable_until: float | None) -> Verification:
        identity = verdict.identity
        if identity is None:
            raise TokenRejected(verdict.reason or Reason.INVALID_CREDENTIAL)
        if now > identity.expires_at + self._leeway:
            raise TokenRejected(Reason.EXPIRED)
        return Verification(identity, reusable_until)

    def _fallback(self, verdict: Verdict | None, now: float) -> Verification:
        """No fresh answer: grace, then the failure mode; refusals stay refusals."""
        if verdict is not None and not verdict.valid:
            return self._use(verdict, now, None)
        if verdict is not None and now <= verdict.fresh_until + self._settings.grace_seconds:
            return self._use(verdict, now, None)
        if verdict is not None and self._fail_open:
            self._fail_open_counter.inc()
            return self._use(verdict, now, None)
        retry = max(1, math.ceil(self.blocked_until - now))
        raise TokenRejected(Reason.TOKEN_VERIFICATION_UNAVAILABLE, retry_after=retry)

    async def _lookup(self, key: bytes, token_type: TokenType, token: str) -> Verdict | None:
        """A fresh verdict: from the shared store, or from Clerk when this worker wins the
        token's lease (or the store cannot answer); None while backing off or when the
        calling worker's verdict does not come in time."""
        share = self._share
        if share is None:
            return await self._ask(key, token_type, token)
        deadline = self._clock() + self._lease_seconds
        while True:
            try:
                view = await share.view(key)
                now = self._clock()
                if view.verdict is not None and now < view.verdict.fresh_until:
                    return view.verdict
                if view.blocked_until > now:
                    self.blocked_until = max(self.blocked_until, view.blocked_until)
                    return None
                if not view.leased and await share.claim(key, self._lease_seconds):
                    break
            except StoreUnavailable:
                return await self._ask(key, token_type, token)
            if now >= deadline:
                return None
            await asyncio.sleep(_WAIT_SECONDS)
        try:
            blocked = self.blocked_until
            verdict = await self._ask(key, token_type, token)
            if self.blocked_until > blocked:
                with contextlib.suppress(StoreUnavailable):
                    await share.block(self.blocked_until)
        finally:
            await share.release(key)
        return verdict

    async def _ask(self, key: bytes, token_type: TokenType, token: str) -> Verdict | None:
        """Ask the API once and remember its verdict; None when it gave no usable answer."""
        answer = await self._api.verify(token_type, token)
        now = self._clock()
        settings = self._settings
        if answer.kind == "rate_limited":
            self.blocked_until = max(self.blocked_until, now + answer.retry_after)
            self._count(token_type, "rate_limited")
            return None
        if answer.kind == "invalid":
            self._count(token_type, "invalid")
            verdict = Verdict(None, Reason.INVALID_CREDENTIAL, now,
                              now + settings.negative_ttl_seconds)
        elif answer.kind == "valid" and answer.body is not None:
            body = answer.body
            try:
                identity = identity_from_api(body, token_type.value, self._issuer, now + _YEAR)
            except ClaimError:
                identity = None
            if identity is None:
                self._count(token_type, "failed")
                self.blocked_until = max(self.blocked_until, now + _FAILURE_BACKOFF)
                return None
            if body.get("revoked") is True:
                self._count(token_type, "revoked")
                verdict = Verdict(None, Reason.REVOKED, now, now + settings.cache_ttl_seconds)
            elif body.get("expired") is True or identity.expires_at <= now:
                self._count(token_type, "expired")
                verdict = Verdict(None, Reason.EXPIRED, now, now + settings.cache_ttl_seconds)
            else:
                self._count(token_type, "valid")
                fresh_until = min(now + settings.cache_ttl_seconds, identity.expires_at)
                verdict = Verdict(identity, None, now, fresh_until)
        else:
            self._count(token_type, "failed")
            self.blocked_until = max(self.blocked_until, now + _FAILURE_BACKOFF)
            return None
        await self._store.put(key, verdict)
        return verdict
