"""The ledger adds an account's answers to its four periods in batches (limits.py,
``_Account.fold``): what every read sees must be what adding each answer as it came
would have left, to the last bit of every cost, across period boundaries, snapshots and
budget checks. The clock is driven by the test (no waiting)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from llm_router.config import Budget
from llm_router.errors import BudgetExhausted
from llm_router.ledger.accounting import Caller
from llm_router.ledger.limits import PERIODS, Ledger


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, when: str) -> None:
        self.t = ts(when)

    def __call__(self) -> float:
        return self.t


def answer(ledger: Ledger, c: Caller, model: str, prompt: int, completion: int,
           cost: float) -> None:
    adm = ledger.admit(c, 1)
    ledger.record(adm, "p", model, prompt, completion, cost)
    ledger.release(adm)


def test_answers_either_side_of_midnight_count_in_their_own_day_and_month() -> None:
    clock = Clock("2024-05-31T23:59:59")  # a Friday: the ISO week goes on, the month ends
    ledger = Ledger(clock)
    c = Caller(user="u", key="k")
    answer(ledger, c, "m", 10, 1, 0.1)
    answer(ledger, c, "m", 20, 2, 0.2)
    clock.t = ts("2024-06-01T00:00:01")
    answer(ledger, c, "m", 40, 4, 0.7)
    usage = ledger.usage(c)["user"]["usage"]
    assert (usage["daily"]["period"], usage["daily"]["requests"]) == ("2024-06-01", 1)
    assert usage["daily"]["prompt_tokens"] == 40 and usage["daily"]["cost_usd"] == 0.7
    assert usage["monthly"]["period"] == "2024-06" and usage["monthly"]["requests"] == 1
    assert usage["weekly"]["requests"] == 3 and usage["weekly"]["prompt_tokens"] == 70
    # Added one at a time, in order: 0.1 + 0.2 is not 0.3 in floats, and it must not be.
    assert usage["weekly"]["cost_usd"] == (0.0 + 0.1) + 0.2 + 0.7
    assert usage["total"]["models"]["p/m"]["cost_usd"] == (0.0 + 0.1) + 0.2 + 0.7


def test_a_snapshot_taken_with_answers_pending_holds_them() -> None:
    clock = Clock("2024-06-01T12:00:00")
    ledger = Ledger(clock)
    c = Caller(user="u", key="k")
    for i in range(5):
        answer(ledger, c, f"m{i % 2}", 3, 4, 0.01 * (i + 1))
    dump = ledger.dump()
    row = dump["users"][0]["periods"]["daily"]
    assert row["totals"][:3] == [5, 15, 20] and set(row["models"]) == {"p/m0", "p/m1"}
    restored = Ledger(clock)
    restored.restore(dump)
    assert restored.usage(c) == ledger.usage(c)
    answer(ledger, c, "m0", 1, 1, 0.5)  # and the dump did not lose what comes next
    assert ledger.usage(c)["key"]["usage"]["total"]["requests"] == 6


def test_a_budget_counts_spend_not_yet_added_to_its_period() -> None:
    ledger = Ledger(Clock("2024-06-01T12:00:00"))
    c = Caller(user="u", key="k", budget=Budget(usd=1.0, period="weekly"))
    spent = 0.0
    for _ in range(7):  # few answers: none of them is folded into the period yet
        answer(ledger, c, "m", 1, 1, 0.15)
        spent += 0.15
    with pytest.raises(BudgetExhausted) as info:
        ledger.admit(c, 1)
    assert f"spent ${spent:.8f}".rstrip("0") in info.value.message
    assert ledger.spent("u", None, "weekly") == spent


@pytest.mark.parametrize("models", [1, 3])  # one model: its batches take the sums' path
def test_spend_of_a_key_and_its_user_is_added_in_order_to_the_last_bit(models: int) -> None:
    rng = random.Random(27)
    clock = Clock("2024-06-01T12:00:00")
    ledger = Ledger(clock)
    callers = [Caller(user="u", key="a", budget=Budget(usd=1e9, period="daily")),
               Caller(user="u", key="b")]
    want: dict[tuple[str, str], list[float]] = {}  # (account, model) -> costs in order
    tokens: dict[tuple[str, str], list[int]] = {}  # (account, model) -> [prompt, completion]
    for i in range(1000):
        c = callers[rng.randrange(2)]
        model = f"m{rng.randrange(models)}"
        cost = rng.random() / rng.choice((1, 7, 1000))
        prompt, completion = rng.randrange(1000), rng.randrange(1000)
        answer(ledger, c, model, prompt, completion, cost)
        for account in ("u", f"u/{c.key}"):
            for name in ("", f"p/{model}"):
                want.setdefault((account, name), []).append(cost)
                sums = tokens.setdefault((account, name), [0, 0])
                sums[0] += prompt
                sums[1] += completion
        if i % 37 == 0:  # reads at odd points fold batches of every size
            ledger.usage(c)

    def total(costs: list[float]) -> float:
        out = 0.0
        for x in costs:
            out += x
        return out

    for c in callers:
        report = ledger.usage(c)
        for side, account in (("user", "u"), ("key", f"u/{c.key}")):
            for period in PERIODS:
                usage = report[side]["usage"][period]
                assert usage["cost_usd"] == total(want[(account, "")])
                assert [usage["prompt_tokens"], usage["completion_tokens"]] \
                    == tokens[(account, "")]
                for model, row in usage["models"].items():
                    assert row["cost_usd"] == total(want[(account, model)])
                    assert [row["prompt_tokens"], row["completion_tokens"]] \
                        == tokens[(account, model)]


def test_models_past_the_bound_sum_their_cost_in_order_as_other() -> None:
    ledger = Ledger(Clock("2024-06-01T12:00:00"))
    c = Caller(user="u", key="k")
    for i in range(256):
        answer(ledger, c, f"m{i}", 1, 1, 0.0)
    other = []
    for i in range(40):  # interleaved models beyond the bound, folded in one batch
        cost = 0.1 * (i % 7 + 1) / 3
        answer(ledger, c, f"x{i % 5}", 1, 1, cost)
        other.append(cost)
    expected = 0.0
    for x in other:
        expected += x
    models = ledger.usage(c)["user"]["usage"]["total"]["models"]
    assert models["other"]["requests"] == 40 and models["other"]["cost_usd"] == expected
