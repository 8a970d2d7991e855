"""``type: bedrock``: AWS Bedrock's Converse API (SigV4 or API keys, event-stream framing),
spoken as the hub at its boundary; docs/providers.md says what maps to what."""
