"""Named prompts: which prompt a request names, its rendering by PromptsService, and the forwarded body.

A request names a prompt with headers (``Candela-Prompt-Id``, ``Candela-Prompt-Version`` or
``Candela-Prompt-Environment``, ``Candela-Prompt-Inputs``: a JSON object of strings) or with the same in
its JSON body (``prompt_id``, ``prompt_version``, ``prompt_environment``, ``inputs``). The body keys are
Candela's only when a prompt is named (a ``prompt_id`` in the body or the header); they are then removed
before the body goes upstream. A value given both ways must agree. With neither a version nor an
environment, the latest version is rendered. Naming a prompt renders it: an id that is not stored is
404 ``prompt_not_found``. ``Helicone-Prompt-Id`` alone keeps its Helicone meaning (a tag, logged as the
prompt id, nothing rendered); with a version, environment or inputs it names the prompt to render.

What the rendered template becomes, per endpoint (the template always comes first, what the client sent
follows it, so a client adds the conversation turns after a fixed preamble):

- ``/v1/chat/completions`` (OpenAI): ``messages`` = the template's messages + the client's ``messages``.
  A text template is one ``user`` message.
- ``/v1/messages`` (Anthropic): the template's ``system`` (and ``developer``) messages become ``system``:
  alone, or before the client's ``system`` (joined by a blank line when it is a string, as a first text
  block when it is a list of blocks); the other messages go before the client's ``messages``.
- ``/v1/responses`` (OpenAI): ``input`` = the template's text (a text template, when the client sent no
  ``input``), else the template's messages + the client's input (a string becomes one ``user`` message).
- ``/v1/completions`` (OpenAI): ``prompt`` = the rendered text; a chat template, or a ``prompt`` of the
  client's own, is refused (there is no unambiguous way to join them).

Every other path refuses a named prompt. The request is then logged with the prompt id, the version that
was rendered (an environment resolves to its version at that moment) and the inputs; the logged request
body is the rendered body that was sent upstream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from candela.prompts.v1 import prompts_service_pb2 as prompts_pb
from candela_proxy.headers import MAX_PROMPT_VERSION, CandelaHeaders, HeaderError, ascii_int, prompt_inputs_object
from candela_proxy.providers import Provider, Route
from candela_runtime.security import service_metadata

if TYPE_CHECKING:
    from candela.prompts.v1.prompts_service_pb2_grpc import PromptsServiceAsyncStub

logger = logging.getLogger(__name__)

BODY_KEYS = ("prompt_id", "prompt_version", "prompt_environment", "inputs")
_CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/messages"})
_SYSTEM_ROLES = frozenset({"system", "developer"})
_RENDERABLE = "/v1/chat/completions, /v1/messages, /v1/responses and /v1/completions"
_RENDERABLE_PATHS = {
    Provider.OPENAI: frozenset({"/v1/chat/completions", "/v1/responses", "/v1/completions"}),
    Provider.ANTHROPIC: frozenset({"/v1/messages"}),
}


class PromptError(Exception):
    """A named prompt that cannot be used; ``status`` and ``code`` are the HTTP answer."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _invalid(message: str) -> PromptError:
    return PromptError(400, message, "invalid_prompt_request")


@dataclass(frozen=True)
class PromptRequest:
    """The prompt a request names, and its body without Candela's keys."""

    prompt_id: str
    version: int
    environment: str
    inputs: dict[str, str]
    document: dict[str, Any]


@dataclass(frozen=True)
class RenderedRequest:
    """What goes upstream and what the log records."""

    document: dict[str, Any]
    prompt_id: str
    version: int
    inputs: dict[str, str]


def names_prompt(options: CandelaHeaders, document: dict[str, Any] | None) -> bool:
    """Whether the request names a prompt (or any part of one); cheap, as every request asks it."""
    return bool(
        options.prompt_id
        or options.prompt_version
        or options.prompt_environment
        or options.prompt_inputs is not None
        or (document is not None and "prompt_id" in document)
    )


def prompt_request(options: CandelaHeaders, document: dict[str, Any]) -> PromptRequest:
    """Merges the prompt headers with the body's keys; PromptError when they are missing or disagree."""
    rest = {key: value for key, value in document.items() if key not in BODY_KEYS}
    prompt_id = _agree("prompt id", options.prompt_id or options.prompt_tag, _body_text(document, "prompt_id"))
    if not prompt_id:
        raise _invalid(
            "a prompt version, environment or inputs were given without a prompt id: "
            "send Candela-Prompt-Id or the body key 'prompt_id'"
        )
    version_text = _agree("prompt version", options.prompt_version, _body_version(document))
    environment = _agree("prompt environment", options.prompt_environment, _body_text(document, "prompt_environment"))
    if version_text and environment:
        raise _invalid("name a prompt version or a prompt environment, not both")
    body_inputs = _body_inputs(document)
    if options.prompt_inputs is not None and body_inputs is not None and options.prompt_inputs != body_inputs:
        raise _invalid("the prompt inputs differ between Candela-Prompt-Inputs and the body key 'inputs'")
    inputs = options.prompt_inputs if options.prompt_inputs is not None else body_inputs
    return PromptRequest(
        prompt_id=prompt_id,
        version=int(version_text) if version_text else 0,
        environment=environment,
        inputs=dict(inputs or {}),
        document=rest,
    )


def _agree(what: str, header: str, body: str) -> str:
    if header and body and header != body:
        raise _invalid(f"the {what} differs between the header ({header!r}) and the body ({body!r})")
    return header or body


def _body_text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"the body key {key!r} must be a non-empty string")
    return value.strip()


def _body_version(document: dict[str, Any]) -> str:
    value = document.get("prompt_version")
    if value is None:
        return ""
    if isinstance(value, str):
        value = ascii_int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_PROMPT_VERSION:
        raise _invalid(f"the body key 'prompt_version' must be an integer from 1 to {MAX_PROMPT_VERSION}")
    return str(value)


def _body_inputs(document: dict[str, Any]) -> dict[str, str] | None:
    if "inputs" not in document:
        return None
    try:
        return prompt_inputs_object("the body key 'inputs'", document["inputs"])
    except HeaderError as err:
        raise _invalid(str(err)) from None


def forwarded_body(route: Route, document: dict[str, Any], rendered: prompts_pb.RenderPromptResponse) -> dict[str, Any]:
    """The body to send upstream: ``document`` with the rendered template merged in for ``route``."""
    path = route.provider_path
    messages = [{"role": message.role, "content": message.content} for message in rendered.messages]
    is_chat = rendered.format == prompts_pb.TEMPLATE_FORMAT_CHAT
    forwarded = dict(document)
    if path in _CHAT_PATHS:
        client_messages = _client_list(document, "messages")
        if route.provider is Provider.ANTHROPIC:
            system = [message["content"] for message in messages if message["role"] in _SYSTEM_ROLES]
            messages = [message for message in messages if message["role"] not in _SYSTEM_ROLES]
            if system:
                forwarded["system"] = _anthropic_system("\n\n".join(system), document.get("system"))
        forwarded["messages"] = messages + client_messages
    elif path == "/v1/responses":
        client_input = document.get("input")
        if client_input is None:
            forwarded["input"] = messages if is_chat else rendered.text
        elif isinstance(client_input, str):
            forwarded["input"] = [*messages, {"role": "user", "content": client_input}]
        elif isinstance(client_input, list):
            forwarded["input"] = messages + client_input
        else:
            raise _invalid("the body key 'input' must be a string or a list to follow a prompt template")
    elif path == "/v1/completions":
        if is_chat:
            raise _invalid(
                f"prompt {rendered.prompt_id!r} version {rendered.version} is a chat template; "
                "use it with /v1/chat/completions, /v1/messages or /v1/responses"
            )
        if "prompt" in document:
            raise _invalid("send either a named prompt or the body key 'prompt', not both")
        forwarded["prompt"] = rendered.text
    else:  # pragma: no cover - refused before rendering by check_renderable
        raise _invalid(f"a prompt can only be rendered into {_RENDERABLE}")
    return forwarded


def check_renderable(route: Route) -> None:
    """Refuses a named prompt on an endpoint it cannot be rendered into (before calling PromptsService)."""
    if route.provider_path not in _RENDERABLE_PATHS[route.provider]:
        raise _invalid(f"a prompt can only be rendered into {_RENDERABLE}, not {route.provider_path}")


def _client_list(document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(f"the body key {key!r} must be a list to follow a prompt template")
    return value


def _anthropic_system(template_system: str, client_system: Any) -> Any:
    """The template's system text, before the client's own ``system`` (a string or a list of blocks)."""
    if client_system is None or client_system == "":
        return template_system
    if isinstance(client_system, str):
        return f"{template_system}\n\n{client_system}"
    if isinstance(client_system, list):
        return [{"type": "text", "text": template_system}, *client_system]
    raise _invalid("the body key 'system' must be a string or a list of content blocks")


class PromptRenderer:
    """Calls PromptsService.RenderPrompt with the service credential for the caller's organization."""

    def __init__(self, stub: PromptsServiceAsyncStub, service_token: str, timeout_s: float) -> None:
        self._stub = stub
        self._metadata = service_metadata(service_token)
        self._timeout_s = timeout_s

    async def render(self, route: Route, organization_id: str, named: PromptRequest) -> RenderedRequest:
        """The body to forward with the prompt rendered; PromptError says why not (404, 400, 503)."""
        check_renderable(route)
        request = prompts_pb.RenderPromptRequest(
            prompt_id=named.prompt_id,
            version=named.version,
            environment=named.environment,
            inputs=named.inputs,
            organization_id=organization_id,
        )
        try:
            rendered = await self._stub.RenderPrompt(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _render_failure(named, err) from None
        return RenderedRequest(
            document=forwarded_body(route, named.document, rendered),
            prompt_id=rendered.prompt_id,
            version=rendered.version,
            inputs=named.inputs,
        )


def _render_failure(named: PromptRequest, err: grpc.aio.AioRpcError) -> PromptError:
    """PromptsService's status as the HTTP answer: the caller's mistakes are 4xx, ours are 5xx."""
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return PromptError(404, details or f"prompt {named.prompt_id!r} does not exist", "prompt_not_found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return PromptError(400, details, "invalid_prompt_inputs")
    if code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}:
        logger.warning("rendering prompt %r failed: %s", named.prompt_id, code.name)
        return PromptError(503, "Candela cannot render prompts right now; retry shortly", "candela_prompts_unavailable")
    # PERMISSION_DENIED / UNAUTHENTICATED here mean a misconfigured service token, INTERNAL a bug: not the
    # caller's doing, and not worth retrying blindly.
    logger.error("rendering prompt %r failed: %s %s", named.prompt_id, code.name, details)
    return PromptError(500, "Candela failed to render the prompt", "prompt_render_failed")


def unavailable() -> PromptError:
    """The answer when this proxy has no prompts service configured (CANDELA_PROMPTS_ADDR unset)."""
    return PromptError(
        503,
        "this Candela proxy is not connected to a prompts service (CANDELA_PROMPTS_ADDR)",
        "candela_prompts_unavailable",
    )
