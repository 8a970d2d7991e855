"""The bare hop: the floor for any Python HTTP proxy on aiohttp.

It reads the client's body, posts it unchanged to one upstream through one shared
``ClientSession``, and sends the answer back: buffered when the upstream gave a
``Content-Length``, otherwise (SSE) chunk by chunk as it arrives. No JSON parsing, no
routing, no metrics, no logging. Whatever the router costs above this is the router's.

    python bench/forwarder.py --port 9101 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

__all__ = ["main"]

_SESSION = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM = web.AppKey("upstream", str)
# Request headers worth passing on; everything else (Host, Content-Length) is the hop's.
_PASS = ("Content-Type", "Authorization", "x-api-key", "Accept", "Accept-Encoding")


async def _forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {h: request.headers[h] for h in _PASS if h in request.headers}
    session = request.app[_SESSION]
    url = request.app[_UPSTREAM] + request.path_qs
    async with session.request(request.method, url, data=body, headers=headers) as up:
        content_type = up.headers.get("Content-Type", "application/octet-stream")
        if up.content_length is not None:
            return web.Response(status=up.status, body=await up.read(),
                                headers={"Content-Type": content_type})
        out = web.StreamResponse(status=up.status, headers={"Content-Type": content_type})
        if "Content-Encoding" in up.headers:
            out.headers["Content-Encoding"] = up.headers["Content-Encoding"]
        await out.prepare(request)
        async for chunk in up.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


async def _session(app: web.Application) -> AsyncIterator[None]:
    # Same pool shape as the router's, and no decompression: bytes pass through as sent.
    connector = aiohttp.TCPConnector(limit=2048, limit_per_host=0, keepalive_timeout=30)
    app[_SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                          trust_env=False,
                                          timeout=aiohttp.ClientTimeout(total=None))
    yield
    await app[_SESSION].close()


def _app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


async def _serve(host: str, port: int, upstream: str) -> None:
    runner = web.AppRunner(_app(upstream), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()  # as the router
        print(f"forwarder listening on http://{host}:{port} -> {upstream}", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9001")
    args = p.parse_args()
    try:  # the router runs on uvloop where it can: compare like with like
        import uvloop
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(_serve(args.host, args.port, args.upstream))
        else:
            asyncio.run(_serve(args.host, args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
