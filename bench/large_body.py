"""How long one large request body holds the router's event loop (every other client
waits that long), by body shape and route.

The router runs in this process, a ``llm-router fake-upstream`` in a child; one client
thread sends each body over a real socket while a 2 ms ticker on the loop records the
longest gap between its ticks. Bytes of text cost little to parse; what costs is the
number of JSON values (docs/operations.md, "What a large body costs"):

    python bench/large_body.py                 # every shape x route, ~32 MiB, best of 2
    python bench/large_body.py --mib 8 --shapes tools --routes chat
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from llm_router.config import load_config
from llm_router.gateway.router_state import RouterState
from llm_router.server.app import start_server

PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages",
         "count_tokens": "/v1/messages/count_tokens", "responses": "/v1/responses"}
SHAPES = ("text", "messages", "parts", "tools")


def body(shape: str, route: str, size: int) -> dict[str, Any]:
    """About ``size`` bytes of JSON of one shape: one long text, many short turns, one
    turn of many short parts, or many tools with small nested schemas."""
    head: dict[str, Any] = {"model": "g"}
    if route in ("messages", "count_tokens"):
        head["max_tokens"] = 10
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hello there friend"}
             for i in range(size // 60)]
    if route == "responses":
        if shape == "messages":
            return {**head, "input": turns}
        if shape == "parts":
            return {**head, "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "hi there"}] * (size // 50)}]}
        return {**head, "input": "a" * size}
    if shape == "text":
        return {**head, "messages": [{"role": "user", "content": "a" * size}]}
    if shape == "messages":
        return {**head, "messages": turns}
    if shape == "parts":
        return {**head, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi there"}] * (size // 50)}]}
    if route in ("messages", "count_tokens"):
        tools = [{"name": f"t{i}", "input_schema": {"type": "object", "properties": {
            "a": {"type": "string"}}}} for i in range(size // 90)]
    else:
        tools = [{"type": "function", "function": {"name": f"t{i}", "parameters": {
            "type": "object", "properties": {"a": {"type": "string"}}}}}
            for i in range(size // 120)]
    return {**head, "messages": [{"role": "user", "content": "hi"}], "tools": tools}


def _send(port: int, path: str, data: bytes, out: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-bench\r\n"
                  f"anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    out.append(answer[:12])


async def stall(port: int, path: str, data: bytes) -> float:
    """The longest the loop went without running the ticker while ``data`` was served."""
    loop = asyncio.get_running_loop()
    gaps = [0.0]
    done = False

    async def tick() -> None:
        last = loop.time()
        while not done:
            await asyncio.sleep(0.002)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    out: list[bytes] = []
    sender = threading.Thread(target=_send, args=(port, path, data, out))
    sender.start()
    while sender.is_alive():
        await asyncio.sleep(0.01)
    done = True
    await ticker
    if not out or b" 200" not in out[0]:
        raise SystemExit(f"{path}: {out}")
    return max(gaps)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=float, default=32.0, help="body size (default 32)")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--routes", default=",".join(PATHS))
    ap.add_argument("--rounds", type=int, default=2, help="best of this many")
    args = ap.parse_args()
    size = int(args.mib * (1 << 20)) - 4096
    up = _free_port()
    fake = subprocess.Popen([sys.executable, "-m", "llm_router", "fake-upstream", "--port",
                             str(up)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", up)).close()
                break
            except OSError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.yaml"
            path.write_text(yaml.safe_dump({
                "api_key": "sk-bench", "max_body_bytes": 64 << 20,
                "providers": [{"name": "up", "type": "openai",
                               "base_url": f"http://127.0.0.1:{up}/v1",
                               "api_keys": ["sk-up"]}],
                "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
                "pricing": {"m": {"input": 1, "output": 1}}}))
            state = RouterState(load_config(path), config_path=str(path))
            runner, port = await start_server(state, "127.0.0.1", 0)
            print(f"{'route':13} {'shape':9} {'MiB':>5} {'loop stall':>11}")
            for route in args.routes.split(","):
                for shape in args.shapes.split(","):
                    data = orjson.dumps(body(shape, route, size))
                    best = min([await stall(port, PATHS[route], data)
                                for _ in range(args.rounds)])
                    print(f"{route:13} {shape:9} {len(data) / (1 << 20):5.1f} "
                          f"{best * 1000:9.0f} ms", flush=True)
            await runner.cleanup()
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    asyncio.run(main())
