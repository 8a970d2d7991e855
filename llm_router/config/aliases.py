"""Model aliases: a glob over the name a client sends picks a group or a provider/model.

``aliases: {"claude-opus-*": smart, "gpt-5*": gpt}`` at the top of the config, and the
same under a user (theirs are looked at first). A pattern is the client's model name
with ``*`` (any run of characters, none included) and ``?`` (exactly one character);
everything else matches itself, case included.

Which alias wins (docs/catalog.md):

1. A name that is a group, or ``provider/model`` of a configured provider, is never
   aliased.
2. The caller's own aliases are tried before the top-level ones; the first table with
   a match decides.
3. Within a table the most specific pattern wins: the most literal characters, then
   the fewest ``*``. Two patterns equal on both that can match one same name are
   *ambiguous*; ``llm-router check`` reports them, and the one written first wins.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["Alias", "AliasTable", "ambiguous_pairs", "common_name"]

_WILDCARDS: Final = frozenset("*?")


@dataclass(frozen=True, slots=True)
class Alias:
    """One ``pattern: target`` line, ready to match."""

    pattern: str
    target: str
    position: int  # order in the file: breaks ties between equally specific patterns
    _regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str, target: str, position: int) -> Alias:
        parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in pattern)
        return cls(pattern, target, position, re.compile("".join(parts), re.DOTALL))

    @property
    def specificity(self) -> tuple[int, int]:
        """Greater is more specific: literal characters, then fewer ``*``."""
        literal = sum(ch not in _WILDCARDS for ch in self.pattern)
        return literal, -self.pattern.count("*")

    def matches(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None


class AliasTable:
    """One ``aliases`` mapping, sorted most specific first (file order among equals)."""

    __slots__ = ("_exact", "_globs")

    def __init__(self, table: Mapping[str, str]) -> None:
        compiled = [Alias.compile(p, t, i) for i, (p, t) in enumerate(table.items())]
        # A pattern without wildcards is a plain rename: one dict look-up, no scan.
        self._exact = {a.pattern: a for a in compiled if not _WILDCARDS & set(a.pattern)}
        self._globs = tuple(sorted((a for a in compiled if a.pattern not in self._exact),
                                   key=lambda a: (-a.specificity[0], -a.specificity[1],
                                                  a.position)))

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def __iter__(self) -> Iterator[Alias]:
        return iter((*self._exact.values(), *self._globs))

    @property
    def plain(self) -> tuple[Alias, ...]:
        """The aliases without wildcards: names a model list can show."""
        return tuple(self._exact.values())

    def match(self, name: str) -> Alias | None:
        """The alias that decides for ``name``, or None."""
        exact = self._exact.get(name)
        if exact is not None:
            return exact
        for alias in self._globs:
            if alias.matches(name):
                return alias
        return None


def common_name(a: str, b: str) -> str | None:
    """A shortest name that matches both glob patterns, or None when none does.

    A breadth-first walk over pairs of positions in the two patterns (the product of
    their automata): ``*`` may match nothing or take one more character, ``?`` takes
    any one character, a literal only itself. The walk carries the name spelt so far.
    """
    start = (0, 0)
    spelt: dict[tuple[int, int], str] = {start: ""}
    queue = deque([start])
    while queue:
        i, j = queue.popleft()
        name = spelt[(i, j)]
        if i == len(a) and j == len(b):
            return name
        ca = a[i] if i < len(a) else None
        cb = b[j] if j < len(b) else None
        steps: list[tuple[int, int, str]] = []
        if ca == "*":
            steps.append((i + 1, j, ""))  # the star ends here
        if cb == "*":
            steps.append((i, j + 1, ""))
        # One character of the name, taken by both (two stars need no step of their own:
        # one of them ending first reaches the same places).
        if ca is not None and cb is not None and (ca, cb) != ("*", "*"):
            if ca == "*":
                steps.append((i, j + 1, cb))
            elif cb == "*":
                steps.append((i + 1, j, ca))
            elif ca == "?" or cb == "?" or ca == cb:
                steps.append((i + 1, j + 1, cb if ca == "?" else ca))
        for ni, nj, ch in steps:
            if (ni, nj) not in spelt:
                spelt[(ni, nj)] = name + ("x" if ch == "?" else ch)
                queue.append((ni, nj))
    return None


def ambiguous_pairs(table: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(first, second, a name both match)`` for patterns (file order) that are equally
    specific, send to different targets, and can match one same name: the rule above
    cannot choose between them."""
    compiled = [Alias.compile(p, t, i) for i, (p, t) in enumerate(table.items())]
    out: list[tuple[str, str, str]] = []
    for n, first in enumerate(compiled):
        for second in compiled[n + 1:]:
            if first.specificity != second.specificity or first.target == second.target:
                continue
            both = common_name(first.pattern, second.pattern)
            if both is not None:
                out.append((first.pattern, second.pattern, both))
    return out
