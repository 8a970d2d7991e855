"""Spend and counters survive crashes, bad files and bad disks (issue 12).

* SIGKILL loses at most the journal's flush interval: after traffic stops for a second,
  a ``kill -9`` loses nothing (a real ``python -m llm_router`` process).
* A snapshot or journal of the wrong shape applies nothing, is moved aside with an
  ERROR naming the problem, and the router starts from zero.
* A snapshot directory that cannot be written stops start-up; one that breaks later
  makes the router not ready, counted in metrics, and a failed final write exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import StartRouter, Upstream
from .helpers import (
    AUTH,
    HELLO,
    ROUTER_KEY,
    eventually,
    key_tokens,
    metric_samples,
    openai_provider,
    write_config,
)
from .processes import RouterProcess

PRICES = {"m": {"input": 1.5, "output": 4.0}}


def _config(up: Upstream, snapshot: Path, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": ROUTER_KEY,
        "providers": [openai_provider("up", up, [{"key": "sk-one", "name": "one"}])],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "pricing": PRICES,
        "usage": {"snapshot_path": str(snapshot), "snapshot_interval_s": 3600},
        **extra,
    }


@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, Any]], RouterProcess]]:
    made: list[RouterProcess] = []

    def make(config: dict[str, Any]) -> RouterProcess:
        path = tmp_path / "config.yaml"
        write_config(path, config)
        rp = RouterProcess(path, tmp_path)
        made.append(rp)
        return rp

    yield make
    for rp in made:
        await rp.kill()


async def _chat(http: aiohttp.ClientSession, url: str) -> tuple[float, int, int]:
    """One chat: the cost header, prompt and completion tokens the client was told."""
    async with http.post(url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 200
        usage = (await resp.json())["usage"]
        return (float(resp.headers["X-Router-Cost-USD"]), usage["prompt_tokens"],
                usage["completion_tokens"])


async def _total(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/admin/usage", headers=AUTH) as resp:
        assert resp.status == 200
        report = await resp.json()
    users = [u for u in report["users"] if u["name"] == "default"]  # the api_key user
    if not users:  # no counters at all
        return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    total: dict[str, Any] = users[0]["usage"]["total"]
    return total


async def test_sigkill_after_a_second_of_quiet_loses_nothing(
        process: Callable[[dict[str, Any]], RouterProcess], upstream: Upstream,
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    rp = process(_config(upstream, tmp_path / "usage.json"))
    await rp.start()
    told: list[tuple[float, int, int]] = []
    stop = asyncio.get_running_loop().time() + 1.5

    async def client() -> None:
        while asyncio.get_running_loop().time() < stop:
            told.append(await _chat(http, rp.url))

    await asyncio.gather(*(client() for _ in range(8)))
    before = key_tokens(await metric_samples(rp.url))
    await asyncio.sleep(1.0)  # five journal flushes; no snapshot (the interval is an hour)
    assert rp.proc is not None
    rp.proc.send_signal(signal.SIGKILL)
    assert await rp.wait() == -signal.SIGKILL

    await rp.start()
    total = await _total(http, rp.url)
    assert total["requests"] == len(told) > 20
    assert total["prompt_tokens"] == sum(t[1] for t in told)
    assert total["completion_tokens"] == sum(t[2] for t in told)
    # The header round-trips each cost; the sum's order differs (concurrent requests).
    assert total["cost_usd"] == pytest.approx(sum(t[0] for t in told), rel=1e-12)
    after = key_tokens(await metric_samples(rp.url))
    assert after == before
    assert "journal events after it" in rp.log


async def _good_snapshot(start_router: StartRouter, upstream: Upstream, snapshot: Path,
                         http: aiohttp.ClientSession) -> dict[str, Any]:
    """A snapshot as the router writes it, after two requests."""
    router = await start_router(_config(upstream, snapshot), name="first.yaml")
    for _ in range(2):
        await _chat(http, router.url)
    await router.close()
    doc: dict[str, Any] = orjson.loads(snapshot.read_bytes())
    assert doc["sections"]["ledger"]["users"][0]["periods"]["total"]["totals"][0] == 2
    return doc


def _break_totals(doc: dict[str, Any]) -> None:
    doc["sections"]["ledger"]["users"][0]["periods"]["total"]["totals"] = "oops"


def _bad_second_row(doc: dict[str, Any]) -> None:
    users = doc["sections"]["ledger"]["users"]
    users.append({**users[0], "user": "someone", "day_requests": "12"})


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda doc: doc.clear() or doc.update(version=1), "usage.json.sections: expected an object"),
    (_break_totals, "periods.total.totals: expected a list, got str"),
    (_bad_second_row, "ledger.users[1].day_requests: expected a non-negative integer, got '12'"),
])
async def test_snapshot_of_the_wrong_shape_applies_nothing(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path,
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
        damage: Callable[[dict[str, Any]], None], problem: str) -> None:
    snapshot = tmp_path / "usage.json"
    doc = await _good_snapshot(start_router, upstream, snapshot, http)
    damage(doc)
    snapshot.write_bytes(orjson.dumps(doc))
    with caplog.at_level(logging.ERROR, logger="llm_router.usage"):
        router = await start_router(_config(upstream, snapshot))
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert problem in error and "STARTED FROM ZERO" in error
    assert len(list(tmp_path.glob("usage.json.corrupt-*"))) == 1
    assert (await _total(http, router.url))["requests"] == 0  # not even the good rows
    assert await _chat(http, router.url)  # serving, counting from zero


async def test_journal_is_validated_whole_but_a_cut_last_record_is_ignored(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path,
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    snapshot = tmp_path / "usage.json"
    doc = await _good_snapshot(start_router, upstream, snapshot, http)
    journal = tmp_path / f"usage.json.journal.{doc['journal_seq']}"
    header = orjson.dumps({"journal": 1, "seq": doc["journal_seq"]})
    now = time.time()
    admit = orjson.dumps(["a", now, "default", "api_key"])
    record = orjson.dumps(["r", now, "default", "api_key", "up/m", 10, 5, 0.25])
    # A crash in the middle of a write leaves the last line cut short: ignored.
    journal.write_bytes(b"\n".join([header, admit, record, record[:12]]))
    router = await start_router(_config(upstream, snapshot), name="second.yaml")
    total = await _total(http, router.url)
    assert total["requests"] == 3 and total["prompt_tokens"] > 10
    assert total["cost_usd"] == pytest.approx(doc_cost(doc) + 0.25)
    assert not journal.exists()  # folded into the snapshot at start-up
    await router.close()

    # A bad line before the end is not a crash artefact: nothing is applied.
    doc = orjson.loads(snapshot.read_bytes())
    journal = tmp_path / f"usage.json.journal.{doc['journal_seq']}"
    header = orjson.dumps({"journal": 1, "seq": doc["journal_seq"]})
    bad = orjson.dumps(["r", now, "default", "api_key", "up/m", -10, 5, 0.25])
    journal.write_bytes(b"\n".join([header, bad, admit, b""]))
    with caplog.at_level(logging.ERROR, logger="llm_router.usage"):
        router = await start_router(_config(upstream, snapshot), name="third.yaml")
    assert any("line 2[5]: expected a non-negative integer" in r.getMessage()
               for r in caplog.records)
    assert (await _total(http, router.url))["requests"] == 0
    assert len(list(tmp_path.glob("usage.json*.corrupt-*"))) == 2  # snapshot and journal


def doc_cost(doc: dict[str, Any]) -> float:
    cost: float = doc["sections"]["ledger"]["users"][0]["periods"]["total"]["totals"][3]
    return cost


async def test_unwritable_snapshot_directory_stops_start_up(
        process: Callable[[dict[str, Any]], RouterProcess], upstream: Upstream,
        tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the directory should be")
    rp = process(_config(upstream, tmp_path / "not-a-dir" / "usage.json"))
    with pytest.raises(pytest.fail.Exception, match="did not start"):
        await rp.start()
    assert await rp.wait() == 1
    assert "cannot start: cannot write the usage snapshot" in rp.log
    assert "Traceback" not in rp.log


async def test_failing_writes_turn_readiness_off_and_a_failed_final_write_exits_1(
        process: Callable[[dict[str, Any]], RouterProcess], upstream: Upstream,
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    rp = process(_config(upstream, state_dir / "usage.json",
                         usage={"snapshot_path": str(state_dir / "usage.json"),
                                "snapshot_interval_s": 0.5}))
    await rp.start()
    samples = await metric_samples(rp.url)
    assert samples["llm_router_snapshot_last_success_timestamp_seconds{}"] > 0
    assert samples["llm_router_snapshot_errors_total{}"] == 0

    def break_disk() -> None:  # root ignores permissions: a file in place of the directory
        state_dir.rename(tmp_path / "state.away")
        state_dir.write_text("")

    def mend_disk() -> None:
        state_dir.unlink()
        (tmp_path / "state.away").rename(state_dir)

    async def ready() -> tuple[int, dict[str, Any]]:
        async with http.get(rp.url + "/health/ready") as resp:
            return resp.status, await resp.json()

    async def snapshot_failing() -> bool:
        status, body = await ready()
        return (status, body.get("usage_snapshot")) == (503, "failing")

    async def ready_again() -> bool:
        return (await ready())[0] == 200

    break_disk()
    await _chat(http, rp.url)  # a journal event that cannot be written
    await eventually(snapshot_failing, timeout=10)
    assert (await metric_samples(rp.url))["llm_router_snapshot_errors_total{}"] >= 3

    mend_disk()
    await eventually(ready_again, timeout=10)

    break_disk()
    rp.signal(signal.SIGTERM)
    assert await rp.wait() == 1
    assert "the final usage snapshot" in rp.log
    mend_disk()
