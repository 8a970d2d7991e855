"""Reading the config's YAML: syntax errors in plain words, duplicate keys, key positions.

PyYAML says ``expected <block end>, but found '<block mapping start>'`` about a key that
is indented wrong, and silently keeps the last of two equal keys. Here a syntax error
becomes ``config.yaml:6:6: ...`` with a sentence an operator can act on and the
offending line under it, a mis-indented key names the blocks it sits between, and a
duplicate key is a problem like any other. :func:`key_positions` maps each location
(``groups[0].models[1].name``) to its line and column, for ``check``'s output.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.error import Mark, MarkedYAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["describe_json_error", "in_file_order", "key_positions", "load_yaml", "position_of"]


# libyaml parses a config about ten times faster than pure-Python PyYAML; its error
# wording differs, so a document it refuses is parsed again in Python to describe why.
_FAST: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DuplicateKeys:
    """Constructor mix-in: note duplicate keys instead of keeping the last one silently."""

    duplicates: list[tuple[str, Mark, Mark]]  # key, this one, the first

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
            if key in first:
                self.duplicates.append((str(key), key_node.start_mark, first[key]))
            else:
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc, no-any-return]


class _Loader(_DuplicateKeys, _FAST):  # type: ignore[misc]
    pass


def load_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    """``(data, problems)``: the parsed document and its duplicate keys, located.

    A syntax error raises ``ValueError`` whose message is the plain-words problem.
    """
    loader = _Loader(text)
    loader.duplicates = []
    try:
        data = loader.get_single_data()
    except yaml.YAMLError:
        raise ValueError(_syntax_error(text, source)) from None
    finally:
        loader.dispose()
    problems = [
        f"{_where(source, mark)}: duplicate key '{key}' (first on line {was.line + 1}); "
        "YAML would keep only the last one, so remove or rename one of them"
        for key, mark, was in loader.duplicates]
    return data, problems


def _syntax_error(text: str, source: str) -> str:
    """The plain-words problem of a document libyaml refused, from PyYAML's own parse."""
    try:
        yaml.load(text, Loader=yaml.SafeLoader)
    except MarkedYAMLError as exc:
        return _describe(exc, text, source)
    except yaml.YAMLError as exc:  # unmarked: rare (e.g. an unsupported encoding)
        return f"{source}: invalid YAML: {exc}"
    return f"{source}: invalid YAML (libyaml refuses it; PyYAML does not say why)"


def key_positions(text: str) -> dict[str, tuple[int, int]]:
    """``{location: (line, column)}`` (1-based) for every key and list item of a YAML
    (or JSON) document; empty when it does not parse."""
    try:
        root = yaml.compose(text, Loader=_FAST)
    except yaml.YAMLError:
        return {}
    out: dict[str, tuple[int, int]] = {}

    def walk(node: Node, path: str) -> None:
        if isinstance(node, MappingNode):
            for key_node, value in node.value:
                key = str(key_node.value)
                sub = f"{path}.{key}" if path else key
                out[sub] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                walk(value, sub)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                out[sub] = (item.start_mark.line + 1, item.start_mark.column + 1)
                walk(item, sub)

    if root is not None:
        walk(root, "")
    return out


_FILE_POSITION = re.compile(r"^(.*):(\d+):(\d+)$")


def position_of(location: str, positions: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
    """(line, column) of a problem's location: ``file:line:col`` itself, else the key at
    ``groups[0].models[1].name`` or, when that key is missing, the nearest one around it."""
    m = _FILE_POSITION.match(location)
    if m is not None:
        return int(m[2]), int(m[3])
    while location:
        if location in positions:
            return positions[location]
        shorter = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", location)
        if shorter == location:
            return None
        location = shorter
    return None


def in_file_order(problems: list[str], text: str) -> list[str]:
    """``location: message`` lines sorted by where their locations are in ``text``
    (those without a place in it first, in their own order)."""
    if len(problems) < 2:
        return problems
    positions = key_positions(text)

    def order(line: str) -> tuple[int, int]:
        return position_of(line.partition(": ")[0], positions) or (0, 0)

    return sorted(problems, key=order)


def without_source_line(problem: str) -> str:
    """A problem as the daemon tells it (its log, status page, webhooks): without the
    file's line that a syntax error shows under it (``check`` shows it). That line may
    hold a key the router does not know yet, a rotated one with a typo beside it, which
    the log's redaction cannot know to mask."""
    head, cut, _ = problem.partition("\n")
    return f"{head} (llm-router check shows the line)" if cut else head


def describe_json_error(msg: str, lineno: int, colno: int, text: str, source: str) -> str:
    """A JSON syntax error located the same way as a YAML one."""
    return (f"{source}:{lineno}:{colno}: invalid JSON: {msg}"
            + _show(text.splitlines(), lineno - 1, colno - 1))


# ---------------------------------------------------------------- plain words


def _where(source: str, mark: Mark) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}"


def _show(lines: list[str], line: int, column: int) -> str:
    """The offending line with a caret under ``column`` (0-based), or nothing."""
    if not 0 <= line < len(lines):
        return ""
    number = f"{line + 1} | "
    return (f"\n    {number}{lines[line].expandtabs(1)}"
            f"\n    {' ' * (len(number) - 2)}| {' ' * column}^")


_KEY = re.compile(r"^(\s*)(?:-\s+)*([^\s#'\"{\[-][^:#]*?|'[^']*'|\"[^\"]*\"):(?:\s|$)")


def _key_at(line: str) -> tuple[int, str] | None:
    """``(column, key)`` of a ``key: ...`` or ``- key: ...`` line, else None."""
    m = _KEY.match(line)
    if m is None:
        return None
    return m.start(2), m.group(2).strip("'\"")


def _describe(exc: MarkedYAMLError, text: str, source: str) -> str:
    lines = text.splitlines()
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or ""
    if mark is None:
        return f"{source}: invalid YAML: {problem}"
    row, col = mark.line, mark.column
    ctx = exc.context_mark
    if "'\\t'" in problem or "\t" in problem:
        sentence = "a tab character; YAML indents with spaces only"
    elif problem.startswith("expected <block end>"):
        sentence = _misindented(lines, row)
    elif problem == "mapping values are not allowed here":
        sentence = _stray_colon(lines, row, col)
    elif "could not find expected ':'" in problem and ctx is not None:
        row, col = ctx.line, ctx.column
        sentence = "this line has no ':' after its key; write 'key: value'"
    elif "end of stream" in problem and "quoted" in (exc.context or "") and ctx is not None:
        row, col = ctx.line, ctx.column
        sentence = "the quote opened here is never closed"
    elif "flow" in (exc.context or "") and (opened := _unclosed(lines, row, col)):
        row, col, bracket = opened
        sentence = (f"the '{bracket}' opened here is not closed with "
                    f"'{_CLOSING[bracket]}' (or an item after it lacks its ',')")
    elif "cannot start any token" in problem:
        char = problem.split("'")[1] if "'" in problem else "this character"
        sentence = f"a value cannot start with '{char}'; put the value in quotes"
    elif "undefined alias" in problem:
        sentence = ("a value starting with '*' is a YAML alias; put the value in quotes if "
                    "it is meant literally")
    else:
        sentence = f"{problem}" + (f" ({exc.context} on line {ctx.line + 1})"
                                   if exc.context and ctx is not None else "")
    if row >= len(lines) and ctx is not None:  # at the end of the file: show where it began
        row, col = ctx.line, ctx.column
    shown = _show(lines, row, col)
    return f"{_where_rc(source, row, col)}: invalid YAML: {sentence}" + shown


_CLOSING = {"[": "]", "{": "}"}


def _unclosed(lines: list[str], row: int, col: int) -> tuple[int, int, str] | None:
    """``(line, column, bracket)`` of the last '[' or '{' still open at ``row``/``col``."""
    stack: list[tuple[int, int, str]] = []
    for i, line in enumerate(lines[:row + 1]):
        quote = None
        for j, ch in enumerate(line if i < row else line[:col]):
            if quote:
                quote = None if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == "#" and (j == 0 or line[j - 1].isspace()):
                break
            elif ch in _CLOSING:
                stack.append((i, j, ch))
            elif ch in "]}" and stack:
                stack.pop()
    return stack[-1] if stack else None


def _where_rc(source: str, row: int, col: int) -> str:
    return f"{source}:{row + 1}:{col + 1}"


def _misindented(lines: list[str], row: int) -> str:
    """Which blocks a key indented wrong sits between, and how to put it in either."""
    here = _key_at(lines[row]) if row < len(lines) else None
    if here is None:
        return "this line is indented differently from the lines around it"
    column, key = here
    deeper = shallower = None
    for i in range(row - 1, -1, -1):
        other = _key_at(lines[i])
        if other is None:
            continue
        if deeper is None and other[0] > column:
            deeper = (i, *other)
        if other[0] < column:
            shallower = (i, *other)
            break
    if deeper is None:
        return f"'{key}' is indented {_spaces(column)}, which matches no block above it"
    i, dcol, dkey = deeper
    advice = (f"'{key}' is indented {_spaces(column)}, so it falls out of the block of "
              f"'{dkey}' (line {i + 1}, indented {dcol}); indent it {dcol} spaces if it "
              "belongs there")
    if shallower is not None:
        j, scol, skey = shallower
        advice += f", or {scol} to put it beside '{skey}' (line {j + 1})"
    return advice


def _spaces(n: int) -> str:
    return "1 space" if n == 1 else f"{n} spaces"


def _stray_colon(lines: list[str], row: int, col: int) -> str:
    line = lines[row] if row < len(lines) else ""
    before = line[:col]
    if ": " in before:
        return ("this value contains ': ', which YAML reads as a new key; put the whole "
                "value in quotes")
    here = _key_at(line)
    for i in range(row - 1, -1, -1):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            continue
        above = _key_at(lines[i])
        if above is None:
            return (f"line {i + 1} has no ':' after its key, so YAML reads it together "
                    "with this line; write 'key: value'")
        if here is not None and here[0] > above[0]:
            return (f"'{here[1]}' is indented more than '{above[1]}' on line {i + 1}, so "
                    "YAML reads it as the rest of that value; line it up with "
                    f"'{above[1]}' ({above[0]} spaces)")
        break
    return "a ':' where YAML expects no key (should the value be in quotes?)"
