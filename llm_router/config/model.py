"""Every config key, declared once: frozen dataclasses whose fields are made with
:func:`~llm_router.config.schema.setting` (description, default, bounds, choices).

The same declarations validate the file (:class:`~llm_router.config.reader.Reader`, run by
:func:`llm_router.config.load_config`) and produce the JSON Schema editors use
(:func:`config_json_schema`, ``llm-router schema``). To add a key: add one field with
``setting(default, doc=...)`` to the right class here, document it in README.md, and
run ``llm-router schema > config.schema.json && cp config.schema.json llm_router/``
(tests/test_config_schema.py fails until you do). Other modules import these names from
:mod:`llm_router.config`, which re-exports them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final

from .aliases import AliasTable
from .reader import Reader, at
from .redis_url import redact_url, redis_url_problem
from .schema import Spec, internal, json_schema, setting
from .webhooks import Webhook

__all__ = [
    "AFFINITY_MODES",
    "AZURE_DEFAULT_TOKEN_URL",
    "BUDGET_PERIODS",
    "CACHE_MODES",
    "CACHE_SCOPES",
    "DEFAULT_PRICE",
    "MAX_MODEL_BYTES",
    "MEMBER_CAPABILITIES",
    "PROVIDER_TYPES",
    "ROLES",
    "STRATEGIES",
    "Affinity",
    "Budget",
    "CacheSettings",
    "CircuitSettings",
    "Config",
    "ConfigError",
    "Discovery",
    "Entra",
    "Group",
    "GroupCache",
    "Limits",
    "Member",
    "MetricsSettings",
    "OtelSettings",
    "Price",
    "Provider",
    "ProviderKey",
    "ResponsesSettings",
    "ServerSettings",
    "StateSettings",
    "Timeouts",
    "UpstreamLimits",
    "UsageSettings",
    "User",
    "UserKey",
    "config_json_schema",
    "key_label",
    "sha256_hex",
]

PROVIDER_TYPES: Final = ("openai", "anthropic", "gemini", "vertex", "bedrock", "azure", "mock")
STRATEGIES: Final = ("inverse-weight", "priority", "round-robin", "latency", "price")
AFFINITY_MODES: Final = ("auto", "session", "off")
BUDGET_PERIODS: Final = ("daily", "weekly", "monthly", "total")
CACHE_MODES: Final = ("off", "exact")
CACHE_SCOPES: Final = ("user", "global")
ROLES: Final = ("admin", "user")
DEFAULT_PRICE: Final = "default"  # the pricing entry for models the table does not name
# The longest `model` a request may send (UTF-8 bytes): more than any provider's model id
# (Bedrock ARNs, Vertex resource names, Hugging Face ids: about 150 bytes with the
# provider/ prefix). So a group name is at most this long too.
MAX_MODEL_BYTES: Final = 256
_DEFAULT_BASE_URLS: Final = {"openai": "https://api.openai.com/v1",
                             "anthropic": "https://api.anthropic.com",
                             "gemini": "https://generativelanguage.googleapis.com"}
# Microsoft Entra ID's client-credentials endpoint; {tenant} is the entra block's tenant_id.
AZURE_DEFAULT_TOKEN_URL: Final = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
# A dated Azure OpenAI API version (2024-10-21, 2025-04-01-preview), or the v1 API.
_AZURE_API_VERSION: Final = re.compile(r"v1|\d{4}-\d{2}-\d{2}(-preview)?")
def _base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a base_url the router appends API paths to (never quoting
    it: a password may be in it), or None."""
    authority = url.partition("://")[2].partition("/")[0]
    if "@" in authority:
        return ("must not hold credentials (user:pass@): the router sends each key of "
                "api_keys the way the upstream expects; a proxy's own credentials go in "
                "headers (e.g. Proxy-Authorization)")
    if "?" in url or "#" in url:
        return ("must not hold a query or fragment ('?...', '#...'): the router appends the "
                "API path to base_url")
    return None


# What an Azure base_url must not hold: the router builds /openai/...?api-version= itself.
_AZURE_NOT_ROOT: Final = re.compile(r"/openai(/|$)|\?")
# What a vertex provider needs that the base install lacks (RS256 signing).
_GOOGLE_EXTRA: Final = ("vertex providers sign service-account tokens with the 'cryptography' "
                        "package: install the google extra (pip install '.[google]' in the "
                        "llm-router checkout)")

_NO_MODELS: Final[frozenset[str] | None] = None
_NO_PATTERNS: Final[tuple[str, ...] | None] = None
_NO_ALIASES: Final = AliasTable({})
_ALIASES_DOC: Final = (
    "Model aliases: a glob over the name a client sends (* any run of characters, ? one "
    "character) mapped to a group or provider/model, e.g. {\"claude-*\": fast}. A group name "
    "is never aliased; the most specific pattern wins (docs/catalog.md).")


class ConfigError(Exception):
    """The config is unusable; ``problems`` holds every ``location: message`` line."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = warnings or []  # found too, printed by check alongside


def sha256_hex(secret: str) -> str:
    """Hex sha256 of a key: what configs store instead of the key itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_label(secret: str) -> str:
    """The default, non-secret label of a key: the first 8 hex digits of its sha256."""
    return sha256_hex(secret)[:8]


# ---------------------------------------------------------------- the declared model


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts, in seconds."""

    connect: float = setting(10.0, gt=0, doc="TCP + TLS connect.")
    first_byte: float = setting(120.0, gt=0, doc=(
        "From an attempt's start (connecting included) to the response headers, and for a "
        "stream to its first event (reasoning models think before answering)."))
    idle: float = setting(120.0, gt=0, doc="Longest gap between two stream chunks after the "
                                           "first event.")
    total: float = setting(600.0, gt=0, doc="One attempt from start to last byte, stream "
                                            "included.")


@dataclass(frozen=True, slots=True)
class ProviderKey:
    """One upstream API key: a bare string, or an object with a name and restrictions.

    A bedrock provider also takes AWS SigV4 credentials instead of ``key``:
    ``access_key_id`` and ``secret_access_key`` (held as ``secret``), plus
    ``session_token`` for temporary ones. ``label`` is its stable identity in counters
    and metrics, never the secret.
    """

    _shorthand: ClassVar = ("key", "API key")
    _file_only: ClassVar = {"secret_access_key": (str, Spec(doc=(
        "bedrock only: the secret access key of a SigV4 key pair, usually "
        "\"${AWS_SECRET_ACCESS_KEY}\" (give access_key_id too, and no key)."),
        non_empty=True)),
        "secret_access_key_file": (str, Spec(doc=(
            "bedrock only: instead of secret_access_key, a file holding it (e.g. a "
            "Kubernetes Secret volume); watched like key_file."), non_empty=True))}

    secret: str = setting("", key="key", non_empty=True, repr=False, doc=(
        "The API key, usually \"${SOME_ENV_VAR}\" (for bedrock: a Bedrock API key, sent as "
        "a bearer token). Required unless access_key_id and secret_access_key are given."))
    label: str = setting("", key="name", doc=(
        "Label in metrics, logs and X-Router-Key; default: the first 8 hex digits of the "
        "key's sha256 (of access_key_id for a SigV4 key)."))
    models: frozenset[str] | None = setting(_NO_MODELS, doc=(
        "This key may only serve these upstream models (default: any)."))
    daily_request_limit: int | None = setting(None, doc=(
        "Quota of requests per day, reset at 00:00 UTC; an exhausted key is skipped."))
    access_key_id: str = setting("", doc=(
        "bedrock only: the AWS access key id of a SigV4 key pair, usually "
        "\"${AWS_ACCESS_KEY_ID}\" (with secret_access_key)."))
    session_token: str = setting("", repr=False, doc=(
        "bedrock only: the session token of temporary (STS) credentials, sent as "
        "x-amz-security-token; \"${AWS_SESSION_TOKEN:-}\" leaves it out when unset."))
    key_file: str = setting("", doc=(
        "Instead of key: a file holding the API key (its content, surrounding whitespace "
        "stripped), e.g. a Kubernetes Secret mounted as a volume. The file is watched: "
        "when it changes the config reloads and the new key serves, with no restart."))

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader,
                path: str) -> bool | None:
        key_file = values.get("key_file", "")
        if key_file:
            if "secret" in values or f"{path}.key" in r.failed:
                r.fail(path, "give either 'key' or 'key_file', not both")
                return False
            secret = r.secret_file(at(path, "key_file"), key_file)
            if secret is None:
                return False
            values["secret"] = secret
        aws_secret = file_only.get("secret_access_key")
        aws_secret_file = file_only.get("secret_access_key_file")
        if aws_secret_file:
            if aws_secret is not None:
                r.fail(path, "give either 'secret_access_key' or 'secret_access_key_file', "
                       "not both")
                return False
            aws_secret = r.secret_file(at(path, "secret_access_key_file"), aws_secret_file)
            if aws_secret is None:
                return False
        key_id = values.get("access_key_id", "")
        if aws_secret is not None or key_id:
            if values.get("secret"):
                r.fail(path, "give either 'key' (an API key) or 'access_key_id' and "
                       "'secret_access_key' (an AWS key pair), not both")
            elif aws_secret is None:
                r.fail(at(path, "secret_access_key"), "required with access_key_id")
            elif not key_id:
                r.fail(at(path, "access_key_id"), "required with secret_access_key")
            else:
                values["secret"] = aws_secret
                values["label"] = values.get("label") or key_label(key_id)
        elif "secret" not in values:
            r.fail(at(path, "key"), "required (or key_file)")
        elif values.get("session_token"):
            r.fail(at(path, "session_token"), "goes with access_key_id and "
                   "secret_access_key, not with key")
        if not values.get("label") and "secret" in values:
            values["label"] = key_label(values["secret"])
        return None


@dataclass(frozen=True, slots=True)
class Entra:
    """azure only: a Microsoft Entra ID app (service principal) whose client-credentials
    tokens authenticate instead of api_keys (docs/providers.md#azure-openai)."""

    tenant_id: str = setting(non_empty=True, doc="The directory (tenant) id.")
    client_id: str = setting(non_empty=True, doc="The application (client) id.")
    client_secret: str = setting("", non_empty=True, repr=False, doc=(
        "The client secret, usually \"${AZURE_CLIENT_SECRET}\"; never logged or shown. "
        "Required unless client_secret_file is given."))
    client_secret_file: str = setting("", doc=(
        "Instead of client_secret: a file holding it (e.g. a Kubernetes Secret volume); "
        "watched: when it changes the config reloads and new tokens use the new secret."))
    token_url: str = setting("", pattern=r"^https?://[^/\s]+", doc=(
        "Token endpoint. Default: https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/"
        "token (the scope asked for is https://cognitiveservices.azure.com/.default)."),
        pattern_hint="must be an http:// or https:// URL")

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader, path: str) -> None:
        secret_file = values.get("client_secret_file", "")
        if secret_file:
            if "client_secret" in values or f"{path}.client_secret" in r.failed:
                r.fail(path, "give either 'client_secret' or 'client_secret_file', not both")
            else:
                secret = r.secret_file(at(path, "client_secret_file"), secret_file)
                if secret is not None:
                    values["client_secret"] = secret
        elif "client_secret" not in values and f"{path}.client_secret" not in r.failed:
            r.fail(at(path, "client_secret"), "required (or client_secret_file)")
        if not values.get("token_url") and "tenant_id" in values:
            values["token_url"] = AZURE_DEFAULT_TOKEN_URL.format(tenant=values["tenant_id"])


@dataclass(frozen=True, slots=True)
class Discovery:
    """Listing a provider's models (docs/catalog.md). Written as a mapping, or as just
    true / false (discover: true)."""

    _shorthand: ClassVar = ("enabled", "discovery switch")

    enabled: bool = setting(True, doc=(
        "List the provider's models at start and every refresh_s: GET /v1/models shows "
        "them, and a provider/model it did not list gets 404 without an upstream call."))
    refresh_s: float = setting(600.0, ge=1.0, doc=(
        "Seconds between listings; a failed listing keeps the last good list."))


@dataclass(frozen=True, slots=True)
class Provider:
    """An upstream API and its keys."""

    name: str = setting(non_empty=True, pattern=r"^[^/]*$", doc=(
        "Unique name, used in groups and in provider/model ids."),
        pattern_hint="must not contain '/' (it separates provider/model)")
    type: str = setting("openai", choices=PROVIDER_TYPES, doc=(
        "openai: any OpenAI-compatible API; anthropic: the Anthropic Messages API; "
        "gemini: Google's Gemini API; vertex: Google Cloud Vertex AI (Gemini and Claude "
        "models); bedrock: AWS Bedrock's Converse API; azure: Azure OpenAI, group members "
        "naming deployments (docs/providers.md); mock: built in, answers without network "
        "or key."))
    base_url: str = setting("", pattern=r"^https?://[^/\s]+", doc=(
        "API root. Default: https://api.openai.com/v1 for openai, https://api.anthropic.com "
        "for anthropic (the router posts to {base_url}/v1/messages, so no /v1 there), "
        "https://generativelanguage.googleapis.com for gemini, "
        "https://{location}-aiplatform.googleapis.com for vertex (location global: "
        "https://aiplatform.googleapis.com), "
        "https://bedrock-runtime.{region}.amazonaws.com for bedrock; for azure the "
        "resource, https://RESOURCE.openai.azure.com (required)."),
        pattern_hint="must be an http:// or https:// URL")
    keys: tuple[ProviderKey, ...] = setting((), key="api_keys", doc=(
        "Upstream API keys (not needed for mock, nor for azure with entra; for vertex, paths "
        "of service-account JSON files). The router spreads load across them."))
    project: str = setting("", doc="vertex only: the Google Cloud project id.")
    location: str = setting("", pattern=r"^[a-z0-9-]+$", doc=(
        "vertex only: the region, e.g. us-central1, or global."),
        pattern_hint="must be a region name such as us-central1, or global")
    credentials: str = setting("", doc=(
        "vertex only: path to a service-account JSON key file, usually "
        "\"${GOOGLE_APPLICATION_CREDENTIALS}\"; the same as listing it in api_keys."))
    headers: Mapping[str, str] = setting(MappingProxyType({}), doc=(
        "Extra headers sent upstream, e.g. {OpenAI-Organization: org-123}."))
    timeouts: Timeouts = setting(Timeouts(), doc="Upstream timeouts, in seconds.")
    latency_ms: float = setting(0.0, doc="mock only: delay before answering.")
    tokens_per_second: float = setting(0.0, doc="mock only: streaming speed (0 = at once).")
    anthropic_version: str = setting("2023-06-01", doc="anthropic only: anthropic-version "
                                                       "header.")
    max_tokens_default: int = setting(4096, ge=1, doc=(
        "anthropic only: max_tokens when a client omits it (Messages requires it)."))
    region: str = setting("", pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$", doc=(
        "bedrock only: the AWS region, e.g. us-east-1 (required for bedrock)."),
        pattern_hint="expected an AWS region such as us-east-1")
    discover: Discovery | None = setting(None, doc=(
        "List this provider's models: true, or {refresh_s: 600} (docs/catalog.md)."))
    responses_unsupported_tools: str = setting("drop", choices=("drop", "refuse"), doc=(
        "POST /v1/responses through Chat Completions: hosted tools this provider cannot run "
        "(web_search...) are dropped and named in x-router-dropped-tools (drop), or answered "
        "400 (refuse)."))
    responses: str = setting("chat", choices=("chat", "native"), doc=(
        "How POST /v1/responses reaches this provider. native: its own /responses endpoint, "
        "the body passed through untouched (OpenAI, Azure's v1 API, vLLM); chat: translated "
        "to Chat Completions (and on to Messages for anthropic). See docs/responses.md."))
    api_version: str = setting("", doc=(
        "azure only, required: a dated API version such as 2024-10-21 (requests go to "
        "/openai/deployments/{deployment}/...?api-version=), or v1 (/openai/v1/..., "
        "the deployment sent as model)."))
    entra: Entra | None = setting(None, doc=(
        "azure only: Entra ID client credentials used instead of api_keys."))

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader, path: str) -> None:
        ptype = values.get("type", "openai")
        url = values.get("base_url", "")
        region = values.get("region", "")
        if ptype == "bedrock":
            if not region and f"{path}.region" not in r.failed:
                r.fail(f"{path}.region", "required for a bedrock provider (e.g. us-east-1)")
            if not url and region:
                url = f"https://bedrock-runtime.{region}.amazonaws.com"
            if values.get("responses") == "native":
                r.fail(f"{path}.responses", "bedrock providers have no Responses API; use "
                       "'chat' (the router translates to Converse)")
        elif region:
            r.fail(f"{path}.region", "only bedrock providers take a region")
        for i, key in enumerate(values.get("keys", ())):
            if key.key_file and ptype == "vertex":
                r.fail(f"{path}.api_keys[{i}].key_file", "a vertex key is already a file: "
                       "give the service-account key file's path as key")
            if key.access_key_id and ptype != "bedrock":
                r.fail(f"{path}.api_keys[{i}].access_key_id", "only bedrock providers take "
                       "AWS key pairs; give 'key' instead")
        if ptype == "vertex":
            regional = _finish_vertex(values, r, path)  # checks the rest of it too
            url = url or regional
        elif ptype == "gemini" and values.get("responses") == "native":
            r.fail(f"{path}.responses", "gemini providers have no Responses API; use 'chat' "
                   "(the router translates to generateContent)")
        if ptype not in ("mock", "bedrock") and not url:
            url = _DEFAULT_BASE_URLS.get(ptype, "")
            # (a vertex provider's comes from its location, reported missing already)
            if not url and f"{path}.type" not in r.failed and ptype != "vertex":
                r.fail(f"{path}.base_url", "required")
        elif ptype == "anthropic" and url.rstrip("/").endswith("/v1"):
            # The router appends /v1/messages, as the anthropic SDK does.
            r.fail(f"{path}.base_url", "an anthropic base_url is the API root without /v1 "
                   f"(e.g. {_DEFAULT_BASE_URLS['anthropic']}); the router posts to "
                   "{base_url}/v1/messages")
        if url and (problem := _base_url_problem(url)) is not None:
            r.fail(f"{path}.base_url", problem)
        values["base_url"] = url.rstrip("/")
        if ptype == "anthropic" and values.get("responses") == "native":
            r.fail(f"{path}.responses", "anthropic providers have no Responses API; use "
                   "'chat' (the router translates to Messages)")
        if ptype == "azure":
            _finish_azure(values, r, path)
        else:
            for name in ("api_version", "entra"):
                if values.get(name):
                    r.fail(f"{path}.{name}", f"only an azure provider has {name} (this one is "
                           f"type {ptype})")
        keys = values.get("keys", ())
        if not keys and not any(p.startswith((f"{path}.api_keys", f"{path}.entra"))
                                for p in r.failed):
            if ptype == "mock":
                values["keys"] = (ProviderKey(secret="", label="mock"),)
            elif ptype == "vertex":
                r.fail(f"{path}.credentials", "a service-account key file is required "
                       "(credentials, or its path in api_keys)")
            elif ptype == "azure":
                r.fail(f"{path}.api_keys", "at least one API key (or an entra block) is "
                       "required")
            else:
                r.fail(f"{path}.api_keys", "at least one API key is required")


def _finish_vertex(values: dict[str, Any], r: Reader, path: str) -> str:
    """Check a vertex provider; returns its default base URL (from ``location``)."""
    if importlib.util.find_spec("cryptography") is None:
        r.fail(f"{path}.type", _GOOGLE_EXTRA)
    for name in ("project", "location"):
        if not values.get(name) and f"{path}.{name}" not in r.failed:
            r.fail(f"{path}.{name}", "required for a vertex provider")
    if values.get("responses") == "native":
        r.fail(f"{path}.responses", "vertex providers have no Responses API; use 'chat'")
    credentials = values.get("credentials")
    if credentials:
        values["keys"] = (ProviderKey(secret=credentials, label=key_label(credentials)),
                          *values.get("keys", ()))
    # The files themselves are read by load_config (credentials_problems): a config's
    # text is valid wherever it is parsed, its files only where it runs.
    location = values.get("location", "")
    if not location:
        return ""
    return ("https://aiplatform.googleapis.com" if location == "global"
            else f"https://{location}-aiplatform.googleapis.com")


def _finish_azure(values: dict[str, Any], r: Reader, path: str) -> None:
    """An azure provider's own rules: a resource root, an API version, one kind of
    credential; an Entra identity becomes its only key, labelled "entra"."""
    url = values.get("base_url", "")
    if _AZURE_NOT_ROOT.search(url.partition("://")[2]):
        r.fail(f"{path}.base_url", "an azure base_url is the resource root, e.g. "
               "https://myres.openai.azure.com, without /openai/... or ?api-version=: the "
               "router builds those from api_version and the deployment")
    version = values.get("api_version", "")
    if not version:
        if f"{path}.api_version" not in r.failed:
            r.fail(f"{path}.api_version", "required for azure: a dated version such as "
                   "2024-10-21, or v1")
    elif not _AZURE_API_VERSION.fullmatch(version):
        r.fail(f"{path}.api_version", f"'{version}' is not an Azure OpenAI API version: "
               "write a date such as 2024-10-21 (or 2025-04-01-preview), or v1")
    elif version != "v1" and values.get("responses") == "native":
        r.fail(f"{path}.responses", "Azure serves the Responses API on its v1 path only: "
               "set api_version: v1, or use responses: chat")
    if values.get("entra") is not None:
        if values.get("keys"):
            r.fail(f"{path}.entra", "give either api_keys or entra, not both")
        else:
            values["keys"] = (ProviderKey(secret="", label="entra"),)


# What a group member may declare it accepts (Member.capabilities).
MEMBER_CAPABILITIES: Final = ("vision", "tools", "json_schema", "audio")


@dataclass(frozen=True, slots=True)
class Member:
    """A group member: one upstream model on one provider."""

    provider: str = setting(non_empty=True, doc="Name of a provider.")
    model: str = setting(key="name", aliases=("model",), non_empty=True, doc=(
        "The upstream model name sent to the provider."))
    weight: float = setting(1.0, doc=(
        "Inverse weight: a member of weight 2 gets about half the tokens of one of weight 1; "
        "0 means always preferred."))
    capabilities: tuple[str, ...] | None = setting(None, doc=(
        "What this model accepts: vision, tools, json_schema, audio. A request that needs "
        "one (an image part, tools, response_format json_schema, an audio part) goes only "
        "to members that list it; unset: anything."))
    context_window: int | None = setting(None, ge=1, doc=(
        "The model's context window in tokens: a request whose prompt estimate plus "
        "max_tokens exceeds it goes to another member; unset: unknown (any size)."))


@dataclass(frozen=True, slots=True)
class Affinity:
    """Prompt-cache affinity of a group (docs/affinity.md explains the defaults).

    Written as a mapping, or as just the mode (affinity: off).
    """

    _shorthand: ClassVar = ("mode", "affinity mode")

    mode: str = setting("auto", choices=AFFINITY_MODES, doc=(
        "auto: pin by the client's explicit session key, else by a hash of the prompt's "
        "prefix; session: explicit keys only; off: no pinning."))
    slack: float = setting(0.25, doc=(
        "A pin holds while its candidate's tokens x weight <= (1 + slack) x the lowest "
        "of the group's eligible candidates, plus one request (docs/affinity.md)."))
    ttl_s: float = setting(900.0, ge=1.0, doc="A pin lapses this long after its last use.")
    prefix_bytes: int = setting(8192, ge=64, doc=(
        "Without an explicit session key, the last this many bytes of a conversation's "
        "opening (tools, system, first user message) are hashed into its affinity key."))


_CACHE_MODE_DOC: Final = ("off: no response cache; exact: identical requests (same route, "
                          "group, messages, tools and answer-shaping parameters) are answered "
                          "from the cache (docs/cache.md).")
_CACHE_SCOPE_DOC: Final = ("user: a cached answer serves only the user who caused it; global: "
                           "any caller allowed to use the group.")
_CACHE_NONDET_DOC: Final = ("Also cache requests whose answer is sampled: temperature above 0 "
                            "or absent (the APIs' default is 1), or n above 1.")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The response cache (docs/cache.md): the default policy of every group, and the
    store's bounds. Written as a mapping, or as just the mode (cache: exact)."""

    _shorthand: ClassVar = ("mode", "cache mode")

    mode: str = setting("off", choices=CACHE_MODES, doc=_CACHE_MODE_DOC)
    ttl_s: float = setting(3600.0, ge=1.0, doc="A cached answer is served for this long.")
    max_entries: int = setting(10_000, ge=1, doc=(
        "Answers kept in this process at most (least recently used go first); with "
        "state.redis_url, Redis holds them and this bound does not apply (docs/cache.md)."))
    max_bytes: int = setting(256 * 1024 * 1024, ge=1024, doc=(
        "Bytes of answers kept in this process at most; an answer larger than this is "
        "never cached, in Redis neither."))
    scope: str = setting("user", choices=CACHE_SCOPES, doc=_CACHE_SCOPE_DOC)
    nondeterministic: bool = setting(False, doc=_CACHE_NONDET_DOC)


@dataclass(frozen=True, slots=True)
class GroupCache:
    """A group's response-cache policy; a key left out takes the top-level cache's value.
    Written as a mapping, or as just the mode (cache: off)."""

    _shorthand: ClassVar = ("mode", "cache mode")

    mode: str | None = setting(None, choices=CACHE_MODES, doc=_CACHE_MODE_DOC)
    ttl_s: float | None = setting(None, ge=1.0, doc="A cached answer is served for this long.")
    scope: str | None = setting(None, choices=CACHE_SCOPES, doc=_CACHE_SCOPE_DOC)
    nondeterministic: bool | None = setting(None, doc=_CACHE_NONDET_DOC)


@dataclass(frozen=True, slots=True)
class Group:
    """A model name clients send, served by one or more members."""

    name: str = setting(non_empty=True, doc="What clients send as \"model\".")
    members: tuple[Member, ...] = setting(key="models", non_empty=True, doc=(
        "The upstream models that serve this group."),
        empty_hint="a group needs at least one model")
    strategy: str = setting("inverse-weight", choices=STRATEGIES, doc=(
        "How a member is picked; inverse-weight balances tokens by weight."))
    max_attempts: int | None = setting(None, ge=1, doc=(
        "Attempts per request across members and keys; default: the number of candidates, "
        "at most 3."))
    max_wait_s: float = setting(0.0, doc="Wait this long for a cooling key before answering "
                                         "503.")
    affinity: Affinity = setting(Affinity(), doc="Prompt-cache affinity: keep a conversation "
                                                 "on the key that has its prompt cached.")
    cache: GroupCache | None = setting(None, doc=(
        "This group's response-cache policy, over the top-level cache block's."))
    # A member declares capabilities or a context window: the request path filters the
    # members only then (gateway/capabilities.py), so a group without costs one test.
    declares: bool = internal(False)

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader, path: str) -> None:
        members = values.get("members")
        values["declares"] = isinstance(members, tuple) and any(
            m.capabilities is not None or m.context_window is not None for m in members)


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits; each unset one is unlimited."""

    rpm: int | None = setting(None, ge=1, doc="Requests per minute.")
    tpm: int | None = setting(None, ge=1, doc="Tokens per minute.")
    daily_requests: int | None = setting(None, ge=1, doc="Requests per UTC day.")
    max_concurrent: int | None = setting(None, ge=1, doc="Requests in flight at once.")


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending cap in USD over a calendar period (UTC)."""

    usd: float = setting(doc="The cap, in US dollars.")
    period: str = setting("monthly", choices=BUDGET_PERIODS, doc=(
        "Calendar period (UTC) the cap applies to; total never resets."))


_ALLOWLIST_DOC: Final = ("Allowlist of group names and provider/model patterns (globs such as "
                         "\"openai/*\"); default: everything.")


@dataclass(frozen=True, slots=True)
class UserKey:
    """One client key of a user: its sha256 (preferred) or the key itself."""

    _file_only: ClassVar = {"key": (str, Spec(doc=(
        "The key itself, usually \"${SOME_ENV_VAR}\"; prefer sha256 so the file holds no "
        "secret.")))}

    sha256: str = setting("", repr=False, pattern="^[0-9a-fA-F]{64}$", doc=(
        "Hex sha256 of the key (llm-router hash-key KEY prints it)."),
        pattern_hint="expected 64 hex digits (llm-router hash-key KEY prints it)")
    name: str = setting("", doc="Label in logs and metrics; default: the first 8 hex digits "
                                "of the sha256.")
    models: tuple[str, ...] | None = setting(_NO_PATTERNS, doc=_ALLOWLIST_DOC + (
        " Narrows the user's allowlist."))
    limits: Limits | None = setting(None, doc="Limits of this key alone.")
    budget: Budget | None = setting(None, doc="Budget of this key alone.")

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader,
                path: str) -> bool | None:
        digest: str = values.get("sha256", "").lower()
        secret: str | None = file_only.get("key")
        if digest and secret:
            r.fail(path, "give either 'sha256' or 'key', not both")
        elif secret:
            digest = sha256_hex(secret)
        elif not digest:
            if f"{path}.sha256" not in r.failed and f"{path}.key" not in r.failed:
                r.fail(path, "a key needs 'sha256' (preferred) or 'key'")
            return False
        values["sha256"] = digest
        values["name"] = values.get("name") or digest[:8]
        return None


@dataclass(frozen=True, slots=True)
class User:
    """A person or app with its own keys, allowlist, limits and budget."""

    name: str = setting(non_empty=True, doc="Unique name, in logs, metrics and usage.")
    role: str = setting("user", choices=ROLES, doc="admin may see everyone's usage.")
    keys: tuple[UserKey, ...] = setting((), non_empty=True, doc="The user's client keys.",
                                        empty_hint="a user needs at least one key")
    models: tuple[str, ...] | None = setting(_NO_PATTERNS, doc=_ALLOWLIST_DOC)
    limits: Limits | None = setting(None, doc="Limits over all the user's keys.")
    budget: Budget | None = setting(None, doc="Budget over all the user's keys.")
    aliases: Mapping[str, str] = setting(MappingProxyType({}), doc=(
        _ALIASES_DOC + " The user's own aliases are tried before the top-level ones."))
    alias_table: AliasTable = internal(_NO_ALIASES)  # aliases, compiled

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader, path: str) -> None:
        values["alias_table"] = AliasTable(values.get("aliases", {}))


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens."""

    input: float = setting(doc="USD per 1M prompt tokens.")
    output: float = setting(doc="USD per 1M completion tokens.")
    cached_input: float | None = setting(None, doc=(
        "USD per 1M cached prompt tokens (default: the input price)."))


@dataclass(frozen=True, slots=True)
class UsageSettings:
    """Where the usage counters (selection, limits, spend) survive restarts."""

    snapshot_path: str | None = setting(None, doc=(
        "JSON file the counters are saved to and restored from; none = memory only."))
    snapshot_interval_s: float = setting(30.0, ge=0.1, doc="Seconds between snapshots.")


@dataclass(frozen=True, slots=True)
class ResponsesSettings:
    """The store behind previous_response_id and GET/DELETE /v1/responses/{id}."""

    store_max_entries: int = setting(10_000, doc=(
        "Most responses kept; past it the least recently used go first (0 keeps none)."))
    store_max_bytes: int = setting(64 * 1024 * 1024, doc=(
        "Bound on the memory the kept responses take in this process (each counts its "
        "JSON plus its id and ~200 bytes of bookkeeping), whatever the traffic. A single "
        "larger response is not kept. With state.redis_url: bound on each entry's JSON."))
    store_ttl_s: float = setting(3600.0, gt=0, doc=(
        "A response is forgotten this many seconds after it was created."))


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The listening side's limits against idle, slow and oversized clients. Read at
    start: a change takes a restart."""

    header_timeout_s: float = setting(10.0, gt=0, doc=(
        "A request's line and headers must arrive within this many seconds of the "
        "connection opening, or of the request's first byte; else the connection closes."))
    body_timeout_s: float = setting(10.0, gt=0, doc=(
        "A request body may take this many seconds plus its size at body_min_bytes_per_s; "
        "slower gets 408."))
    body_min_bytes_per_s: int = setting(16384, gt=0, doc=(
        "The slowest body upload accepted, after body_timeout_s of grace."))
    keepalive_timeout_s: float = setting(75.0, gt=0, doc=(
        "An idle keep-alive connection closes after this many seconds."))
    max_connections: int = setting(10_000, ge=1, doc=(
        "Client connections at once. At the cap the oldest idle connection is closed to "
        "admit a new one; with none idle, new connections are refused with 503 (lowered "
        "to fit the process's open-file limit)."))
    reserve_connections: int = setting(32, doc=(
        "Connections past max_connections that serve only /health/live, /health and "
        "/metrics, so probes and scrapes answer while the router is full."))
    max_header_bytes: int = setting(65536, ge=1024, doc=(
        "Request line and headers, in bytes; larger gets 431."))
    max_headers: int = setting(100, ge=8, doc="Request headers, counted; more gets 431.")


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """How much of an upstream answer the router reads: past a bound the attempt fails
    as bad_response (a 502, or in-band once a stream has started)."""

    max_error_body_bytes: int = setting(64 * 1024, ge=1024, doc=(
        "Of an upstream error answer (4xx/5xx), read and relayed at most this much."))
    max_response_bytes: int = setting(16 * 1024 * 1024, ge=1024, doc=(
        "A non-streamed upstream answer larger than this fails the attempt."))
    max_event_bytes: int = setting(4 * 1024 * 1024, ge=1024, doc=(
        "One SSE event of an upstream stream larger than this fails the attempt."))


@dataclass(frozen=True, slots=True)
class StateSettings:
    """Where shared state lives (docs/scaling.md): without redis_url, in this process."""

    redis_url: str | None = setting(None, repr=False, doc=(
        "redis://[user:pass@]host:port/db, rediss:// (TLS) or unix:///path: every router "
        "with the same redis_url and prefix shares limits, budgets, quotas, cooldowns and "
        "selection counters. Absent: this process only. Needs the redis extra (pip "
        "install '.[redis]')."))
    prefix: str = setting("llm-router", non_empty=True, doc=(
        "Key namespace in Redis: routers with the same redis_url and prefix share state."))
    sync_interval_ms: int = setting(100, ge=10, doc=(
        "How often selection counters, key quotas and cooldowns are exchanged, in ms."))
    timeout_ms: int = setting(500, ge=10, le=60000, doc=(
        "The longest one Redis call may take (a batch: twice this) before this replica "
        "enforces limits alone until Redis answers again (docs/scaling.md). Raise it "
        "for a distant or busy Redis; lower it to fail over to local limits sooner."))

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader, path: str) -> None:
        url = values.get("redis_url")
        if url:
            problem = redis_url_problem(url)
            if problem:
                r.fail(f"{path}.redis_url", problem)
        elif url == "":
            values["redis_url"] = None  # "${REDIS_URL:-}" unset: this process only

    @property
    def redis_display(self) -> str:
        """The URL with any password masked: for logs and messages."""
        return redact_url(self.redis_url or "")


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    """Passive health: when a key's recent upstream failures open its circuit."""

    window: int = setting(20, ge=1, doc="Look at the last N attempts of a key ...")
    window_s: float = setting(60.0, gt=0, doc="... within this many seconds.")
    min_requests: int = setting(5, ge=1, doc="Never judge a key on fewer attempts.")
    failure_rate: float = setting(0.5, le=1, doc="Open the circuit at or above this share of "
                                                 "failures (0 to 1).")
    open_s: float = setting(30.0, doc="Stay open this long, then let one probe through.")
    cooldown_base_s: float = setting(5.0, doc=(
        "A 429 without Retry-After cools the key 5 s, 15 s, 45 s ... escalating from this."))
    cooldown_max_s: float = setting(60.0, doc="The longest such cooldown.")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Who may read GET /metrics: anyone by default, as Prometheus expects. User names
    appear in its labels (docs/observability.md)."""

    require_key: bool = setting(False, doc=(
        "Require a key of an admin user (or the legacy api_key) as Authorization: Bearer: "
        "401 without a valid key, 403 for a non-admin user's key."))
    allow_networks: tuple[str, ...] = setting((), doc=(
        "Client addresses or CIDR networks (10.0.0.0/8, 127.0.0.1) that may read /metrics; "
        "others get 403. Empty: any. The TCP peer is checked, never X-Forwarded-For."))
    networks: tuple[Network, ...] = internal(())  # allow_networks, parsed

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader, path: str) -> None:
        parsed: list[Network] = []
        for i, raw in enumerate(values.get("allow_networks", ())):
            try:
                parsed.append(ipaddress.ip_network(raw, strict=False))
            except ValueError:
                r.fail(at(at(path, "allow_networks"), i), f"'{raw}' is not an address or "
                       "network (write e.g. 10.0.0.0/8 or 127.0.0.1)")
        values["networks"] = tuple(parsed)


@dataclass(frozen=True, slots=True)
class OtelSettings:
    """OpenTelemetry traces over OTLP/HTTP (needs the otel extra: pip install '.[otel]');
    read at start-up."""

    endpoint: str = setting(pattern=r"^https?://[^/\s]+", doc=(
        "The collector's OTLP/HTTP base URL, e.g. http://localhost:4318 (/v1/traces is "
        "appended)."), pattern_hint="must be an http:// or https:// URL (OTLP/HTTP, e.g. "
        "http://localhost:4318)")
    service_name: str = setting("llm-router", non_empty=True, doc="service.name of the spans.")
    capture_content: bool = setting(False, doc=(
        "Record prompts and answers on spans (gen_ai.input.messages, "
        "gen_ai.output.messages). Off: never."))
    headers: Mapping[str, str] = setting(MappingProxyType({}), doc=(
        "Headers sent with every export, e.g. {Authorization: \"Bearer ${OTLP_TOKEN}\"}."))
    timeout_s: float = setting(10.0, gt=0, doc="Timeout of one export request, seconds.")
    export_interval_ms: float = setting(1000.0, ge=1, doc=(
        "How long a finished span may wait in the batch before it is exported."))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config file."""

    _file_only: ClassVar = {"$schema": (str, Spec(doc=(
        "URL or path of this JSON Schema, for editors; the router ignores it.")))}

    host: str = setting("0.0.0.0", doc="Listen address (--host overrides).")
    port: int = setting(8080, le=65535, doc="Listen port (--port overrides).")
    api_key: str | None = setting(None, repr=False, doc=(
        "Optional single shared client key (legacy mode); users is the richer way."))
    max_body_bytes: int = setting(32 * 1024 * 1024, ge=1, doc=(
        "Larger request bodies get 413."))
    providers: Mapping[str, Provider] = setting(MappingProxyType({}), keyed_by="name", doc=(
        "Upstream APIs and their keys."))
    groups: Mapping[str, Group] = setting(MappingProxyType({}), keyed_by="name", doc=(
        "The model names clients send, each served by one or more provider models."))
    users: tuple[User, ...] = setting((), doc=(
        "Client users and their keys; without users, api_key (if any) guards access."))
    aliases: Mapping[str, str] = setting(MappingProxyType({}), doc=_ALIASES_DOC)
    alias_table: AliasTable = internal(_NO_ALIASES)  # aliases, compiled
    pricing: Mapping[str, Price] = setting(MappingProxyType({}), doc=(
        "USD per 1M tokens, keyed by upstream model name."))
    usage: UsageSettings = setting(UsageSettings(), doc="Usage counters and their snapshot.")
    cache: CacheSettings = setting(CacheSettings(), doc=(
        "The response cache: identical requests answered without an upstream call "
        "(docs/cache.md); off by default."))
    responses: ResponsesSettings = setting(ResponsesSettings(), doc=(
        "POST /v1/responses: the store that keeps answers for previous_response_id."))
    state: StateSettings = setting(StateSettings(), doc=(
        "Shared state for several replicas or --workers (docs/scaling.md)."))
    circuit: CircuitSettings = setting(CircuitSettings(), doc=(
        "Passive health per provider key (see docs/resilience.md)."))
    server: ServerSettings = setting(ServerSettings(), doc=(
        "Client connection limits and timeouts (see docs/operations.md)."))
    upstream_limits: UpstreamLimits = setting(UpstreamLimits(), doc=(
        "Bounds on what the router reads from an upstream answer."))
    metrics: MetricsSettings = setting(MetricsSettings(), doc=(
        "Who may read /metrics (default: anyone who can reach the listen address)."))
    otel: OtelSettings | None = setting(None, doc=(
        "OpenTelemetry trace export (docs/observability.md); absent: no traces."))
    webhooks: tuple[Webhook, ...] = setting((), doc=(
        "Receivers of signed event notifications: budget thresholds, bad keys, open "
        "circuits, refused reloads, providers down (docs/webhooks.md)."))
    shutdown_grace_s: float = setting(30.0, doc="SIGTERM: how long in-flight requests and "
                                                "streams may finish.")
    shutdown_delay_s: float = setting(0.0, doc=(
        "SIGTERM: keep accepting this long with /health/ready at 503 before draining, so load "
        "balancers take the instance out of rotation first."))
    keepalive_s: float = setting(15.0, doc="SSE comment interval while a stream waits for "
                                           "its first token.")
    request_penalty: int = setting(0, doc="Go llm-router: tokens charged to a key per request.")
    error_penalty: int = setting(0, doc="Go llm-router: tokens charged to a key per failed "
                                        "request.")
    source: str = internal("")  # the file it came from, for logs
    warnings: tuple[str, ...] = internal(())  # located problems that do not stop it serving

    @staticmethod
    def _finish(values: dict[str, Any], file_only: dict[str, Any], r: Reader, path: str) -> None:
        values["alias_table"] = AliasTable(values.get("aliases", {}))

    def summary(self) -> str:
        keys = sum(len(p.keys) for p in self.providers.values())
        return (
            f"{len(self.providers)} providers ({keys} keys), {len(self.groups)} groups, "
            f"{len(self.users)} users, {len(self.pricing)} prices"
        )


def config_json_schema() -> dict[str, Any]:
    """The config file's JSON Schema (draft 2020-12), from the declarations above."""
    return json_schema(Config, title="llm-router config", description=(
        "Config file of llm-router, the self-hosted OpenAI-compatible LLM gateway. "
        "${VAR} and ${VAR:-default} are expanded in every string."))
