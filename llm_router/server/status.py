"""``GET /admin/status``: the whole router at a glance, as one JSON document, and the page
(``GET /ui``) that draws it.

The report is assembled on demand from state that already exists for other reasons
(selection counters, key health, the ledger, the rate-limit gauges, the reloader's last
outcome) plus the :mod:`traffic` rings; it costs the request path nothing but the ring.
It names keys by their label only, never a secret. The README documents every field.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import time
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Final

from .. import __version__
from ..config import Config, Group, Member
from ..gateway.capabilities import member_facts, usable_window
from ..gateway.router_state import RouterState
from ..observe.traffic import RouterActivity, merge_activity
from .fleet_status import FleetTraffic
from .reload import ConfigReloader

__all__ = ["build_status", "status_page"]

_REPORT_VERSION: Final = 1
log = logging.getLogger("llm_router.status")


async def build_status(state: RouterState, reloader: ConfigReloader | None, *,
                       fleet: FleetTraffic | None = None,
                       exclude_inflight: int = 0) -> dict[str, Any]:
    """The status document. ``fleet``: the processes sharing this one's state store, if
    any; ``exclude_inflight``: requests not to count as in flight (the status request)."""
    cfg = state.config
    now = time.time()
    router = _router(state, now, exclude_inflight)
    router["fleet"] = None
    if fleet is not None:
        fleet.inflight = router["inflight"]
        try:
            docs = await fleet.read()
        except Exception as exc:  # the store's own errors; it answers locally when down
            log.warning("status: cannot read the fleet's traffic from the state store: %s", exc)
        else:
            router["fleet"] = {
                "processes": len(docs),
                "inflight": sum(int(d.get("inflight", 0)) for d in docs),
                **_activity(merge_activity([d["traffic"] for d in docs], int(now)))}
    return {
        "object": "router.status",
        "version": _REPORT_VERSION,
        "time": _iso(now),
        "router": router,
        "config": {**_config(state, reloader), "state": state.store.status(detail=True)},
        "providers": _providers(state, cfg),
        "groups": [_group(state, cfg, g) for g in cfg.groups.values()],
        # This process's lookups; entries and bytes only where the cache is in memory.
        "cache": state.cache.status(),
        # Spend and limits through the store: fleet-wide when it is shared.
        "users": _users(await state.store.admin_usage(cfg)),
        # Each receiver's queue and last outcome; its URL without credentials or query.
        "webhooks": state.webhooks.status(),
    }


def _router(state: RouterState, now: float, exclude_inflight: int) -> dict[str, Any]:
    act = state.traffic.router()
    return {
        "version": __version__,
        "started_at": _iso(state.started),
        "uptime_s": round(now - state.started, 1),
        "draining": state.draining,
        "ready": state.ready,
        "inflight": max(0, state.inflight - exclude_inflight),
        # Figures of this process; "fleet" adds up every process sharing the store.
        "scope": "process",
        **_activity(act),
    }


def _activity(act: RouterActivity) -> dict[str, Any]:
    return {
        "window_s": act.window_s,
        "requests": act.requests,
        "errors": act.errors,
        "requests_per_s": round(act.requests_per_s, 3),
        "errors_per_s": round(act.errors / act.window_s, 3) if act.window_s else 0.0,
        "latency_ms": {"p50": _ms(act.p50_s), "p95": _ms(act.p95_s)},
        # One entry per second, oldest first: the traffic chart.
        "per_second": {"requests": [r for r, _ in act.per_second],
                       "errors": [e for _, e in act.per_second]},
    }


def _config(state: RouterState, reloader: ConfigReloader | None) -> dict[str, Any]:
    last = reloader.last if reloader is not None else None
    return {
        "path": state.config_path,
        "loaded_at": _iso(reloader.loaded_at if reloader is not None else state.started),
        "summary": state.config.summary(),
        "watched": reloader is not None,
        "last_reload": None if last is None else {
            "at": _iso(last.at), "result": "accepted" if last.accepted else "refused",
            "reason": last.reason, "errors": list(last.problems)},
    }


def _providers(state: RouterState, cfg: Config) -> list[dict[str, Any]]:
    headroom = _ratelimit_headroom(state)
    tokens: dict[tuple[str, str], dict[str, int]] = {}
    for (provider, key, model), n in sorted(state.counters.tokens.items()):
        tokens.setdefault((provider, key), {})[model] = n
    mono = time.monotonic()
    catalogs = state.catalog.status(cfg)  # discovering providers only (docs/catalog.md)
    out = []
    for p in cfg.providers.values():
        keys = []
        for k in p.keys:
            label = state.health.label(p.name, k.label)
            until = state.health.available_at(p.name, k.label, mono)
            act = state.traffic.key(p.name, k.label)
            keys.append({
                "key": k.label,
                "state": label,  # ok | cooldown | open | half_open | bad
                "seconds_left": (round(until - mono, 1) if math.isfinite(until) and until > mono
                                 else None),
                "reason": _reason(label, act.last_failure),
                "requests_5m": act.attempts,
                "errors_5m": act.failures,
                "last_error": None if act.last_failure is None else {
                    "reason": act.last_failure, "at": _iso(act.last_failure_at or 0.0)},
                "ratelimit_remaining": headroom.get((p.name, k.label), {}),
                "requests_today": state.counters.requests_today(p.name, k.label),
                "daily_request_limit": k.daily_request_limit,
                "models": sorted(k.models) if k.models is not None else None,
                "tokens": tokens.get((p.name, k.label), {}),
            })
        out.append({"name": p.name, "type": p.type, "keys": keys,
                    "catalog": catalogs.get(p.name)})
    return out


_REASONS: Final = {
    "status_429": "the upstream answered 429 (rate limited)",
    "status_5xx": "the upstream answered 5xx",
    "status_4xx": "the upstream refused a request (4xx)",
    "connect": "could not connect to the upstream",
    "timeout": "the upstream timed out",
    "closed": "the upstream closed the connection",
    "bad_response": "the upstream answered nonsense",
}


def _reason(state: str, last_failure: str | None) -> str | None:
    """Why a key is not ok, in words, from its state and its latest failed attempt."""
    if state == "ok":
        return None
    if state == "bad":
        return "the upstream rejected the key (401/403); unused until the config changes"
    if last_failure is None:
        return None
    return _REASONS.get(last_failure, last_failure)


def _ratelimit_headroom(state: RouterState) -> dict[tuple[str, str], dict[str, float]]:
    """The upstreams' last ``x-ratelimit-remaining-*`` per key, as the gauges hold them."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for family in state.metrics.ratelimit_remaining.collect():
        for sample in family.samples:
            lab = sample.labels
            out.setdefault((lab["provider"], lab["key"]), {})[lab["kind"]] = sample.value
    return out


def _facts(state: RouterState, m: Member) -> dict[str, Any]:
    """What the member accepts (None: anything) and its window (None: any size): each
    as declared, else as its provider's model list says, the window lowered by what a
    context-length error taught; and where each came from."""
    caps, known, caps_from, window_from = member_facts(m, state.catalog)
    window = usable_window(m, state.catalog, state.context_bounds)
    if window != known:
        window_from = "learnt"
    return {"capabilities": sorted(caps) if caps is not None else None,
            "capabilities_from": caps_from, "context_window": window,
            "context_window_from": window_from}


def _group(state: RouterState, cfg: Config, group: Group) -> dict[str, Any]:
    """Members with their tokens, actual share and, for inverse weight, target share."""
    members: list[dict[str, Any]] = []
    for m in group.members:
        provider = cfg.providers[m.provider]
        labels = [k.label for k in provider.keys if k.serves(m.model)]
        served = sum(state.counters.tokens.get((m.provider, label, m.model), 0)
                     for label in labels)
        members.append({"provider": m.provider, "model": m.model, "weight": m.weight,
                        "keys": len(labels), "tokens": served,
                        **_facts(state, m)})
    total = sum(x["tokens"] for x in members)
    targets = _target_shares(group, members) if group.strategy == "inverse-weight" else None
    for i, x in enumerate(members):
        x["share"] = round(x["tokens"] / total, 4) if total else None
        x["target_share"] = round(targets[i], 4) if targets is not None else None
    return {"name": group.name, "strategy": group.strategy, "tokens": total,
            "members": members}


def _target_shares(group: Group, members: list[dict[str, Any]]) -> list[float]:
    """Inverse weight per key: each key of a member settles at tokens in proportion to
    1/weight, so a member's share is keys/weight over the group's sum. Weight 0 is always
    preferred: those members share everything, by key count."""
    zero = [float(x["keys"]) if m.weight == 0 else 0.0
            for m, x in zip(group.members, members, strict=True)]
    pulls = zero if sum(zero) > 0 else [
        x["keys"] / m.weight for m, x in zip(group.members, members, strict=True)]
    total = sum(pulls)
    return [p / total if total else 0.0 for p in pulls]


def _users(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per user: spend and requests today and in the budget's period, budget, limits."""
    out = []
    for u in report["users"]:
        out.append({"name": u["name"], "role": u.get("role"),
                    "configured": u.get("configured", True), **_account(u),
                    "keys": [{"name": k["name"], **_account(k)} for k in u.get("keys", ())]})
    return out


def _account(report: dict[str, Any]) -> dict[str, Any]:
    usage = report.get("usage", {})
    today, month = usage.get("daily", {}), usage.get("monthly", {})
    return {
        "today": {"requests": today.get("requests", 0), "tokens": today.get("total_tokens", 0),
                  "cost_usd": today.get("cost_usd", 0.0)},
        "month": {"requests": month.get("requests", 0), "tokens": month.get("total_tokens", 0),
                  "cost_usd": month.get("cost_usd", 0.0)},
        "budget": report.get("budget"),
        "limits": report.get("limits") or {},
        "concurrent": report.get("concurrent", 0),
    }


@cache
def status_page() -> tuple[bytes, str]:
    """The page's HTML (its CSS and script inlined) and a Content-Security-Policy that
    allows exactly those two and calls to this origin: nothing external can load."""
    files = resources.files(__package__) / "static"
    html = (files / "status.html").read_text("utf-8")
    css = (files / "status.css").read_text("utf-8")
    js = (files / "status.js").read_text("utf-8")
    page = html.replace("/*STYLE*/", css).replace("/*SCRIPT*/", js)
    csp = ("default-src 'none'; "
           f"style-src {_sha256(css)}; script-src {_sha256(js)}; connect-src 'self'; "
           "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page.encode("utf-8"), csp


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
