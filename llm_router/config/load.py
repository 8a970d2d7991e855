"""The config file: load YAML or JSON, expand ``${ENV}``, validate completely, freeze.

:func:`load_config` either returns a :class:`Config` that the rest of the router trusts
without further checks, or raises :class:`ConfigError` listing *every* problem with its
location (``groups[1].models[0].provider: unknown provider 'opnai' (known: openai)``).
Problems that do not stop it serving come back in ``Config.warnings``. A config written
for the Go llm-router (``port``, ``api_key``, ``groups``, ``providers`` with ``api_keys``
as plain strings) loads unchanged.

The keys themselves are declared in :mod:`llm_router.config.model` (re-exported here,
where the rest of the router imports them from); checks across keys are in
:mod:`llm_router.config.checks`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from .checks import check_config
from .model import Config, ConfigError
from .reader import FromEnv, Reader, at
from .yaml_file import describe_json_error, in_file_order, load_yaml

__all__ = ["load_config", "parse_config"]

# ---------------------------------------------------------------- loading

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate ``path``; raise :class:`ConfigError` with every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    cfg = parse_config(text, fmt="json" if p.suffix.lower() == ".json" else "yaml",
                       env=env, source=str(p))
    problems = credentials_problems(cfg)
    if problems:
        raise ConfigError(problems, list(cfg.warnings))
    snapshot = cfg.usage.snapshot_path
    if snapshot and Path(snapshot).resolve() == p.resolve():
        # Seen by hand: the first snapshot replaced the config, and the next start failed.
        raise ConfigError([f"usage.snapshot_path: '{snapshot}' is this config file; the "
                           "usage snapshot would overwrite it (use e.g. ./usage.json)"])
    return cfg


def credentials_problems(cfg: Config) -> list[str]:
    """Each vertex key file that cannot serve, located (``providers[1].credentials: …``)."""
    out: list[str] = []
    for i, provider in enumerate(cfg.providers.values()):
        if provider.type != "vertex":
            continue
        for j, key in enumerate(provider.keys):
            problem = _credentials_problem(key.secret)
            if problem is None:
                continue
            if provider.credentials and j == 0:
                out.append(f"providers[{i}].credentials: {problem}")
            else:
                out.append(f"providers[{i}].api_keys[{j - bool(provider.credentials)}]: "
                           f"{problem}")
    return out


_SERVICE_ACCOUNT_FIELDS: Final = ("client_email", "private_key")
_MAX_PATH: Final = 4096  # PATH_MAX on Linux: anything longer is not a path


def _credentials_problem(file: str) -> str | None:
    """What is wrong with a service-account key file, or None. Never quotes its content:
    the file holds a private key."""
    if file.lstrip().startswith("{") or "\n" in file or len(file) > _MAX_PATH:
        # The key file's content where its path belongs (an inline
        # GOOGLE_APPLICATION_CREDENTIALS): never echoed, it holds the private key.
        return ("expected the path of a service-account key file, and got what looks like "
                "the file's content (not shown: it holds a private key); write the JSON to a "
                "file and give its path")
    try:
        with open(file, "rb") as f:
            raw = f.read(1024 * 1024)
    except OSError as exc:
        return f"cannot read the credentials file {file!r}: {exc.strerror or exc}"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"the credentials file {file!r} is not JSON"
    if not isinstance(doc, dict) or doc.get("type") != "service_account":
        return (f"the credentials file {file!r} is not a service-account key (its \"type\" "
                "must be \"service_account\"; user credentials from gcloud are not "
                "supported)")
    missing = [name for name in _SERVICE_ACCOUNT_FIELDS if not isinstance(doc.get(name), str)
               or not doc.get(name)]
    if missing:
        return f"the credentials file {file!r} lacks {', '.join(missing)}"
    return None



def parse_config(
    text: str, *, fmt: str = "yaml", env: Mapping[str, str] | None = None, source: str = "",
    secret_files: list[str] | None = None,
) -> Config:
    """Parse config text (``fmt`` is ``yaml`` or ``json``) into a validated :class:`Config`.

    Problems that stop it serving raise :class:`ConfigError`; the others are in
    ``Config.warnings``. Keys read from files (``key_file``) are read here; the paths of
    those files, readable or not, are appended to ``secret_files`` when given, even when
    it raises (the config watcher follows them).
    """
    where = source or "config"
    duplicates: list[str] = []
    try:
        if fmt == "json":
            raw: Any = orjson.loads(text)
        else:
            raw, duplicates = load_yaml(text, where)
    except orjson.JSONDecodeError as exc:
        raise ConfigError([describe_json_error(exc.msg, exc.lineno, exc.colno, text,
                                               where)]) from None
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    if raw is None:
        raw = {}
    reader = Reader()
    reader.problems += duplicates
    revealed: dict[str, str] = {}
    raw = _expand(raw, "", os.environ if env is None else env, reader, revealed)
    try:
        cfg: Config | Any = reader.read(Config, raw, "")
    finally:
        if secret_files is not None:
            secret_files.extend(reader.secret_files)
    revealed.update((secret, f"<the content of {file}>")
                    for secret, file in reader.file_secrets.items() if len(secret) >= _MIN_MASKED)
    if not isinstance(cfg, Config):
        raise ConfigError(_masked(in_file_order(reader.problems, text), revealed))
    warnings = _masked(in_file_order(check_config(cfg, reader), text), revealed)
    if reader.problems:
        raise ConfigError(_masked(in_file_order(reader.problems, text), revealed), warnings)
    return dataclasses.replace(cfg, source=source, warnings=tuple(warnings))


_MIN_MASKED: Final = 8  # shorter values (ports, flags) say more than they could reveal


def _masked(messages: list[str], revealed: Mapping[str, str]) -> list[str]:
    """``messages`` with every value a ``${VAR}`` brought in shown as ``${VAR}``, and every
    key read from a file as ``<the content of FILE>``: problems quote values, and a secret
    put under the wrong key would otherwise reach check's output, the reload log and the
    status page."""
    if not revealed:
        return messages
    out = []
    for message in messages:
        for value in sorted(revealed, key=len, reverse=True):
            if value in message:
                message = message.replace(value, revealed[value])
        out.append(message)
    return out


def _expand(node: Any, path: str, env: Mapping[str, str], reader: Reader,
            revealed: dict[str, str]) -> Any:
    """``node`` with ``${VAR}`` / ``${VAR:-default}`` expanded in every string value."""
    if isinstance(node, str):
        if "${" not in node:
            return node

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = env.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    reader.fail(path, f"environment variable {name} is not set "
                                      f"(write ${{{name}:-default}} to give a default)")
                    return ""
                return default
            if len(value) >= _MIN_MASKED:
                revealed[value] = f"${{{name}}}"
            return value

        return FromEnv(_ENV.sub(sub, node))
    if isinstance(node, dict):
        return {k: _expand(val, at(path, str(k)), env, reader, revealed)
                for k, val in node.items()}
    if isinstance(node, list):
        return [_expand(val, at(path, i), env, reader, revealed) for i, val in enumerate(node)]
    return node

