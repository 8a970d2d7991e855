"""A hostile client or a careless operator, over real sockets: what they send gets a clear
error in the route's shape (never a 500 or a traceback), and nothing they do puts a
secret in a log line."""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import logging
import os
import sys
import weakref
import zlib
from pathlib import Path
from typing import Any, Final

import orjson
import pytest

from llm_router.cli import main as cli_main
from llm_router.server.reload import RELOADER

from .conftest import Router, StartRouter, Upstream
from .helpers import AUTH, HELLO, ROUTER_KEY, eventually, metrics_page, openai_provider
from .ports import free_port

_MOCK = {"providers": [{"name": "local", "type": "mock"}],
         "groups": [{"name": "g", "models": [{"provider": "local", "name": "m"}]}]}


# Every route that takes a model, with the least body it accepts besides the model.
_MODEL_ROUTES: Final = (("/v1/chat/completions", {"messages": HELLO}),
                        ("/v1/messages", {"messages": HELLO, "max_tokens": 5}),
                        ("/v1/messages/count_tokens", {"messages": HELLO}),
                        ("/v1/responses", {"input": "hi"}),
                        ("/v1/embeddings", {"input": "hi"}),
                        ("/v1/completions", {"prompt": "hi"}))


async def _raw(router: Router, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``request`` as is; the answer's status and JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


def _post(path: str, body: bytes, encoding: str, connection: str = "keep-alive") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}"
            f"\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {connection}\r\n\r\n").encode() + body


async def test_a_request_body_that_does_not_decompress_is_a_400_not_a_500(
        start_router: StartRouter, caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(_MOCK)
    caplog.set_level(logging.DEBUG)
    chat = orjson.dumps({"model": "g", "messages": HELLO})
    cut_gzip = gzip.compress(chat)[:-12]  # a gzip stream cut short
    for path, body, encoding in (
            ("/v1/chat/completions", b"this is not gzip", "gzip"),
            ("/v1/chat/completions", b"this is not deflate", "deflate"),
            ("/v1/chat/completions", b"this is not brotli", "br"),
            ("/v1/chat/completions", cut_gzip + b"garbage after the cut", "gzip"),
            ("/v1/embeddings", b"\x1f\x8b but no more", "gzip"),
            ("/v1/messages", b"this is not gzip", "gzip")):
        status, doc = await _raw(router, _post(path, body, encoding))
        assert status == 400, (path, encoding, doc)
        if path == "/v1/messages":
            assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
        else:
            assert doc["error"]["code"] == "invalid_body", doc
        assert encoding in doc["error"]["message"]
        # (_raw reads to the end: the router closed the keep-alive connection, whose
        # parser stopped at the bad body.)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    # A body that does decompress is served.
    status, doc = await _raw(router, _post("/v1/chat/completions", zlib.compress(chat),
                                           "deflate", "close"))
    assert status == 200, doc


async def test_max_body_bytes_bounds_a_compressed_body_by_its_decompressed_size(
        start_router: StartRouter) -> None:
    router = await start_router({**_MOCK, "max_body_bytes": 4096})
    big = orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "a" * 100_000}]})
    small = orjson.dumps({"model": "g", "messages": HELLO})
    for encoding, pack in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        body = pack(big)  # a few hundred bytes on the wire, 100 KB once decoded
        assert len(body) < 4096
        status, doc = await _raw(router, _post("/v1/chat/completions", body, encoding,
                                               "close"))
        assert status == 413, doc
        assert doc["error"]["code"] == "request_too_large"
        status, doc = await _raw(router, _post("/v1/chat/completions", pack(small), encoding,
                                               "close"))
        assert status == 200, doc


async def test_a_refused_edit_never_logs_the_line_a_new_key_is_on(
        start_router: StartRouter, caplog: pytest.LogCaptureFixture) -> None:
    """An operator rotating a key makes a typo on its line: the line check shows must
    not reach the log, the status page or a webhook, since the key is not in the running
    config, so the log's redaction does not know it."""
    admin = "sk-hostile-admin-0001"
    config = ("providers:\n"
              "  - name: up\n"
              "    type: openai\n"
              "    base_url: http://127.0.0.1:9/v1\n"
              "    api_keys:\n"
              "      - {key: sk-old-upstream-key-0001, name: main}\n"
              "groups:\n"
              "  - name: g\n"
              "    models: [{provider: up, name: m}]\n"
              "users:\n"
              f"  - {{name: ops, role: admin, keys: [{{key: {ROUTER_KEY}}}, {{key: {admin}}}]}}\n")
    router = await start_router(config)
    caplog.set_level(logging.DEBUG)
    rotated = "sk-new-upstream-key-9999"
    for broken in (f"      - {{key: {rotated}, name: main\n",  # the '{' never closed
                   f"      - key: '{rotated}\n"):  # the quote never closed
        router.config_path.write_text(config.replace(
            "      - {key: sk-old-upstream-key-0001, name: main}\n", broken))
        assert await router.runner.app[RELOADER].reload("test", force=True) is False
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "invalid YAML" in logged and f"{router.config_path.name}:6:" in logged
        assert rotated not in logged
        status, report = await _get(router, "/admin/status", admin)
        assert status == 200
        errors = report["config"]["last_reload"]["errors"]
        assert errors and ":6:" in errors[0] and rotated not in str(errors)


async def _get(router: Router, path: str, key: str) -> tuple[int, dict[str, Any]]:
    request = (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
               "Connection: close\r\n\r\n").encode()
    return await _raw(router, request)


async def test_serve_refusing_a_broken_file_at_start_does_not_print_its_key_line(
        tmp_path: Path) -> None:
    """What serve prints on stderr is the daemon's log (journald, kubectl logs); check,
    run by the operator, shows the line."""
    path = tmp_path / "config.yaml"
    path.write_text(f"api_key: {ROUTER_KEY}\nproviders:\n  - name: up\n    type: openai\n"
                    "    api_keys: ['sk-live-upstream-key-4242]\n")
    out = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this checkout's package
    for command in ("serve", "check"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llm_router", command, *(
                ("--config", str(path), "--port", "0") if command == "serve" else (str(path),)),
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1
        out[command] = (stdout + stderr).decode()
    assert "config.yaml:5:16: invalid YAML" in out["serve"], out["serve"]
    assert "llm-router check shows the line" in out["serve"]
    assert "sk-live-upstream-key-4242" not in out["serve"]
    assert "sk-live-upstream-key-4242" in out["check"]  # the operator's own terminal


@pytest.mark.parametrize("model", ["up/m\r\nX-Evil: 1", "up/m\nX-Evil: 1", "up/m\x00",
                                   "up/m\x7f", "up/\x1b[31mred"])
async def test_a_model_name_with_a_control_character_is_a_400_never_a_dropped_connection(
        start_router: StartRouter, upstream: Upstream, caplog: pytest.LogCaptureFixture,
        model: str) -> None:
    """A direct provider/model name goes into X-Router-Group and X-Router-Model: with a
    line break in it, the answer could not be written (aiohttp refuses the header), the
    connection was dropped after the upstream had been paid, and tracebacks logged."""
    router = await start_router({"providers": [openai_provider("up", upstream)],
                                 "groups": [{"name": "g", "models": [{"provider": "up",
                                                                      "name": "m"}]}]})
    caplog.set_level(logging.DEBUG)
    for path, body in _MODEL_ROUTES:
        for stream in (False, True):
            data = orjson.dumps({"model": model, **body, "stream": stream})
            status, doc = await _raw(router, (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}"
                f"\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
            ).encode() + data)
            assert status == 400, (path, doc)
            error = doc["error"]
            assert "non-printable character (U+00" in error["message"]
            if not path.startswith("/v1/messages"):
                assert error["param"] == "model"
    assert upstream.fake.requests == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_a_reload_with_a_line_break_in_a_name_is_refused_and_the_old_config_serves(
        start_router: StartRouter, upstream: Upstream) -> None:
    """A YAML block scalar (``name: |``) ends its value with a line break: accepted, the
    member's name broke X-Router-Model and every answer was a dropped connection."""
    def config(member: str) -> str:
        return (f"api_key: {ROUTER_KEY}\n"
                "providers:\n"
                f"  - {{name: up, type: openai, base_url: '{upstream.base_url}', "
                "api_keys: [sk-up-key-0001]}\n"
                "groups:\n"
                "  - name: g\n"
                "    models:\n"
                "      - provider: up\n"
                f"        name: {member}\n")

    router = await start_router(config("m"))
    router.config_path.write_text(config("|\n          m"))
    assert await router.runner.app[RELOADER].reload("test", force=True) is False
    chat = orjson.dumps({"model": "g", "messages": HELLO})
    status, doc = await _raw(router, (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
        f"{AUTH['Authorization']}\r\nContent-Length: {len(chat)}\r\nConnection: close\r\n\r\n"
    ).encode() + chat)
    assert status == 200, doc
    assert doc["model"] == "m"


async def test_a_redis_password_given_as_a_url_parameter_is_never_shown(
        start_router: StartRouter, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """redis-py takes the password from ``?password=`` as well as from ``user:pass@``;
    only the second was masked in the log lines naming the backend, /admin/status and
    check's problems."""
    pytest.importorskip("redis")
    password = "qs-redis-pw-7f3a9c"
    admin = "sk-hostile-admin-0002"
    url = f"redis://127.0.0.1:{free_port()}/0?username=bob&password={password}"  # down
    caplog.set_level(logging.DEBUG)
    router = await start_router({
        **_MOCK, "state": {"redis_url": url},
        "users": [{"name": "ops", "role": "admin", "keys": [{"key": admin}]}]})

    async def named_in_the_log() -> bool:
        return "still down" in caplog.text or "not usable" in caplog.text

    await eventually(named_in_the_log)
    status, report = await _get(router, "/admin/status", admin)
    assert status == 200
    assert "username=bob" in orjson.dumps(report).decode()  # named, masked
    assert password not in orjson.dumps(report).decode()
    assert password not in caplog.text
    # check, on a URL it refuses for another reason.
    path = tmp_path / "bad.yaml"
    path.write_text(f"api_key: {ROUTER_KEY}\nstate:\n  redis_url: "
                    f"'redis://127.0.0.1:{free_port()}/zero?password={password}'\n")
    assert cli_main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "state.redis_url" in err and password not in err


async def test_a_model_name_longer_than_256_bytes_is_a_400_and_never_echoed_in_a_header(
        start_router: StartRouter, upstream: Upstream, caplog: pytest.LogCaptureFixture
        ) -> None:
    """A direct provider/model name goes into X-Router-Group and X-Router-Model, the
    access line and the trace: a 1 MB name came back as a 1 MB response header (and was
    sent upstream, and cached among the direct targets)."""
    router = await start_router({"providers": [openai_provider("up", upstream)],
                                 "groups": [{"name": "g", "models": [{"provider": "up",
                                                                      "name": "m"}]}]})
    caplog.set_level(logging.DEBUG)
    longest = "up/" + "m" * 253  # 256 bytes: served, and named in the headers
    data = orjson.dumps({"model": longest, "messages": HELLO})
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(_post("/v1/chat/completions", data, "identity", "close"))
    head = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")[0]
    writer.close()
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert f"X-Router-Model: {'m' * 253}\r\n".encode() in head
    served = len(upstream.fake.requests)
    for model in ("up/" + "m" * 254, "up/" + "é" * 127, "up/" + "x" * 1_000_000,
                  "g" * 257):
        for path, body in _MODEL_ROUTES:
            data = orjson.dumps({"model": model, **body})
            status, doc = await _raw(router, _post(path, data, "identity", "close"))
            assert status == 400, (path, doc)
            error = doc["error"]
            assert "at most 256 bytes" in error["message"], error
            assert model[3:40] not in error["message"]
            if not path.startswith("/v1/messages"):
                assert error["code"] == "invalid_model" and error["param"] == "model"
    assert len(upstream.fake.requests) == served
    assert "x" * 300 not in caplog.text


async def test_a_key_sent_as_the_model_is_a_400_and_never_logged_or_sent_upstream(
        start_router: StartRouter, upstream: Upstream, caplog: pytest.LogCaptureFixture
        ) -> None:
    """Users' keys are kept as hashes, so the log redaction cannot find one in a line: a
    user who pasted their key into ``model`` had it written whole into the access line
    (a 404 keeps the name sent), and as ``provider/KEY`` it was sent to the upstream as
    a model name and named in the trace and headers."""
    own = "sk-user-own-key-51f0c2a9d3"
    admin = "sk-hostile-admin-0003"
    router = await start_router({
        "providers": [openai_provider("up", upstream)],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "users": [{"name": "alice", "keys": [{"sha256": hashlib.sha256(own.encode()).hexdigest()}]},
                  {"name": "ops", "role": "admin", "keys": [{"key": admin}]}]})
    caplog.set_level(logging.DEBUG)
    for model in (own, "up/" + own, admin):
        for path, body in (("/v1/chat/completions", {"messages": HELLO}),
                           ("/v1/messages", {"messages": HELLO, "max_tokens": 5}),
                           ("/v1/messages/count_tokens", {"messages": HELLO}),
                           ("/v1/responses", {"input": "hi"}),
                           ("/v1/embeddings", {"input": "hi"})):
            data = orjson.dumps({"model": model, **body})
            status, doc = await _raw(router, (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {own}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
            assert status == 400, (path, model, doc)
            assert "is an API key of this router" in doc["error"]["message"]
            assert own not in doc["error"]["message"]
            if not path.startswith("/v1/messages"):
                assert doc["error"]["code"] == "invalid_model"
    assert upstream.fake.requests == []
    status, report = await _get(router, "/admin/status", admin)
    assert status == 200
    text, _ = await metrics_page(router.url)
    for seen in (caplog.text, orjson.dumps(report).decode(), text):
        assert own not in seen and admin not in seen
    # A name that only looks like a key is a name: an unknown one is a 404 as before.
    data = orjson.dumps({"model": "sk-not-a-key-of-this-router", "messages": HELLO})
    status, doc = await _raw(router, (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {own}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
    assert status == 404 and doc["error"]["code"] == "model_not_found"



@pytest.mark.parametrize("pasted", ["{key}\n", " {key} ", "Bearer {key}", "bearer  {key}\r\n",
                                    "up/ {key}", "up/Bearer {key}"])
async def test_a_key_pasted_as_the_model_with_its_whitespace_or_scheme_is_refused_too(
        pasted: str, start_router: StartRouter, upstream: Upstream,
        caplog: pytest.LogCaptureFixture) -> None:
    """A key copied with its line's newline, spaces, or as the header's whole value
    (``Bearer KEY``) was not recognised: it went whole into the 404's access line, or,
    with a wildcard alias, was served and logged as the name asked."""
    own = "sk-user-own-key-7be4a01c55"
    router = await start_router({
        "providers": [openai_provider("up", upstream)],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "users": [{"name": "alice", "keys": [{"key": own}]}]})
    caplog.set_level(logging.DEBUG)
    for aliases in (None, {"*": "g"}):
        if aliases is not None:
            router = await start_router({
                "providers": [openai_provider("up", upstream)], "aliases": aliases,
                "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
                "users": [{"name": "alice", "keys": [{"key": own}]}]})
        data = orjson.dumps({"model": pasted.format(key=own), "messages": HELLO})
        status, doc = await _raw(router, (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {own}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
        assert status == 400 and doc["error"]["code"] == "invalid_model", doc
    assert upstream.fake.requests == []
    assert own not in caplog.text


async def test_a_large_body_is_parsed_without_full_garbage_collections(
        start_router: StartRouter, upstream: Upstream) -> None:
    """A body of many nested objects (8 MiB of tool schemas here) made CPython's collector run
    full collections while orjson built it, each walking every object of the process: the
    parse took about six times as long and stalled every other client meanwhile. A parsed
    body holds no reference cycle, so the collector pauses while it is read."""
    router = await start_router({"providers": [openai_provider("up", upstream)],
                                 "groups": [{"name": "g", "models": [{"provider": "up",
                                                                      "name": "m"}]}],
                                 "max_body_bytes": 16 << 20})
    # count_tokens: answered by the router's estimate, so nothing this size goes upstream.
    tools = [{"name": f"t{i}", "input_schema": {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}}}}}
        for i in range(70_000)]
    data = orjson.dumps({"model": "g", "messages": HELLO, "tools": tools})
    del tools
    assert len(data) > 7 << 20
    full: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.collect()
    gc.callbacks.append(count)
    try:
        status, doc = await _raw(router, _post("/v1/messages/count_tokens", data,
                                               "identity", "close"))
    finally:
        gc.callbacks.remove(count)
    assert status == 200, doc
    assert len(full) <= 1, f"{len(full)} full collections while serving one request"
    # Paused for the request's first stretch only: running, and nothing left frozen.
    assert gc.isenabled() and gc.get_freeze_count() == 0


class _Cycle:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


async def test_garbage_from_before_a_large_body_is_left_to_the_young_collections(
        start_router: StartRouter, upstream: Upstream) -> None:
    """Pausing the collector for a large body moved every object alive then to the oldest
    generation (gc.freeze, then gc.unfreeze), cyclic garbage included, where only a full
    collection looks, and freeze reset the count that starts collections. A client that
    sent 70 KB bodies and dropped each stream after its first bytes (the disconnect left
    a few objects in cycles) grew a router by 0.5 MiB a second, never collected: not one
    collection of any generation in a minute. Garbage made before such a body must still
    be the young generations' to free."""
    router = await start_router({"providers": [openai_provider("up", upstream)],
                                 "groups": [{"name": "g", "models": [{"provider": "up",
                                                                      "name": "m"}]}]})
    data = orjson.dumps({"model": "g", "max_tokens": 5, "messages": [
        {"role": "user", "content": "many words " * 10_000}]})
    assert len(data) > 64 << 10
    gc.collect()
    alive = weakref.ref(_Cycle())  # garbage at once, young: any collection frees it
    status, doc = await _raw(router, _post("/v1/messages/count_tokens", data,
                                           "identity", "close"))
    assert status == 200, doc
    assert gc.isenabled()
    gc.collect(1)  # the two young generations, as the collector runs them on its own
    assert alive() is None, "a full collection was needed to free young garbage"
    assert gc.get_freeze_count() == 0
