"""Config keys declared once: a dataclass field made with :func:`setting` *is* a key.

The frozen dataclasses in :mod:`llm_router.config` carry each key's description,
default, bounds, choices and file name in their field metadata. One reading of those
declarations serves two purposes:

- :class:`Reader` validates the raw YAML/JSON tree into the dataclasses, collecting
  every problem with its location (``groups[0].models[1].name: required``), one
  problem per location, with "did you mean" for unknown keys and choices;
- :func:`json_schema` emits the draft 2020-12 JSON Schema that editors use to
  autocomplete and explain the file (``llm-router schema``).

Field types say the shape: ``str``, ``int``, ``float``, ``bool``, ``X | None``,
``tuple[X, ...]`` / ``frozenset[X]`` (a list in the file), ``Mapping[str, X]`` (a
mapping in the file, or with ``keyed_by`` a list of objects named by that key) and
nested dataclasses. What a declaration cannot say (a default that depends on another
key, a key that is one of two) a class puts in a ``_finish`` static method, which
receives the read values and may fill or report; keys that exist only in the file
(read by ``_finish``, not stored) are listed in a ``_file_only`` class variable.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = [
    "BAD",
    "FromEnv",
    "Reader",
    "Spec",
    "at",
    "did_you_mean",
    "internal",
    "json_schema",
    "kind",
    "setting",
    "unknown_choice",
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
class _Key:
    attr: str
    name: str  # in the file
    tp: Any
    spec: Spec
    required: bool
    default: Any


_KEYS: dict[type, tuple[_Key, ...]] = {}


def _keys(cls: type) -> tuple[_Key, ...]:
    """The declared keys of dataclass ``cls``, in declaration order."""
    known = _KEYS.get(cls)
    if known is None:
        known = _KEYS[cls] = _read_keys(cls)
    return known


def _read_keys(cls: type) -> tuple[_Key, ...]:
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
        out.append(_Key(f.name, spec.key or f.name, hints[f.name], spec, required, default))
    return tuple(out)


def _file_only(cls: type) -> Mapping[str, tuple[Any, Spec]]:
    extra: Mapping[str, tuple[Any, Spec]] = getattr(cls, "_file_only", {})
    return extra


def _optional(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) in (Mapping, dict)


# ---------------------------------------------------------------- validation


class FromEnv(str):
    """A string ``${VAR}`` expansion produced: a number or boolean key reads it as one,
    so ``port: ${PORT:-8080}`` works."""

    __slots__ = ()


_WANT: Final[dict[Any, str]] = {bool: "true or false", int: "a whole number",
                                 float: "a number"}
_BOOLEANS: Final = {"true": True, "yes": True, "on": True,
                    "false": False, "no": False, "off": False}


def _typed(text: str, tp: Any) -> Any:
    """``text`` as ``tp`` when it spells one, else ``text`` unchanged."""
    word = text.strip()
    if tp is bool:
        return _BOOLEANS.get(word.lower(), text)
    try:
        if tp is int and re.fullmatch(r"[+-]?\d+", word):
            return int(word)
        if tp is float and word.lower() not in ("nan", "inf", "-inf", "+inf", "infinity"):
            return float(word)
    except ValueError:
        pass
    return text


class _Bad:
    def __repr__(self) -> str:
        return "BAD"


BAD: Final = _Bad()  # a value that failed and was reported


def _belongs_below(cls: type, name: str) -> str:
    """`` (a key of each entry in 'groups': indented too little?)`` when ``name`` is a key
    of an object below ``cls``: what a key dedented out of its block looks like."""
    for k in _keys(cls):
        inner, _ = _optional(k.tp)
        args = typing.get_args(inner)
        item = args[-1] if args and typing.get_origin(inner) is not None else inner
        if not dataclasses.is_dataclass(item) or k.spec.internal:
            continue
        names = [n for x in _keys(typing.cast(type, item)) if not x.spec.internal
                 for n in (x.name, *x.spec.aliases)]
        if name in names:
            where = f"each entry in '{k.name}'" if item is not inner else f"'{k.name}'"
            return f" ('{name}' is a key of {where}: is it indented too little?)"
    return ""


def at(path: str, key: str | int) -> str:
    """The location of ``key`` under ``path``: ``groups[0].models``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def kind(val: Any) -> str:
    """What a YAML/JSON value is, in words."""
    if val is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(val), type(val).__name__)


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    hint = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


def unknown_choice(what: str, value: str, known: tuple[str, ...]) -> str:
    """``unknown provider 'opnai' (did you mean 'openai'?) (known: openai, local)``."""
    return (f"unknown {what} '{value}'{did_you_mean(value, known)} "
            f"(known: {', '.join(known) or 'none defined'})")


class Reader:
    """Walks a raw tree into declared dataclasses; every problem lands in ``problems``.

    Only the first problem at a location is kept: a variable that was not set, then the
    empty string it left, is one problem. ``origin`` maps each built object's ``id`` to
    its location, for checks that run on the finished config.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.failed: set[str] = set()
        self.origin: dict[int, str] = {}

    def fail(self, path: str, message: str) -> None:
        if path in self.failed:
            return
        self.failed.add(path)
        self.problems.append(f"{path or 'config'}: {message}")

    def where(self, obj: object, attr: str | None = None) -> str:
        """The location ``obj`` (or its key ``attr``) was read from."""
        path = self.origin.get(id(obj), "")
        if attr is None:
            return path
        name = next((k.name for k in _keys(type(obj)) if k.attr == attr), attr)
        return at(path, name)

    def read(self, cls: type[Any], node: Any, path: str) -> Any:
        """``node`` as an instance of dataclass ``cls``, or :data:`BAD`."""
        shorthand: tuple[str, str] | None = getattr(cls, "_shorthand", None)
        if shorthand is not None and isinstance(node, str | bool):
            if node == "":
                self.fail(path, f"empty {shorthand[1]} (is its environment variable set?)")
                return BAD
            node = {shorthand[0]: node}
        if not isinstance(node, dict):
            self.fail(path, f"expected a mapping, got {kind(node)}")
            return BAD
        keys = _keys(cls)
        extra = _file_only(cls)
        allowed = [n for k in keys if not k.spec.internal for n in (k.name, *k.spec.aliases)]
        allowed += list(extra)
        for name in node:
            if name not in allowed:
                hint = did_you_mean(str(name), allowed) or _belongs_below(cls, str(name))
                self.fail(at(path, str(name)), f"unknown key{hint}")
        values: dict[str, Any] = {}
        missing = False
        for k in keys:
            if k.spec.internal:
                continue
            name = next((n for n in (k.name, *k.spec.aliases) if node.get(n) is not None), None)
            if name is None:
                if k.required:
                    self.fail(at(path, k.name), "required")
                    missing = True
                continue
            value = self.value(k.tp, k.spec, node[name], at(path, name))
            if value == "" and _optional(k.tp)[1]:
                continue  # "${VAR:-}" left it empty: the same as leaving the key out
            if value is BAD:
                missing = missing or k.required
            else:
                values[k.attr] = value
        file_only: dict[str, Any] = {}
        for name, (tp, spec) in extra.items():
            if node.get(name) is not None:
                value = self.value(tp, spec, node[name], at(path, name))
                if value is not BAD:
                    file_only[name] = value
        finish: Callable[..., bool | None] | None = getattr(cls, "_finish", None)
        if finish is not None and finish(values, file_only, self, path) is False:
            return BAD
        if missing:
            return BAD
        obj = cls(**values)
        self.origin[id(obj)] = path
        return obj

    def value(self, tp: Any, spec: Spec | None, node: Any, path: str) -> Any:
        """``node`` read as type ``tp`` under ``spec``'s rules, or :data:`BAD`."""
        tp, _ = _optional(tp)
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return self.read(typing.cast(type, tp), node, path)
        if origin in (tuple, frozenset):
            return self._sequence(tp, spec, node, path)
        if _is_mapping(tp):
            return self._mapping(tp, spec, node, path)
        return self._scalar(tp, spec, node, path)

    def _sequence(self, tp: Any, spec: Spec | None, node: Any, path: str) -> Any:
        if not isinstance(node, list):
            self.fail(path, f"expected a list, got {kind(node)}")
            return BAD
        if spec is not None and spec.non_empty and not node:
            self.fail(path, spec.empty_hint or "must not be empty")
            return BAD
        item_tp = typing.get_args(tp)[0]
        items = [self.value(item_tp, None, item, at(path, i)) for i, item in enumerate(node)]
        good = [item for item in items if item is not BAD]
        return frozenset(good) if typing.get_origin(tp) is frozenset else tuple(good)

    def _mapping(self, tp: Any, spec: Spec | None, node: Any, path: str) -> Any:
        value_tp = typing.get_args(tp)[1]
        out: dict[str, Any] = {}
        if spec is not None and spec.keyed_by:
            name_attr = spec.keyed_by
            noun = spec.noun or path.rsplit(".", 1)[-1].removesuffix("s")
            if not isinstance(node, list):
                self.fail(path, f"expected a list of {noun}s, got {kind(node)}")
                return BAD
            for i, item in enumerate(node):
                obj = self.value(value_tp, None, item, at(path, i))
                if obj is BAD:
                    continue
                name = getattr(obj, name_attr)
                if name in out:
                    self.fail(at(at(path, i), name_attr), f"duplicate {noun} '{name}'")
                    continue
                out[name] = obj
        else:
            if not isinstance(node, dict):
                self.fail(path, f"expected a mapping, got {kind(node)}")
                return BAD
            for name, item in node.items():
                val = self.value(value_tp, spec, item, at(path, str(name)))
                if val is not BAD:
                    out[str(name)] = val
        return types.MappingProxyType(out)

    def _scalar(self, tp: Any, spec: Spec | None, node: Any, path: str) -> Any:
        if isinstance(node, FromEnv):
            node = _typed(str(node), tp)
            if isinstance(node, str) and tp is not str:
                self.fail(path, f"expected {_WANT[tp]}, got '{node}' from an environment "
                                "variable")
                return BAD
        if tp is bool:
            ok, want = isinstance(node, bool), "true or false"
        elif tp is int:
            ok, want = isinstance(node, int) and not isinstance(node, bool), "a whole number"
        elif tp is float:
            ok = isinstance(node, int | float) and not isinstance(node, bool)
            want = "a number"
            node = float(node) if ok else node
        elif tp is str:
            if isinstance(node, bool) and spec is not None and spec.choices is not None:
                # YAML 1.1 reads a bare off/on (no/yes) as a boolean; the choice was meant.
                node = {False: "off", True: "on"}[node]
            ok, want = isinstance(node, str), "a string"
        else:  # a declaration error, found by the first test that loads a config
            raise TypeError(f"{path}: unsupported config type {tp!r}")
        if not ok:
            self.fail(path, f"expected {want}, got {kind(node)}")
            return BAD
        if spec is None:
            return node
        if isinstance(node, int | float) and not isinstance(node, bool):
            if spec.ge is not None and node < spec.ge:
                self.fail(path, f"must be >= {spec.ge:g}")
                return BAD
            if spec.gt is not None and node <= spec.gt:
                self.fail(path, f"must be > {spec.gt:g}")
                return BAD
            if spec.le is not None and node > spec.le:
                self.fail(path, f"must be <= {spec.le:g}")
                return BAD
        if isinstance(node, str):
            if spec.non_empty and not node:
                self.fail(path, spec.empty_hint or "must not be empty")
                return BAD
            if spec.choices is not None and node not in spec.choices:
                what = path.rsplit(".", 1)[-1]
                self.fail(path, unknown_choice(what, node, spec.choices))
                return BAD
            if spec.pattern is not None and node and not re.search(spec.pattern, node):
                self.fail(path, spec.pattern_hint or f"must match {spec.pattern}")
                return BAD
        return node


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
    for k in _keys(cls):
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
    for name, (tp, spec) in _file_only(cls).items():
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
        short = next(k for k in _keys(cls) if k.name == shorthand[0])
        text = {**_type_schema(short.tp, short.spec, defs), "minLength": 1,
                "description": f"Shorthand for {{{shorthand[0]}: ...}}: the {shorthand[1]}."}
        return {"anyOf": [text, out], **{k: out[k] for k in ("title",) if k in out}}
    return out


def _type_schema(tp: Any, spec: Spec | None, defs: dict[str, Any]) -> dict[str, Any]:
    tp, optional = _optional(tp)
    origin = typing.get_origin(tp)
    out: dict[str, Any]
    if dataclasses.is_dataclass(tp):
        out = _ref(typing.cast(type, tp), defs)
    elif origin in (tuple, frozenset):
        out = {"type": "array", "items": _type_schema(typing.get_args(tp)[0], None, defs)}
        if spec is not None and spec.non_empty:
            out["minItems"] = 1
    elif _is_mapping(tp):
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
                out["pattern"] = f"{spec.pattern}|\\$\\{{"
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
