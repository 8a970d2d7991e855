"""Reading a raw config tree into the declared dataclasses, every problem located.

:class:`Reader` walks the YAML/JSON tree by the declarations of
:mod:`llm_router.config.schema`, collecting every problem with its location
(``groups[0].models[1].name: required``), one per location, with "did you mean" for
unknown keys and choices. Checks that need the whole file use the same reader
(:mod:`llm_router.config.checks`), so their problems read the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Final

from .schema import Spec, declared_keys, file_only_keys, is_mapping, unoptional

__all__ = [
    "BAD",
    "CONTROL_CHARACTERS",
    "FromEnv",
    "Reader",
    "at",
    "did_you_mean",
    "kind",
    "unknown_choice",
]


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
_MAX_SECRET_FILE: Final = 64 * 1024  # an API key is short; a bigger file is a mistake
# What no name or key may hold: they go into HTTP headers, which refuse these (TAB aside,
# which a name has no use for either), and into log lines.
CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x1f\x7f]")


def _belongs_below(cls: type, name: str) -> str:
    """`` (a key of each entry in 'groups': indented too little?)`` when ``name`` is a key
    of an object below ``cls``: what a key dedented out of its block looks like."""
    for k in declared_keys(cls):
        inner, _ = unoptional(k.tp)
        args = typing.get_args(inner)
        item = args[-1] if args and typing.get_origin(inner) is not None else inner
        if not dataclasses.is_dataclass(item) or k.spec.internal:
            continue
        names = [n for x in declared_keys(typing.cast(type, item)) if not x.spec.internal
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


_SHAPES: dict[Any, tuple[str, Any]] = {}
_ALLOWED: dict[type, list[str]] = {}


def _shape(tp: Any) -> tuple[str, Any]:
    """``(object | list | map | scalar, the type without None)``, worked out once a type."""
    known = _SHAPES.get(tp)
    if known is None:
        inner, _ = unoptional(tp)
        if dataclasses.is_dataclass(inner):
            known = ("object", inner)
        elif typing.get_origin(inner) in (tuple, frozenset):
            known = ("list", inner)
        elif is_mapping(inner):
            known = ("map", inner)
        else:
            known = ("scalar", inner)
        _SHAPES[tp] = known
    return known


def _allowed_names(cls: type) -> list[str]:
    """Every key ``cls`` accepts in the file: declared names, aliases, file-only keys."""
    known = _ALLOWED.get(cls)
    if known is None:
        known = [n for k in declared_keys(cls) if not k.spec.internal
                 for n in (k.name, *k.spec.aliases)] + list(file_only_keys(cls))
        _ALLOWED[cls] = known
    return known


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
        self.secret_files: list[str] = []  # read by secret_file, readable or not
        self.file_secrets: dict[str, str] = {}  # secret -> the file it came from

    def secret_file(self, path: str, file: str) -> str | None:
        """The secret held in ``file`` (its content, surrounding whitespace stripped), or
        None after failing at ``path``. Never quotes the content; remembers the file, so
        the config watcher can follow it, and the secret, so problems can mask it."""
        self.secret_files.append(file)
        try:
            with open(file, "rb") as f:
                raw = f.read(_MAX_SECRET_FILE + 1)
        except OSError as exc:
            self.fail(path, f"cannot read the key file {file!r}: {exc.strerror or exc}")
            return None
        if len(raw) > _MAX_SECRET_FILE:
            self.fail(path, f"the key file {file!r} is larger than {_MAX_SECRET_FILE} bytes: "
                            "is it a key?")
            return None
        try:
            secret = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.fail(path, f"the key file {file!r} is not UTF-8 text")
            return None
        if not secret:
            self.fail(path, f"the key file {file!r} is empty")
            return None
        if CONTROL_CHARACTERS.search(secret):
            self.fail(path, f"the key file {file!r} has a control character (a line break, "
                            "tab or NUL) inside its content; it must hold one key")
            return None
        self.file_secrets[secret] = file
        return secret

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
        name = next((k.name for k in declared_keys(type(obj)) if k.attr == attr), attr)
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
        keys = declared_keys(cls)
        extra = file_only_keys(cls)
        allowed = _allowed_names(cls)
        for name in node:
            if name not in allowed:
                # An exact key of a block below beats a near miss here ('strategy' is a
                # group's key, not a typo of 'state').
                hint = _belongs_below(cls, str(name)) or did_you_mean(str(name), allowed)
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
            if value == "" and unoptional(k.tp)[1]:
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
        shape, tp = _shape(tp)
        if shape == "object":
            return self.read(tp, node, path)
        if shape == "list":
            return self._sequence(tp, spec, node, path)
        if shape == "map":
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
            if ok and not math.isfinite(node):
                # YAML's .nan and .inf: no bound check catches them (NaN compares false),
                # and a NaN weight or price would poison every sum it enters.
                self.fail(path, f"must be a finite number, got {node!r}")
                return BAD
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


