"""The fake's deterministic replies and token counts, the same for every provider API: the reply text,
its stream deltas, and the usage numbers each API renders in its own shape."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from candela_stack.fake_provider.scenario import Scenario
from candela_stack.fake_provider.wire import JSONObject

REPLY_WORDS: Final = 12
"""Words in the default reply ("Echo:" + prompt words + filler)."""
FILLER_WORDS: Final = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
)
"""Pads the default reply when the prompt has fewer than REPLY_WORDS - 1 words."""
WORDS_PER_DELTA: Final = 2
"""Words per streamed content delta."""
MESSAGE_OVERHEAD_TOKENS: Final = 3
"""Prompt tokens added per message, like OpenAI's role/separator tokens."""
REPLY_PRIMING_TOKENS: Final = 3
"""Prompt tokens added once per message-based request (the primed assistant turn)."""


@dataclass(frozen=True)
class Generation:
    """The reply to send: its text, its stream deltas and whether a token limit cut it."""

    text: str
    deltas: tuple[str, ...]
    visible_tokens: int
    truncated: bool


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one request; each provider API renders them in its own usage shape."""

    prompt_tokens: int
    visible_completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    overrides: JSONObject = field(default_factory=dict)
    """Keys that replace those of each rendered usage object (``x-fake-usage``)."""

    @property
    def completion_tokens(self) -> int:
        """Output tokens including reasoning, as providers bill them."""
        return self.visible_completion_tokens + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def overridden(self, usage: JSONObject) -> JSONObject:
        """``usage`` (one API's usage object) with the ``x-fake-usage`` keys replaced or added."""
        return {**usage, **self.overrides} if self.overrides else usage


def count_words(text: str) -> int:
    """Whitespace-separated words: the fake's unit of tokens."""
    return len(text.split())


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the ``text`` of its parts joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def count_message_tokens(texts: Iterable[str]) -> int:
    """Prompt tokens of a message list: priming plus, per message, overhead plus words."""
    return REPLY_PRIMING_TOKENS + sum(MESSAGE_OVERHEAD_TOKENS + count_words(text) for text in texts)


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last ``role: "user"`` message, or "" when there is none."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def default_reply(prompt_text: str) -> str:
    """``"Echo:"`` + the first prompt words, padded with filler to exactly REPLY_WORDS words."""
    words = ["Echo:", *prompt_text.split()[: REPLY_WORDS - 1], *FILLER_WORDS]
    return " ".join(words[:REPLY_WORDS])


def split_words(text: str) -> list[str]:
    """Split text into words that keep the whitespace before them (and the text's trailing whitespace)."""
    pieces = re.findall(r"\s*\S+", text)
    if not pieces:
        return [text] if text else []
    consumed = sum(len(piece) for piece in pieces)
    pieces[-1] += text[consumed:]
    return pieces


def generate(prompt_text: str, scenario: Scenario, max_tokens: int | None) -> Generation:
    """The reply for a prompt under a scenario, cut to ``max_tokens`` words when given."""
    text = scenario.reply if scenario.reply is not None else default_reply(prompt_text)
    pieces = split_words(text)
    word_count = count_words(text)
    truncated = False
    if max_tokens is not None and max_tokens < word_count:
        truncated = True
        pieces = pieces[: max(0, max_tokens)]
        pieces[-1:] = [pieces[-1].rstrip()] if pieces else []
        text = "".join(pieces)
        word_count = count_words(text)
    deltas = tuple("".join(pieces[start : start + WORDS_PER_DELTA]) for start in range(0, len(pieces), WORDS_PER_DELTA))
    return Generation(text=text, deltas=deltas, visible_tokens=word_count, truncated=truncated)
