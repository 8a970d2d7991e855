"""The quick start and the container files say the same, safe things."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
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


def test_the_distribution_is_not_the_unrelated_pypi_llm_router() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # "llm-router" on PyPI is another project with the same import name (and chromadb,
    # onnxruntime); `pip index versions llm-router-gateway` found nothing under ours.
    assert project["name"] == "llm-router-gateway"
    assert project["scripts"] == {"llm-router": "llm_router.cli:main"}  # the command stays
    assert {"redis", "otel"} <= set(project["optional-dependencies"])


_SHIPPED_TEXT = [ROOT / "README.md", ROOT / "Dockerfile", *sorted((ROOT / "docs").glob("*.md")),
                 ROOT / "config.schema.json", *sorted((ROOT / "llm_router").rglob("*.py"))]


@pytest.mark.parametrize("path", _SHIPPED_TEXT, ids=lambda p: str(p.relative_to(ROOT)))
def test_install_lines_install_the_checkout_never_the_name_on_pypi(path: Path) -> None:
    text = path.read_text()
    # llm-router[redis] or `pip install llm-router` would fetch the unrelated project.
    assert not re.search(r"llm-router\[", text)
    assert not re.search(r"pip install\s+['\"]?llm-router\b(?!-gateway)", text)
    for line in re.findall(r"pip install[^\n`]*", text):
        extras = re.findall(r"(\S*)\[(\w+)\]", line)
        assert all(where.strip("'\"") in (".", "-e '.", "'.", '".') for where, _ in extras), line


def test_the_error_naming_the_redis_extra_says_how_a_checkout_installs_it() -> None:
    import subprocess
    import sys

    # A Python without the redis package: the config check must say how to add it.
    code = ("import sys; sys.modules['redis'] = None\n"
            "from llm_router.config import parse_config, ConfigError\n"
            "try:\n"
            "    parse_config('api_key: k\\nproviders: [{name: m, type: mock}]\\n'\n"
            "                 'state: {redis_url: \"redis://127.0.0.1:6379/0\"}\\n')\n"
            "except ConfigError as exc:\n"
            "    print(exc.problems)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install '.[redis]'" in out and "llm-router[" not in out, out
