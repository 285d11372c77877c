"""What OpenAI's APIs share: required fields, stream options, prompt items and the stream padding."""

from __future__ import annotations

import string
from typing import Any, Final

from candela_stack.fake_provider.generation import count_words
from candela_stack.fake_provider.wire import FakeRequestError, JSONObject

SYSTEM_FINGERPRINT: Final = "fp_c4nd3la0f4k"


def require_openai_model(body: JSONObject) -> str:
    """The ``model`` of an OpenAI request, which every OpenAI API requires."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeRequestError("you must provide a model parameter")
    return model


def require_openai_field(body: JSONObject, name: str) -> Any:
    """A required field of an OpenAI request, or OpenAI's missing-parameter error."""
    if body.get(name) is None:
        raise FakeRequestError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    return body[name]


def optional_int(body: JSONObject, *names: str) -> int | None:
    """The first of ``names`` that holds an integer (not a bool), or None."""
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def stream_options(body: JSONObject) -> tuple[bool, bool]:
    """(include_usage, include_obfuscation) from ``stream_options``."""
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return False, True
    return options.get("include_usage") is True, options.get("include_obfuscation") is not False


def prompt_parts(prompt: Any) -> list[Any]:
    """A legacy ``prompt``/embeddings ``input`` as a list of items (strings or token arrays)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(item, int) for item in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        return list(prompt)
    raise FakeRequestError(
        "'prompt' must be a string, a non-empty array of strings or an array of token arrays.", param="prompt"
    )


def part_tokens(part: Any) -> int:
    """Tokens of one prompt item: the words of a string, the length of a token array."""
    if isinstance(part, str):
        return count_words(part)
    if isinstance(part, list):
        return len(part)
    return 0


def obfuscation_padding(payload: str) -> str:
    """Deterministic stand-in for OpenAI's random ``obfuscation`` field (pads to a multiple of 16)."""
    length = 16 - len(payload) % 16
    return (string.ascii_letters + string.digits)[len(payload) % 40 :][:length]


SERVED_TIERS: Final = frozenset({"default", "flex", "priority"})


def served_tier(body: JSONObject) -> str:
    """The ``service_tier`` OpenAI reports as having served a request: the tier it asked for when that is
    one it serves (``flex``, ``priority``), else ``default`` (what ``auto`` and an absent tier get)."""
    asked = body.get("service_tier")
    return asked if isinstance(asked, str) and asked in SERVED_TIERS else "default"
