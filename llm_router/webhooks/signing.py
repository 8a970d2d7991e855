"""How a webhook delivery is signed: the scheme of Stripe and GitHub, with stdlib HMAC.

The header :data:`SIGNATURE_HEADER` reads ``t=<unix seconds>,v1=<hex>``, where the hex
is HMAC-SHA256 under the receiver's secret of ``"<t>."`` followed by the raw body. The
timestamp is the attempt's, so a receiver can refuse stale replays (docs/webhooks.md
shows a five-line verifier); the body, and so the event id in it, is the same on every
attempt.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = ["EVENT_HEADER", "ID_HEADER", "SIGNATURE_HEADER", "signature"]

SIGNATURE_HEADER: Final = "X-Router-Signature"
EVENT_HEADER: Final = "X-Router-Event"
ID_HEADER: Final = "X-Router-Event-Id"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The :data:`SIGNATURE_HEADER` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"
