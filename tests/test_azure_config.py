"""An azure provider's config: what loads, and every mistake `llm-router check` names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_router.config import ConfigError, parse_config
from llm_router.observe.redact import Redactor

GROUPS = """
groups:
  - {name: g, models: [{provider: az, name: my-deployment}]}
"""


def azure(body: str) -> str:
    return "providers:\n  - name: az\n    type: azure\n" + "".join(
        f"    {line}\n" for line in body.strip().splitlines()) + GROUPS


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, env={"AZ_SECRET": "s3cr3t-client-value"})
    return exc.value.problems


def test_api_key_provider_loads() -> None:
    cfg = parse_config(azure("""
base_url: https://myres.openai.azure.com/
api_version: "2024-10-21"
api_keys: [azkey-12345678]
"""), env={})
    p = cfg.providers["az"]
    assert (p.type, p.base_url, p.api_version, p.entra) == (
        "azure", "https://myres.openai.azure.com", "2024-10-21", None)
    assert [k.secret for k in p.keys] == ["azkey-12345678"]


def test_entra_provider_gets_one_key_and_the_default_token_url() -> None:
    cfg = parse_config(azure("""
base_url: https://myres.openai.azure.com
api_version: v1
responses: native
entra: {tenant_id: tid, client_id: cid, client_secret: "${AZ_SECRET}"}
"""), env={"AZ_SECRET": "s3cr3t-client-value"})
    p = cfg.providers["az"]
    assert p.entra is not None
    assert p.entra.token_url == "https://login.microsoftonline.com/tid/oauth2/v2.0/token"
    assert [(k.label, k.secret) for k in p.keys] == [("entra", "")]
    assert "s3cr3t" not in repr(p)  # the secret stays out of reprs (and so of logs)


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param("api_keys: [k]", [
        "providers[0].base_url: required",
        "providers[0].api_version: required for azure: a dated version such as 2024-10-21, "
        "or v1"], id="no-base-url-no-version"),
    pytest.param("base_url: https://r.openai.azure.com/openai/deployments/d\napi_version: v1\n"
                 "api_keys: [k]", [
        "providers[0].base_url: an azure base_url is the resource root, e.g. "
        "https://myres.openai.azure.com, without /openai/... or ?api-version=: the router "
        "builds those from api_version and the deployment"], id="path-in-base-url"),
    pytest.param("base_url: https://r.openai.azure.com\napi_version: '2024-10'\n"
                 "api_keys: [k]", [
        "providers[0].api_version: '2024-10' is not an Azure OpenAI API version: write a date "
        "such as 2024-10-21 (or 2025-04-01-preview), or v1"], id="bad-version"),
    pytest.param("base_url: https://r.openai.azure.com\napi_version: '2024-10-21'\n"
                 "responses: native\napi_keys: [k]", [
        "providers[0].responses: Azure serves the Responses API on its v1 path only: set "
        "api_version: v1, or use responses: chat"], id="native-responses-on-dated-path"),
    pytest.param("base_url: https://r.openai.azure.com\napi_version: v1", [
        "providers[0].api_keys: at least one API key (or an entra block) is required"],
                 id="no-credential"),
    pytest.param("base_url: https://r.openai.azure.com\napi_version: v1\napi_keys: [k]\n"
                 "entra: {tenant_id: t, client_id: c, client_secret: \"${AZ_SECRET}\"}", [
        "providers[0].entra: give either api_keys or entra, not both"], id="both-credentials"),
    pytest.param("base_url: https://r.openai.azure.com\napi_version: v1\n"
                 "entra: {tenant_id: t, client_id: c, client_secret: \"${AZ_SECRET}\", "
                 "tokenurl: https://x}", [
        "providers[0].entra.tokenurl: unknown key (did you mean 'token_url'?)"],
                 id="entra-typo"),
    pytest.param("base_url: https://r.openai.azure.com\napi_version: v1\n"
                 "entra: {tenant_id: t, client_id: c}", [
        "providers[0].entra.client_secret: required (or client_secret_file)"],
                 id="entra-without-secret"),
    pytest.param("base_url: https://r.openai.azure.com\napi_version: v1\n"
                 "entra: {tenant_id: t, client_id: c, client_secret: s, "
                 "client_secret_file: /nonexistent}", [
        "providers[0].entra: give either 'client_secret' or 'client_secret_file', not both"],
                 id="entra-secret-twice"),
    pytest.param("base_url: https://r.openai.azure.com\napi_version: v1\n"
                 "entra: {tenant_id: t, client_id: c, client_secret_file: /nonexistent/s}", [
        "providers[0].entra.client_secret_file: cannot read the key file '/nonexistent/s': "
        "No such file or directory"], id="entra-secret-file-missing"),
])
def test_azure_mistakes_are_named(body: str, expected: list[str]) -> None:
    assert problems(azure(body)) == expected


def test_azure_keys_on_another_provider_type_are_errors() -> None:
    text = """
providers:
  - name: oa
    base_url: https://api.openai.com/v1
    api_keys: [k]
    api_version: v1
    entra: {tenant_id: t, client_id: c, client_secret: "${AZ_SECRET}"}
groups:
  - {name: g, models: [{provider: oa, name: m}]}
"""
    assert problems(text) == [
        "providers[0].api_version: only an azure provider has api_version (this one is type "
        "openai)",
        "providers[0].entra: only an azure provider has entra (this one is type openai)",
    ]


def test_check_never_shows_the_client_secret(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    # A mistake in the entra block, so check has to talk about it.
    path.write_text(azure("""
base_url: https://r.openai.azure.com
api_version: v1
api_keys: [k]
entra: {tenant_id: t, client_id: c, client_secret: "${AZ_SECRET}", token_url: nope}
"""))
    out = subprocess.run([sys.executable, "-m", "llm_router", "check", str(path)],
                         capture_output=True, text=True,
                         env={**os.environ, "AZ_SECRET": "s3cr3t-client-value"}, check=False)
    assert out.returncode == 1
    assert "providers[0].entra.token_url: must be an http" in out.stderr
    assert "s3cr3t" not in out.stdout + out.stderr


def test_the_client_secret_is_redacted_from_relayed_bodies_and_logs() -> None:
    cfg = parse_config(azure("""
base_url: https://r.openai.azure.com
api_version: v1
entra: {tenant_id: t, client_id: c, client_secret: "${AZ_SECRET}"}
"""), env={"AZ_SECRET": "s3cr3t-client-value"})
    echoed = Redactor(cfg).text("AADSTS7000215: secret 's3cr3t-client-value' is wrong")
    assert echoed == "AADSTS7000215: secret '[redacted]' is wrong"
