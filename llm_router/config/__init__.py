"""The config: every key declared once, read from YAML or JSON, checked completely, frozen.

The public face of the ``config`` package: the rest of the router and its users import
from ``llm_router.config`` exactly as before the package existed.

- :mod:`.model`: every key, declared once (frozen dataclasses);
- :mod:`.schema`: what makes a dataclass field a key, and the JSON Schema of them all;
- :mod:`.reader`: a raw tree into the declared dataclasses, every problem located;
- :mod:`.yaml_file`: the YAML text: syntax errors in plain words, duplicate keys, positions;
- :mod:`.checks`: checks across keys;
- :mod:`.load`: load a file, expand ``${ENV}``, validate, freeze;
- :mod:`.redis_url`: Redis URLs as the config gives them.
"""

from __future__ import annotations

from .load import load_config, parse_config
from .model import (
    AFFINITY_MODES,
    BUDGET_PERIODS,
    DEFAULT_PRICE,
    MAX_MODEL_BYTES,
    PROVIDER_TYPES,
    ROLES,
    STRATEGIES,
    Affinity,
    Budget,
    CacheSettings,
    CircuitSettings,
    Config,
    ConfigError,
    Discovery,
    Entra,
    Group,
    GroupCache,
    Limits,
    Member,
    MetricsSettings,
    OtelSettings,
    Price,
    Provider,
    ProviderKey,
    ResponsesSettings,
    ServerSettings,
    StateSettings,
    Timeouts,
    UpstreamLimits,
    UsageSettings,
    User,
    UserKey,
    config_json_schema,
    key_label,
    sha256_hex,
)
from .redis_url import url_passwords
from .yaml_file import without_source_line

__all__ = [
    "AFFINITY_MODES",
    "BUDGET_PERIODS",
    "DEFAULT_PRICE",
    "MAX_MODEL_BYTES",
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
    "load_config",
    "parse_config",
    "sha256_hex",
    "url_passwords",
    "without_source_line",
]
