"""The provider types, by the config's ``type``: one line per ``providers/<type>/`` folder."""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from . import anthropic, azure, bedrock, gemini, mock, openai, vertex
from .base import ProviderType

__all__ = ["PROVIDER_TYPES", "provider_type"]

PROVIDER_TYPES: Final = MappingProxyType({p.type: p for p in (
    openai.PROVIDER,
    anthropic.PROVIDER,
    mock.PROVIDER,
    bedrock.PROVIDER,
    gemini.PROVIDER,
    vertex.PROVIDER,
    azure.PROVIDER,
)})


def provider_type(name: str) -> ProviderType:
    """The registered type ``name`` (the config checked it is one)."""
    return PROVIDER_TYPES[name]
