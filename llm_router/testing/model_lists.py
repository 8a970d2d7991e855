"""The fake's ``GET /v1/models`` in the shapes real servers give it.

One list of :class:`FakeModel` s, written on the wire as the chosen server writes it
(``FakeUpstream.models_wire``, or ``models_wire`` in ``POST /_fake/settings``):

- ``openai``: ``{id, object, created, owned_by}`` only, as OpenAI's API;
- ``vllm``: OpenAI's entry plus ``root``, ``parent``, ``permission`` and
  ``max_model_len`` (the context window), as vLLM's OpenAI-compatible server;
- ``openrouter``: no ``object``; ``name``, ``context_length``, ``architecture``
  (``modality``, ``input_modalities``, ``output_modalities``, ``tokenizer``),
  ``pricing`` (strings, USD per token), ``top_provider`` and
  ``supported_parameters``, as OpenRouter's ``/api/v1/models``.

Anthropic's list (:func:`anthropic_entry`) carries ``max_input_tokens``,
``max_tokens`` and a ``capabilities`` object, as its ``/v1/models`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["MODELS_WIRES", "FakeModel", "anthropic_entry", "fake_model", "model_entry"]

MODELS_WIRES: Final = ("openai", "vllm", "openrouter")
_CREATED: Final = 1700000000
_PARAMETERS: Final = ("max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice",
                      "response_format", "structured_outputs", "seed")


@dataclass(frozen=True, slots=True)
class FakeModel:
    """A model the fake lists, with what vLLM and OpenRouter say of one."""

    id: str
    context_length: int = 128_000
    input_modalities: tuple[str, ...] = ("text", "image")
    supported_parameters: tuple[str, ...] = field(default=_PARAMETERS)


def fake_model(doc: Any) -> FakeModel:
    """A :class:`FakeModel` from its JSON (``POST /_fake/settings``); ValueError if it
    is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or \
            set(doc) - {"id", "context_length", "input_modalities", "supported_parameters"}:
        raise ValueError("a model is {id, context_length?, input_modalities?, "
                         "supported_parameters?}")
    out = FakeModel(doc["id"])
    window = doc.get("context_length", out.context_length)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError("context_length must be an integer >= 1")
    lists = {}
    for name in ("input_modalities", "supported_parameters"):
        value = doc.get(name, getattr(out, name))
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings")
        lists[name] = tuple(value)
    return FakeModel(doc["id"], window, **lists)


def model_entry(model: FakeModel, wire: str) -> dict[str, Any]:
    """One ``data[]`` entry of ``GET /v1/models`` as ``wire`` writes it."""
    if wire == "openrouter":
        inputs = list(model.input_modalities)
        return {
            "id": model.id, "canonical_slug": model.id, "name": model.id,
            "created": _CREATED, "description": f"{model.id}, served by the fake upstream.",
            "context_length": model.context_length,
            "architecture": {"modality": "+".join(inputs) + "->text",
                             "input_modalities": inputs, "output_modalities": ["text"],
                             "tokenizer": "Other", "instruct_type": None},
            "pricing": {"prompt": "0.000001", "completion": "0.000002", "request": "0",
                        "image": "0", "web_search": "0", "internal_reasoning": "0"},
            "top_provider": {"context_length": model.context_length,
                             "max_completion_tokens": 16384, "is_moderated": False},
            "per_request_limits": None,
            "supported_parameters": list(model.supported_parameters),
        }
    entry: dict[str, Any] = {"id": model.id, "object": "model", "created": _CREATED,
                             "owned_by": "vllm" if wire == "vllm" else "fake-upstream"}
    if wire == "vllm":
        entry.update(root=model.id, parent=None, max_model_len=model.context_length,
                     permission=[{"id": f"modelperm-{model.id}", "object": "model_permission",
                                  "created": _CREATED, "allow_create_engine": False,
                                  "allow_sampling": True, "allow_logprobs": True,
                                  "allow_search_indices": False, "allow_view": True,
                                  "allow_fine_tuning": False, "organization": "*",
                                  "group": None, "is_blocking": False}])
    return entry


def _supported(yes: bool) -> dict[str, bool]:
    return {"supported": yes}


def anthropic_entry(model: str, vision: bool = True) -> dict[str, Any]:
    """One ``data[]`` entry of Anthropic's ``GET /v1/models``."""
    return {
        "type": "model", "id": model, "display_name": model.replace("-", " ").title(),
        "created_at": "2025-01-01T00:00:00Z", "max_input_tokens": 200_000,
        "max_tokens": 64_000,
        "capabilities": {
            "batch": _supported(True), "citations": _supported(True),
            "code_execution": _supported(False), "image_input": _supported(vision),
            "pdf_input": _supported(vision), "structured_outputs": _supported(True),
            "thinking": {"supported": True, "types": {"enabled": _supported(True)}},
        },
    }
