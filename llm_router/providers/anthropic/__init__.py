"""``type: anthropic``: Anthropic's Messages API, and hub <-> Messages translation."""
