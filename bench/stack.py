"""The servers under test, all on 127.0.0.1: fake upstreams, bare hops, router, LiteLLM.

Three fake upstreams, one per upstream behaviour the scenarios need:

* ``fast``: answers at once (scenario 1, saturation);
* ``slow``: 50 ms before every answer (scenario 2, added latency);
* ``stream``: paces streams at 50 tokens/s (scenarios 3 and 4).

Each has its own bare hop (``bench/forwarder.py``). One router config
(``bench/bench.yaml``, written here with the fakes' ports) has one group per fake:
``bench-fast``, ``bench-slow``, ``bench-stream``; every target gets the same body, and
the fakes answer whatever model they are asked for. The router is restarted for every
scenario so its peak RSS and CPU belong to that scenario alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from procs import Children, free_port

__all__ = ["HOST", "KINDS", "ROUTER_KEY", "Stack", "Target", "ensure_litellm"]

HOST = "127.0.0.1"  # loopback only, always
ROUTER_KEY = "sk-bench-router"
# kind -> (latency_ms, tokens_per_second) of its fake upstream
KINDS: dict[str, tuple[float, float]] = {"fast": (0, 0), "slow": (50, 0), "stream": (0, 50)}
_BENCH = Path(__file__).resolve().parent
_LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_ADMIN_UI": "True",
}


@dataclass
class Target:
    """One thing to load: where to send, which process to watch, what model to ask for."""

    name: str  # direct | hop | router | litellm
    base: str  # http://127.0.0.1:port
    pid: int | None
    model: str
    upstream_pid: int  # the fake behind it (its CPU is recorded too)

    @property
    def chat_url(self) -> str:
        return f"{self.base}/v1/chat/completions"


@dataclass
class _Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


class Stack:
    """Starts and owns every server of a bench run (stopped by ``children.stop_all``)."""

    def __init__(self, children: Children, kinds: set[str], litellm: Path | None) -> None:
        self.children = children
        self.kinds = kinds
        self.litellm_bin = litellm
        self.fakes: dict[str, _Server] = {}
        self.hops: dict[str, _Server] = {}
        self.router: _Server | None = None
        self.litellm: _Server | None = None
        self.config_path = _BENCH / "bench.yaml"

    def start(self) -> None:
        for kind in sorted(self.kinds):
            latency, tps = KINDS[kind]
            self.fakes[kind] = self._serve(f"fake-{kind}", lambda port, lat=latency, t=tps: [
                sys.executable, "-m", "llm_router", "fake-upstream", "--host", HOST,
                "--port", str(port), "--latency-ms", str(lat), "--tokens-per-second", str(t)],
                "/v1/models")
        for kind, fake in self.fakes.items():
            self.hops[kind] = self._serve(f"hop-{kind}", lambda port, up=fake.base: [
                sys.executable, str(_BENCH / "forwarder.py"), "--host", HOST, "--port",
                str(port), "--upstream", up], "/v1/models")
        self._write_config()
        if self.litellm_bin is not None:
            self._start_litellm(self.litellm_bin)

    def restart_router(self) -> None:
        """A fresh router process (fresh RSS and CPU counters) on the bench config."""
        if self.router is not None:
            self.children.stop(self.router.proc)
        self.router = self._serve("router", lambda port: [
            sys.executable, "-m", "llm_router", "serve", "--config", str(self.config_path),
            "--host", HOST, "--port", str(port), "--log-level", "WARNING"], "/health")

    def targets(self, kind: str, names: list[str]) -> list[Target]:
        fake = self.fakes[kind]
        model = f"bench-{kind}"
        out = []
        for name in names:
            server = {"direct": fake, "hop": self.hops[kind], "router": self.router,
                      "litellm": self.litellm}[name]
            if server is None:
                continue
            out.append(Target(name, server.base, server.proc.pid if name != "direct" else None,
                              model, fake.proc.pid))
        return out

    def _serve(self, name: str, argv: Callable[[int], list[str]], ready_path: str,
               timeout_s: float = 30.0) -> _Server:
        port = free_port()
        proc = self.children.start(name, argv(port))
        server = _Server(name, proc, port)
        self.children.wait_ready(name, proc, server.base + ready_path, timeout_s)
        return server

    def _write_config(self) -> None:
        lines = [
            "# Written by bench/run.py for one run (ports change every time); not for editing.",
            f"host: {HOST}", "port: 8080", f"api_key: {ROUTER_KEY}", "shutdown_grace_s: 2",
            "providers:",
        ]
        for kind, fake in self.fakes.items():
            lines += [f"  - name: fake-{kind}", "    type: openai",
                      f"    base_url: {fake.base}/v1", f"    api_keys: [sk-upstream-{kind}]"]
        lines.append("groups:")
        for kind in self.fakes:
            lines += [f"  - name: bench-{kind}",
                      f"    models: [{{provider: fake-{kind}, name: fake-gpt, weight: 1}}]"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _start_litellm(self, binary: Path) -> None:
        cfg = self.children.log_dir / "litellm.yaml"
        lines = ["model_list:"]
        for kind, fake in self.fakes.items():
            lines += [f"  - model_name: bench-{kind}", "    litellm_params:",
                      "      model: openai/fake-gpt", f"      api_base: {fake.base}/v1",
                      f"      api_key: sk-upstream-{kind}"]
        lines += ["litellm_settings:", "  drop_params: true", "  telemetry: false"]
        cfg.write_text("\n".join(lines) + "\n")
        port = free_port()
        # Same key as the router's: both authenticate every request (no database here).
        proc = self.children.start("litellm", [
            str(binary), "--config", str(cfg), "--host", HOST, "--port", str(port),
            "--num_workers", "1"], env={**_LITELLM_ENV, "LITELLM_MASTER_KEY": ROUTER_KEY})
        server = _Server("litellm", proc, port)
        # LiteLLM imports a great deal before it listens.
        self.children.wait_ready("litellm", proc, server.base + "/health/liveliness", 180.0)
        self.litellm = server


def ensure_litellm(venv: Path) -> Path:
    """LiteLLM's proxy in its own venv (created and installed from PyPI on first use)."""
    binary = venv / "bin" / "litellm"
    if binary.exists():
        return binary
    print(f"installing LiteLLM's proxy into {venv} (pip, PyPI; once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
                   check=True, timeout=1800,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if not binary.exists():
        raise RuntimeError(f"pip installed litellm but {binary} is missing")
    return binary
