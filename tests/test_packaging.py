"""The quick start and the container files say the same, safe things."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_publishes_on_loopback_unless_told_otherwise() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", ()):
            assert port.startswith("${LLM_ROUTER_BIND:-127.0.0.1}:"), (name, port)


def test_dockerfile_and_readme_mount_the_config_directory() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    for text in (dockerfile, readme):
        mounts = re.findall(r'-v "\$PWD/([^"]+)"', text)
        assert mounts and all(m.endswith(":/etc/llm-router:ro") for m in mounts
                              if "llm-router-data" not in m), mounts


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name in (".git", ".venv", "config.yaml", "usage.json"):
        assert name in ignored


def test_quick_start_creates_a_venv_and_installs_the_sdk() -> None:
    quick = (ROOT / "README.md").read_text().split("## Quick start")[1].split("### Tests")[0]
    assert "python3 -m venv .venv" in quick and "pip install openai" in quick
    assert "usage.json" in quick
