"""The OpenAI Responses API served through the hub: check, translate, stream, store, turn."""
