"""Candela proxy: an OpenAI- and Anthropic-compatible HTTP gateway that logs every call."""
