"""Config loading and validation, as `llm-router check` and the daemon see it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_router.config import ConfigError, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parent.parent

GO_CONFIG = """
port: 8080
api_key: "your-api-key-here"
groups:
  - name: "gpt-4-turbo"
    models:
      - weight: 1
        provider: "openai"
        name: "gpt-4-turbo-preview"
      - weight: 2
        provider: "openai"
        name: "gpt-4"
providers:
  - name: "openai"
    base_url: "https://api.openai.com/v1"
    api_keys:
      - "sk-your-openai-key-here"
"""


def problems(text: str, env: dict[str, str] | None = None, fmt: str = "yaml") -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, fmt=fmt, env=env or {})
    return exc.value.problems


def test_go_router_config_loads_unchanged() -> None:
    cfg = parse_config(GO_CONFIG, env={})
    assert cfg.port == 8080 and cfg.api_key == "your-api-key-here"
    group = cfg.groups["gpt-4-turbo"]
    assert [(m.provider, m.model, m.weight) for m in group.members] == [
        ("openai", "gpt-4-turbo-preview", 1.0), ("openai", "gpt-4", 2.0)]
    (key,) = cfg.providers["openai"].keys
    assert key.secret == "sk-your-openai-key-here"
    assert len(key.label) == 8 and key.label not in key.secret


def test_go_router_penalties_are_accepted() -> None:
    cfg = parse_config(GO_CONFIG + "error_penalty: 10000\nrequest_penalty: 500\n", env={})
    assert (cfg.error_penalty, cfg.request_penalty) == (10000, 500)


def test_env_expansion_with_default_and_set_variable() -> None:
    text = GO_CONFIG.replace('"sk-your-openai-key-here"', '"${KEY_A}"').replace(
        '"your-api-key-here"', '"${ROUTER_KEY:-fallback}"')
    cfg = parse_config(text, env={"KEY_A": "sk-from-env"})
    assert cfg.providers["openai"].keys[0].secret == "sk-from-env"
    assert cfg.api_key == "fallback"


def test_numbers_may_come_from_environment_variables() -> None:
    text = GO_CONFIG.replace("port: 8080", "port: ${PORT}") + "shutdown_grace_s: ${GRACE:-12.5}\n"
    cfg = parse_config(text, env={"PORT": "9000"})
    assert (cfg.port, cfg.shutdown_grace_s) == (9000, 12.5)
    assert problems(text, env={"PORT": "eighty"}) == [
        "port: expected a whole number, got 'eighty' from an environment variable"]
    assert problems(text, env={"PORT": "-1"}) == ["port: must be >= 0"]


def test_unset_variable_is_an_error_naming_its_location() -> None:
    text = GO_CONFIG.replace('"sk-your-openai-key-here"', '"${MISSING_KEY}"')
    assert problems(text) == [
        "providers[0].api_keys[0]: environment variable MISSING_KEY is not set "
        "(write ${MISSING_KEY:-default} to give a default)"]


def test_every_problem_is_reported_with_its_location() -> None:
    text = """
port: 8080
api_key: k
groups:
  - name: g
    models:
      - {provider: opnai, name: m, wieght: 2}
      - {provider: local}
    strategy: fastest
providers:
  - name: openai
    base_url: https://x/v1
    api_keys: ["a"]
  - name: local
    type: mock
pricnig: {}
"""
    assert problems(text) == [  # in the file's order
        "groups[0].models[0].provider: unknown provider 'opnai' (did you mean 'openai'?) "
        "(known: openai, local)",
        "groups[0].models[0].wieght: unknown key (did you mean 'weight'?)",
        "groups[0].models[1].name: required",
        "groups[0].strategy: unknown strategy 'fastest' (known: inverse-weight, priority, "
        "round-robin, latency, price)",
        "pricnig: unknown key (did you mean 'pricing'?)",
    ]


def test_wrong_types_are_named() -> None:
    text = GO_CONFIG + "max_body_bytes: lots\nusage: {snapshot_interval_s: -1}\n"
    assert sorted(problems(text)) == [
        "max_body_bytes: expected a whole number, got a string",
        "usage.snapshot_interval_s: must be >= 0.1",
    ]


def test_nan_and_infinity_are_refused() -> None:
    # YAML spells them .nan and .inf; a NaN slips past every ">=" bound.
    text = GO_CONFIG.replace("weight: 2", "weight: .nan") + (
        "shutdown_grace_s: .inf\npricing: {gpt-4: {input: -.inf, output: 1}}\n")
    assert sorted(problems(text)) == [
        "groups[0].models[1].weight: must be a finite number, got nan",
        "pricing.gpt-4.input: must be a finite number, got -inf",
        "shutdown_grace_s: must be a finite number, got inf",
    ]
    # An environment variable saying nan was already not a number.
    env_text = GO_CONFIG + "shutdown_grace_s: ${GRACE}\n"
    assert problems(env_text, env={"GRACE": "nan"}) == [
        "shutdown_grace_s: expected a number, got 'nan' from an environment variable"]


def test_syntax_errors_name_the_line() -> None:
    (line,) = problems("port: 8080\ngroups: [\n")
    assert line.startswith("config:2:9: invalid YAML: the '[' opened here is not closed")
    assert line.endswith("\n    2 | groups: [\n      |         ^")
    (line,) = problems('{"port": 8080,\n "host": }', fmt="json")
    assert line.startswith("config:2:10: invalid JSON: unexpected character")


@pytest.mark.parametrize(("text", "expected"), [
    ("providers:\n  - name: a\n    type: mock\n  timeouts: {connect: 1}\n",
     "config:4:3: invalid YAML: 'timeouts' is indented 2 spaces, so it falls out of the block "
     "of 'type' (line 3, indented 4); indent it 4 spaces if it belongs there, or 0 to put it "
     "beside 'providers' (line 1)"),
    ("providers:\n  - name: a\n     type: mock\n",
     "config:3:10: invalid YAML: 'type' is indented more than 'name' on line 2, so YAML reads "
     "it as the rest of that value; line it up with 'name' (4 spaces)"),
    ("api_key: abc: def\n", "config:1:13: invalid YAML: this value contains ': ', which YAML "
     "reads as a new key; put the whole value in quotes"),
    ("port 8080\nhost: x\n", "config:2:5: invalid YAML: line 1 has no ':' after its key, so "
     "YAML reads it together with this line; write 'key: value'"),
    ('api_key: "abc\nport: 1\n',
     "config:1:10: invalid YAML: the quote opened here is never closed"),
    ("port: 1\ngroups:\n\t- name: x\n",
     "config:3:1: invalid YAML: a tab character; YAML indents with spaces only"),
    ("api_key: @abc\n", "config:1:10: invalid YAML: a value cannot start with '@'; put the "
     "value in quotes"),
])
def test_yaml_syntax_errors_in_plain_words(text: str, expected: str) -> None:
    (line,) = problems(text)
    assert line.split("\n")[0] == expected


def test_duplicate_yaml_keys_are_problems_not_silently_dropped() -> None:
    assert problems(GO_CONFIG + "port: 9090\n") == [
        "config:18:1: duplicate key 'port' (first on line 2); YAML would keep only the last "
        "one, so remove or rename one of them"]


def test_key_dedented_out_of_its_block_says_where_it_belongs() -> None:
    assert problems(GO_CONFIG + "strategy: priority\n") == [
        "strategy: unknown key ('strategy' is a key of each entry in 'groups': is it indented "
        "too little?)"]


def test_users_keys_must_be_sha256_or_key() -> None:
    text = GO_CONFIG + """
users:
  - name: alice
    keys: [{sha256: "abc"}, {name: nokey}]
    models: [gpt-4-turbo, "openai/*", gtp-4-turbo]
    budget: {usd: 5, period: yearly}
"""
    assert problems(text) == [
        "users[0].keys[0].sha256: expected 64 hex digits (llm-router hash-key KEY prints it)",
        "users[0].keys[1]: a key needs 'sha256' (preferred) or 'key'",
        "users[0].models[2]: unknown group 'gtp-4-turbo' (did you mean 'gpt-4-turbo'?)",
        "users[0].budget.period: unknown period 'yearly' (known: daily, weekly, monthly, total)",
    ]


def test_example_configs_are_valid_and_the_same() -> None:
    env = {"ROUTER_API_KEY": "x", "OPENAI_API_KEY": "sk-x"}
    y = load_config(EXAMPLES / "config.example.yaml", env=env)
    j = load_config(EXAMPLES / "config.example.json", env=env)
    assert y.providers == j.providers and y.groups == j.groups and y.pricing == j.pricing
    assert y.usage == j.usage and y.api_key == j.api_key
    assert y.providers[y.groups["fast"].members[0].provider].type == "mock"


@pytest.mark.parametrize("name", ["config.example.yaml", "deploy/config.shared.yaml"])
def test_example_configs_price_every_member(name: str) -> None:
    # An unpriced member is counted at cost 0 and logs a warning on its first call: the
    # quick start did both (qwen-2.5-7b in 'fast' had no price).
    cfg = load_config(EXAMPLES / name, env={"ROUTER_API_KEY": "x", "OPENAI_API_KEY": "sk-x"})
    members = {m.model for g in cfg.groups.values() for m in g.members}
    assert members and members <= set(cfg.pricing)


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GO_CONFIG)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GO_CONFIG.replace('provider: "openai"\n        name: "gpt-4"\n',
                                     'provider: "opnai"\n        name: "gpt-4"\n'))
    ok = subprocess.run([sys.executable, "-m", "llm_router", "check", str(good)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "OK: 1 providers (1 keys), 1 groups" in ok.stdout
    fail = subprocess.run([sys.executable, "-m", "llm_router", "check", str(bad)],
                          capture_output=True, text=True, check=False)
    assert fail.returncode == 1
    assert "line 11: groups[0].models[1].provider: unknown provider 'opnai'" in fail.stderr


def test_check_warnings_exit_0_and_json_lists_everything(tmp_path: Path) -> None:
    path = tmp_path / "warn.yaml"
    path.write_text(GO_CONFIG + "shutdown_grace_s: 90\nerror_penalty: -1\n")
    run = [sys.executable, "-m", "llm_router", "check"]
    bad = subprocess.run([*run, "--json", str(path)], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["summary"] is None
    assert report["errors"] == [{"location": "error_penalty", "message": "must be >= 0",
                                 "line": 19, "column": 1}]
    assert [w["location"] for w in report["warnings"]] == ["shutdown_grace_s"]
    path.write_text(GO_CONFIG + "shutdown_grace_s: 90\n")
    ok = subprocess.run([*run, str(path)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "OK: 1 providers" in ok.stdout
    assert "1 warning(s)\n  line 18: shutdown_grace_s: shutdown_delay_s + shutdown_grace_s " \
           "is 90 s" in ok.stderr
    as_json = subprocess.run([*run, "--json", str(path)], capture_output=True, text=True,
                             check=False)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["ok"] is True


def test_hash_key_and_gen_key_agree() -> None:
    out = subprocess.run([sys.executable, "-m", "llm_router", "gen-key"], capture_output=True,
                         text=True, check=True).stdout.split()
    key, digest = out[1], out[3]
    by_arg = subprocess.run([sys.executable, "-m", "llm_router", "hash-key", key],
                            capture_output=True, text=True, check=True).stdout.strip()
    by_stdin = subprocess.run([sys.executable, "-m", "llm_router", "hash-key"], input=key + "\n",
                              capture_output=True, text=True, check=True).stdout.strip()
    assert by_arg == by_stdin == digest
    known = subprocess.run([sys.executable, "-m", "llm_router", "hash-key", "test"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert known == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


# ---------------------------------------------------------------- checks across keys

RESTRICTED = """
providers:
  - name: openai
    base_url: https://api.openai.com/v1
    api_keys: [{key: k1, name: a, models: [gpt-4o-mini]}]
groups:
  - name: big
    models: [{provider: openai, name: gpt-4o}]
  - name: mixed
    models: [{provider: openai, name: gpt-4o-mini}, {provider: openai, name: o3}]
"""


def test_config_that_can_never_serve_is_an_error() -> None:
    assert problems(RESTRICTED) == [
        "groups[0]: group 'big' has no member that can be served, so every request for it "
        "would fail: models[0]: no key of provider 'openai' may serve the model 'gpt-4o' "
        "(its keys are restricted to: gpt-4o-mini)",
        "groups[1].models[1]: no key of provider 'openai' may serve the model 'o3' (its keys "
        "are restricted to: gpt-4o-mini)",
    ]


def test_duplicate_names_and_shared_keys_are_errors() -> None:
    text = GO_CONFIG + """
  - name: openai
    type: mock
users:
  - {name: bob, keys: [{key: one}, {key: one}]}
  - {name: bob, keys: [{key: two, name: x}, {key: three, name: x}]}
  - {name: eve, keys: [{key: two}], models: ["gpt-*", "*/x", "nope/*"]}
"""
    assert problems(text) == [
        "providers[1].name: duplicate provider 'openai'",
        "users[0].keys[1]: duplicate key (the same key is listed twice)",
        "users[1].name: duplicate user 'bob'",
        "users[1].keys[1].name: duplicate key name 'x' in user 'bob'; usage and limits are "
        "kept per key name",
        "users[2].keys[0]: key '3fc4ccfe' is also a key of user 'bob'",
        "users[2].models[2]: 'nope/*' matches no group and no provider/model (groups: "
        "gpt-4-turbo; providers: openai)",
    ]


def test_warnings_do_not_stop_the_config() -> None:
    text = GO_CONFIG.replace("weight: 1", "weight: 0").replace("weight: 2", "weight: 0") + """
pricing:
  gpt-4: {input: 30, output: 60}
  gpt4-turbo-preview: {input: 10, output: 30}
shutdown_grace_s: 120
"""
    cfg = parse_config(text, env={})
    assert list(cfg.warnings) == [
        "groups[0]: every member has weight 0 (always preferred), so requests are spread at "
        "random, not by tokens; give weights above 0 to balance",
        "pricing.gpt4-turbo-preview: no group member has the model 'gpt4-turbo-preview'; this "
        "price applies only to direct provider/model requests (did you mean "
        "'gpt-4-turbo-preview'?)",
        "shutdown_grace_s: shutdown_delay_s + shutdown_grace_s is 120 s, longer than the 30 s "
        "an orchestrator typically waits after SIGTERM (Kubernetes' default "
        "terminationGracePeriodSeconds; docker stop waits 10 s): raise that timeout too, or "
        "streams are cut off by SIGKILL",
    ]


def _key_file_config(*keys: object, ptype: str = "openai") -> str:
    return json.dumps({
        "providers": [{"name": "p", "type": ptype, "base_url": "http://127.0.0.1:9/v1",
                       "api_keys": list(keys)}],
        "groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}]}]})


def test_key_file_is_read_with_surrounding_whitespace_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "openai-a"
    secret.write_text("  sk-from-a-file-0123\n\n")
    cfg = parse_config(_key_file_config({"key_file": str(secret), "name": "a"}), fmt="json")
    (key,) = cfg.providers["p"].keys
    assert (key.secret, key.label, key.key_file) == ("sk-from-a-file-0123", "a", str(secret))
    assert "sk-from-a-file" not in repr(key)
    # Unnamed, it is labelled by its content's hash, as a key given inline is.
    cfg = parse_config(_key_file_config({"key_file": str(secret)}), fmt="json")
    assert cfg.providers["p"].keys[0].label == parse_config(
        _key_file_config("sk-from-a-file-0123"), fmt="json").providers["p"].keys[0].label


def test_unreadable_or_empty_key_file_is_an_error_naming_its_location(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    big = tmp_path / "big"
    big.write_text("sk-secret-content-" * 4000)
    binary = tmp_path / "binary"
    binary.write_bytes(b"sk-secret-content-\xff")
    both = tmp_path / "both"
    both.write_text("sk-secret-content-both")
    found = problems(_key_file_config(
        {"key_file": str(tmp_path / "missing")}, {"key_file": str(empty)},
        {"key_file": str(big)}, {"key_file": str(binary)},
        {"key": "sk-inline-key-0000", "key_file": str(both)}), fmt="json")
    assert found == [
        f"providers[0].api_keys[0].key_file: cannot read the key file "
        f"'{tmp_path / 'missing'}': No such file or directory",
        f"providers[0].api_keys[1].key_file: the key file '{empty}' is empty",
        f"providers[0].api_keys[2].key_file: the key file '{big}' is larger than 65536 "
        "bytes: is it a key?",
        f"providers[0].api_keys[3].key_file: the key file '{binary}' is not UTF-8 text",
        "providers[0].api_keys[4]: give either 'key' or 'key_file', not both"]
    assert not any("sk-secret-content" in p for p in found)


def test_vertex_keys_take_no_key_file(tmp_path: Path) -> None:
    file = tmp_path / "sa-path"
    file.write_text("/etc/sa.json")
    found = problems(json.dumps({"providers": [{
        "name": "v", "type": "vertex", "project": "p", "location": "us-central1",
        "api_keys": [{"key_file": str(file)}]}]}), fmt="json")
    assert "providers[0].api_keys[0].key_file: a vertex key is already a file: give the " \
           "service-account key file's path as key" in found


def test_names_and_keys_with_control_characters_are_errors(tmp_path: Path) -> None:
    """Names and keys go into HTTP headers (X-Router-*, the upstream's auth) and log lines:
    a line break there (a YAML block scalar, a stray escape) made every answer through
    them fail. A key is never quoted in the problem."""
    two_lines = tmp_path / "two-keys"
    two_lines.write_text("sk-file-first-key\nsk-file-second-key\n")
    found = problems(f"""
providers:
  - name: "o\\tp"
    base_url: https://x.example/v1
    headers: {{X-Team: "a\\r\\nX-Evil: 1"}}
    api_keys:
      - {{key: "sk-line\\nbreak-secret", name: "main\\n"}}
      - {{key_file: {two_lines}, name: filed}}
groups:
  - name: "g\\u0000"
    models: [{{provider: "o\\tp", name: "gpt\\n4"}}]
users:
  - name: "ali\\x1bce"
    keys: [{{key: sk-user-key-000001, name: "lap\\x7ftop"}}]
""")
    for where in ("providers[0].name", "providers[0].headers.X-Team",
                  "providers[0].api_keys[0].key", "providers[0].api_keys[0].name",
                  "providers[0].api_keys[1].key_file", "groups[0].name",
                  "groups[0].models[0].name", "users[0].name", "users[0].keys[0].name"):
        assert any(p.startswith(f"{where}: ") and "control character" in p for p in found), \
            (where, found)
    text = "\n".join(found)
    assert "secret" not in text and "sk-file" not in text and "X-Evil" not in text


def test_a_group_name_longer_than_a_request_may_name_is_an_error() -> None:
    """A request's model is at most 256 bytes (a longer one is a 400): a longer group name
    could never be asked for."""
    found = problems(f"""
providers: [{{name: local, type: mock}}]
groups:
  - name: {"g" * 257}
    models: [{{provider: local, name: m}}]
  - name: {"h" * 256}
    models: [{{provider: local, name: m}}]
""")
    assert found == ["groups[0].name: is 257 bytes long; clients name a group as their "
                     "'model', which is at most 256 bytes"], found


def test_a_base_url_with_credentials_or_a_query_is_an_error() -> None:
    """user:pass@ in base_url made aiohttp refuse every upstream call (a 500 each, with a
    traceback: it will not combine them with the key's Authorization header); a query
    ended up before the API path the router appends (…/v1?key=x/chat/completions)."""
    def base_url_problems(url: str) -> list[str]:
        text = f"providers: [{{name: p, base_url: '{url}', api_keys: [sk-a-key-0001]}}]\n"
        try:
            parse_config(text, env={})
        except ConfigError as exc:
            return [p for p in exc.problems if p.startswith("providers[0].base_url: ")]
        return []

    found = base_url_problems("http://proxy-user:proxy-pw-secret@proxy.example/v1")
    assert found and "credentials" in found[0] and "proxy-pw-secret" not in found[0]
    for url in ("https://gw.example/v1?key=abc", "https://gw.example/v1#x",
                "https://gw.example/v1?"):
        found = base_url_problems(url)
        assert found and "query" in found[0], (url, found)
    assert base_url_problems("https://gw.example:8443/openai/v1") == []
