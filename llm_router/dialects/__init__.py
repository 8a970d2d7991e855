"""Inbound dialects: what clients speak, translated to and from the hub (OpenAI chat).

Anthropic Messages in :mod:`.anthropic` (its bodies checked at the edge by
:mod:`.anthropic_check`); the Responses API in :mod:`.responses`."""
