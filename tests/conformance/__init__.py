"""The published schemas of the routes the router serves (``openai.json``,
``anthropic.json``, written by ``extract.py`` from the vendors' OpenAPI specs), and a
validator per schema.

Each JSON file is one JSON Schema 2020-12 resource: its ``$ref``s point into its own
``#/components/schemas/...``, resolved by a ``referencing`` registry, offline.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

HERE: Final = Path(__file__).parent
VENDORS: Final = ("openai", "anthropic")


@functools.cache
def document(vendor: str) -> dict[str, Any]:
    """``vendor``'s extracted spec, less what quirks.py whitelists for it."""
    from .quirks import relaxed  # quirks reads problems() from here

    doc: dict[str, Any] = json.loads((HERE / f"{vendor}.json").read_text())
    return relaxed(vendor, doc)


@functools.cache
def _registry(vendor: str) -> Registry[Any]:
    resource = Resource.from_contents(document(vendor), default_specification=DRAFT202012)
    return Registry().with_resource(f"urn:{vendor}", resource)


def _json_integer(_: Any, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# A whitelisted quirk (quirks.py): "integer" is a JSON integer, as the SDKs and the
# router read one; plain JSON Schema also takes 16.0 or 1e3.
_Validator: Final = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _json_integer))


@functools.cache
def validator(vendor: str, name: str) -> Any:
    """A validator of the component ``name`` of ``vendor``'s spec."""
    if name not in document(vendor)["components"]["schemas"]:
        raise KeyError(f"{vendor} has no schema {name}")
    return _Validator({"$ref": f"urn:{vendor}#/components/schemas/{name}"},
                      registry=_registry(vendor))


def problems(vendor: str, name: str, instance: Any) -> list[str]:
    """What in ``instance`` breaks the schema, one line each, empty if valid. Within an
    ``anyOf``/``oneOf`` the line names the field: the branch whose ``type`` matched
    (the discriminator, which jsonschema does not read), else jsonschema's best match."""
    out = []
    for error in validator(vendor, name).iter_errors(instance):
        for leaf in _leaves(error):
            where = "/".join(str(p) for p in leaf.absolute_path) or "(root)"
            out.append(f"{name} at {where}: {leaf.message[:300]}")
    return out


def _leaves(error: ValidationError) -> list[ValidationError]:
    if not error.context:
        return [error]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    type_path = [*error.absolute_path, "type"]
    typed = [errors for errors in branches.values()
             if not any(list(e.absolute_path) == type_path for e in errors)]
    if len(typed) == 1:
        return [leaf for sub in typed[0] for leaf in _leaves(sub)]
    return [best_match([error])]
