"""The ``webhooks`` block: where budget and health events are POSTed (docs/webhooks.md).

Each receiver has a URL, the events it wants, a signing secret (``secret``, usually
``"${WEBHOOK_SECRET}"``, or ``secret_file``) and the budget shares it is told about.
The URL may carry credentials or a token in its query: :func:`redact_webhook_url` is the
only form of it that is shown anywhere (status, logs); the secret is never shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

from .reader import Reader, at, unknown_choice
from .schema import Spec, internal, setting

__all__ = ["WEBHOOK_EVENTS", "Webhook", "redact_webhook_url"]

WEBHOOK_EVENTS: Final = ("budget_threshold", "key_bad", "circuit_open", "reload_refused",
                         "backend_down")


def redact_webhook_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: user-info and query dropped (either may
    hold a token), so it can be shown in status and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class Webhook:
    """One receiver of event notifications, signed with HMAC-SHA256 (docs/webhooks.md)."""

    _file_only: ClassVar = {"secret": (str, Spec(doc=(
        "The HMAC-SHA256 signing secret, usually \"${WEBHOOK_SECRET}\"; never logged or "
        "shown. Required unless secret_file is given."), non_empty=True))}

    url: str = setting(repr=False, pattern=r"^https?://[^/\s]+", doc=(
        "Where events are POSTed as JSON. Credentials or a query in it are never shown "
        "(status and logs print scheme, host and path only)."),
        pattern_hint="must be an http:// or https:// URL")
    events: tuple[str, ...] = setting(WEBHOOK_EVENTS, non_empty=True, doc=(
        "Events sent to this receiver: budget_threshold, key_bad, circuit_open, "
        "reload_refused, backend_down (default: all)."))
    secret_file: str = setting("", doc=(
        "Instead of secret: a file holding it (a mounted Kubernetes Secret); watched like "
        "a provider key_file."))
    thresholds: tuple[float, ...] = setting((0.8, 1.0), non_empty=True, doc=(
        "budget_threshold fires when a user's or key's spend in its budget period reaches "
        "each of these shares of the budget (0.8 = 80 %), once per crossing."))
    name: str = setting("", doc=(
        "Label in metrics and /admin/status; default: the URL's host."))
    timeout_s: float = setting(5.0, gt=0, doc="One delivery attempt, connect to answer.")
    max_attempts: int = setting(8, ge=1, doc=(
        "Attempts per event before it is given up: 1 s, 2 s, 4 s ... apart (capped at "
        "max_backoff_s)."))
    max_backoff_s: float = setting(60.0, gt=0, doc="The longest wait between two attempts.")
    max_age_s: float = setting(600.0, gt=0, doc=(
        "An event not delivered this many seconds after it happened is given up."))
    max_queue: int = setting(1000, ge=1, doc=(
        "Events waiting for this receiver; past it the oldest is dropped (counted in "
        "llm_router_webhook_deliveries_total{result=\"dropped\"})."))
    secret: str = internal("", repr=False)  # from secret or secret_file

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader,
                path: str) -> bool | None:
        ok = True
        for i, event in enumerate(values.get("events", ())):
            if event not in WEBHOOK_EVENTS:
                r.fail(at(at(path, "events"), i), unknown_choice("event", event,
                                                                 WEBHOOK_EVENTS))
                ok = False
        for i, share in enumerate(values.get("thresholds", ())):
            if not 0 < share <= 10:
                r.fail(at(at(path, "thresholds"), i), "must be a share of the budget above "
                                                      "0 (0.8 = 80 %, at most 10)")
                ok = False
        values["thresholds"] = tuple(sorted(set(values.get("thresholds", (0.8, 1.0)))))
        values["events"] = tuple(dict.fromkeys(values.get("events", WEBHOOK_EVENTS)))
        secret: str | None = file_only.get("secret")
        secret_file = values.get("secret_file", "")
        if secret and secret_file:
            r.fail(path, "give either 'secret' or 'secret_file', not both")
            return False
        if secret_file:
            secret = r.secret_file(at(path, "secret_file"), secret_file)
        elif not secret and f"{path}.secret" not in r.failed:
            r.fail(at(path, "secret"), "required (or secret_file): receivers verify the "
                                       "signature made with it")
        if not secret:
            return False
        values["secret"] = secret
        if not values.get("name") and "url" in values:
            values["name"] = urlsplit(values["url"]).hostname or "webhook"
        return None if ok else False
