"""The shipped operations artefacts work: the alert rules pass promtool, and every panel
of the Grafana dashboard returns data from a real Prometheus scraping the router.

Prometheus and promtool come from the Debian package ``prometheus`` (.ci/run installs
it). Without them these tests skip locally, but fail under CI, so CI cannot go green
without running them.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from llm_router.testing.upstream import Fault

from .conftest import Router, StartRouter, Upstream
from .helpers import HELLO, openai_provider
from .ports import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "llm-router.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing in CI: .ci/run installs the Debian package "
                        "'prometheus'")
        pytest.skip(f"{tool} not installed (Debian package 'prometheus')")
    return path


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _need("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # The unit tests name the rule file relative to themselves.
    unit = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=RULES.parent,
                          capture_output=True, text=True, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_compose_runs_prometheus_and_grafana_under_a_profile() -> None:
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "profiles" not in services["llm-router"]  # `docker compose up` stays the router
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    assert "deploy/prometheus" in mounts and "deploy/grafana" in mounts
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["rule_files"] and prom["scrape_configs"][0]["static_configs"]


def _panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, Grafana variables filled in
    as "All" would: the dashboard's whole range is this short test."""
    dash = orjson.loads(DASHBOARD.read_bytes())
    variables = [v["name"] for v in dash["templating"]["list"] if v["type"] == "query"]
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", ()):
            expr = target["expr"]
            expr = expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
            for name in variables:
                expr = re.sub(rf"\$\{{{name}\}}|\${name}\b", ".*", expr)
            assert "$" not in expr, f"{panel['title']}: unfilled variable in {expr}"
            out.append((panel["title"], expr))
    return out



class Prometheus:
    """A real Prometheus server scraping one target every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "llm-router",
                                "static_configs": [{"targets": [target]}]}],
        }))
        self.data = tmp / "prometheus-data"
        self.log = tmp / "prometheus.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        with open(self.log, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                _need("prometheus"), f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn", stdout=log, stderr=log)
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            assert self.proc.returncode is None, self.log.read_text()
            try:
                async with http.get(self.url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert asyncio.get_running_loop().time() < deadline, self.log.read_text()
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def query(self, http: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with http.get(self.url + "/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@pytest.fixture
async def prometheus_for(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Prometheus] = []

    async with aiohttp.ClientSession() as api:  # Prometheus gzips its answers

        async def start(router: Router) -> tuple[Prometheus, aiohttp.ClientSession]:
            prom = Prometheus(tmp_path, f"127.0.0.1:{router.port}")
            started.append(prom)
            await prom.start(api)
            return prom, api

        yield start
        for prom in started:
            await prom.stop()


def _fleet(up: Upstream, snapshot: Path) -> dict[str, Any]:
    """Enough of a deployment to light up every panel: users with budgets and limits, a
    group that fails over, a provider whose only key cools down, a usage snapshot."""
    return {
        "usage": {"snapshot_path": str(snapshot), "snapshot_interval_s": 0.5},
        "providers": [openai_provider("main", up, [{"key": "sk-main", "name": "primary"}]),
                      openai_provider("spare", up, [{"key": "sk-spare", "name": "spare"}]),
                      openai_provider("cool", up, [{"key": "sk-cool", "name": "cool"}])],
        "groups": [{"name": "chat", "strategy": "priority",
                    "models": [{"provider": "main", "name": "gpt-main", "weight": 0},
                               {"provider": "spare", "name": "gpt-spare", "weight": 1}]},
                   {"name": "cooling", "models": [{"provider": "cool", "name": "gpt-cool"}]},
                   # inverse weight with prompt-cache affinity: the same prompt pins, then hits
                   {"name": "pinned", "models": [{"provider": "main", "name": "gpt-main"},
                                                 {"provider": "spare", "name": "gpt-spare"}]},
                   # the response cache: the same temperature-0 prompt misses, then hits
                   {"name": "cached", "cache": "exact",
                    "models": [{"provider": "main", "name": "gpt-main"}]}],
        "users": [
            {"name": "alice", "role": "admin", "keys": [{"key": "sk-alice", "name": "laptop"}],
             "limits": {"rpm": 1000, "tpm": 10000000, "daily_requests": 100000},
             "budget": {"usd": 100.0, "period": "monthly"}},
            {"name": "bob", "keys": [{"key": "sk-bob", "name": "ci"}], "limits": {"rpm": 1}},
            {"name": "carol", "keys": [{"key": "sk-carol", "name": "box"}],
             "budget": {"usd": 0.00001, "period": "daily"}},
        ],
        "pricing": {m: {"input": 1.0, "output": 2.0}
                    for m in ("gpt-main", "gpt-spare", "gpt-cool")},
    }


async def _drive(router: Router, up: Upstream, http: aiohttp.ClientSession) -> int:
    """One round of mixed traffic; returns how many requests it made."""

    async def post(key: str, model: str, **extra: Any) -> int:
        async with http.post(router.url + "/v1/chat/completions",
                             headers={"Authorization": f"Bearer {key}"},
                             json={"model": model, "messages": HELLO, **extra}) as resp:
            await resp.read()
            return resp.status

    statuses = [await post("sk-alice", "pinned"), await post("sk-alice", "pinned")]
    statuses += [await post("sk-alice", "cached", temperature=0) for _ in range(2)]
    for _ in range(3):
        statuses.append(await post("sk-alice", "chat"))
        statuses.append(await post("sk-alice", "chat", stream=True, max_tokens=8))
    up.fake.add_fault(Fault(status=500, key="sk-main"))  # one fallback to spare
    statuses.append(await post("sk-alice", "chat"))
    up.fake.add_fault(Fault(status=503, times=2))  # both members fail: a 502
    statuses.append(await post("sk-alice", "chat"))
    statuses += [await post("sk-bob", "chat"), await post("sk-bob", "chat")]  # rpm 1
    statuses += [await post("sk-carol", "chat"), await post("sk-carol", "chat")]  # budget
    statuses.append(await post("sk-nobody", "chat"))  # 401
    up.fake.add_fault(Fault(status=429, retry_after="120", key="sk-cool"))
    statuses += [await post("sk-alice", "cooling"), await post("sk-alice", "cooling")]
    assert {200, 402, 429, 401, 502}.issubset(statuses), statuses
    return len(statuses)


async def _scraped(prom: Prometheus, http: aiohttp.ClientSession, total: int) -> None:
    """Wait until Prometheus has scraped a state with ``total`` requests counted."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        result = await prom.query(http, "sum(llm_router_requests_total)")
        if result and float(result[0]["value"][1]) >= total:
            return
        assert asyncio.get_running_loop().time() < deadline, f"scraped {result}, want {total}"
        await asyncio.sleep(0.2)


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


async def test_every_dashboard_panel_returns_data_from_a_real_prometheus(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        prometheus_for: Any, tmp_path: Path) -> None:
    queries = _panel_queries()
    assert len(queries) >= 25
    router = await start_router(_fleet(upstream, tmp_path / "usage.json"))
    prom, api = await prometheus_for(router)
    total = 0
    for _ in range(2):  # rates need an increase between two scrapes
        total += await _drive(router, upstream, http)
        await _scraped(prom, api, total)
    missing: list[str] = []
    deadline = asyncio.get_running_loop().time() + 10
    pending = list(queries)
    while pending:
        missing = []
        for title, expr in pending:
            if not _has_data(await prom.query(api, expr)):
                missing.append(f"{title}: {expr}")
        pending = [(t, e) for t, e in pending if f"{t}: {e}" in missing]
        if not pending or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not missing, "panels without data:\n" + "\n".join(missing)
    # The shipped alert rules load and evaluate against the real series.
    async with api.get(prom.url + "/api/v1/rules") as resp:
        groups = (await resp.json())["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    shipped = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
               for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(shipped)
    assert all(r["health"] == "ok" for r in rules), rules
