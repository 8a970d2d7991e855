"""The bedrock provider's config keys: region, base_url, SigV4 key pairs and API keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_router.cli import main
from llm_router.config import ConfigError, parse_config

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLEsessiontoken"


def load(provider: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    cfg = {"providers": [{"name": "aws", "type": "bedrock", **provider}],
           "groups": [{"name": "g", "models": [{"provider": "aws", "name": "m"}]}]}
    return parse_config(yaml.safe_dump(cfg), env=env or {})


def problems(provider: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(provider)
    return err.value.problems


def test_sigv4_and_api_keys_load_with_the_default_host() -> None:
    cfg = load({"region": "eu-west-3", "api_keys": [
        {"access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": "${AWS_SECRET_ACCESS_KEY}",
         "session_token": "${AWS_SESSION_TOKEN:-}", "name": "main"},
        {"key": "${AWS_BEARER_TOKEN_BEDROCK}", "name": "apikey"},
        {"access_key_id": "AKIDTWO", "secret_access_key": SECRET}]},
        env={"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET,
             "AWS_BEARER_TOKEN_BEDROCK": "bedrock-api-key-1234"})
    provider = cfg.providers["aws"]
    assert provider.base_url == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    main, apikey, unnamed = provider.keys
    assert (main.access_key_id, main.secret, main.session_token) == ("AKIDEXAMPLE", SECRET, "")
    assert (apikey.access_key_id, apikey.secret, apikey.label) == (
        "", "bedrock-api-key-1234", "apikey")
    assert len(unnamed.label) == 8 and unnamed.label not in SECRET  # from the key id
    assert SECRET not in repr(cfg)


def test_base_url_overrides_the_regional_host() -> None:
    cfg = load({"region": "us-east-1", "base_url": "http://127.0.0.1:9000/",
                "api_keys": ["bedrock-api-key-1234"]})
    assert cfg.providers["aws"].base_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(("provider", "expected"), [
    ({"api_keys": ["k" * 10]}, "providers[0].region: required for a bedrock provider"),
    ({"region": "virginia", "api_keys": ["k" * 10]},
     "providers[0].region: expected an AWS region such as us-east-1"),
    ({"region": "us-east-1", "api_keys": [{"access_key_id": "AKID"}]},
     "providers[0].api_keys[0].secret_access_key: required with access_key_id"),
    ({"region": "us-east-1", "api_keys": [{"secret_access_key": SECRET}]},
     "providers[0].api_keys[0].access_key_id: required with secret_access_key"),
    ({"region": "us-east-1", "api_keys": [{"key": "k" * 10, "access_key_id": "AKID",
                                           "secret_access_key": SECRET}]},
     "providers[0].api_keys[0]: give either 'key' (an API key) or 'access_key_id' and "
     "'secret_access_key' (an AWS key pair), not both"),
    ({"region": "us-east-1", "api_keys": [{"key": "k" * 10, "session_token": TOKEN}]},
     "providers[0].api_keys[0].session_token: goes with access_key_id"),
    ({"region": "us-east-1", "api_keys": [{"name": "x"}]},
     "providers[0].api_keys[0].key: required"),
    ({"region": "us-east-1", "api_keys": [{"access_key_id": "AKID", "secret_acess_key": SECRET}]},
     "providers[0].api_keys[0].secret_acess_key: unknown key (did you mean "
     "'secret_access_key'?)"),
    ({"region": "us-east-1", "responses": "native", "api_keys": ["k" * 10]},
     "providers[0].responses: bedrock providers have no Responses API"),
], ids=["no-region", "bad-region", "no-secret", "no-key-id", "both", "token-with-key",
        "nothing", "did-you-mean", "responses-native"])
def test_bad_bedrock_keys_are_located(provider: dict[str, Any], expected: str) -> None:
    found = problems(provider)
    assert any(p.startswith(expected) for p in found), found
    assert not any(SECRET in p for p in found)


def test_sigv4_keys_and_region_belong_to_bedrock_only() -> None:
    cfg = {"providers": [{"name": "o", "type": "openai", "region": "us-east-1",
                          "api_keys": [{"access_key_id": "AKID", "secret_access_key": SECRET}]}],
           "groups": [{"name": "g", "models": [{"provider": "o", "name": "m"}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(cfg), env={})
    assert "providers[0].region: only bedrock providers take a region" in err.value.problems
    assert ("providers[0].api_keys[0].access_key_id: only bedrock providers take AWS key "
            "pairs; give 'key' instead") in err.value.problems


def test_check_never_prints_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    provider = {"name": "aws", "type": "bedrock", "region": "us-east-1", "api_keys": [
        {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET, "session_token": TOKEN}]}
    groups = [{"name": "g", "models": [{"provider": "aws", "name": "m"}]}]
    # api_key: check refuses what serve refuses, a config open to anyone included.
    path.write_text(yaml.safe_dump({"api_key": "sk-router", "providers": [provider],
                                    "groups": groups}))
    assert main(["check", str(path)]) == 0
    provider["api_keys"][0]["key"] = SECRET  # now wrong: both forms at once
    provider["region"] = SECRET
    path.write_text(yaml.safe_dump({"api_key": "sk-router", "providers": [provider],
                                    "groups": groups}))
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr()
    assert "api_keys[0]: give either 'key'" in out.err
    assert SECRET not in out.out + out.err and TOKEN not in out.out + out.err
