"""The fields every model route reads, checked once, before anything is resolved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..config import MAX_MODEL_BYTES, Config
from ..dialects import anthropic_check
from ..errors import BadRequest
from ..hub import chat_check
from ..ledger.accounting import KeyIndex

__all__ = ["refuse_a_key", "validate_body"]

# Per route: the field every request needs, its types, and what it must be.
_REQUIRED: Final[dict[str, tuple[str, type | tuple[type, ...], str]]] = {
    "chat": ("messages", list, "a list of messages"),
    "messages": ("messages", list, "a list of messages"),
    "count_tokens": ("messages", list, "a list of messages"),
    "completions": ("prompt", (str, list), "a string or a list"),
    "embeddings": ("input", (str, list), "a string or a list"),
    "responses": ("input", (str, list), "a string or a list of input items"),
}
# Routes whose field above may be absent or null: OpenAI's completions schema makes
# `prompt` nullable, defaulting to <|endoftext|>, which the member applies.
_NULLABLE: Final = frozenset({"completions"})
# Per route: the dialect's own check of the fields the router reads (Responses bodies
# are checked by ResponsesTurn.begin, which needs the stored conversation too).
_BODY_CHECKS: Final[dict[str, Callable[[dict[str, Any]], None]]] = {
    "chat": chat_check.check_body,
    "messages": anthropic_check.check_body,
    "count_tokens": anthropic_check.check_body,
}
_JSON_TYPES: Final[dict[type, str]] = {
    bool: "a boolean", int: "a number", float: "a number", str: "a string",
    list: "a list", dict: "an object"}

def validate_body(kind: str, body: dict[str, Any]) -> str:
    """The request's model, once its body has the fields its route reads, each of the
    documented type; else :class:`BadRequest` naming the first field that does not."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: a group name or provider/model.", param="model",
                         code="missing_required_parameter")
    if len(model) > MAX_MODEL_BYTES or (not model.isascii()
                                       and len(model.encode()) > MAX_MODEL_BYTES):
        # It goes into X-Router-Group and X-Router-Model, the access line and the trace:
        # a 30 MB name was a 30 MB response header. Not quoted back, for the same reason.
        raise BadRequest(f"'model' is {len(model.encode()):,} bytes long; a model name is "
                         f"at most {MAX_MODEL_BYTES} bytes (UTF-8).", param="model",
                         code="invalid_model")
    if not model.isprintable():
        # No model is named so, and a direct provider/model name goes into the answer's
        # X-Router-Group and X-Router-Model: a line break there made it unwritable.
        bad = next(c for c in model if not c.isprintable())
        raise BadRequest(f"'model' has a control or other non-printable character "
                         f"(U+{ord(bad):04X}); model names are printable text.", param="model",
                         code="invalid_model")
    field_name, types, must = _REQUIRED[kind]
    value = body.get(field_name)
    if value is None:
        if kind not in _NULLABLE:
            raise BadRequest(f"'{field_name}' is required: {must}.", param=field_name,
                             code="missing_required_parameter")
    elif not isinstance(value, types):
        raise BadRequest(f"'{field_name}' must be {must}, not {_JSON_TYPES[type(value)]}.",
                         param=field_name)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", param="stream")
    check = _BODY_CHECKS.get(kind)
    if check is not None:
        check(body)
    return model


def refuse_a_key(model: str, cfg: Config, keys: KeyIndex) -> None:
    """:class:`BadRequest` when the request's ``model`` (not a group) is one of this
    router's client keys, or ``provider/`` and one: it is not logged, traced, labelled
    or sent upstream, which all see the model name."""
    if model not in cfg.groups and keys.names_a_key(model):
        raise BadRequest("'model' is an API key of this router, not a model name: send the "
                         "key in the Authorization (or x-api-key) header, and a group or "
                         "provider/model as 'model'. The name was not logged or sent "
                         "upstream.", param="model", code="invalid_model")
