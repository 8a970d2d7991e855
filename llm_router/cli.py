"""The ``llm-router`` command: serve | check | schema | hash-key | gen-key | fake-upstream."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import (
    Config,
    ConfigError,
    config_json_schema,
    load_config,
    sha256_hex,
    without_source_line,
)
from .config.yaml_file import key_positions, position_of

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-router",
                                description="Self-hosted, OpenAI-compatible LLM gateway.")
    p.add_argument("--version", action="version", version=f"llm-router {__version__}")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="run the router (the default)")
    _serve_args(s)
    c = sub.add_parser("check", help="validate a config file (exit 1 on errors, 0 with "
                                     "warnings only)")
    c.add_argument("path")
    c.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout, for CI pipelines")
    # The serve options that change whether a config may start, so that check accepts
    # exactly the configs serve starts with the same options.
    c.add_argument("--insecure-no-auth", action="store_true",
                   help="accept a config without users or api_key, as serve does with it")
    c.add_argument("--workers", type=int, default=1, metavar="N",
                   help="check for serve --workers N (N > 1 needs state.redis_url)")
    sub.add_parser("schema", help="print the config file's JSON Schema")
    h = sub.add_parser("hash-key", help="print the sha256 of a key (stdin without KEY)")
    h.add_argument("key", nargs="?")
    sub.add_parser("gen-key", help="print a new random key and its sha256")
    f = sub.add_parser("fake-upstream",
                       help="run a fake model server (OpenAI, Anthropic, Gemini, Vertex AI, "
                            "Bedrock, Azure OpenAI)")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, default=9000)
    f.add_argument("--latency-ms", type=float, default=0.0)
    f.add_argument("--tokens-per-second", type=float, default=0.0)
    f.add_argument("--prompt-cache-ttl-s", type=float, default=0.0, metavar="S",
                   help="per-API-key prompt cache: chat and Messages answers report as "
                        "cached (usage.prompt_tokens_details.cached_tokens; Anthropic "
                        "cache_read_input_tokens) the tokens of the longest run of whole "
                        "leading messages (tools and system first) that the same key sent "
                        "for the same model within S seconds; 0 (default) = off")
    return p


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: $LLM_ROUTER_CONFIG or config.yaml)")
    p.add_argument("--host", help="listen address (default: the config's host)")
    p.add_argument("--port", type=int, help="listen port (default: the config's port)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="json", choices=["json", "text"])
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="serve without any client key when the config defines none")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N router processes on the same host:port (needs state.redis_url "
                        "when N > 1; docs/scaling.md)")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve", "check", "schema", "hash-key", "gen-key", "fake-upstream"}
    if not any(a in commands for a in args_list[:1]) and not {"-h", "--help", "--version"} & set(
            args_list[:1]):
        args_list.insert(0, "serve")  # no sub-command means serve
    args = _parser().parse_args(args_list)
    if args.command == "check":
        check = _check_json if args.json else _check
        return check(args.path, insecure_no_auth=args.insecure_no_auth, workers=args.workers)
    if args.command == "schema":
        print(json.dumps(config_json_schema(), indent=2))
        return 0
    if args.command == "hash-key":
        key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
        if not key:
            print("llm-router hash-key: no key given", file=sys.stderr)
            return 2
        print(sha256_hex(key))
        return 0
    if args.command == "gen-key":
        key = "sk-lr-" + secrets.token_urlsafe(32)
        print(f"key:    {key}\nsha256: {sha256_hex(key)}")
        return 0
    if args.command == "fake-upstream":
        from .testing.upstream import serve_fake_upstream
        _run(serve_fake_upstream(args.host, args.port, args.latency_ms, args.tokens_per_second,
                                 args.prompt_cache_ttl_s))
        return 0
    return _serve(args)


def _verdict(path: str, *, insecure_no_auth: bool, workers: int
             ) -> tuple[Config | None, list[str], list[str]]:
    """(config, errors, warnings) as ``serve`` with the same options would judge ``path``:
    the config's own problems, then what refuses a start (:func:`_start_problems`)."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return None, exc.problems, exc.warnings
    errors = _start_problems(cfg, insecure_no_auth=insecure_no_auth, workers=workers)
    return (None if errors else cfg), errors, list(cfg.warnings)


def _start_problems(cfg: Config, *, insecure_no_auth: bool, workers: int) -> list[str]:
    """Why ``serve`` refuses to start a valid config, each ``location: message``; the
    same list makes ``check`` fail, so the two always agree."""
    problems = []
    if not cfg.providers:  # an empty file too; a reload refuses such a config as well
        problems.append("providers: none defined, so every request would fail: serve "
                        "refuses to start. Add at least one (type: mock answers without a "
                        "key or a network).")
    if not cfg.users and not cfg.api_key and not insecure_no_auth:
        problems.append(
            "users: the config defines no 'users' and no 'api_key', so anyone could use your "
            "upstream keys: serve refuses to start. Add one, or pass --insecure-no-auth (to "
            "check and serve) to serve without authentication.")
    if workers < 1:
        problems.append("--workers: must be at least 1")
    elif workers > 1 and not cfg.state.redis_url:
        problems.append(
            f"state.redis_url: required for {workers} workers: without it each worker would "
            "keep its own counters, so limits and budgets would be per worker (rpm: 60 would "
            "allow 60 per worker). Add Redis to the config:\n"
            "  state:\n    redis_url: redis://localhost:6379/0\n"
            "(pip install '.[redis]' in a checkout; docs/scaling.md), or run one worker.")
    return problems


def _check(path: str, *, insecure_no_auth: bool = False, workers: int = 1) -> int:
    """``check``: errors (exit 1) and warnings, each located, in the file's order."""
    cfg, errors, warnings = _verdict(path, insecure_no_auth=insecure_no_auth, workers=workers)
    if cfg is not None:
        print(f"{path}: OK: {cfg.summary()}")
    at = _positions(path) if errors or warnings else {}
    for what, lines in (("problem", errors), ("warning", warnings)):
        if lines:
            print(f"{path}: {len(lines)} {what}(s)", file=sys.stderr)
        for line in lines:  # already in the file's order
            item = _located(line, at)
            # a YAML syntax error's location is file:line:column already
            located = "line" in item and not re.search(r":\d+:\d+$", item["location"])
            print(f"  {'line ' + str(item['line']) + ': ' if located else ''}{line}",
                  file=sys.stderr)
    return 1 if errors else 0


def _check_json(path: str, *, insecure_no_auth: bool = False, workers: int = 1) -> int:
    """``check --json``: one JSON object on stdout, the exit code as without --json."""
    cfg, errors, warnings = _verdict(path, insecure_no_auth=insecure_no_auth, workers=workers)
    at = _positions(path) if errors or warnings else {}
    print(json.dumps({"path": path, "ok": not errors,
                      "summary": cfg.summary() if cfg is not None else None,
                      "errors": [_located(line, at) for line in errors],
                      "warnings": [_located(line, at) for line in warnings]}, indent=2))
    return 1 if errors else 0


def _positions(path: str) -> dict[str, tuple[int, int]]:
    """Line and column of every key in the file, to point at each problem."""
    try:
        return key_positions(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}


def _located(line: str, at: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """``{location, message, line?, column?}`` of one ``location: message`` line."""
    location, _, message = line.partition(": ")
    out: dict[str, Any] = {"location": location, "message": message.split("\n", 1)[0]}
    position = position_of(location, at)
    if position is not None:
        out["line"], out["column"] = position
    return out


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where the platform has it."""
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
    except KeyboardInterrupt:
        pass


def _serve(args: argparse.Namespace) -> int:
    # SIGHUP's default action ends the process. Until run_server installs the reload
    # handler, a reload asked too early (a deploy script, or --workers forwarding one to
    # a worker still starting) must be a no-op, not a kill: the config is read fresh anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from .observe.logs import setup_stderr_logging
    from .server.app import AccessLogHandler, ListenError, run_server

    setup_stderr_logging(args.log_level, args.log_format)
    logging.getLogger("llm_router.access").propagate = False
    access = logging.getLogger("llm_router.access")
    # Its own buffer on stdout, even under PYTHONUNBUFFERED: flushed every half second.
    stream = open(sys.stdout.fileno(), "w", buffering=1 << 16, encoding="utf-8",  # noqa: SIM115
                  closefd=False)  # lives as long as the process
    handler = AccessLogHandler(stream)  # writes each line as is
    access.addHandler(handler)
    access.setLevel(args.log_level)
    path = args.config or os.environ.get("LLM_ROUTER_CONFIG") or "config.yaml"
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"llm-router: cannot start: {path} has {len(exc.problems)} problem(s):",
              file=sys.stderr)
        for line in exc.problems:  # the daemon's log: no line of the file (a key?)
            print(f"  {without_source_line(line)}", file=sys.stderr)
        return 1
    refused = _start_problems(cfg, insecure_no_auth=args.insecure_no_auth,
                              workers=args.workers)
    if refused:
        print(f"llm-router: refusing to start: {path}:", file=sys.stderr)
        for line in refused:
            print(f"  {line}", file=sys.stderr)
        return 2
    for line in cfg.warnings:
        logging.getLogger("llm_router.config").warning("config %s: %s", path, line)
    if args.workers != 1:
        return _supervise(args, path)
    from .gateway.router_state import RouterState
    from .ledger.usage import SnapshotError
    from .observe.redact import RedactingFilter
    from .server.workers import WORKER_ENV

    state = RouterState(cfg, insecure_no_auth=args.insecure_no_auth, config_path=path)
    # Every log line, stderr and access alike, without the config's secrets.
    scrub = RedactingFilter(lambda: state.redactor)
    for log_handler in (*logging.getLogger().handlers, handler):
        log_handler.addFilter(scrub)
    try:
        _run(run_server(state, args.host or cfg.host, args.port if args.port is not None
                        else cfg.port, log_format=args.log_format,
                        reuse_port=WORKER_ENV in os.environ))
    except ListenError as exc:
        print(f"llm-router: {exc}", file=sys.stderr)
        return 1
    except SnapshotError as exc:
        print(f"llm-router: cannot start: {exc}", file=sys.stderr)
        return 1
    # Counters that could not be saved are worth an alert, not a clean exit.
    return 1 if state.final_snapshot_failed else 0


def _supervise(args: argparse.Namespace, path: str) -> int:
    """``--workers N``: run N workers under a supervisor (the setup is checked already)."""
    from .server.workers import supervise

    serve_args = ["--config", path, "--log-level", args.log_level,
                  "--log-format", args.log_format]
    if args.host:
        serve_args += ["--host", args.host]
    if args.port is not None:
        serve_args += ["--port", str(args.port)]
    if args.insecure_no_auth:
        serve_args.append("--insecure-no-auth")
    return supervise(serve_args, args.workers)
