"""Webhooks: signed JSON POSTs of budget and health events to configured receivers.

- :mod:`.dispatch`: where events come from, and the claim that sends each once;
- :mod:`.outbox`: one receiver's bounded queue, retries and delivery outcomes;
- :mod:`.signing`: the ``X-Router-Signature`` scheme (HMAC-SHA256 over time and body).

docs/webhooks.md is the operator's and the receiver's view.
"""

from __future__ import annotations

from .dispatch import Webhooks
from .signing import EVENT_HEADER, ID_HEADER, SIGNATURE_HEADER, signature

__all__ = ["EVENT_HEADER", "ID_HEADER", "SIGNATURE_HEADER", "Webhooks", "signature"]
