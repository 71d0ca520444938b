"""Helpers for the revocation tests: Clerk-style signed webhook deliveries, metric reads."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.conftest import Running

__all__ = ["ADMIN_TOKEN", "WEBHOOK_SECRET", "admin_headers", "delivery", "metric", "reason_of"]

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"clerk-gateway-test-secret-32byte").decode()
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    """The admin API's Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def delivery(
    event_type: str,
    data: dict[str, Any],
    *,
    secret: str = WEBHOOK_SECRET,
    msg_id: str | None = None,
    timestamp: float | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A Clerk webhook body and its svix-* headers, signed by standardwebhooks' own signer."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time() if timestamp is None else timestamp)
    payload = json.dumps({"type": event_type, "object": "event", "data": data,
                          "timestamp": ts * 1000, "instance_id": "ins_test"})
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), payload)
    headers = {"svix-id": msg_id, "svix-timestamp": str(ts), "svix-signature": signature,
               "Content-Type": "application/json"}
    return payload.encode(), headers


def metric(gw: Running, name: str, **labels: str) -> float:
    """The current value of one sample of the gateway's registry (0 when absent)."""
    value = gw.gateway.registry.get_sample_value(f"clerk_gateway_{name}", labels)
    return value or 0.0


async def reason_of(response: Any) -> str:
    """The `reason` of a JSON error response."""
    body = await response.json()
    return str(body["reason"])
