"""Checks across keys, on a config that is well-formed key by key.

The declarations in :mod:`llm_router.config` check each key alone. What needs the
whole file is here: names that must refer to something (a member's provider, an
allowlist entry), names and keys that must be unique, and configs that load but
can never serve (a member no key of its provider may serve, a group with no such
member). Those are errors, reported through the same :class:`~llm_router.config.reader.Reader`
so they come with their location. Warnings are for configs that serve, but probably
not as meant (a price nothing uses, every weight 0, a grace period the orchestrator
will cut short); :func:`check_config` returns them, ``llm-router check`` prints them
and exits 0, a reload logs them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Final

from .aliases import ambiguous_pairs
from .model import (
    DEFAULT_PRICE,
    MAX_MODEL_BYTES,
    MEMBER_CAPABILITIES,
    Config,
    Group,
    Member,
    User,
    UserKey,
)
from .reader import CONTROL_CHARACTERS, Reader, at, did_you_mean, unknown_choice

__all__ = ["KILL_TIMEOUT_S", "check_config"]

# Kubernetes' default terminationGracePeriodSeconds; `docker stop` waits only 10 s.
KILL_TIMEOUT_S: Final = 30.0


def check_config(cfg: Config, r: Reader) -> list[str]:
    """Report cross-key errors into ``r``; return the warnings, each ``location: message``."""
    warnings: list[str] = []
    # No provider at all is refused by serve, check and a reload alike (cli, reload), not
    # here: a config without one is still a valid value for library use and unit tests.
    for group in cfg.groups.values():
        _check_group(cfg, group, r, warnings)
    _check_users(cfg, r)
    _check_provider_keys(cfg, r)
    _check_control_characters(cfg, r)
    _check_aliases(cfg, cfg.aliases, "aliases", r, warnings)
    for user in cfg.users:
        _check_aliases(cfg, user.aliases, r.where(user, "aliases"), r, warnings)
    used = {m.model for g in cfg.groups.values() for m in g.members}
    for model in cfg.pricing:
        if model not in used and model != "default":
            warnings.append(f"pricing.{model}: no group member has the model '{model}'; this "
                            "price applies only to direct provider/model requests"
                            f"{did_you_mean(model, sorted(used))}")
    warnings += _unpriced_reach(cfg)
    linger = cfg.shutdown_delay_s + cfg.shutdown_grace_s
    if linger > KILL_TIMEOUT_S:
        warnings.append(
            f"shutdown_grace_s: shutdown_delay_s + shutdown_grace_s is {linger:g} s, longer "
            f"than the {KILL_TIMEOUT_S:g} s an orchestrator typically waits after SIGTERM "
            "(Kubernetes' default terminationGracePeriodSeconds; docker stop waits 10 s): "
            "raise that timeout too, or streams are cut off by SIGKILL")
    return warnings


def _check_aliases(cfg: Config, table: Mapping[str, str], path: str, r: Reader,
                   warnings: list[str]) -> None:
    """Each alias names a group or provider/model; a pattern that is a group's name is
    never used; equally specific patterns that can match one name are ambiguous."""
    for pattern, target in table.items():
        where = at(path, pattern)
        if target in cfg.groups:
            pass
        elif "/" in target:
            provider, _, model = target.partition("/")
            if provider not in cfg.providers or not model:
                r.fail(where, f"alias target '{target}': "
                              + unknown_choice("provider", provider, tuple(cfg.providers)))
        else:
            r.fail(where, "alias target " + unknown_choice("group", target, tuple(cfg.groups))
                   + "; an alias names a group or provider/model")
        if pattern in cfg.groups:
            warnings.append(f"{where}: never used: a group named '{pattern}' exists, and a "
                            "group name is never aliased")
        elif not _is_glob(pattern) and len(pattern.encode()) > MAX_MODEL_BYTES:
            warnings.append(f"{where}: never used: it is {len(pattern.encode())} bytes long, "
                            f"and a client's model name is at most {MAX_MODEL_BYTES} bytes")
    for first, second, both in ambiguous_pairs(table):
        warnings.append(f"{path}: '{first}' and '{second}' are equally specific and both match "
                        f"'{both}'; '{first}' wins because it is written first. Make one more "
                        "specific")


def _unservable(cfg: Config, member: Member) -> str | None:
    """Why no key of the member's provider may serve it, or None when one may."""
    provider = cfg.providers.get(member.provider)
    if provider is None or not provider.keys:  # reported where its keys are
        return None
    if any(k.serves(member.model) for k in provider.keys):
        return None
    allowed = sorted({m for k in provider.keys for m in k.models or ()})
    return (f"no key of provider '{member.provider}' may serve the model '{member.model}' "
            f"(its keys are restricted to: {', '.join(allowed)})")


def _check_group(cfg: Config, group: Group, r: Reader, warnings: list[str]) -> None:
    dead: list[tuple[Member, str]] = []
    for member in group.members:
        if member.provider not in cfg.providers:
            r.fail(r.where(member, "provider"),
                   unknown_choice("provider", member.provider, tuple(cfg.providers)))
            continue
        for i, cap in enumerate(member.capabilities or ()):
            if cap not in MEMBER_CAPABILITIES:
                r.fail(at(r.where(member, "capabilities"), i),
                       unknown_choice("capability", cap, MEMBER_CAPABILITIES))
        why = _unservable(cfg, member)
        if why is not None:
            dead.append((member, why))
    known = [m for m in group.members if m.provider in cfg.providers]
    if known and len(dead) == len(known):
        listing = "; ".join(f"{r.where(m).rsplit('.', 1)[-1]}: {why}" for m, why in dead)
        r.fail(r.where(group), f"group '{group.name}' has no member that can be served, so "
                               f"every request for it would fail: {listing}")
    else:
        for member, why in dead:
            r.fail(r.where(member), why)
    candidates = sum(len(cfg.providers[m.provider].keys) for m in known)
    if candidates > 1 and all(m.weight == 0 for m in group.members):
        warnings.append(f"{r.where(group)}: every member has weight 0 (always preferred), so "
                        "requests are spread at random, not by tokens; give weights above 0 "
                        "to balance")


def _check_users(cfg: Config, r: Reader) -> None:
    names: set[str] = set()
    owners: dict[str, str] = {}  # key sha256 -> user name
    for user in cfg.users:
        if user.name in names:
            r.fail(r.where(user, "name"), f"duplicate user '{user.name}'")
        names.add(user.name)
        key_names: set[str] = set()
        for key in user.keys:
            owner = owners.get(key.sha256)
            if owner == user.name:
                r.fail(r.where(key), "duplicate key (the same key is listed twice)")
            elif owner is not None:
                r.fail(r.where(key), f"key '{key.name}' is also a key of user '{owner}'")
            else:
                owners[key.sha256] = user.name
            if key.name in key_names and owner != user.name:
                # usage, limits, budgets and metrics are kept per (user, key name)
                r.fail(r.where(key, "name"), f"duplicate key name '{key.name}' in user "
                                             f"'{user.name}'; usage and limits are kept "
                                             "per key name")
            key_names.add(key.name)
            _check_allowlist(cfg, key, r)
        _check_allowlist(cfg, user, r)


def _check_allowlist(cfg: Config, holder: User | UserKey, r: Reader) -> None:
    """Each entry must name a group or provider, or (a glob) match one."""
    member_ids = [f"{m.provider}/{m.model}" for g in cfg.groups.values() for m in g.members]
    for i, pattern in enumerate(holder.models or ()):
        where = at(r.where(holder, "models"), i)
        prefix, slash, _ = pattern.partition("/")
        if not _is_glob(pattern):
            if slash and prefix not in cfg.providers:
                r.fail(where, f"unknown provider '{prefix}'"
                              f"{did_you_mean(prefix, tuple(cfg.providers))}")
            elif not slash and pattern not in cfg.groups:
                r.fail(where, f"unknown group '{pattern}'"
                              f"{did_you_mean(pattern, tuple(cfg.groups))}")
            continue
        matches = (any(fnmatch.fnmatchcase(n, pattern) for n in (*cfg.groups, *member_ids))
                   or (slash and any(fnmatch.fnmatchcase(p, prefix) for p in cfg.providers)))
        if not matches:
            r.fail(where, f"'{pattern}' matches no group and no provider/model (groups: "
                          f"{', '.join(cfg.groups) or 'none'}; providers: "
                          f"{', '.join(cfg.providers) or 'none'})")


def _check_provider_keys(cfg: Config, r: Reader) -> None:
    for provider in cfg.providers.values():
        labels: set[str] = set()
        for key in provider.keys:
            if key.label in labels:
                r.fail(r.where(key), f"duplicate key (label '{key.label}'); give each key a "
                                     "distinct name")
            labels.add(key.label)


def _check_control_characters(cfg: Config, r: Reader) -> None:
    """Names go into X-Router-* headers, metric labels and log lines, keys and extra
    headers into the upstream's request: a line break there (a YAML block scalar, an
    escape in a quoted string) failed every request through them, as a dropped
    connection or a 500. Names are quoted in the problem; keys and headers are not."""
    def check(obj: object, attr: str, value: str, quoted: bool = True) -> None:
        if CONTROL_CHARACTERS.search(value):
            r.fail(r.where(obj, attr), "has a control character (a line break, tab or NUL)"
                   + (f": {value!r}" if quoted else "") + "; names and keys go into HTTP "
                   "headers and log lines")

    for provider in cfg.providers.values():
        check(provider, "name", provider.name)
        for name, value in provider.headers.items():
            if CONTROL_CHARACTERS.search(name) or CONTROL_CHARACTERS.search(value):
                r.fail(at(r.where(provider, "headers"), name), "has a control character (a "
                       "line break, tab or NUL) in its name or value; it is sent as an HTTP "
                       "header")
        for key in provider.keys:
            check(key, "label", key.label)
            if not key.key_file:  # a file's content was checked as it was read
                check(key, "secret", key.secret, quoted=False)
            check(key, "access_key_id", key.access_key_id, quoted=False)
            check(key, "session_token", key.session_token, quoted=False)
    for group in cfg.groups.values():
        check(group, "name", group.name)
        if len(group.name.encode()) > MAX_MODEL_BYTES:
            r.fail(r.where(group, "name"), f"is {len(group.name.encode())} bytes long; "
                   f"clients name a group as their 'model', which is at most "
                   f"{MAX_MODEL_BYTES} bytes")
        for member in group.members:
            check(member, "model", member.model)
    for user in cfg.users:
        check(user, "name", user.name)
        for user_key in user.keys:
            check(user_key, "name", user_key.name)


def _unpriced_reach(cfg: Config) -> list[str]:
    """Budgeted users who could ask for a model without a price (those requests get 403
    ``model_not_priced``; accounting.price_for is the rule: the model's entry, else
    ``pricing.default``)."""
    if DEFAULT_PRICE in cfg.pricing:
        return []
    out: list[str] = []
    for i, user in enumerate(cfg.users):
        budgeted = user.budget is not None or any(k.budget is not None for k in user.keys)
        if not budgeted:
            continue
        reach: list[str] = []
        for name, group in cfg.groups.items():
            if user.models is not None and not any(fnmatch.fnmatchcase(name, p)
                                                   for p in user.models):
                continue
            reach += [f"group '{name}' member '{m.provider}/{m.model}'"
                      for m in group.members if m.model not in cfg.pricing]
        direct = [p for p in (user.models or ("*/*",)) if "/" in p and p not in cfg.groups]
        if any(_is_glob(p) or p.partition("/")[2] not in cfg.pricing for p in direct):
            reach.append("provider/model names that 'pricing' does not list ("
                         + ", ".join(f"'{p}'" for p in direct) + ")")
        if reach:
            out.append(f"users[{i}]: user '{user.name}' has a budget but may ask for models "
                       f"without a price: {'; '.join(reach)}. Those requests get 403 "
                       "model_not_priced; price them or add 'pricing.default'.")
    return out


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
