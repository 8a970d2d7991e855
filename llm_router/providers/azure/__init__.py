"""``type: azure``: Azure OpenAI, the OpenAI wire at Azure's URLs with ``api-key`` or
Microsoft Entra ID auth. :mod:`.api` builds requests; :mod:`.entra` keeps tokens."""

from __future__ import annotations

from typing import Final

from .api import AzureProvider, upstream_url
from .entra import EntraTokens, tokens_for

__all__ = ["PROVIDER", "EntraTokens", "tokens_for", "upstream_url"]

PROVIDER: Final = AzureProvider()
