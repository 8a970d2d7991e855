"""The config file: load YAML or JSON, expand ``${ENV}``, validate completely, freeze.

:func:`load_config` either returns a :class:`Config` that the rest of the router trusts
without further checks, or raises :class:`ConfigError` listing *every* problem with its
location (``groups[1].models[0].provider: unknown provider 'opnai' (known: openai)``).
A config written for the Go llm-router (``port``, ``api_key``, ``groups``, ``providers``
with ``api_keys`` as plain strings) loads unchanged.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

import orjson
import yaml

__all__ = [
    "Affinity",
    "Budget",
    "CircuitSettings",
    "Config",
    "ConfigError",
    "Group",
    "Limits",
    "Member",
    "Price",
    "Provider",
    "ProviderKey",
    "Timeouts",
    "UsageSettings",
    "User",
    "UserKey",
    "key_label",
    "load_config",
    "parse_config",
    "sha256_hex",
]

PROVIDER_TYPES: Final = ("openai", "anthropic", "mock")
STRATEGIES: Final = ("inverse-weight", "priority", "round-robin", "latency", "price")
AFFINITY_MODES: Final = ("auto", "session", "off")
BUDGET_PERIODS: Final = ("daily", "weekly", "monthly", "total")
ROLES: Final = ("admin", "user")
_DEFAULT_BASE_URLS: Final = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


class ConfigError(Exception):
    """The config is unusable; ``problems`` holds every ``location: message`` line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def sha256_hex(secret: str) -> str:
    """Hex sha256 of a key: what configs store instead of the key itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_label(secret: str) -> str:
    """The default, non-secret label of a key: the first 8 hex digits of its sha256."""
    return sha256_hex(secret)[:8]


# ---------------------------------------------------------------- the frozen model


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-provider upstream timeouts, in seconds."""

    connect: float = 10.0  # TCP + TLS connect
    # attempt start (connecting included) → response headers, and for a stream its first
    # event (reasoning models think)
    first_byte: float = 120.0
    idle: float = 120.0  # longest gap between two stream chunks after the first event
    total: float = 600.0  # one attempt from start to last byte, stream included


@dataclass(frozen=True, slots=True)
class ProviderKey:
    """One upstream API key. ``label`` is its stable identity in counters and metrics."""

    secret: str = field(repr=False)
    label: str
    models: frozenset[str] | None = None  # this key may only serve these upstream models
    daily_request_limit: int | None = None  # quota, resets 00:00 UTC

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    type: str  # openai | anthropic | mock
    base_url: str
    keys: tuple[ProviderKey, ...]
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeouts: Timeouts = field(default_factory=Timeouts)
    latency_ms: float = 0.0  # mock only
    tokens_per_second: float = 0.0  # mock only
    anthropic_version: str = "2023-06-01"  # anthropic only
    max_tokens_default: int = 4096  # anthropic only: Messages requires max_tokens


@dataclass(frozen=True, slots=True)
class Member:
    """A group member: one upstream model on one provider."""

    provider: str
    model: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Affinity:
    """Prompt-cache affinity of a group (docs/affinity.md explains the defaults)."""

    mode: str = "auto"  # auto: explicit keys, else the prefix hash | session: explicit only | off
    slack: float = 0.25  # a pin holds while its tokens x weight <= (1 + slack) x the lowest
    ttl_s: float = 900.0  # a pin lapses this long after its last use
    prefix_bytes: int = 8192  # at most this much prompt text is hashed per request


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    members: tuple[Member, ...]
    strategy: str = "inverse-weight"
    max_attempts: int | None = None  # default: number of candidates, at most 3
    max_wait_s: float = 0.0  # wait this long for a cooling key before answering 503
    affinity: Affinity = field(default_factory=Affinity)


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    daily_requests: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    usd: float
    period: str = "monthly"  # daily | weekly | monthly | total (calendar periods, UTC)


@dataclass(frozen=True, slots=True)
class UserKey:
    sha256: str = field(repr=False)
    name: str
    models: tuple[str, ...] | None = None
    limits: Limits | None = None
    budget: Budget | None = None


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str = "user"
    keys: tuple[UserKey, ...] = ()
    models: tuple[str, ...] | None = None  # allowlist: group names and provider/model globs
    limits: Limits | None = None
    budget: Budget | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None


@dataclass(frozen=True, slots=True)
class UsageSettings:
    snapshot_path: str | None = None
    snapshot_interval_s: float = 30.0


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    """Passive health: when a key's recent upstream failures open its circuit."""

    window: int = 20  # look at the last N attempts …
    window_s: float = 60.0  # … within this many seconds
    min_requests: int = 5  # never judge on fewer
    failure_rate: float = 0.5  # open at or above this share of failures
    open_s: float = 30.0  # stay open this long, then let one probe through
    cooldown_base_s: float = 5.0  # 429 without Retry-After: 5 s, 15 s, 45 s … escalating
    cooldown_max_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 8080
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = 32 * 1024 * 1024
    providers: Mapping[str, Provider] = field(default_factory=lambda: MappingProxyType({}))
    groups: Mapping[str, Group] = field(default_factory=lambda: MappingProxyType({}))
    users: tuple[User, ...] = ()
    pricing: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType({}))
    usage: UsageSettings = field(default_factory=UsageSettings)
    circuit: CircuitSettings = field(default_factory=CircuitSettings)
    shutdown_grace_s: float = 30.0  # SIGTERM: how long in-flight requests may finish
    # SIGTERM: keep accepting this long with /health/ready at 503 before draining, so load
    # balancers take the instance out of rotation first (kube-apiserver's shutdown delay).
    shutdown_delay_s: float = 0.0
    keepalive_s: float = 15.0
    request_penalty: int = 0  # Go llm-router: tokens charged to a key per request
    error_penalty: int = 0  # Go llm-router: tokens charged to a key per failed request
    source: str = ""  # the file it came from, for logs

    def summary(self) -> str:
        keys = sum(len(p.keys) for p in self.providers.values())
        return (
            f"{len(self.providers)} providers ({keys} keys), {len(self.groups)} groups, "
            f"{len(self.users)} users, {len(self.pricing)} prices"
        )


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
    return parse_config(text, fmt="json" if p.suffix.lower() == ".json" else "yaml",
                        env=env, source=str(p))


def parse_config(
    text: str, *, fmt: str = "yaml", env: Mapping[str, str] | None = None, source: str = ""
) -> Config:
    """Parse config text (``fmt`` is ``yaml`` or ``json``) into a validated :class:`Config`."""
    try:
        raw: Any = orjson.loads(text) if fmt == "json" else yaml.safe_load(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError([f"{source or 'config'}: invalid JSON: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{source or 'config'}: invalid YAML{where}: {problem}"]) from None
    if raw is None:
        raw = {}
    v = _Validator(os.environ if env is None else env)
    raw = v.expand(raw, "")
    cfg = v.config(raw, source)
    if v.problems:
        raise ConfigError(v.problems)
    assert cfg is not None
    return cfg


# ---------------------------------------------------------------- validation

_T = TypeVar("_T")
_Num = int | float


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Validator:
    """Walks the raw tree once, collecting every problem with its location."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self._failed: set[str] = set()  # paths already reported: no follow-on noise

    def fail(self, path: str, message: str) -> None:
        self._failed.add(path)
        self.problems.append(f"{path or 'config'}: {message}")

    # -- ${ENV} expansion over every string value
    def expand(self, node: Any, path: str) -> Any:
        if isinstance(node, str):
            return self._expand_str(node, path)
        if isinstance(node, dict):
            return {k: self.expand(val, _at(path, str(k))) for k, val in node.items()}
        if isinstance(node, list):
            return [self.expand(val, _at(path, i)) for i, val in enumerate(node)]
        return node

    def _expand_str(self, s: str, path: str) -> str:
        if "${" not in s:
            return s

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    self.fail(path, f"environment variable {name} is not set "
                                    f"(write ${{{name}:-default}} to give a default)")
                    return ""
                return default
            return value

        return _ENV.sub(sub, s)

    # -- typed field readers
    def obj(self, node: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any] | None:
        if not isinstance(node, dict):
            self.fail(path, f"expected a mapping, got {_kind(node)}")
            return None
        for key in node:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                self.fail(_at(path, str(key)), f"unknown key{extra}")
        return node

    def get(
        self, d: dict[str, Any], key: str, path: str, check: Callable[[Any], bool], want: str,
        default: _T, *, required: bool = False,
    ) -> Any:
        if key not in d or d[key] is None:
            if required:
                self.fail(_at(path, key), "required")
            return default
        val = d[key]
        if not check(val):
            self.fail(_at(path, key), f"expected {want}, got {_kind(val)}")
            return default
        return val

    def string(self, d: dict[str, Any], key: str, path: str, default: str = "", *,
               required: bool = False) -> str:
        val: str = self.get(d, key, path, lambda x: isinstance(x, str), "a string", default,
                            required=required)
        if required and key in d and val == "" and isinstance(d[key], str):
            self.fail(_at(path, key), "must not be empty")
        return val

    def number(self, d: dict[str, Any], key: str, path: str, default: _T, *,
               minimum: float = 0.0, integer: bool = False) -> _T | Any:
        def ok(x: Any) -> bool:
            if isinstance(x, bool):
                return False
            return isinstance(x, int) if integer else isinstance(x, int | float)

        val = self.get(d, key, path, ok, "a whole number" if integer else "a number", default)
        if val is not default and val < minimum:
            self.fail(_at(path, key), f"must be >= {minimum:g}")
            return default
        return val

    def items(self, d: dict[str, Any], key: str, path: str) -> Iterator[tuple[int, Any, str]]:
        val = d.get(key)
        if val is None:
            return
        if not isinstance(val, list):
            self.fail(_at(path, key), f"expected a list, got {_kind(val)}")
            return
        for i, item in enumerate(val):
            yield i, item, _at(_at(path, key), i)

    def str_list(self, d: dict[str, Any], key: str, path: str) -> tuple[str, ...] | None:
        if d.get(key) is None:
            return None
        out: list[str] = []
        for _, item, p in self.items(d, key, path):
            if isinstance(item, str) and item:
                out.append(item)
            else:
                self.fail(p, f"expected a non-empty string, got {_kind(item)}")
        return tuple(out)

    # -- the sections
    def config(self, raw: Any, source: str) -> Config | None:
        top = self.obj(raw, "", (
            "host", "port", "api_key", "max_body_bytes", "providers", "groups", "users",
            "pricing", "usage", "circuit", "shutdown_grace_s", "shutdown_delay_s", "keepalive_s",
            "request_penalty", "error_penalty",
        ))
        if top is None:
            return None
        providers: dict[str, Provider] = {}
        for i, item, p in self.items(top, "providers", ""):
            prov = self.provider(item, p)
            if prov is None:
                continue
            if prov.name in providers:
                self.fail(_at(p, "name"), f"duplicate provider '{prov.name}'")
            providers[prov.name] = prov
            del i
        groups: dict[str, Group] = {}
        for _, item, p in self.items(top, "groups", ""):
            grp = self.group(item, p, providers)
            if grp is None:
                continue
            if grp.name in groups:
                self.fail(_at(p, "name"), f"duplicate group '{grp.name}'")
            groups[grp.name] = grp
        users: list[User] = []
        seen_keys: dict[str, str] = {}
        for _, item, p in self.items(top, "users", ""):
            user = self.user(item, p, providers, groups)
            if user is None:
                continue
            if any(u.name == user.name for u in users):
                self.fail(_at(p, "name"), f"duplicate user '{user.name}'")
            for k in user.keys:
                if k.sha256 in seen_keys:
                    self.fail(p, f"key '{k.name}' is also a key of user '{seen_keys[k.sha256]}'")
                seen_keys[k.sha256] = user.name
            users.append(user)
        pricing: dict[str, Price] = {}
        raw_pricing = top.get("pricing")
        if raw_pricing is not None:
            if isinstance(raw_pricing, dict):
                for model, price in raw_pricing.items():
                    pr = self.price(price, _at("pricing", str(model)))
                    if pr is not None:
                        pricing[str(model)] = pr
            else:
                self.fail("pricing", "expected a mapping of model to price, "
                                     f"got {_kind(raw_pricing)}")
        usage = self.usage(top.get("usage"), "usage")
        circuit = self.circuit(top.get("circuit"), "circuit")
        port = self.number(top, "port", "", 8080, minimum=0, integer=True)
        if port > 65535:
            self.fail("port", "must be <= 65535")
        api_key = self.string(top, "api_key", "") or None
        return Config(
            host=self.string(top, "host", "", "0.0.0.0"),
            port=port,
            api_key=api_key,
            max_body_bytes=self.number(top, "max_body_bytes", "", 32 * 1024 * 1024,
                                       minimum=1, integer=True),
            providers=MappingProxyType(providers),
            groups=MappingProxyType(groups),
            users=tuple(users),
            pricing=MappingProxyType(pricing),
            usage=usage,
            circuit=circuit,
            shutdown_grace_s=self.number(top, "shutdown_grace_s", "", 30.0),
            shutdown_delay_s=self.number(top, "shutdown_delay_s", "", 0.0),
            keepalive_s=self.number(top, "keepalive_s", "", 15.0),
            request_penalty=self.number(top, "request_penalty", "", 0, integer=True),
            error_penalty=self.number(top, "error_penalty", "", 0, integer=True),
            source=source,
        )

    def provider(self, node: Any, path: str) -> Provider | None:
        d = self.obj(node, path, (
            "name", "type", "base_url", "api_keys", "headers", "timeouts", "latency_ms",
            "tokens_per_second", "anthropic_version", "max_tokens_default",
        ))
        if d is None:
            return None
        name = self.string(d, "name", path, required=True)
        if "/" in name:
            self.fail(_at(path, "name"), "must not contain '/' (it separates provider/model)")
        ptype = self.string(d, "type", path, "openai")
        if ptype not in PROVIDER_TYPES:
            self.fail(_at(path, "type"), _unknown("type", ptype, PROVIDER_TYPES))
        base_url = self.string(d, "base_url", path, _DEFAULT_BASE_URLS.get(ptype, ""))
        if ptype != "mock":
            if not base_url and "base_url" not in d:
                self.fail(_at(path, "base_url"), "required")
            elif base_url and not re.match(r"^https?://[^/\s]+", base_url):
                self.fail(_at(path, "base_url"), "must be an http:// or https:// URL")
            elif ptype == "anthropic" and base_url.rstrip("/").endswith("/v1"):
                # The router appends /v1/messages, as the anthropic SDK does.
                self.fail(_at(path, "base_url"), "an anthropic base_url is the API root "
                          f"without /v1 (e.g. {_DEFAULT_BASE_URLS['anthropic']}); the router "
                          "posts to {base_url}/v1/messages")
        keys: list[ProviderKey] = []
        for _, item, p in self.items(d, "api_keys", path):
            key = self.provider_key(item, p)
            if key is None:
                continue
            if any(k.label == key.label for k in keys):
                self.fail(p, f"duplicate key (label '{key.label}'); give each key a distinct name")
            keys.append(key)
        if not keys:
            if ptype == "mock":
                keys.append(ProviderKey(secret="", label="mock"))
            elif not d.get("api_keys"):
                self.fail(_at(path, "api_keys"), "at least one API key is required")
        headers: dict[str, str] = {}
        raw_headers = d.get("headers")
        if raw_headers is not None:
            if isinstance(raw_headers, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in raw_headers.items()
            ):
                headers = dict(raw_headers)
            else:
                self.fail(_at(path, "headers"), "expected a mapping of header name to string")
        return Provider(
            name=name,
            type=ptype,
            base_url=base_url.rstrip("/"),
            keys=tuple(keys),
            headers=MappingProxyType(headers),
            timeouts=self.timeouts(d.get("timeouts"), _at(path, "timeouts")),
            latency_ms=self.number(d, "latency_ms", path, 0.0),
            tokens_per_second=self.number(d, "tokens_per_second", path, 0.0),
            anthropic_version=self.string(d, "anthropic_version", path, "2023-06-01"),
            max_tokens_default=self.number(d, "max_tokens_default", path, 4096, minimum=1,
                                           integer=True),
        )

    def provider_key(self, node: Any, path: str) -> ProviderKey | None:
        if isinstance(node, str):
            if not node:
                if path not in self._failed:
                    self.fail(path, "empty API key (is its environment variable set?)")
                return None
            return ProviderKey(secret=node, label=key_label(node))
        d = self.obj(node, path, ("key", "name", "models", "daily_request_limit"))
        if d is None:
            return None
        secret = self.string(d, "key", path, required=True)
        models = self.str_list(d, "models", path)
        return ProviderKey(
            secret=secret,
            label=self.string(d, "name", path) or key_label(secret),
            models=frozenset(models) if models is not None else None,
            daily_request_limit=self.number(d, "daily_request_limit", path, None, minimum=0,
                                            integer=True),
        )

    def timeouts(self, node: Any, path: str) -> Timeouts:
        if node is None:
            return Timeouts()
        d = self.obj(node, path, ("connect", "first_byte", "idle", "total"))
        if d is None:
            return Timeouts()
        base = Timeouts()
        return Timeouts(
            connect=self.number(d, "connect", path, base.connect, minimum=0.001),
            first_byte=self.number(d, "first_byte", path, base.first_byte, minimum=0.001),
            idle=self.number(d, "idle", path, base.idle, minimum=0.001),
            total=self.number(d, "total", path, base.total, minimum=0.001),
        )

    def group(self, node: Any, path: str, providers: Mapping[str, Provider]) -> Group | None:
        d = self.obj(node, path, ("name", "models", "strategy", "max_attempts", "max_wait_s",
                                  "affinity"))
        if d is None:
            return None
        name = self.string(d, "name", path, required=True)
        members: list[Member] = []
        for _, item, p in self.items(d, "models", path):
            m = self.obj(item, p, ("provider", "name", "model", "weight"))
            if m is None:
                continue
            prov = self.string(m, "provider", p, required=True)
            if prov and prov not in providers:
                self.fail(_at(p, "provider"), _unknown("provider", prov, tuple(providers)))
            model = self.string(m, "name", p) or self.string(m, "model", p)
            if not model:
                self.fail(_at(p, "name"), "required")
            members.append(Member(prov, model, float(self.number(m, "weight", p, 1.0))))
        if not members and "models" in d:
            self.fail(_at(path, "models"), "a group needs at least one model")
        elif "models" not in d:
            self.fail(_at(path, "models"), "required")
        strategy = self.string(d, "strategy", path, "inverse-weight")
        if strategy not in STRATEGIES:
            self.fail(_at(path, "strategy"), _unknown("strategy", strategy, STRATEGIES))
        return Group(
            name=name,
            members=tuple(members),
            strategy=strategy,
            max_attempts=self.number(d, "max_attempts", path, None, minimum=1, integer=True),
            max_wait_s=self.number(d, "max_wait_s", path, 0.0),
            affinity=self.affinity(d.get("affinity"), _at(path, "affinity")),
        )

    def affinity(self, node: Any, path: str) -> Affinity:
        base = Affinity()
        if node is None:
            return base
        if node == "off" or node is False:  # YAML reads a bare off as false
            return Affinity(mode="off")
        d = self.obj(node, path, Affinity.__slots__)
        if d is None:
            return base
        if d.get("mode") is False:  # mode: off, read by YAML 1.1 as false
            d = {**d, "mode": "off"}
        mode = self.string(d, "mode", path, base.mode)
        if mode not in AFFINITY_MODES:
            self.fail(_at(path, "mode"), _unknown("mode", mode, AFFINITY_MODES))
        return Affinity(
            mode=mode,
            slack=self.number(d, "slack", path, base.slack),
            ttl_s=self.number(d, "ttl_s", path, base.ttl_s, minimum=1.0),
            prefix_bytes=self.number(d, "prefix_bytes", path, base.prefix_bytes, minimum=64,
                                     integer=True),
        )

    def limits(self, node: Any, path: str) -> Limits | None:
        if node is None:
            return None
        d = self.obj(node, path, ("rpm", "tpm", "daily_requests", "max_concurrent"))
        if d is None:
            return None
        return Limits(**{k: self.number(d, k, path, None, minimum=1, integer=True)
                         for k in ("rpm", "tpm", "daily_requests", "max_concurrent")})

    def budget(self, node: Any, path: str) -> Budget | None:
        if node is None:
            return None
        d = self.obj(node, path, ("usd", "period"))
        if d is None:
            return None
        usd = self.number(d, "usd", path, None)
        if usd is None:
            self.fail(_at(path, "usd"), "required")
        period = self.string(d, "period", path, "monthly")
        if period not in BUDGET_PERIODS:
            self.fail(_at(path, "period"), _unknown("period", period, BUDGET_PERIODS))
        return Budget(usd=float(usd or 0.0), period=period)

    def user(self, node: Any, path: str, providers: Mapping[str, Provider],
             groups: Mapping[str, Group]) -> User | None:
        d = self.obj(node, path, ("name", "role", "keys", "models", "limits", "budget"))
        if d is None:
            return None
        name = self.string(d, "name", path, required=True)
        role = self.string(d, "role", path, "user")
        if role not in ROLES:
            self.fail(_at(path, "role"), f"unknown role '{role}' (known: admin, user)")
        keys: list[UserKey] = []
        for _, item, p in self.items(d, "keys", path):
            k = self.user_key(item, p, providers, groups)
            if k is not None:
                if any(x.sha256 == k.sha256 for x in keys):
                    self.fail(p, "duplicate key")
                keys.append(k)
        if not keys:
            self.fail(_at(path, "keys"), "a user needs at least one key")
        return User(
            name=name,
            role=role,
            keys=tuple(keys),
            models=self.model_patterns(d, path, providers, groups),
            limits=self.limits(d.get("limits"), _at(path, "limits")),
            budget=self.budget(d.get("budget"), _at(path, "budget")),
        )

    def model_patterns(self, d: dict[str, Any], path: str, providers: Mapping[str, Provider],
                       groups: Mapping[str, Group]) -> tuple[str, ...] | None:
        patterns = self.str_list(d, "models", path)
        for i, pat in enumerate(patterns or ()):
            if "/" in pat:
                prov = pat.split("/", 1)[0]
                if prov not in providers and not _is_glob(prov):
                    self.fail(_at(_at(path, "models"), i), f"unknown provider '{prov}'"
                              f"{_did_you_mean(prov, tuple(providers))}")
            elif not _is_glob(pat) and pat not in groups:
                self.fail(_at(_at(path, "models"), i), f"unknown group '{pat}'"
                          f"{_did_you_mean(pat, tuple(groups))}")
        return patterns

    def user_key(self, node: Any, path: str, providers: Mapping[str, Provider],
                 groups: Mapping[str, Group]) -> UserKey | None:
        d = self.obj(node, path, ("sha256", "key", "name", "models", "limits", "budget"))
        if d is None:
            return None
        digest = self.string(d, "sha256", path).lower()
        secret = self.string(d, "key", path)
        if digest and secret:
            self.fail(path, "give either 'sha256' or 'key', not both")
        elif secret:
            digest = sha256_hex(secret)
        elif digest:
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                self.fail(_at(path, "sha256"), "expected 64 hex digits "
                          "(llm-router hash-key KEY prints it)")
        else:
            self.fail(path, "a key needs 'sha256' (preferred) or 'key'")
        return UserKey(
            sha256=digest,
            name=self.string(d, "name", path) or digest[:8],
            models=self.model_patterns(d, path, providers, groups),
            limits=self.limits(d.get("limits"), _at(path, "limits")),
            budget=self.budget(d.get("budget"), _at(path, "budget")),
        )

    def price(self, node: Any, path: str) -> Price | None:
        d = self.obj(node, path, ("input", "output", "cached_input"))
        if d is None:
            return None
        inp = self.number(d, "input", path, None)
        out = self.number(d, "output", path, None)
        if inp is None:
            self.fail(_at(path, "input"), "required")
        if out is None:
            self.fail(_at(path, "output"), "required")
        cached = self.number(d, "cached_input", path, None)
        return Price(float(inp or 0.0), float(out or 0.0),
                     float(cached) if cached is not None else None)

    def usage(self, node: Any, path: str) -> UsageSettings:
        if node is None:
            return UsageSettings()
        d = self.obj(node, path, ("snapshot_path", "snapshot_interval_s"))
        if d is None:
            return UsageSettings()
        return UsageSettings(
            snapshot_path=self.string(d, "snapshot_path", path) or None,
            snapshot_interval_s=self.number(d, "snapshot_interval_s", path, 30.0, minimum=0.1),
        )

    def circuit(self, node: Any, path: str) -> CircuitSettings:
        base = CircuitSettings()
        if node is None:
            return base
        d = self.obj(node, path, CircuitSettings.__slots__)
        if d is None:
            return base
        rate = self.number(d, "failure_rate", path, base.failure_rate)
        if rate > 1:
            self.fail(_at(path, "failure_rate"), "must be between 0 and 1")
        return CircuitSettings(
            window=self.number(d, "window", path, base.window, minimum=1, integer=True),
            window_s=self.number(d, "window_s", path, base.window_s, minimum=0.001),
            min_requests=self.number(d, "min_requests", path, base.min_requests, minimum=1,
                                     integer=True),
            failure_rate=rate,
            open_s=self.number(d, "open_s", path, base.open_s),
            cooldown_base_s=self.number(d, "cooldown_base_s", path, base.cooldown_base_s),
            cooldown_max_s=self.number(d, "cooldown_max_s", path, base.cooldown_max_s),
        )


def _kind(val: Any) -> str:
    if val is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(val), type(val).__name__)


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    hint = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


def _unknown(what: str, value: str, known: tuple[str, ...]) -> str:
    """``unknown provider 'opnai' (did you mean 'openai'?) (known: openai, local)``."""
    return (f"unknown {what} '{value}'{_did_you_mean(value, known)} "
            f"(known: {', '.join(known) or 'none defined'})")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
