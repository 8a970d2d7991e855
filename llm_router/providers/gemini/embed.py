"""Hub (OpenAI) embeddings ⇄ Gemini ``batchEmbedContents`` (pure, no I/O).

Each input string becomes one request of the batch (``content.parts[0].text``), with
``dimensions`` → ``outputDimensionality``. The answer's ``embeddings[].values`` come
back as an OpenAI list, as floats or, when the client asks
``encoding_format: base64`` (the openai SDK's default), as little-endian float32 in
base64. Gemini reports no token counts for embeddings: ``usage`` is estimated at a
token per 4 characters, so balancing and limits still see the load. Token-id inputs
(lists of integers) are refused: Gemini embeds text only.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from ...hub.usage import BYTES_PER_TOKEN
from .request import Refused

__all__ = ["embeddings_answer", "embeddings_request"]


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise Refused("Gemini providers embed text only: 'input' must be a string or a list of "
                  "strings.", "input")


def embeddings_request(body: dict[str, Any], model: str) -> tuple[dict[str, Any], int]:
    """(the ``batchEmbedContents`` body, the estimated prompt tokens)."""
    texts = _texts(body.get("input"))
    one: dict[str, Any] = {"model": f"models/{model}"}
    dimensions = body.get("dimensions")
    if isinstance(dimensions, int) and not isinstance(dimensions, bool):
        one["outputDimensionality"] = dimensions
    requests = [{**one, "content": {"parts": [{"text": text}]}} for text in texts]
    return {"requests": requests}, sum(-(-len(t) // BYTES_PER_TOKEN) for t in texts)


def embeddings_answer(doc: dict[str, Any], model: str, encoding: Any,
                      prompt_tokens: int) -> dict[str, Any]:
    """The OpenAI ``list`` of embeddings for a ``batchEmbedContents`` answer; raises
    ValueError on an answer without ``embeddings[].values``."""
    found = doc.get("embeddings")
    if not isinstance(found, list):
        raise ValueError("no embeddings in the answer")
    data: list[dict[str, Any]] = []
    for i, item in enumerate(found):
        values = item.get("values") if isinstance(item, dict) else None
        if not isinstance(values, list):
            raise ValueError("an embedding without values")
        vector: Any = values
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
