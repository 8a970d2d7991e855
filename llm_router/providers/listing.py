"""What a ``{"data": [...]}`` model list says of each model (pure, no I/O).

OpenAI's list says only ids. Servers speaking its shape say more, each in its own field,
and one reader takes whichever is there:

- vLLM: ``max_model_len``, the context window;
- OpenRouter (and others modelled on it): ``context_length`` (else
  ``top_provider.context_length``); ``architecture.input_modalities`` (``image`` →
  vision, ``audio`` → audio) with ``supported_parameters`` (``tools`` → tools,
  ``structured_outputs`` or ``response_format`` → json_schema);
- Anthropic's ``/v1/models``: ``max_input_tokens``, and ``capabilities``
  (``image_input`` → vision, ``structured_outputs`` → json_schema; every Claude model
  takes tools, none takes audio).

Capabilities are given only when the entry says all of them (both OpenRouter fields,
or Anthropic's object); a partial answer would wrongly turn requests away, so it is
read as "not said".
"""

from __future__ import annotations

from typing import Any

from .base import ModelInfo

__all__ = ["listed_models", "model_info"]


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


def _window(entry: dict[str, Any]) -> int | None:
    for name in ("max_model_len", "context_length", "max_input_tokens"):
        found = _tokens(entry.get(name))
        if found is not None:
            return found
    top = entry.get("top_provider")
    return _tokens(top.get("context_length")) if isinstance(top, dict) else None


def _strings(value: Any) -> set[str] | None:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else None


def _supported(caps: dict[str, Any], name: str) -> bool:
    one = caps.get(name)
    return isinstance(one, dict) and one.get("supported") is True


def _capabilities(entry: dict[str, Any]) -> frozenset[str] | None:
    arch = entry.get("architecture")
    inputs = _strings(arch.get("input_modalities")) if isinstance(arch, dict) else None
    params = _strings(entry.get("supported_parameters"))
    if inputs is not None and params is not None:  # OpenRouter
        out = {cap for cap, modality in (("vision", "image"), ("audio", "audio"))
               if modality in inputs}
        if "tools" in params:
            out.add("tools")
        if params & {"structured_outputs", "response_format"}:
            out.add("json_schema")
        return frozenset(out)
    caps = entry.get("capabilities")
    if isinstance(caps, dict) and "image_input" in caps:  # Anthropic
        out = {"tools"}
        if _supported(caps, "image_input"):
            out.add("vision")
        if _supported(caps, "structured_outputs"):
            out.add("json_schema")
        return frozenset(out)
    return None


def model_info(entry: dict[str, Any]) -> ModelInfo | None:
    """One entry of a model list; None without an id."""
    model = entry.get("id")
    if not isinstance(model, str) or not model:
        return None
    return ModelInfo(model, _window(entry), _capabilities(entry))


def listed_models(doc: object) -> list[ModelInfo] | None:
    """The models of a ``{"data": [...]}`` list (OpenAI's, vLLM's, OpenRouter's and
    Anthropic's shape); None if the document is not one."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        return None
    return [info for info in (model_info(e) for e in data if isinstance(e, dict))
            if info is not None]
