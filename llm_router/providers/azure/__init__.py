"""Azure OpenAI (``type: azure``): the OpenAI wire at Azure's URLs, with ``api-key`` or
Microsoft Entra ID auth. :mod:`.api` builds requests; :mod:`.entra` keeps tokens."""

from __future__ import annotations

from .api import send, upstream_url
from .entra import EntraTokens, tokens_for

__all__ = ["EntraTokens", "send", "tokens_for", "upstream_url"]
