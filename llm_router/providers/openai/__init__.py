"""``type: openai``: any OpenAI-compatible API."""
