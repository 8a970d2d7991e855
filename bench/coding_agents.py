"""Run the real coding agents against the router, as a user would, and print what they say.

    python bench/coding_agents.py                    # agents found on PATH
    python bench/coding_agents.py --agents DIR       # or in DIR/node_modules/.bin

Starts ``llm-router serve config.example.yaml`` on a free loopback port (its default
group is the built-in mock, so no API key is needed), then runs, when installed:

- Claude Code (npm ``@anthropic-ai/claude-code``): ``claude -p "hi"`` with
  ``ANTHROPIC_BASE_URL`` at the router and no model flag;
- Codex CLI (npm ``@openai/codex``): ``codex exec "say hi"`` with a ``config.toml``
  naming the router as a ``wire_api = "responses"`` provider and no model flag.

Both ask for their vendor's model names (claude-opus-4-8, gpt-5-codex), which the example
config's ``aliases`` send to ``fast``. Each agent gets a fresh HOME / CODEX_HOME in a
temporary folder. The router's access lines show what each request was mapped to.
Install the agents with ``npm install @anthropic-ai/claude-code @openai/codex`` in DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-router-demo"  # config.example.yaml's api_key default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find(name: str, agents: Path | None) -> str | None:
    if agents is not None:
        candidate = agents / "node_modules" / ".bin" / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the router exited at start:\n" + log.read_text()[-2000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the router did not start listening")


def _run(title: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
    print(f"\n=== {title}: {' '.join(argv[1:])}")
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print("timed out after 180 s")
        return
    out = (done.stdout.strip() or done.stderr.strip())
    print(f"exit {done.returncode} in {time.monotonic() - started:.1f} s; it printed:")
    print(out[-600:] if len(out) > 600 else out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=Path, default=None,
                        help="a folder where the agents were npm-installed")
    args = parser.parse_args()
    claude, codex = _find("claude", args.agents), _find("codex", args.agents)
    if claude is None and codex is None:
        raise SystemExit("neither claude nor codex found (npm install "
                         "@anthropic-ai/claude-code @openai/codex)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        log = (tmp / "router.log").open("w")
        router = subprocess.Popen(
            [sys.executable, "-m", "llm_router", "serve", "--config",
             str(ROOT / "config.example.yaml"), "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(port, router, tmp / "router.log")
            base = {k: v for k, v in os.environ.items()
                    if not k.startswith(("ANTHROPIC_", "OPENAI_", "CODEX_"))}
            if claude is not None:
                home = tmp / "claude-home"
                home.mkdir()
                _run("Claude Code", [claude, "-p", "hi"], {
                    **base, "HOME": str(home), "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
                    "ANTHROPIC_API_KEY": KEY, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                    "DISABLE_AUTOUPDATER": "1"}, tmp)
            if codex is not None:
                home = tmp / "codex-home"
                home.mkdir()
                (home / "config.toml").write_text(
                    'model_provider = "router"\n\n[model_providers.router]\n'
                    'name = "llm-router"\n'
                    f'base_url = "http://127.0.0.1:{port}/v1"\n'
                    'env_key = "ROUTER_API_KEY"\nwire_api = "responses"\n')
                _run("Codex CLI", [codex, "exec", "--skip-git-repo-check", "say hi"], {
                    **base, "CODEX_HOME": str(home), "ROUTER_API_KEY": KEY}, tmp)
        finally:
            router.terminate()
            router.wait(timeout=30)
            log.close()
        print("\n=== the router's access lines")
        for line in (tmp / "router.log").read_text().splitlines():
            if '"request_id"' in line:
                print(line[:400])


if __name__ == "__main__":
    main()
