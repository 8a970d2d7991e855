"""Inbound dialects: what clients speak, translated to and from the hub (OpenAI chat).

Anthropic Messages in :mod:`.anthropic`; the Responses API in :mod:`.responses`."""
