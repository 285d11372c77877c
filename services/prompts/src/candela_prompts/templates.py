"""Prompt templates: parsing, validation, rendering and comparison. Pure functions, no I/O.

Syntax (Helicone's ``{{name}}``, so prompts move over unchanged):

- ``{{name}}`` is a variable; spaces inside the braces are allowed (``{{ name }}``). A name is a letter
  or ``_`` followed by letters, digits or ``_``.
- ``\\{{`` is a literal ``{{`` (the backslash is dropped). A lone ``}}`` is literal text.
- Any other ``{{`` is malformed: unclosed, or enclosing something that is not a name. Templates are
  checked when stored, so a stored version always renders once its variables are given.

Formats: a TEXT template is plain text. A CHAT template is a JSON list of ``{"role": ..., "content": ...}``
objects; variables may appear in the contents, which are filled after the JSON is parsed, so an input
can never break the message structure (quotes and newlines in values are just text).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from candela.prompts.v1 import prompts_service_pb2 as pb

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
MAX_ROLE_LENGTH = 64
CHAT_NESTING = 2
"""How deep a CHAT template's JSON nests: a list of message objects."""


class TemplateError(ValueError):
    """A malformed template; ``str()`` says what and where."""


@dataclass(frozen=True)
class Variable:
    """A ``{{name}}`` in a template."""

    name: str


Segment = str | Variable


@dataclass(frozen=True)
class ParsedMessage:
    """One message of a CHAT template."""

    role: str
    content: tuple[Segment, ...]


@dataclass(frozen=True)
class ParsedTemplate:
    """A validated template: TEXT has ``text``, CHAT has ``messages``."""

    format: pb.TemplateFormat.ValueType
    text: tuple[Segment, ...]
    messages: tuple[ParsedMessage, ...]
    variables: tuple[str, ...]
    """Variable names in order of first use."""


@dataclass(frozen=True)
class Rendered:
    """A template with its variables filled."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs; a TEXT template is one "user" message."""
    text: str
    """The rendered TEXT template; empty for CHAT."""


class RenderError(ValueError):
    """The inputs do not fit the template: ``problems`` are (field, description) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {description}" for field, description in problems))
        self.problems = problems


def parse_segments(text: str, where: str = "") -> tuple[Segment, ...]:
    """Splits text into literal strings and variables; raises TemplateError on a malformed ``{{``."""
    segments: list[Segment] = []
    literal: list[str] = []
    position = 0
    prefix = f"{where}: " if where else ""
    while True:
        opening = text.find("{{", position)
        if opening < 0:
            literal.append(text[position:])
            break
        if opening > 0 and text[opening - 1] == "\\":
            literal.append(text[position : opening - 1] + "{{")
            position = opening + 2
            continue
        literal.append(text[position:opening])
        match = _PLACEHOLDER.match(text, opening)
        if match is None:
            closing = text.find("}}", opening + 2)
            if closing < 0:
                raise TemplateError(f"{prefix}unclosed '{{{{' at offset {opening} (write '\\{{{{' for a literal)")
            inner = text[opening + 2 : closing].strip()
            raise TemplateError(
                f"{prefix}invalid variable name {inner!r} at offset {opening}: use a letter or '_' followed by"
                " letters, digits or '_'"
            )
        if literal:
            segments.append("".join(literal))
            literal = []
        segments.append(Variable(match.group(1)))
        position = match.end()
    if any(literal):
        segments.append("".join(literal))
    return tuple(segments)


def parse_template(template: str, template_format: pb.TemplateFormat.ValueType) -> ParsedTemplate:
    """Validates ``template`` in its format; raises TemplateError naming the problem."""
    if template_format == pb.TEMPLATE_FORMAT_CHAT:
        messages = _parse_chat(template)
        segments = [segment for message in messages for segment in message.content]
        return ParsedTemplate(pb.TEMPLATE_FORMAT_CHAT, (), messages, _names(segments))
    text = parse_segments(template)
    return ParsedTemplate(pb.TEMPLATE_FORMAT_TEXT, text, (), _names(text))


def render(parsed: ParsedTemplate, inputs: Mapping[str, str]) -> Rendered:
    """Fills every variable; RenderError names each missing and each unexpected input."""
    problems = [
        (f"inputs.{name}", "missing: the template uses this variable")
        for name in parsed.variables
        if name not in inputs
    ]
    problems += [
        (f"inputs.{name}", "unexpected: the template has no such variable")
        for name in sorted(inputs)
        if name not in parsed.variables
    ]
    if problems:
        raise RenderError(problems)
    if parsed.format == pb.TEMPLATE_FORMAT_CHAT:
        return Rendered(tuple((m.role, _fill(m.content, inputs)) for m in parsed.messages), "")
    text = _fill(parsed.text, inputs)
    return Rendered((("user", text),), text)


def diff(base: str, target: str, template_format: pb.TemplateFormat.ValueType, labels: tuple[str, str]) -> str:
    """A unified diff of two templates (CHAT ones pretty-printed first, one field per line)."""
    base_lines, target_lines = _diff_lines(base, template_format), _diff_lines(target, template_format)
    return "".join(difflib.unified_diff(base_lines, target_lines, fromfile=labels[0], tofile=labels[1]))


def _diff_lines(template: str, template_format: pb.TemplateFormat.ValueType) -> list[str]:
    if template_format == pb.TEMPLATE_FORMAT_CHAT:
        # Stored CHAT templates were validated as JSON when they were created.
        template = json.dumps(json.loads(template), indent=2, ensure_ascii=False)
    lines = template.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def _parse_chat(template: str) -> tuple[ParsedMessage, ...]:
    try:
        document = json.loads(template)
    except ValueError as err:
        raise TemplateError(f"a CHAT template must be a JSON list of messages: {err}") from None
    except RecursionError:
        # json recurses once per bracket; a list of messages needs two levels, so refuse the rest plainly.
        raise TemplateError(
            f"a CHAT template must be a JSON list of messages, nested {CHAT_NESTING} levels deep ([ then {{),"
            " but this one nests its brackets too deeply to parse"
        ) from None
    if not isinstance(document, list) or not document:
        raise TemplateError('a CHAT template must be a non-empty JSON list of {"role", "content"} messages')
    messages: list[ParsedMessage] = []
    for index, item in enumerate(document):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise TemplateError(f'{where}: must be an object {{"role": ..., "content": ...}}')
        unknown = sorted(set(item) - {"role", "content"})
        if unknown:
            raise TemplateError(f"{where}: unknown keys {unknown}; a message has only 'role' and 'content'")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or not role.strip() or len(role) > MAX_ROLE_LENGTH:
            raise TemplateError(f"{where}.role: must be a non-empty string of at most {MAX_ROLE_LENGTH} characters")
        if not isinstance(content, str):
            raise TemplateError(f"{where}.content: must be a string")
        messages.append(ParsedMessage(role, parse_segments(content, f"{where}.content")))
    return tuple(messages)


def _names(segments: list[Segment] | tuple[Segment, ...]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for segment in segments:
        if isinstance(segment, Variable):
            seen.setdefault(segment.name, None)
    return tuple(seen)


def _fill(segments: tuple[Segment, ...], inputs: Mapping[str, str]) -> str:
    return "".join(inputs[s.name] if isinstance(s, Variable) else s for s in segments)


def is_name(value: str) -> bool:
    """Whether ``value`` is a valid variable name."""
    return _NAME.fullmatch(value) is not None
