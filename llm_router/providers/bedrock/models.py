"""Bedrock's model list: ``GET /foundation-models`` (ListFoundationModels).

Converse is on the runtime host (``bedrock-runtime.{region}``); the list is on the
control-plane host, ``https://bedrock.{region}.amazonaws.com/foundation-models``,
signed the same way (service ``bedrock``). A provider whose ``base_url`` overrides the
runtime host (a fake, a proxy) is asked at ``{base_url}/foundation-models``. Listed: the
``modelId`` of each summary whose output modalities include text. Inference profiles
(``us.``, ``eu.``, ``global.`` ids) are not in this list; a group names them directly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ...config import Provider, ProviderKey
from .sigv4 import Credentials, sign_headers

__all__ = ["models_headers", "models_url", "text_model_ids"]


def models_url(provider: Provider) -> str:
    """Where the model list is: the control-plane host, or below an overriding base_url."""
    if provider.base_url == f"https://bedrock-runtime.{provider.region}.amazonaws.com":
        return f"https://bedrock.{provider.region}.amazonaws.com/foundation-models"
    return f"{provider.base_url}/foundation-models"


def models_headers(provider: Provider, key: ProviderKey, url: str) -> dict[str, str]:
    """The GET's headers: signed with an AWS key pair, or the API key as a bearer token."""
    headers = {**provider.headers, "Accept": "application/json"}
    if not key.access_key_id:
        headers["Authorization"] = f"Bearer {key.secret}"
        return headers
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = (parts.hostname or "").lower()
    if parts.port is not None and parts.port != default:
        host = f"{host}:{parts.port}"
    headers.update(sign_headers(
        method="GET", host=host, path=parts.path, body=b"", content_type="",
        credentials=Credentials(key.access_key_id, key.secret, key.session_token),
        region=provider.region, service="bedrock", now=datetime.now(UTC)))
    return headers


def text_model_ids(doc: Any) -> list[str] | None:
    """The text-generating model ids of a ListFoundationModels answer; None if it is
    not one."""
    summaries = doc.get("modelSummaries") if isinstance(doc, dict) else None
    if not isinstance(summaries, list):
        return None
    return [str(m["modelId"]) for m in summaries
            if isinstance(m, dict) and m.get("modelId")
            and "TEXT" in (m.get("outputModalities") or ["TEXT"])]
