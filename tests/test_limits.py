"""The Ledger's windows and calendar periods, driven by its clock (no waiting)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llm_router.config import Budget, Limits
from llm_router.errors import BudgetExhausted, RateLimited
from llm_router.ledger.accounting import Caller
from llm_router.ledger.limits import Ledger, period_end, period_id
from llm_router.ledger.shapes import ShapeError


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, when: str) -> None:
        self.t = ts(when)

    def __call__(self) -> float:
        return self.t


def caller(**kw: object) -> Caller:
    return Caller(user="u", key="k", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("when", "period", "pid", "end"), [
    ("2024-12-31T23:59:59", "daily", "2024-12-31", "2025-01-01T00:00:00"),
    ("2024-12-31T23:59:59", "monthly", "2024-12", "2025-01-01T00:00:00"),
    ("2024-12-31T10:00:00", "weekly", "2025-W01", "2025-01-06T00:00:00"),  # ISO week
    ("2024-06-02T23:00:00", "weekly", "2024-W22", "2024-06-03T00:00:00"),  # Sunday
    ("2024-02-10T00:00:00", "monthly", "2024-02", "2024-03-01T00:00:00"),
])
def test_calendar_periods_are_utc(when: str, period: str, pid: str, end: str) -> None:
    assert period_id(period, ts(when)) == pid
    assert period_end(period, ts(when)) == ts(end)


def test_total_period_never_ends() -> None:
    assert period_id("total", ts("2024-01-01T00:00:00")) == "total"
    assert period_end("total", ts("2024-01-01T00:00:00")) is None


def test_sliding_window_lets_the_previous_minute_fade() -> None:
    clock = Clock("2024-06-01T12:00:30")
    ledger = Ledger(clock)
    c = caller(limits=Limits(rpm=4))
    for _ in range(4):
        ledger.release(ledger.admit(c, 1))
    with pytest.raises(RateLimited) as info:
        ledger.admit(c, 1)
    # 30 s to the next minute, then 4 x (1 - t/60) <= 3 after t = 15 s.
    assert info.value.retry_after == pytest.approx(45.0)
    clock.t += 44
    with pytest.raises(RateLimited):
        ledger.admit(c, 1)
    clock.t += 1
    ledger.admit(c, 1)
    # No burst of twice the limit at the boundary: the previous minute still counts.
    with pytest.raises(RateLimited):
        ledger.admit(c, 1)


def test_a_refused_request_counts_nothing() -> None:
    ledger = Ledger(Clock("2024-06-01T12:00:00"))
    c = caller(limits=Limits(rpm=1), key_limits=Limits(max_concurrent=5))
    adm = ledger.admit(c, 10)
    for _ in range(3):
        with pytest.raises(RateLimited):
            ledger.admit(c, 10)
    ledger.release(adm)
    report = ledger.usage(c)
    assert report["user"]["limits"]["rpm"]["used"] == 1
    assert report["key"]["limits"]["max_concurrent"]["used"] == 0


def test_the_longest_wait_is_reported_when_several_limits_are_hit() -> None:
    ledger = Ledger(Clock("2024-06-01T12:00:00"))
    c = caller(limits=Limits(rpm=1), key_limits=Limits(daily_requests=1))
    ledger.admit(c, 1)
    with pytest.raises(RateLimited) as info:
        ledger.admit(c, 1)
    assert "(daily_requests)" in info.value.message
    assert "key 'k' of user 'u'" in info.value.message
    assert info.value.retry_after == pytest.approx(12 * 3600)  # not rpm's 120 s


def test_tpm_estimate_is_corrected_by_usage_and_refunded_without_it() -> None:
    ledger = Ledger(Clock("2024-06-01T12:00:00"))
    c = caller(limits=Limits(tpm=100))
    adm = ledger.admit(c, 80)
    with pytest.raises(RateLimited):
        ledger.admit(c, 30)  # 80 estimated + 30 > 100
    ledger.record(adm, "p", "m", 5, 5, None)
    ledger.release(adm)
    failed = ledger.admit(c, 80)  # 10 used + 80
    ledger.release(failed)  # no usage recorded: its estimate is refunded
    assert ledger.usage(c)["user"]["limits"]["tpm"]["used"] == 10


def test_budget_spent_in_an_ended_period_no_longer_blocks() -> None:
    clock = Clock("2024-06-30T23:00:00")
    ledger = Ledger(clock)
    c = caller(budget=Budget(usd=1.0, period="monthly"))
    adm = ledger.admit(c, 1)
    ledger.record(adm, "p", "m", 1, 1, 1.5)
    ledger.release(adm)
    with pytest.raises(BudgetExhausted) as info:
        ledger.admit(c, 1)
    assert "2024-07-01T00:00:00Z" in info.value.message
    clock.t = ts("2024-07-01T00:00:01")
    ledger.release(ledger.admit(c, 1))
    usage = ledger.usage(c)["user"]["usage"]
    assert usage["monthly"]["cost_usd"] == 0 and usage["total"]["cost_usd"] == 1.5


def test_dump_and_restore_keep_spend_and_daily_counts() -> None:
    clock = Clock("2024-06-01T12:00:00")
    ledger = Ledger(clock)
    c = caller(key_limits=Limits(daily_requests=2), key_budget=Budget(usd=2.0, period="weekly"))
    adm = ledger.admit(c, 1)
    ledger.record(adm, "p", "m", 3, 4, 2.5)
    ledger.release(adm)
    restored = Ledger(clock)
    restored.restore(ledger.dump())
    assert restored.usage(c) == ledger.usage(c)
    with pytest.raises(BudgetExhausted):
        restored.admit(c, 1)
    with pytest.raises(ShapeError, match=r"ledger\.version: expected 1, got 99"):
        Ledger.validate({"version": 99}, "ledger")  # a future format is refused, not misread
    assert Ledger.validate(ledger.dump(), "ledger")  # what it writes, it reads back


def test_models_per_period_are_bounded() -> None:
    ledger = Ledger(Clock("2024-06-01T12:00:00"))
    c = caller()
    for i in range(300):
        adm = ledger.admit(c, 1)
        ledger.record(adm, "p", f"m{i}", 1, 1, 0.0)
        ledger.release(adm)
    total = ledger.usage(c)["user"]["usage"]["total"]
    assert len(total["models"]) == 257 and total["models"]["other"]["requests"] == 44
    assert total["requests"] == 300
