"""Hot reload (docs/operations.md, "Hot reload"): edits to the watched file take effect
without a restart, refused edits leave the previous config serving, counters carry over."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from .conftest import Router, StartRouter, Upstream
from .helpers import (
    AUTH,
    HELLO,
    RELOAD_FAILED,
    RELOAD_OK,
    ROUTER_KEY,
    eventually,
    key_tokens,
    metric_samples,
    openai_provider,
    save_by_rename,
)


def _config(up: Upstream, groups: list[str], keys: list[Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    return {
        "api_key": ROUTER_KEY,
        "providers": [openai_provider("up", up, keys if keys is not None
                                      else [{"key": "sk-one", "name": "one"}])],
        "groups": [{"name": g, "models": [{"provider": "up", "name": f"m-{g}"}]}
                   for g in groups],
        **extra,
    }


async def chat_status(http: aiohttp.ClientSession, router: Router, model: str) -> int:
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": model, "messages": HELLO}) as resp:
        await resp.read()
        return resp.status


async def test_group_added_to_the_file_is_served_without_restart(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream, ["a"]))
    assert await chat_status(http, router, "b") == 404
    save_by_rename(router.config_path, _config(upstream, ["a", "b"]))

    async def b_served() -> bool:
        return await chat_status(http, router, "b") == 200

    await eventually(b_served)
    assert upstream.fake.requests[-1].model == "m-b"
    assert await chat_status(http, router, "a") == 200
    samples = await metric_samples(router.url)
    assert samples[RELOAD_OK] == 1 and samples[RELOAD_FAILED] == 0


async def test_a_key_removed_from_the_file_is_refused_after_reload(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A key that authenticated before (its header value is then remembered) stops working
    as soon as a reload drops it, in either header the client may send it in."""
    router = await start_router(_config(upstream, ["a"]))
    assert await chat_status(http, router, "a") == 200
    assert await chat_status(http, router, "a") == 200  # the header is known now
    save_by_rename(router.config_path, _config(upstream, ["a"]) | {"api_key": "sk-the-new"})

    async def refused() -> bool:
        return await chat_status(http, router, "a") == 401

    await eventually(refused)
    async with http.post(router.url + "/v1/chat/completions",
                         headers={"x-api-key": ROUTER_KEY},
                         json={"model": "a", "messages": HELLO}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["message"] == "Invalid API key."
    async with http.post(router.url + "/v1/chat/completions",
                         headers={"Authorization": "Bearer sk-the-new"},
                         json={"model": "a", "messages": HELLO}) as resp:
        assert resp.status == 200


async def test_invalid_edit_keeps_old_config_serving(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(_config(upstream, ["a"]))
    bad = _config(upstream, ["a", "b"])
    bad["groups"][1]["models"][0]["provider"] = "upp"  # a typo
    with caplog.at_level(logging.WARNING, logger="llm_router.reload"):
        save_by_rename(router.config_path, bad)

        async def refused() -> bool:
            return (await metric_samples(router.url))[RELOAD_FAILED] == 1

        await eventually(refused)
    problems = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("groups[1].models[0].provider: unknown provider 'upp'" in p for p in problems)
    assert await chat_status(http, router, "a") == 200
    assert await chat_status(http, router, "b") == 404
    assert (await metric_samples(router.url))[RELOAD_OK] == 0


async def test_fixing_a_refused_edit_is_picked_up(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream, ["a"]))
    save_by_rename(router.config_path, "groups: [unclosed\n")

    async def refused() -> bool:
        return (await metric_samples(router.url))[RELOAD_FAILED] == 1

    await eventually(refused)
    save_by_rename(router.config_path, _config(upstream, ["a", "b"]))

    async def b_served() -> bool:
        return await chat_status(http, router, "b") == 200

    await eventually(b_served)
    samples = await metric_samples(router.url)
    assert samples[RELOAD_OK] == 1 and samples[RELOAD_FAILED] == 1


async def test_half_written_file_is_refused_until_complete(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """An editor that truncates and rewrites in place is caught mid-write here on purpose."""
    router = await start_router(_config(upstream, ["a"]))
    text = yaml.safe_dump(_config(upstream, ["a", "b"]), sort_keys=False)
    cut = text.index("- name: b") + len("- name: b")
    with open(router.config_path, "w") as fh:  # truncates: the file is empty for a moment
        fh.write(text[:cut])
        fh.flush()

        async def refused() -> bool:
            return (await metric_samples(router.url))[RELOAD_FAILED] >= 1

        await eventually(refused)
        assert await chat_status(http, router, "a") == 200  # never a half config
        fh.write(text[cut:])

    async def b_served() -> bool:
        return await chat_status(http, router, "b") == 200

    await eventually(b_served)
    assert await chat_status(http, router, "a") == 200


async def test_slow_in_place_write_never_serves_a_cut_off_config(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """Cut after the first group, the file is valid YAML and a valid config that has lost
    group b: it must not be swapped in while the writer is still busy."""
    router = await start_router(_config(upstream, ["a", "b"]))
    text = yaml.safe_dump(_config(upstream, ["a", "b", "c"]), sort_keys=False)
    cut = text.index("- name: b")
    statuses: list[int] = []
    with open(router.config_path, "w") as fh:
        fh.write(text[:cut])
        fh.flush()
        for _ in range(10):  # ~0.3 s with the writer paused mid-file
            statuses.append(await chat_status(http, router, "b"))
            await asyncio.sleep(0.03)
        fh.write(text[cut:])

    async def c_served() -> bool:
        statuses.append(await chat_status(http, router, "b"))
        return await chat_status(http, router, "c") == 200

    await eventually(c_served)
    assert set(statuses) == {200}
    samples = await metric_samples(router.url)
    assert samples[RELOAD_OK] == 1 and samples[RELOAD_FAILED] == 0


async def test_counters_survive_a_reload_exactly(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    keys = [{"key": "sk-one", "name": "one"}, "sk-two"]
    router = await start_router(_config(upstream, ["a"], keys))
    client = router.openai()
    for _ in range(6):
        await client.chat.completions.create(model="a", messages=HELLO)  # type: ignore[arg-type]
    before = key_tokens(await metric_samples(router.url))
    assert len(before) == 2 and all(v > 0 for v in before.values())
    # Keys reordered and a new one put first: counters follow the key, not its position.
    save_by_rename(router.config_path,
                   _config(upstream, ["a", "b"], [{"key": "sk-new", "name": "new"},
                                                  "sk-two", {"key": "sk-one", "name": "one"}]))

    async def reloaded() -> bool:
        return (await metric_samples(router.url))[RELOAD_OK] == 1

    await eventually(reloaded)
    after = key_tokens(await metric_samples(router.url))
    (new,) = [k for k in after if "{key=new," in k]
    assert {k: v for k, v in after.items() if k != new} == before
    # The new key joins level with the least-loaded established key, not at zero.
    assert after[new] == min(before.values())


async def test_key_added_to_a_busy_group_shares_its_traffic_at_once(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream, ["a"], [{"key": "sk-one", "name": "one"}]))
    client = router.openai()
    for _ in range(12):
        await client.chat.completions.create(model="a", messages=HELLO)  # type: ignore[arg-type]
    save_by_rename(router.config_path, _config(
        upstream, ["a"], [{"key": "sk-one", "name": "one"}, {"key": "sk-two", "name": "two"}]))

    async def reloaded() -> bool:
        return (await metric_samples(router.url))[RELOAD_OK] == 1

    await eventually(reloaded)
    sent = len(upstream.fake.requests)
    for _ in range(8):
        await client.chat.completions.create(model="a", messages=HELLO)  # type: ignore[arg-type]
    used = [r.api_key for r in upstream.fake.requests[sent:]]
    # Started at zero, "two" would take all 8 while it caught up with 12 requests of
    # history; level, the two keys alternate.
    assert used.count("sk-one") >= 3 and used.count("sk-two") >= 3


async def test_content_unchanged_is_no_reload(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream, ["a"]))

    async def reloads(n: int) -> None:
        async def done() -> bool:
            return (await metric_samples(router.url))[RELOAD_OK] >= n

        await eventually(done)

    save_by_rename(router.config_path, _config(upstream, ["a", "b"]))
    await reloads(1)  # the watch is live
    os.utime(router.config_path)  # a touch: an event, but nothing to load
    save_by_rename(router.config_path, router.config_path.read_text())  # same bytes, new inode
    await asyncio.sleep(0.3)  # well past the watcher's quiet period
    save_by_rename(router.config_path, _config(upstream, ["a"]))

    async def b_gone() -> bool:
        return await chat_status(http, router, "b") == 404

    await eventually(b_gone)
    assert (await metric_samples(router.url))[RELOAD_OK] == 2


async def test_listen_address_change_is_logged_as_needing_restart(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(_config(upstream, ["a"], port=8080))
    with caplog.at_level(logging.WARNING, logger="llm_router.reload"):
        save_by_rename(router.config_path, _config(upstream, ["a"], port=9999))

        async def reloaded() -> bool:
            return (await metric_samples(router.url))[RELOAD_OK] == 1

        await eventually(reloaded)
    assert any("8080" in r.getMessage() and "9999" in r.getMessage()
               and "restart" in r.getMessage() for r in caplog.records)
    assert await chat_status(http, router, "a") == 200  # still on the old listener


async def test_new_snapshot_path_is_written_on_reload(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    router = await start_router(_config(upstream, ["a"]))
    client = router.openai()
    await client.chat.completions.create(model="a", messages=HELLO)  # type: ignore[arg-type]
    target = tmp_path / "state" / "usage.json"
    save_by_rename(router.config_path, _config(
        upstream, ["a"], usage={"snapshot_path": str(target), "snapshot_interval_s": 60}))

    async def written() -> bool:
        return target.exists()

    await eventually(written)
    doc = orjson.loads(target.read_bytes())
    rows = doc["sections"]["counters"]["key_tokens"]
    assert [(r["provider"], r["key"], r["model"]) for r in rows] == [("up", "one", "m-a")]
    assert rows[0]["tokens"] == router.state.counters.tokens[("up", "one", "m-a")]


async def test_unservable_group_is_refused_and_warnings_are_logged_on_reload(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(_config(upstream, ["a"]))
    # The only key may serve m-a alone, so group b could only ever answer 503.
    restricted = _config(upstream, ["a", "b"], keys=[{"key": "sk-one", "name": "one",
                                                      "models": ["m-a"]}])
    with caplog.at_level(logging.WARNING, logger="llm_router.reload"):
        save_by_rename(router.config_path, restricted)

        async def refused() -> bool:
            return (await metric_samples(router.url))[RELOAD_FAILED] == 1

        await eventually(refused)
        assert await chat_status(http, router, "b") == 404
        unused_price = _config(upstream, ["a", "b"], pricing={"m-gone": {"input": 1,
                                                                          "output": 2}})
        save_by_rename(router.config_path, unused_price)

        async def reloaded() -> bool:
            return (await metric_samples(router.url))[RELOAD_OK] == 1

        await eventually(reloaded)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("groups[1]: group 'b' has no member that can be served" in m for m in logged)
    assert any("pricing.m-gone: no group member has the model 'm-gone'" in m for m in logged)
    assert await chat_status(http, router, "b") == 200


async def test_a_standing_warning_is_not_logged_again_on_every_reload(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    # Issue 33: serve logs the start-up config's warnings; a reload for an edit elsewhere
    # used to log each of them again. Only a warning the new config adds is logged.
    gone = {"m-gone": {"input": 1, "output": 2}}
    other = {**gone, "m-other": {"input": 1, "output": 2}}
    router = await start_router(_config(upstream, ["a"], pricing=gone))
    with caplog.at_level(logging.WARNING, logger="llm_router.reload"):
        for n, (groups, pricing) in enumerate(
                [(["a", "b"], gone), (["a", "b", "c"], other)]):
            save_by_rename(router.config_path, _config(upstream, groups, pricing=pricing))

            async def reloaded(count: int = n + 1) -> bool:
                return (await metric_samples(router.url))[RELOAD_OK] == count

            await eventually(reloaded)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("pricing.m-other" in m for m in logged) == 1, logged
    assert not [m for m in logged if "pricing.m-gone" in m], logged
    assert await chat_status(http, router, "c") == 200


class ConfigMapVolume:
    """A directory laid out the way the kubelet lays out a mounted ConfigMap: each file is
    a symlink through ``..data``, itself a symlink to a timestamped directory. The file's
    own path never changes; an update is the kubelet's atomic writer sequence."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._generation = 0
        self._current: Path | None = None
        root.mkdir()

    def write(self, files: dict[str, str]) -> None:
        """Publish ``files`` as the kubelet does: a new timestamped directory, a
        ``..data_tmp`` symlink to it, renamed over ``..data``, the old directory removed."""
        self._generation += 1
        new = self.root / f"..2026_12_04_17_00_00.{self._generation:09d}"
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        os.rename(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if self._current is not None:
            shutil.rmtree(self._current)
        self._current = new


async def test_configmap_update_by_the_kubelets_symlink_swap_reloads(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "configmap")
    first = yaml.safe_dump(_config(upstream, ["a"]))
    volume.write({"config.yaml": first})
    # The fixture writes the same text through the symlink: no change.
    router = await start_router(first, name="configmap/config.yaml")
    # Twice: after the first swap the directory the file resolved to is gone, so a watch
    # that followed it would see nothing of the second.
    for groups in (["a", "b"], ["a", "b", "c"]):
        volume.write({"config.yaml": yaml.safe_dump(_config(upstream, groups))})

        async def served(group: str = groups[-1]) -> bool:
            return await chat_status(http, router, group) == 200

        await eventually(served)
    samples = await metric_samples(router.url)
    assert samples[RELOAD_OK] == 2 and samples[RELOAD_FAILED] == 0


async def test_key_rotated_in_a_secret_volume_serves_at_once_without_restart(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "llm_router")
    # A Kubernetes Secret mounted as a volume is laid out, and updated, like a ConfigMap.
    secrets = ConfigMapVolume(tmp_path / "secrets")
    secrets.write({"openai-a": "sk-rotation-first-0001\n", "other": "unrelated-1"})
    router = await start_router(_config(upstream, ["a"], keys=[
        {"key_file": str(secrets.root / "openai-a"), "name": "a"}]))
    assert await chat_status(http, router, "a") == 200
    assert upstream.fake.requests[-1].api_key == "sk-rotation-first-0001"
    # Twice: the second swap happens in a directory whose first target is gone.
    for n, new_key in enumerate(("sk-rotation-second-002", "sk-rotation-third-0003"), 1):
        secrets.write({"openai-a": new_key + "\n", "other": "unrelated-1"})

        async def rotated(key: str = new_key) -> bool:
            return (await chat_status(http, router, "a") == 200
                    and upstream.fake.requests[-1].api_key == key)

        await eventually(rotated)
        samples = await metric_samples(router.url)
        assert samples[RELOAD_OK] == n and samples[RELOAD_FAILED] == 0
    # Another key of the Secret changing leaves this config as it was: no reload.
    secrets.write({"openai-a": "sk-rotation-third-0003\n", "other": "unrelated-2"})
    save_by_rename(router.config_path, _config(upstream, ["a", "b"], keys=[
        {"key_file": str(secrets.root / "openai-a"), "name": "a"}]))

    async def b_served() -> bool:
        return await chat_status(http, router, "b") == 200

    await eventually(b_served)
    assert (await metric_samples(router.url))[RELOAD_OK] == 3
    assert any("config reloaded" in r.getMessage() for r in caplog.records)
    assert not any("sk-rotation" in r.getMessage() for r in caplog.records)


async def test_config_naming_a_key_file_not_yet_there_is_served_once_it_appears(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    # The kubelet updates the ConfigMap and the Secret volumes independently: the config
    # naming a new key file can arrive before the file does.
    secrets = ConfigMapVolume(tmp_path / "secrets")
    secrets.write({"openai-a": "sk-present-key-0001"})
    router = await start_router(_config(upstream, ["a"], keys=[
        {"key_file": str(secrets.root / "openai-a"), "name": "a"}]))
    save_by_rename(router.config_path, _config(upstream, ["a"], keys=[
        {"key_file": str(secrets.root / "openai-a"), "name": "a"},
        {"key_file": str(secrets.root / "openai-b"), "name": "b"}]))

    async def refused() -> bool:
        return (await metric_samples(router.url))[RELOAD_FAILED] >= 1

    await eventually(refused)
    secrets.write({"openai-a": "sk-present-key-0001", "openai-b": "sk-arrived-key-0002"})

    async def both_keys_used() -> bool:
        await chat_status(http, router, "a")
        return {r.api_key for r in upstream.fake.requests} >= {"sk-present-key-0001",
                                                               "sk-arrived-key-0002"}

    await eventually(both_keys_used)


async def _each_edit_reloads(http: aiohttp.ClientSession, router: Router, up: Upstream,
                             edit: Callable[[str, str], None]) -> None:
    """``edit(old, new)`` replaces a model name in the file; twice, because a watch that
    followed the file's first inode sees nothing once the file has been replaced."""
    for n, (old, new) in enumerate((("m-a", "m-y"), ("m-y", "m-z")), start=1):
        edit(old, new)

        async def reloaded(model: str = new) -> bool:
            return (await chat_status(http, router, "a") == 200
                    and up.fake.requests[-1].model == model)

        await eventually(reloaded)
        assert (await metric_samples(router.url))[RELOAD_OK] == n


async def test_sed_in_place_reloads(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream, ["a"]))

    def sed(old: str, new: str) -> None:
        # GNU sed -i writes a temporary file beside the original and renames it over.
        subprocess.run(["sed", "-i", f"s/{old}/{new}/", str(router.config_path)], check=True)

    await _each_edit_reloads(http, router, upstream, sed)


@pytest.mark.parametrize("backupcopy", ["no", "yes"], ids=["rename", "in-place"])
async def test_vim_save_reloads(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        backupcopy: str) -> None:
    vim_path = shutil.which("vim")
    if vim_path is None:
        pytest.skip("vim is not installed")
    router = await start_router(_config(upstream, ["a"]))

    def vim(old: str, new: str) -> None:
        # backupcopy=no: rename the original to a backup, write a new file, delete the
        # backup; yes: copy to a backup, then truncate and rewrite the original in place.
        subprocess.run([vim_path, "-u", "NONE", "-i", "NONE", "-N", "-n", "-es",
                        "-c", f"set backupcopy={backupcopy} writebackup nobackup",
                        "-c", f"%s/{old}/{new}/", "-c", "wq", str(router.config_path)],
                       check=True, stdin=subprocess.DEVNULL, timeout=30)

    await _each_edit_reloads(http, router, upstream, vim)
    assert [p.name for p in router.config_path.parent.iterdir()
            if p.name.startswith("config")] == ["config.yaml"]  # no backup left behind
