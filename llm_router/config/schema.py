"""Config keys declared once: a dataclass field made with :func:`setting` *is* a key.

The frozen dataclasses in :mod:`llm_router.config.model` carry each key's description,
default, bounds, choices and file name in their field metadata. Two readings of those
declarations, and no other copy: :class:`~llm_router.config.reader.Reader` validates a
raw YAML/JSON tree into the dataclasses, and :func:`json_schema` here emits the draft
2020-12 JSON Schema that editors use (``llm-router schema``).

Field types say the shape: ``str``, ``int``, ``float``, ``bool``, ``X | None``,
``tuple[X, ...]`` / ``frozenset[X]`` (a list in the file), ``Mapping[str, X]`` (a
mapping in the file, or with ``keyed_by`` a list of objects named by that key) and
nested dataclasses. What a declaration cannot say (a default that depends on another
key, a key that is one of two) a class puts in a ``_finish`` static method, which
receives the read values and may fill or report; keys that exist only in the file
(read by ``_finish``, not stored) are listed in a ``_file_only`` class variable, and a
bare-string form of an object (``api_keys: ["sk-..."]``) is a ``_shorthand``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "SCHEMA_DIALECT",
    "DeclaredKey",
    "Spec",
    "declared_keys",
    "file_only_keys",
    "internal",
    "is_mapping",
    "json_schema",
    "setting",
    "unoptional",
]

_META: Final = "llm_router.setting"
SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """How one key looks in the file; see :func:`setting`."""

    doc: str
    key: str | None = None
    aliases: tuple[str, ...] = ()
    ge: float | None = 0.0
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    pattern_hint: str | None = None
    non_empty: bool = False
    empty_hint: str | None = None
    keyed_by: str | None = None
    noun: str | None = None
    internal: bool = False


def setting(
    default: Any = dataclasses.MISSING, *, doc: str, key: str | None = None,
    aliases: tuple[str, ...] = (), ge: float | None = 0.0, gt: float | None = None,
    le: float | None = None, choices: tuple[str, ...] | None = None,
    pattern: str | None = None, pattern_hint: str | None = None, non_empty: bool = False,
    empty_hint: str | None = None, keyed_by: str | None = None, noun: str | None = None,
    repr: bool = True,
) -> Any:
    """Declare a config key as a dataclass field.

    ``default`` omitted means required. ``doc`` is its description (shown by editors).
    ``key`` is its name in the file when that differs from the attribute, ``aliases``
    other accepted names. Numbers are ``>= ge`` (0 unless given; ``ge=None`` allows
    negatives), ``> gt`` and ``<= le``. ``choices`` is an enum; ``pattern`` a regex a
    string must match (``pattern_hint`` replaces the generic message); ``non_empty``
    forbids an empty string or list (``empty_hint`` explains). A ``Mapping`` field with
    ``keyed_by`` is a list of objects in the file, each named by that key (``noun`` names
    one in duplicate messages).
    """
    if gt is not None and ge == 0.0:
        ge = None  # "> 0" says it all
    spec = Spec(doc=doc, key=key, aliases=aliases, ge=ge, gt=gt, le=le, choices=choices,
                pattern=pattern, pattern_hint=pattern_hint, non_empty=non_empty,
                empty_hint=empty_hint, keyed_by=keyed_by, noun=noun)
    return _field(default, spec, repr)


def internal(default: Any, *, repr: bool = True) -> Any:
    """A field the router fills itself (never read from the file, not in the schema)."""
    return _field(default, Spec(doc="", internal=True), repr)


def _field(default: Any, spec: Spec, repr: bool) -> Any:
    meta = {_META: spec}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta, repr=repr)
    if default.__class__.__hash__ is None or isinstance(default, types.MappingProxyType):
        # An immutable value that dataclasses still refuses as a default: share it.
        return dataclasses.field(default_factory=lambda: default, metadata=meta, repr=repr)
    return dataclasses.field(default=default, metadata=meta, repr=repr)


# ---------------------------------------------------------------- reading declarations


@dataclasses.dataclass(frozen=True, slots=True)
class DeclaredKey:
    """One key of a declared class: its attribute, its name in the file, type and rules."""

    attr: str
    name: str  # in the file
    tp: Any
    spec: Spec
    required: bool
    default: Any


_KEYS: dict[type, tuple[DeclaredKey, ...]] = {}


def declared_keys(cls: type) -> tuple[DeclaredKey, ...]:
    """The declared keys of dataclass ``cls``, in declaration order."""
    known = _KEYS.get(cls)
    if known is None:
        known = _KEYS[cls] = _read_keys(cls)
    return known


def _read_keys(cls: type) -> tuple[DeclaredKey, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if not isinstance(spec, Spec):
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with setting() or internal()")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append(DeclaredKey(f.name, spec.key or f.name, hints[f.name], spec, required, default))
    return tuple(out)


def file_only_keys(cls: type) -> Mapping[str, tuple[Any, Spec]]:
    """Keys read from the file but not stored (``_file_only``): name -> (type, spec)."""
    extra: Mapping[str, tuple[Any, Spec]] = getattr(cls, "_file_only", {})
    return extra


def unoptional(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def is_mapping(tp: Any) -> bool:
    """Whether ``tp`` is ``Mapping[K, V]`` (or ``dict``)."""
    return typing.get_origin(tp) in (Mapping, dict)


# ---------------------------------------------------------------- JSON Schema


def json_schema(root: type[Any], *, title: str, description: str,
                extra_top: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The draft 2020-12 JSON Schema of dataclass ``root`` and everything below it."""
    defs: dict[str, Any] = {}
    top = _object_schema(root, defs)
    schema: dict[str, Any] = {"$schema": SCHEMA_DIALECT, "title": title,
                              "description": description, **(extra_top or {})}
    schema.update({k: v for k, v in top.items() if k not in ("title", "description")})
    schema["$defs"] = dict(sorted(defs.items()))
    return schema


def _ref(cls: type[Any], defs: dict[str, Any]) -> dict[str, Any]:
    name = cls.__name__
    if name not in defs:
        defs[name] = {}  # a placeholder first: a class may refer to itself
        defs[name] = _object_schema(cls, defs)
    return {"$ref": f"#/$defs/{name}"}


def _object_schema(cls: type[Any], defs: dict[str, Any]) -> dict[str, Any]:
    doc = (cls.__doc__ or "").strip()
    props: dict[str, Any] = {}
    required: list[str] = []
    alternatives: list[dict[str, Any]] = []
    for k in declared_keys(cls):
        if k.spec.internal:
            continue
        prop = _type_schema(k.tp, k.spec, defs)
        prop["description"] = k.spec.doc
        if not k.required and _json_default(k.default) is not None:
            prop["default"] = _json_default(k.default)
        props[k.name] = prop
        for alias in k.spec.aliases:
            props[alias] = {**prop, "description": f"Same as {k.name}. {k.spec.doc}"}
        if k.required and k.spec.aliases:
            alternatives = [{"required": [n]} for n in (k.name, *k.spec.aliases)]
        elif k.required:
            required.append(k.name)
    for name, (tp, spec) in file_only_keys(cls).items():
        props[name] = {**_type_schema(tp, spec, defs), "description": spec.doc}
        if name.startswith("$"):  # "$schema" is the first thing an editor should offer
            props = {name: props.pop(name), **props}
    out: dict[str, Any] = {"type": "object"}
    if doc and not doc.startswith(cls.__name__ + "("):  # not the dataclass-made docstring
        first, _, rest = doc.partition("\n\n")
        out["title"] = _plain(first)
        if rest:
            out["description"] = _plain(rest)
    out["properties"] = props
    out["additionalProperties"] = False
    if required:
        out["required"] = required
    if alternatives:
        out["anyOf"] = alternatives
    shorthand: tuple[str, str] | None = getattr(cls, "_shorthand", None)
    if shorthand is not None:
        short = next(k for k in declared_keys(cls) if k.name == shorthand[0])
        text = {**_type_schema(short.tp, short.spec, defs), "minLength": 1,
                "description": f"Shorthand for {{{shorthand[0]}: ...}}: the {shorthand[1]}."}
        return {"anyOf": [text, out], **{k: out[k] for k in ("title",) if k in out}}
    return out


def _type_schema(tp: Any, spec: Spec | None, defs: dict[str, Any]) -> dict[str, Any]:
    tp, optional = unoptional(tp)
    origin = typing.get_origin(tp)
    out: dict[str, Any]
    if dataclasses.is_dataclass(tp):
        out = _ref(typing.cast(type, tp), defs)
    elif origin in (tuple, frozenset):
        out = {"type": "array", "items": _type_schema(typing.get_args(tp)[0], None, defs)}
        if spec is not None and spec.non_empty:
            out["minItems"] = 1
    elif is_mapping(tp):
        item = _type_schema(typing.get_args(tp)[1], spec if spec and not spec.keyed_by
                            and not dataclasses.is_dataclass(typing.get_args(tp)[1]) else None,
                            defs)
        if spec is not None and spec.keyed_by:
            out = {"type": "array", "items": item}
        else:
            out = {"type": "object", "additionalProperties": item}
    else:
        out = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]}
        if tp is not str:  # or a ${VAR} that expands to one
            out["type"] = [out["type"], "string"]
            out["pattern"] = _ENV_ONLY
        if spec is not None and tp in (int, float):
            for name, bound in (("minimum", spec.ge), ("exclusiveMinimum", spec.gt),
                                ("maximum", spec.le)):
                if bound is not None:
                    out[name] = int(bound) if tp is int else bound
        if spec is not None and tp is str:
            if spec.choices is not None:
                out["enum"] = list(spec.choices)
                # A bare off/on is a boolean to YAML 1.1 readers; the loader takes it.
                flags = [b for b, word in ((False, "off"), (True, "on")) if word in spec.choices]
                if flags:
                    out["type"] = ["string", "boolean"]
                    out["enum"] += flags
            if spec.non_empty:
                out["minLength"] = 1
            if spec.pattern is not None:
                # The schema sees the file before ${VAR} expansion: a variable passes.
                # An empty string passes too, as the reader takes it for "not set".
                out["pattern"] = f"{spec.pattern}|\\$\\{{|^$"
    if optional:
        if isinstance(out.get("type"), list):
            out["type"] = [*out["type"], "null"]
        elif "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def _plain(docstring: str) -> str:
    """A docstring paragraph as one line of plain text (no reST literals)."""
    return " ".join(docstring.split()).replace("``", "`")


_ENV_ONLY: Final = r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$"


def _json_default(value: Any) -> Any:
    """``value`` as a JSON default, or None when it has none worth showing."""
    if isinstance(value, bool | int | float | str) and value != "":
        return value
    return None
