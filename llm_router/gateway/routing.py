"""Which upstream serves a request: targets, candidates, strategies, the retry decision.

For a request naming group G the candidates are every eligible (member, provider key)
pair of G. The default strategy, ``inverse-weight``, picks the candidate with the lowest
``tokens x weight`` over the per-(provider, key, model) counters, in-flight estimates
included, ties broken at random (README, "How selection works"). Every strategy is a small function
``(candidates, ctx) -> Candidate`` registered by name in :data:`STRATEGIES`; strategies
read only a candidate's fields and ``ctx``, never health internals.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from multidict import istr

from ..config import Config, Group, Member, Price, Provider, ProviderKey
from ..config.aliases import AliasTable
from ..errors import BadRequest, Forbidden, ModelNotFound, echoed
from ..ledger.accounting import price_for
from ..ledger.usage import CounterKey, UsageCounters
from ..observe.metrics import Series
from ..providers.registry import provider_type
from ..state.health import KeyHealth
from .catalog import Catalog

__all__ = [
    "AFFINITY_KINDS",
    "STRATEGIES",
    "Candidate",
    "CandidateSet",
    "GroupPlan",
    "PickContext",
    "Preferences",
    "Target",
    "can_serve",
    "collect_candidates",
    "counter_keys",
    "group_plan",
    "is_retryable",
    "level_new_keys",
    "pick_candidate",
    "priced_target",
    "resolve_target",
]

# Route kinds whose prompts providers cache (prompt-cache affinity, affinity.py).
# Embeddings and count_tokens have no cache to keep; legacy completions repeat no
# structure a prefix hash could follow.
AFFINITY_KINDS: Final = frozenset({"chat", "messages", "responses"})


@dataclass(frozen=True, slots=True)
class Target:
    """What the client's ``model`` names: a group, or one ``provider/model``."""

    name: str
    group: Group
    # A direct ``provider/model`` whose model the config does not name: its selection
    # counters, learnt length and usage rows are kept under this name (``other``), so
    # that names invented by clients cannot grow the router's state (docs/teams.md).
    state_model: str = ""
    # Set when an alias chose the target: the name the client sent, and the pattern.
    asked: str = ""
    alias: str = ""
    # Route kind -> (config, its GroupPlan), filled by group_plan: a target the config
    # resolved is reused by every request to it, so each plan is built once.
    plans: dict[str, tuple[Config, GroupPlan]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @property
    def answer_model(self) -> str:
        """The ``model`` the answer names: what the client asked for."""
        return self.asked or self.name

    @property
    def is_direct(self) -> bool:
        return "/" in self.name and len(self.group.members) == 1

    @property
    def state_name(self) -> str:
        """The name per-group state is kept under: ``provider/other`` for a folded
        direct target, else the name the client sent."""
        if not self.state_model:
            return self.name
        return f"{self.group.members[0].provider}/{self.state_model}"

    def folded(self, state_model: str) -> Target:
        """This direct target with its state kept under ``state_model``."""
        return replace(self, state_model=state_model)


def priced_target(pricing: Mapping[str, Price], target: Target) -> Target:
    """The target a budgeted caller may reach: only members with a price, so every call
    is charged. 403 ``model_not_priced`` when no member has one."""
    members = target.group.members
    priced = tuple(m for m in members if price_for(pricing, m.model) is not None)
    if len(priced) == len(members):
        return target
    if not priced:
        names = ", ".join(sorted({f"'{m.model}'" for m in members}))
        raise Forbidden(f"The model '{target.name}' has no price ({names} not in 'pricing') "
                        "and your key has a budget, so its calls could not be charged; ask "
                        "an admin to price it or add 'pricing.default'.", param="model",
                        code="model_not_priced")
    # A group with some unpriced members: a budgeted caller is served by the others.
    return replace(target, group=replace(target.group, members=priced))


def resolve_target(cfg: Config, model: str, user_aliases: AliasTable | None = None,
                   catalog: Catalog | None = None) -> Target:
    """Map the client's ``model`` to a group; ``provider/model`` makes a one-member group.

    A name that is neither goes through the caller's aliases, then the top-level ones
    (docs/catalog.md): the target they name is served, and remembers what was asked.
    With a ``catalog``, a ``provider/model`` its provider did not list is no model.
    """
    plans = _CONFIGS.get(id(cfg))
    if plans is not None and plans.cfg is cfg:  # the usual request: a group, one lookup
        target = plans.groups.get(model)
        if target is not None:
            return target
    target = _named(cfg, model, catalog)
    if target is not None:
        return target
    for table in (user_aliases, cfg.alias_table):
        alias = table.match(model) if table else None
        if alias is not None:
            target = _named(cfg, alias.target, catalog)
            if target is not None:
                return Target(target.name, target.group, asked=model, alias=alias.pattern)
    provider, sep, upstream_model = model.partition("/")
    if sep and catalog is not None and provider in cfg.providers \
            and catalog.refuses(provider, upstream_model):
        raise ModelNotFound(f"Provider '{provider}' does not list the model "
                            f"'{echoed(upstream_model)}'. GET /v1/models lists what you may "
                            "use.", param="model")
    raise ModelNotFound(f"The model '{echoed(model)}' does not exist or is not served by "
                        "this router. GET /v1/models lists what you may use.", param="model")


def _named(cfg: Config, model: str, catalog: Catalog | None) -> Target | None:
    plans = _plans(cfg)
    target = plans.groups.get(model)
    if target is not None:
        return target
    prov_name, sep, upstream_model = model.partition("/")
    if sep and upstream_model and prov_name in cfg.providers and (
            catalog is None or not catalog.refuses(prov_name, upstream_model)):
        target = plans.direct.get(model)
        if target is None:
            target = Target(model, Group(name=model, members=(Member(prov_name,
                                                                     upstream_model),)))
            if len(plans.direct) < _MAX_DIRECT:  # names from clients: bounded
                plans.direct[model] = target
        return target
    return None


def can_serve(cfg: Config, target: Target, kind: str) -> bool:
    """Whether any member's provider type serves this route kind at all (an anthropic
    provider has no embeddings or legacy completions; ``ProviderType.serves``): if not,
    no wait will help."""
    return group_plan(cfg, target, kind).serves


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """What the attempt loop reads of a target that only the config decides: built once
    per target and route kind (:func:`group_plan`)."""

    # Every (member, key) pair whose provider type serves the kind and whose key serves
    # the member's model, in group order: health, quotas and preferences filter these.
    candidates: tuple[Candidate, ...]
    serves: bool  # some member's provider type serves the kind (can_serve)
    deadline_s: float  # the members' longest total timeout: no attempt starts past it
    direct: bool  # Target.is_direct
    # Whether prompt-cache affinity steers a request without X-Router-Provider-Order or
    # X-Router-Sort (affinity.applies): True, False (counted as off), None (no concern).
    affinity: bool | None
    # Metric series the requests to this target update, by name: (the Metrics, the
    # series) as the proxy resolved them (their label values are fixed with the config).
    series: dict[str, tuple[Any, Series]] = field(default_factory=dict, compare=False,
                                               repr=False)


class _ConfigPlans:
    """The targets of one config: its groups', and the ``provider/model`` ones it
    resolved. A reload brings a new config, hence new targets; a request keeps using its
    own config's."""

    __slots__ = ("cfg", "direct", "groups")

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg  # held, so its id cannot be reused while the entry lives
        self.groups = {name: Target(name, group) for name, group in cfg.groups.items()}
        self.direct: dict[str, Target] = {}


_CONFIGS: dict[int, _ConfigPlans] = {}
_MAX_CONFIGS: Final = 8  # the current config and those of requests still in flight
_MAX_DIRECT: Final = 4096


def _plans(cfg: Config) -> _ConfigPlans:
    plans = _CONFIGS.get(id(cfg))
    if plans is None or plans.cfg is not cfg:
        if len(_CONFIGS) >= _MAX_CONFIGS:
            _CONFIGS.clear()  # older configs' requests rebuild theirs if they need them
        plans = _CONFIGS[id(cfg)] = _ConfigPlans(cfg)
    return plans


def group_plan(cfg: Config, target: Target, kind: str) -> GroupPlan:
    """The :class:`GroupPlan` of ``target`` for route ``kind``, kept on the target (a
    target narrowed for one request keeps its plan for that request's attempts)."""
    hit = target.plans.get(kind)
    if hit is not None and hit[0] is cfg:
        return hit[1]
    plan = _group_plan(cfg, target, kind)
    target.plans[kind] = (cfg, plan)
    return plan


def _group_plan(cfg: Config, target: Target, kind: str) -> GroupPlan:
    cands: list[Candidate] = []
    serves = False
    for order, member in enumerate(target.group.members):
        provider = cfg.providers[member.provider]
        if kind not in provider_type(provider.type).serves:
            continue
        serves = True
        cands.extend(Candidate(member, provider, key, order, target.state_model)
                     for key in provider.keys if key.serves(member.model))
    deadline = max(cfg.providers[m.provider].timeouts.total for m in target.group.members)
    group = target.group
    affinity = None if kind not in AFFINITY_KINDS or target.is_direct else (
        group.affinity.mode != "off" and group.strategy == "inverse-weight")
    return GroupPlan(tuple(cands), serves, deadline, target.is_direct, affinity)


@dataclass(frozen=True, slots=True)
class Candidate:
    member: Member
    provider: Provider
    key: ProviderKey
    order: int  # member position in the group (priority strategy)
    state_model: str = ""  # Target.state_model: the model name the counters use
    # (provider, key label, counted model): the selection counters' key. A field, not a
    # property: the request path reads it about ten times per request.
    counter_key: CounterKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "counter_key", (self.provider.name, self.key.label,
                                                 self.state_model or self.member.model))

    @property
    def counted_model(self) -> str:
        """The model name the router's counters and usage rows keep this candidate's
        traffic under (``other`` for a name the config does not give)."""
        return self.state_model or self.member.model


@dataclass(frozen=True, slots=True)
class Preferences:
    """Per-request provider preferences from the ``X-Router-*`` request headers."""

    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    order: tuple[str, ...] = ()
    allow_fallbacks: bool = True
    sort: str | None = None  # latency | price

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], cfg: Config) -> Preferences:
        get = headers.get
        if get(_ONLY) is None and get(_IGNORE) is None and get(_ORDER) is None \
                and get(_SORT) is None and get(_FALLBACKS) is None:
            return _NO_PREFERENCES  # the usual request: none of the headers, nothing to parse

        def names(header: str) -> tuple[str, ...]:
            raw = get(header)
            if not raw:
                return ()
            items = tuple(p.strip() for p in str(raw).split(",") if p.strip())
            unknown = [p for p in items if p not in cfg.providers]
            if unknown:
                raise BadRequest(f"{header} names unknown provider(s): {', '.join(unknown)} "
                                 f"(known: {', '.join(cfg.providers)})", code="unknown_provider")
            return items

        only = names("X-Router-Provider-Only")
        ignore = names("X-Router-Provider-Ignore")
        order = names("X-Router-Provider-Order")
        fallbacks = str(get("X-Router-Allow-Fallbacks") or "true").strip().lower()
        if fallbacks not in ("true", "false", "1", "0", "yes", "no"):
            raise BadRequest("X-Router-Allow-Fallbacks must be true or false")
        sort = get("X-Router-Sort")
        if sort is not None and sort not in ("latency", "price"):
            raise BadRequest("X-Router-Sort must be 'latency' or 'price'")
        if not (only or ignore or order or sort) and fallbacks in ("true", "1", "yes"):
            return _NO_PREFERENCES
        return cls(
            only=frozenset(only) if only else None,
            ignore=frozenset(ignore),
            order=order,
            allow_fallbacks=fallbacks in ("true", "1", "yes"),
            sort=sort,
        )


_NO_PREFERENCES: Final = Preferences()
# The headers' names as istr: a case-insensitive lookup of one in the request's headers
# skips folding the name (about a quarter of the time of a plain str's lookup, which
# these mostly are: misses). A plain dict finds them as the strings they are.
_ONLY: Final = istr("X-Router-Provider-Only")
_IGNORE: Final = istr("X-Router-Provider-Ignore")
_ORDER: Final = istr("X-Router-Provider-Order")
_SORT: Final = istr("X-Router-Sort")
_FALLBACKS: Final = istr("X-Router-Allow-Fallbacks")


@dataclass(slots=True)
class CandidateSet:
    """Eligible candidates, plus when the soonest ineligible-for-now one recovers."""

    eligible: list[Candidate]
    soonest_recovery: float | None = None  # monotonic time; None if nothing is cooling
    total: int = 0  # candidates before health and quota filtering
    over_quota: int = 0  # of those, keys past their daily_request_limit
    bad: int = 0  # of those, keys the upstream rejected (401/403) until a reload
    excluded: frozenset[str] = frozenset()  # providers the preferences left out


def collect_candidates(
    cfg: Config, target: Target, kind: str, health: KeyHealth, counters: UsageCounters,
    prefs: Preferences, exclude: set[CounterKey] | None = None, plan: GroupPlan | None = None,
) -> CandidateSet:
    """Every (member, key) pair of the target that may serve ``kind`` now (``plan``:
    the target's :func:`group_plan`, when the caller has it)."""
    now = time.monotonic()
    out = CandidateSet([])
    cands: Sequence[Candidate] = (plan or group_plan(cfg, target, kind)).candidates
    if prefs.only is not None or prefs.ignore:
        out.excluded = excluded = frozenset(
            provider.name for provider in (cfg.providers[m.provider]
                                           for m in target.group.members)
            if kind in provider_type(provider.type).serves and (
                (prefs.only is not None and provider.name not in prefs.only)
                or provider.name in prefs.ignore))
        if excluded:
            cands = [c for c in cands if c.provider.name not in excluded]
    eligible = out.eligible
    for cand in cands:
        if exclude and cand.counter_key in exclude:
            continue
        out.total += 1
        provider_name, key = cand.provider.name, cand.key
        if (key.daily_request_limit is not None
                and counters.requests_today(provider_name, key.label)
                >= key.daily_request_limit):
            out.over_quota += 1
            continue
        ready = health.available_at(provider_name, key.label, now)
        if ready > now:
            if ready == math.inf:
                out.bad += 1
            elif out.soonest_recovery is None or ready < out.soonest_recovery:
                out.soonest_recovery = ready
            continue
        eligible.append(cand)
    return out


_RNG: Final = random.Random()


@dataclass(slots=True)
class PickContext:
    """What strategies may read besides the candidates themselves."""

    counters: UsageCounters
    pricing: Mapping[str, Price] = field(default_factory=dict)
    latency: dict[CounterKey, float] = field(default_factory=dict)  # EWMA seconds
    round_robin: dict[str, int] = field(default_factory=dict)
    group: str = ""
    # Shared, not one per request: random.Random() seeds itself from os.urandom, which
    # showed in profiles of the request path. A plain default: no factory call per pick.
    rng: random.Random = _RNG


Strategy = Callable[[Sequence[Candidate], PickContext], Candidate]


def _lowest(cands: Sequence[Candidate], ctx: PickContext,
            score: Callable[[Candidate], float]) -> Candidate:
    best: list[Candidate] = []
    best_score = float("inf")
    for c in cands:
        s = score(c)
        if s < best_score:
            best_score, best = s, [c]
        elif s == best_score:
            best.append(c)
    return best[0] if len(best) == 1 else ctx.rng.choice(best)


def _weighted_load(c: Candidate, ctx: PickContext) -> float:
    # weight 0 → always preferred; among several weight-0 candidates, spread by load.
    w = c.member.weight
    load = ctx.counters.load(c.counter_key)
    return load * w if w > 0 else -1.0 / (1.0 + load)


def _group_counters(cfg: Config, group: Group) -> list[tuple[CounterKey, float]]:
    """The (provider, key, model) counters ``group`` can select, with their weights."""
    return [((m.provider, k.label, m.model), m.weight) for m in group.members
            for k in cfg.providers[m.provider].keys if k.serves(m.model)]


def counter_keys(cfg: Config) -> set[CounterKey]:
    """Every (provider, key, model) counter the config's groups can select."""
    return {key for group in cfg.groups.values() for key, _ in _group_counters(cfg, group)}


def level_new_keys(cfg: Config, counters: UsageCounters, new: set[CounterKey]
                   ) -> list[tuple[str, CounterKey, int]]:
    """Start each counter in ``new`` level with the least-loaded established candidate
    of its group, so a key added to a busy group shares its traffic at once. Left at
    zero it would take every request of the group until it had served as many tokens as
    the others (days, for a key joining a month of history). Returns what was set, as
    (group, counter, tokens).

    Level means equal ``tokens x weight``; weight-0 candidates are always preferred
    anyway and are left alone. A counter above the level (a key that comes back) keeps
    its own count.
    """
    levelled: list[tuple[str, CounterKey, int]] = []
    for group in cfg.groups.values():
        scored = _group_counters(cfg, group)
        established = [counters.tokens.get(key, 0) * w for key, w in scored
                       if key not in new and w > 0 and key in counters.tokens]
        if not established:
            continue  # a new group, or one with no history yet: all start at zero
        level = min(established)
        for key, w in scored:
            if key in new and w > 0:
                tokens = math.ceil(level / w)
                if tokens > counters.tokens.get(key, 0):
                    counters.tokens[key] = tokens
                    levelled.append((group.name, key, tokens))
    return levelled


def inverse_weight(cands: Sequence[Candidate], ctx: PickContext) -> Candidate:
    """Lowest ``tokens x weight`` (in-flight estimates included); ties at random."""
    return _lowest(cands, ctx, lambda c: _weighted_load(c, ctx))


def priority(cands: Sequence[Candidate], ctx: PickContext) -> Candidate:
    """The first member (in group order) that has a usable key: a later member serves
    only while every earlier one is cooling, failing or excluded (exhaust-first)."""
    first = min(c.order for c in cands)
    return inverse_weight([c for c in cands if c.order == first], ctx)


def round_robin(cands: Sequence[Candidate], ctx: PickContext) -> Candidate:
    """Each (member, key) in turn, in group order then key label."""
    n = ctx.round_robin.get(ctx.group, 0)
    ctx.round_robin[ctx.group] = n + 1
    ordered = sorted(cands, key=lambda c: (c.order, c.key.label))
    return ordered[n % len(ordered)]


def lowest_latency(cands: Sequence[Candidate], ctx: PickContext) -> Candidate:
    """Lowest recent time to first byte (EWMA per provider, key and model)."""
    # Unmeasured candidates score 0 so each gets tried once and measured.
    return _lowest(cands, ctx, lambda c: ctx.latency.get(c.counter_key, 0.0))


def cheapest(cands: Sequence[Candidate], ctx: PickContext) -> Candidate:
    """Lowest input + output price per 1M tokens from ``pricing``; ties by inverse weight."""
    def cost(c: Candidate) -> float:
        # Unpriced models sort last: "cheapest" must not mean "we do not know".
        p = ctx.pricing.get(c.member.model)
        return float("inf") if p is None else p.input + p.output

    best = min(cost(c) for c in cands)
    return inverse_weight([c for c in cands if cost(c) == best], ctx)


STRATEGIES: Final[dict[str, Strategy]] = {
    "inverse-weight": inverse_weight,
    "priority": priority,
    "round-robin": round_robin,
    "latency": lowest_latency,
    "price": cheapest,
}


def pick_candidate(cands: Sequence[Candidate], strategy: str, ctx: PickContext,
                   prefs: Preferences = _NO_PREFERENCES) -> Candidate | None:
    """The candidate to try next, or None if there is none."""
    if not cands:
        return None
    if prefs.order:
        # Providers named in X-Router-Provider-Order go first, in that order.
        rank = {name: i for i, name in enumerate(prefs.order)}
        first = min(rank.get(c.provider.name, len(rank)) for c in cands)
        cands = [c for c in cands if rank.get(c.provider.name, len(rank)) == first]
    if prefs.sort is not None:
        strategy = "latency" if prefs.sort == "latency" else "price"
    return STRATEGIES[strategy](cands, ctx)


# Upstream statuses worth another candidate: rate limits, server faults, timeouts and
# conflicts. 401/403 mean *our key* is bad, not the client's request.
_RETRYABLE_STATUS: Final = frozenset({401, 403, 408, 409, 429})


def is_retryable(status: int | None) -> bool:
    """Whether an attempt that failed this way (None = no HTTP answer) may go elsewhere."""
    return status is None or status >= 500 or status in _RETRYABLE_STATUS
