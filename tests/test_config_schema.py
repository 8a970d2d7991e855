"""The JSON Schema, the validator and the docs say the same thing about the config.

Every example config and every ```yaml block in README.md and docs/ must pass both
`llm-router check` and the shipped JSON Schema, so docs cannot drift from the code. A
block that shows only part of a config (``circuit:`` alone) is checked merged onto the
README's full config reference. A yaml block that is not an llm-router config (a
Kubernetes manifest, a Prometheus rule file) is skipped when none of its top-level keys
is a config key, or when the line before its fence is ``<!-- not llm-router config -->``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from llm_router.config import Config, ConfigError, config_json_schema, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = (ROOT / "config.schema.json", ROOT / "llm_router" / "config.schema.json")
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
EXAMPLES = (ROOT / "config.example.yaml", ROOT / "config.example.json")
NOT_CONFIG = "<!-- not llm-router config -->"
_FENCE = re.compile(r"^( *)```yaml\s*\n(.*?)^\1```", re.M | re.S)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
TOP_KEYS = set(config_json_schema()["properties"])


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SHIPPED[0].read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


def fake_env(text: str) -> dict[str, str]:
    """A value for every ${VAR} the text uses, so only real mistakes fail."""
    return {name: f"sk-test-{name.lower()}" for name in _VAR.findall(text)}


_KEY_FILE = re.compile(
    r"^(\s*-?\s*(?:key_file|client_secret_file|secret_access_key_file):\s*)(\S+)", re.M)


def fake_key_files(text: str, where: Path) -> str:
    """``text`` with each ``key_file`` (and secret ``*_file``) pointed at a file made in
    ``where``: the docs name paths of a deployment (/etc/llm-router-keys/...), which a
    test machine lacks."""
    def made(m: re.Match[str]) -> str:
        file = where / Path(m.group(2).strip("\"'")).name
        file.write_text(f"sk-test-{file.name}")
        return f"{m.group(1)}{file}"

    return _KEY_FILE.sub(made, text)


def yaml_blocks(path: Path) -> list[tuple[str, str]]:
    """``(location, text)`` of every llm-router config block in a markdown file."""
    source = path.read_text()
    out = []
    for m in _FENCE.finditer(source):
        line = source.count("\n", 0, m.start()) + 1
        before = source[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        text = "\n".join(row[len(m.group(1)):] for row in m.group(2).splitlines())
        data = yaml.safe_load(text)
        if NOT_CONFIG in before or not isinstance(data, dict) or not TOP_KEYS & set(data):
            continue
        out.append((f"{path.relative_to(ROOT)}:{line}", text))
    return out


def reference_config() -> dict[str, Any]:
    """The README's full config reference: what a partial block is checked merged onto."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Config reference"):]
    block = _FENCE.search(section)
    assert block is not None, "README.md: no ```yaml block under '## Config reference'"
    data: dict[str, Any] = yaml.safe_load(block.group(2))
    return data


def merged(base: Any, part: Any) -> Any:
    """``part`` laid over ``base``: mappings key by key, lists of named items by name."""
    if isinstance(base, dict) and isinstance(part, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in part.items()}}
    if (isinstance(base, list) and isinstance(part, list)
            and all(isinstance(x, dict) and "name" in x for x in (*base, *part))):
        names = [x["name"] for x in base]
        out = list(base)
        for item in part:
            if item["name"] in names:
                i = names.index(item["name"])
                out[i] = merged(out[i], item)
            else:
                out.append(item)
        return out
    return part


DOC_BLOCKS = [block for path in DOCS for block in yaml_blocks(path)]


def test_shipped_schema_files_are_what_the_declarations_say() -> None:
    printed = subprocess.run([sys.executable, "-m", "llm_router", "schema"],
                             capture_output=True, text=True, check=True).stdout
    for path in SHIPPED:
        assert path.read_text() == printed, (
            f"{path.relative_to(ROOT)} is stale: run `llm-router schema > config.schema.json "
            "&& cp config.schema.json llm_router/config.schema.json`")


def test_schema_explains_every_key() -> None:
    schema = config_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    objects = [schema, *schema["$defs"].values()]
    for obj in objects:
        if "properties" not in obj:  # a key that may also be a bare string
            obj = next(o for o in obj["anyOf"] if "properties" in o)
        assert obj["additionalProperties"] is False
        for name, prop in obj["properties"].items():
            assert prop.get("description"), f"{name}: no description"
    assert schema["$defs"]["Group"]["properties"]["strategy"]["enum"][0] == "inverse-weight"
    assert schema["properties"]["port"]["default"] == 8080


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_pass_check_and_schema(path: Path) -> None:
    text = path.read_text()
    cfg = load_config(path, env=fake_env(text))
    assert cfg.warnings == ()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    validator().validate(data)
    assert "$schema" in text  # editors find the schema from the file itself


@pytest.mark.parametrize(("where", "text"), DOC_BLOCKS, ids=[w for w, _ in DOC_BLOCKS])
def test_documented_config_blocks_pass_check_and_schema(where: str, text: str,
                                                       tmp_path: Path) -> None:
    data = yaml.safe_load(text)
    if {"providers", "groups"} <= set(data):
        full = text  # as written: yaml.safe_load keeps the last of two equal keys silently
    else:
        data = merged(reference_config(), data)
        full = yaml.safe_dump(data, sort_keys=False)
    full = fake_key_files(full, tmp_path)
    try:
        parse_config(full, env=fake_env(full), source=where)
    except ConfigError as exc:
        pytest.fail(f"{where}: `check` refuses it:\n" + "\n".join(exc.problems))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator().iter_errors(data)]
    assert not errors, f"{where}: the JSON Schema refuses it:\n" + "\n".join(errors)


def test_docs_have_config_blocks_to_check() -> None:
    # If the fence pattern stopped matching, the test above would pass vacuously.
    assert len(DOC_BLOCKS) >= 8
    assert any(where.startswith("README.md") for where, _ in DOC_BLOCKS)


@pytest.mark.parametrize("bad", [
    {"pricnig": {}},
    {"port": "8080"},
    {"groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}],
                 "strategy": "fastest"}]},
    {"providers": [{"name": "p", "type": "mock", "timeouts": {"idle": 0}}]},
    {"users": [{"name": "u", "keys": [{"sha256": "abc"}]}]},
])
def test_schema_and_check_refuse_the_same_mistakes(bad: dict[str, Any]) -> None:
    assert list(validator().iter_errors(bad)), "the JSON Schema accepted it"
    with pytest.raises(ConfigError):
        parse_config(json.dumps(bad), fmt="json", env={})


def test_schema_accepts_a_variable_where_a_number_goes() -> None:
    assert not list(validator().iter_errors({"port": "${PORT:-8080}", "keepalive_s": 5}))
    assert list(validator().iter_errors({"port": "80${X}"}))


def test_schema_key_is_accepted() -> None:
    cfg = parse_config('{"$schema": "./config.schema.json", "port": 1}', fmt="json", env={})
    assert isinstance(cfg, Config) and cfg.port == 1


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The object (or array/map) schema behind a $ref, a shorthand anyOf or a nullable."""
    while True:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in node and "properties" not in node:
            node = next((o for o in node["anyOf"] if "$ref" in o or "properties" in o), {})
        else:
            return node


def _schema_paths(node: dict[str, Any], schema: dict[str, Any], path: str = "") -> set[str]:
    node = _resolve(node, schema)
    out: set[str] = set()
    for name, prop in node.get("properties", {}).items():
        if name == "$schema" or prop.get("description", "").startswith("Same as "):
            continue  # the editor hint and aliases need no docs of their own
        sub = f"{path}.{name}" if path else name
        out |= {sub} | _schema_paths(prop, schema, sub)
    if "items" in node:
        out |= _schema_paths(node["items"], schema, path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        out |= _schema_paths(node["additionalProperties"], schema, path + ".*")
    return out


def _doc_paths(data: Any, node: dict[str, Any], schema: dict[str, Any], path: str = ""
               ) -> set[str]:
    node = _resolve(node, schema)
    out: set[str] = set()
    if isinstance(data, dict):
        for name, value in data.items():
            if name in node.get("properties", {}):
                sub = f"{path}.{name}" if path else str(name)
                out |= {sub} | _doc_paths(value, node["properties"][name], schema, sub)
            elif isinstance(node.get("additionalProperties"), dict):
                out |= _doc_paths(value, node["additionalProperties"], schema, path + ".*")
    elif isinstance(data, list) and "items" in node:
        for item in data:
            out |= _doc_paths(item, node["items"], schema, path + "[]")
    return out


def test_every_key_is_documented_in_a_yaml_block() -> None:
    """Adding a key is one declaration plus its docs: a config block in README.md or
    docs/ that shows it (with a comment saying what it does)."""
    schema = config_json_schema()
    shown: set[str] = set()
    for path in EXAMPLES:
        text = path.read_text()
        shown |= _doc_paths(json.loads(text) if path.suffix == ".json" else yaml.safe_load(text),
                            schema, schema)
    for _, text in DOC_BLOCKS:
        shown |= _doc_paths(yaml.safe_load(text), schema, schema)
    missing = sorted(_schema_paths(schema, schema) - shown)
    assert not missing, ("keys no example config or README/docs yaml block shows: "
                         + ", ".join(missing))
