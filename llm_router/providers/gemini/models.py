"""Gemini's model list, page by page (pure, no I/O): ``GET /v1beta/models``.

The list is paginated: each answer holds ``models[]`` and, while more remain, a
``nextPageToken`` to pass as ``pageToken``. Names come as ``models/<id>``; the router
names models by ``<id>``, as in the generateContent URL.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple
from urllib.parse import quote

__all__ = ["PAGE_SIZE", "ListedModel", "models_page", "models_url"]

PAGE_SIZE: Final = 1000  # the API's largest page


class ListedModel(NamedTuple):
    id: str
    input_tokens: int | None  # the context window, when the list says
    output_tokens: int | None
    methods: tuple[str, ...]  # supportedGenerationMethods: generateContent, embedContent …


def models_url(base_url: str, page_token: str | None = None) -> str:
    url = f"{base_url}/v1beta/models?pageSize={PAGE_SIZE}"
    return url + f"&pageToken={quote(page_token, safe='')}" if page_token else url


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def models_page(doc: Any) -> tuple[list[ListedModel], str | None]:
    """(the models of one page, the next page's token or None at the end)."""
    if not isinstance(doc, dict):
        raise ValueError("a model list must be a JSON object")
    found = doc.get("models")
    out: list[ListedModel] = []
    for item in found if isinstance(found, list) else []:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            continue
        methods = item.get("supportedGenerationMethods")
        out.append(ListedModel(
            name.removeprefix("models/"), _count(item.get("inputTokenLimit")),
            _count(item.get("outputTokenLimit")),
            tuple(m for m in methods if isinstance(m, str)) if isinstance(methods, list)
            else ()))
    token = doc.get("nextPageToken")
    return out, token if isinstance(token, str) and token else None
