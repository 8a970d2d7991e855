"""The status page (``GET /ui``) in a real headless Chromium, against a real router process
in front of a real fake upstream process.

Everything here is synchronous on purpose: Playwright's sync API must not run inside an
event loop, and it lets the module share one browser (started once, ~1 s) and one
router across its tests. Each test opens its own browser context, so sessionStorage
starts empty. Chromium is the system's (``.ci/run`` installs Debian's package); nothing
is ever downloaded. Screenshots go to the module's temp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect, sync_playwright

from llm_router.config import sha256_hex

from .helpers import HELLO

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


def _chromium() -> str | None:
    for candidate in (os.environ.get("LLM_ROUTER_CHROMIUM"), "/usr/bin/chromium",
                      "/usr/bin/chromium-headless-shell", shutil.which("chromium"),
                      shutil.which("chromium-headless-shell")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _chromium()
if CHROMIUM is None:
    # Locally a skip; in CI a failure, so a green run always means the browser ran.
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: .ci/run installs the Debian package "
                    "'chromium'", pytrace=False)
    pytest.skip("no chromium executable (Debian package 'chromium'; .ci/run installs it)",
                allow_module_level=True)

_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run"]
ADMIN, BOB = "sk-page-admin", "sk-page-bob"
UP_A, UP_B = "sk-page-upstream-alpha", "sk-page-upstream-beta"
SEEN_WITHIN_MS = 10_000  # the page polls every 2 s; generous for a loaded 2-core machine
@dataclass
class Stack:
    router: str  # http://127.0.0.1:PORT
    upstream: str
    config_path: Path
    config: dict[str, Any]
    shots: Path

    def fault(self, **fault: Any) -> None:
        """Arm a fault on the fake upstream through its control route."""
        req = urllib.request.Request(self.upstream + "/_fake/faults",
                                     data=orjson.dumps(fault), method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200

    def key_state(self, provider: str, key: str) -> str:
        """The key's state as ``GET /admin/status`` reports it."""
        req = urllib.request.Request(self.router + "/admin/status",
                                     headers={"Authorization": f"Bearer {ADMIN}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            report = orjson.loads(resp.read())
        (p,) = [p for p in report["providers"] if p["name"] == provider]
        (k,) = [k for k in p["keys"] if k["key"] == key]
        return str(k["state"])

    def chat(self, key: str = BOB, n: int = 1) -> None:
        with openai.OpenAI(base_url=self.router + "/v1", api_key=key, max_retries=0) as client:
            for _ in range(n):
                reply = client.chat.completions.create(model="fast", messages=HELLO)  # type: ignore[arg-type]
                assert reply.choices


def _spawn(args: list[str], log: Path, pattern: bytes,
           stream: str) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m llm_router ARGS``, logs in files; waits for ``pattern`` (the port)."""
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "llm_router", *args], stdout=out,
                                stderr=err)
    watched = log.with_suffix("." + stream)
    deadline = time.monotonic() + 20
    while not (m := re.search(pattern, watched.read_bytes())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{args[0]} did not start:\n{log.with_suffix('.err').read_text()}")
        time.sleep(0.05)
    return proc, int(m.group(1))


def _config(upstream: str) -> dict[str, Any]:
    return {
        "providers": [
            {"name": "openai", "type": "openai", "base_url": upstream + "/v1",
             "api_keys": [{"key": UP_A, "name": "alpha"}, {"key": UP_B, "name": "beta"}]},
            {"name": "local", "type": "mock"},
        ],
        "groups": [{"name": "fast", "models": [
            {"provider": "openai", "name": "gpt-4o-mini", "weight": 1},
            {"provider": "local", "name": "llama-3.1-8b", "weight": 2}]}],
        "users": [
            {"name": "ops", "role": "admin", "keys": [{"sha256": sha256_hex(ADMIN),
                                                       "name": "console"}]},
            {"name": "bob", "keys": [{"sha256": sha256_hex(BOB), "name": "laptop"}],
             "limits": {"rpm": 600, "tpm": 2_000_000},
             "budget": {"usd": 2.0, "period": "monthly"}},
        ],
        "pricing": {"gpt-4o-mini": {"input": 0.15, "output": 0.6},
                    "llama-3.1-8b": {"input": 5.0, "output": 15.0}},
        # Only temperature-0 requests are cached: the other tests' chats are skipped.
        "cache": {"mode": "exact", "scope": "global"},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("status_page")
    fake, fake_port = _spawn(["fake-upstream", "--host", "127.0.0.1", "--port", "0"],
                             tmp / "fake", rb"listening on http://[^:]+:(\d+)", "out")
    procs = [fake]
    try:
        upstream = f"http://127.0.0.1:{fake_port}"
        config = _config(upstream)
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        router, port = _spawn(["serve", "--config", str(path), "--host", "127.0.0.1",
                               "--port", "0", "--log-format", "text"], tmp / "router",
                              rb"listening on http://[^:]+:(\d+)", "err")
        procs.append(router)
        yield Stack(f"http://127.0.0.1:{port}", upstream, path, config, tmp)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # The browser itself logs refused fetches (401, 403) as console errors: expected.
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
          and not msg.text.startswith("Failed to load resource") else None)
    yield pg
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def log_in(page: Page, stack: Stack, key: str = ADMIN) -> None:
    page.goto(stack.router + "/ui")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")


def key_card(page: Page, provider: str, key: str) -> Any:
    return page.locator(f".key[data-provider='{provider}'][data-key='{key}']")


def test_admin_logs_in_once_and_sees_every_provider_and_key(page: Page, stack: Stack) -> None:
    log_in(page, stack)
    for provider, key in (("openai", "alpha"), ("openai", "beta"), ("local", "mock")):
        expect(key_card(page, provider, key)).to_be_visible()
    expect(page.locator("[data-group='fast'] tr[data-member]")).to_have_count(2)
    expect(page.locator("[data-user='bob']")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('llm-router-admin-key')") == ADMIN
    assert page.evaluate("localStorage.length") == 0
    page.reload()  # the key is asked for once per tab, not on every load
    expect(key_card(page, "openai", "alpha")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()
    assert ADMIN not in page.content()


def test_a_key_turns_to_cooldown_within_seconds_of_a_429(page: Page, stack: Stack) -> None:
    log_in(page, stack)
    alpha = key_card(page, "openai", "alpha")
    expect(alpha).to_have_attribute("data-state", "ok")
    stack.fault(status=429, key=UP_A, retry_after="120", times=None)
    # The router fails over, so the client sees 200s; alpha is picked within a few.
    for _ in range(30):
        stack.chat()
        if stack.key_state("openai", "alpha") != "ok":
            break
    expect(alpha).to_have_attribute("data-state", "cooldown", timeout=SEEN_WITHIN_MS)
    expect(alpha.locator("[data-field='state']")).to_have_text("cooldown")
    expect(alpha.locator("[data-field='reason']")).to_contain_text("429")
    expect(key_card(page, "openai", "beta")).to_have_attribute("data-state", "ok")


def test_a_users_spend_moves_after_requests(page: Page, stack: Stack) -> None:
    log_in(page, stack)
    spend = page.locator("[data-user='bob'] [data-field='spend-today']")
    expect(spend).to_be_visible()
    before = int(re.search(r"(\d+) req", spend.inner_text()).group(1))  # type: ignore[union-attr]
    stack.chat(n=3)
    expect(spend).to_contain_text(f"{before + 3} req", timeout=SEEN_WITHIN_MS)
    assert not spend.inner_text().startswith("$0 ")
    expect(page.locator("[data-user='bob'] [data-field='budget']")).to_contain_text("of $2.00")


def test_the_response_caches_hit_rate_shows_in_a_tile(page: Page, stack: Stack) -> None:
    with openai.OpenAI(base_url=stack.router + "/v1", api_key=ADMIN, max_retries=0) as client:
        for _ in range(2):
            client.chat.completions.create(model="fast", temperature=0, messages=[
                {"role": "user", "content": "a cached question"}])
    log_in(page, stack)
    tile = page.locator("[data-field='cache']")
    expect(tile.locator(".v")).to_have_text(re.compile(r"^\d+(\.\d)? %$"),
                                            timeout=SEEN_WITHIN_MS)
    expect(tile.locator(".l")).to_contain_text("hit")


def test_a_refused_config_edit_is_reported(page: Page, stack: Stack) -> None:
    log_in(page, stack)
    last = page.locator("[data-field='last-reload']")
    expect(last).to_be_visible()
    bad = yaml.safe_load(yaml.safe_dump(stack.config))
    bad["groups"][0]["models"][0]["wieght"] = 3
    stack.config_path.write_text(yaml.safe_dump(bad, sort_keys=False))
    try:
        expect(last).to_have_attribute("data-result", "refused", timeout=SEEN_WITHIN_MS)
        expect(page.locator("[data-field='reload-errors']")).to_contain_text(
            "groups[0].models[0].wieght: unknown key")
    finally:
        stack.config_path.write_text(yaml.safe_dump(stack.config, sort_keys=False))
    expect(last).to_have_attribute("data-result", "accepted", timeout=SEEN_WITHIN_MS)


def test_a_non_admin_key_is_refused_clearly(page: Page, stack: Stack) -> None:
    log_in(page, stack, BOB)
    refusal = page.locator("#refusal")
    expect(refusal).to_be_visible()
    expect(refusal).to_contain_text("not an admin key")
    expect(page.locator("#status")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('llm-router-admin-key')") is None
    page.fill("#key", "sk-not-a-key")
    page.click("#login-form button[type=submit]")
    expect(refusal).to_contain_text("does not know that key")


@pytest.mark.parametrize(("width", "scheme"), [(1280, "light"), (390, "light"), (390, "dark")])
def test_page_fits_desktop_and_phone_widths_in_light_and_dark(
        browser: Browser, stack: Stack, width: int, scheme: str) -> None:
    stack.chat(n=2)
    context = browser.new_context(viewport={"width": width, "height": 900},
                                  color_scheme=scheme)  # type: ignore[arg-type]
    try:
        pg = context.new_page()
        log_in(pg, stack)
        expect(key_card(pg, "local", "mock")).to_be_visible()
        expect(pg.locator("#traffic svg rect.bar").first).to_be_attached(
            timeout=SEEN_WITHIN_MS)  # a complete second with traffic in it
        expect(pg.locator("[data-group='fast'] svg.sharebar").first).to_be_visible()
        # Nothing wider than the screen: no sideways scrolling of the page.
        assert pg.evaluate("document.documentElement.scrollWidth") <= width
        background = pg.evaluate("getComputedStyle(document.body).backgroundColor")
        rgb = [int(x) for x in re.findall(r"\d+", background)[:3]]
        assert (sum(rgb) < 150) == (scheme == "dark"), background
        pg.screenshot(path=str(stack.shots / f"status-{width}-{scheme}.png"), full_page=True)
    finally:
        context.close()


def test_at_400_px_the_group_table_stacks_and_every_column_shows(
        browser: Browser, stack: Stack) -> None:
    stack.chat(n=3)
    context = browser.new_context(viewport={"width": 400, "height": 900})
    try:
        pg = context.new_page()
        log_in(pg, stack)
        table = pg.locator("[data-group='fast'] table")
        expect(table.locator("tr[data-member] td").first).to_be_visible(timeout=SEEN_WITHIN_MS)
        # Every cell of every member, the last column included, lies inside the box the
        # table is shown in: no column is cut off behind a sideways scroll (before the fix
        # the table was 364 px in a 354 px box). Each cell says which column it is.
        overflow, cells = pg.evaluate("""() => {
            const table = document.querySelector("[data-group='fast'] table");
            const box = table.parentElement.getBoundingClientRect();
            const cells = [...table.querySelectorAll("tr[data-member] td")].map((td) => {
                const r = td.getBoundingClientRect();
                return [td.dataset.label, r.left >= box.left && r.right <= box.right + 0.5,
                        getComputedStyle(td, "::before").content]; });
            return [table.scrollWidth - table.parentElement.clientWidth, cells];
        }""")
        assert overflow <= 0, f"the group table is {overflow} px wider than its box"
        assert len(cells) == 12, cells  # two members, six columns
        assert all(inside for _, inside, _ in cells), cells
        assert [label for label, _, _ in cells[:6]] == [
            "member", "weight", "tokens", "share", "target", "share vs target"]
        assert all(before.strip('"') == label for label, _, before in cells), cells
        assert pg.evaluate("document.documentElement.scrollWidth") <= 400
        # Limits count whole tokens and requests: "12 of 2,000,000 tok/min", never "12.4".
        tpm = pg.locator("[data-user='bob'] [data-limit='tpm']")
        expect(tpm).to_contain_text("tok/min")
        assert re.fullmatch(r"[\d,]+ of [\d,]+ tok/min · [\d,]+ left", tpm.inner_text()), \
            tpm.inner_text()
        pg.screenshot(path=str(stack.shots / "status-400-groups.png"), full_page=True)
    finally:
        context.close()


def test_the_pages_own_polling_writes_no_access_line(page: Page, stack: Stack) -> None:
    out = stack.shots / "router.out"  # the router's access log (stdout)

    def flushed_counts() -> tuple[int, int]:
        """(chat lines, /admin/status lines) once a new chat's line is out: the access
        log is written in order, so every earlier line is out too."""
        chats = out.read_bytes().count(b"/v1/chat/completions")
        stack.chat(n=1)
        deadline = time.monotonic() + 10
        while (text := out.read_bytes()).count(b"/v1/chat/completions") <= chats:
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        return text.count(b"/v1/chat/completions"), text.count(b"/admin/status")

    _, status_lines = flushed_counts()
    log_in(page, stack)
    live = page.locator("#live")
    expect(live).to_contain_text("updated", timeout=SEEN_WITHIN_MS)
    first = live.inner_text()
    expect(live).not_to_have_text(first, timeout=SEEN_WITHIN_MS)  # polled again since
    assert flushed_counts()[1] == status_lines
