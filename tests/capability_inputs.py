"""What the capability tests send and what their upstream answers: a chat with an image,
and the error a provider gives for a prompt past the model's context window."""

from __future__ import annotations

import orjson

IMAGE = "data:image/png;base64,iVBORw0KGgo="
TEXT_IMAGE_CHAT = [{"role": "user", "content": [
    {"type": "text", "text": "what is this?"},
    {"type": "image_url", "image_url": {"url": IMAGE}}]}]

# OpenAI's answer to a prompt longer than the model's window.
CONTEXT_ERROR = orjson.dumps({"error": {
    "message": "This model's maximum context length is 1000 tokens. However, your messages "
               "resulted in 2500 tokens.", "type": "invalid_request_error",
    "param": "messages", "code": "context_length_exceeded"}})
