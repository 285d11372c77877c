"""The providers' error bodies: OpenAI's, Anthropic's and Google's, per status, for rejected and simulated failures.

A request gets the shape of the provider it addresses (see ``wire.request_flavor``); a new provider adds
its table and its body here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web

from candela_stack.fake_provider.wire import (
    Flavor,
    JSONObject,
    anthropic_headers,
    bedrock_headers,
    dumps,
    openai_headers,
)

# status -> (exception name in x-amzn-ErrorType, default message), as Bedrock Runtime sends them.
BEDROCK_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("ValidationException", "Invalid request (simulated by the fake provider)."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request."),
    424: ("ModelErrorException", "The model returned an error."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "An internal server error occurred."),
    503: ("ServiceUnavailableException", "The service is unavailable. Try again later."),
}

# status -> (error.type, error.code, default message), as OpenAI sends them.
OPENAI_ERRORS: Final[Mapping[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request (simulated by the fake provider)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached on requests per min (RPM): Limit 60, Used 60, Requested 1. Please try again in 1s.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}

# status -> (error.type, default message), as Anthropic sends them.
ANTHROPIC_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request (simulated by the fake provider)."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    409: ("conflict_error", "Conflict."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}


# status -> (error.status, default message), as Google (the Gemini API, Vertex AI) sends them.
GOOGLE_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("INVALID_ARGUMENT", "Invalid request (simulated by the fake provider)."),
    401: (
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other"
        " valid authentication credential.",
    ),
    403: (
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). Please use API Key"
        " or other form of API consumer identity to call this API.",
    ),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


def google_error_body(status: int, message: str) -> JSONObject:
    """Google's error body (google.rpc.Status as JSON, with the HTTP status as ``code``)."""
    error_status = GOOGLE_ERRORS.get(status, ("INVALID_ARGUMENT" if status < 500 else "INTERNAL", ""))[0]
    return {"error": {"code": status, "message": message, "status": error_status}}


def openai_error_body(message: str, error_type: str, param: str | None, code: str | None) -> JSONObject:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def anthropic_error_body(error_type: str, message: str, request_id: str) -> JSONObject:
    """Anthropic's error body."""
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def error_response(
    flavor: Flavor,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error with this message in the provider's shape; the error type follows from the status (a
    Bedrock error's exception name is ``code`` when given)."""
    if flavor == "google":
        return web.Response(
            status=status,
            text=dumps(google_error_body(status, message), pretty=True),
            content_type="application/json",
            headers=headers or {},
        )
    if flavor == "bedrock":
        response_headers = bedrock_headers()
        kind = (
            code
            or BEDROCK_ERRORS.get(status, ("ValidationException" if status < 500 else "InternalServerException", ""))[0]
        )
        response_headers["x-amzn-ErrorType"] = f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        response_headers.update(headers or {})
        return web.Response(
            status=status, text=dumps({"message": message}), content_type="application/json", headers=response_headers
        )
    if flavor == "anthropic":
        response_headers = anthropic_headers()
        error_type = ANTHROPIC_ERRORS.get(status, (_anthropic_fallback_type(status), ""))[0]
        payload = anthropic_error_body(error_type, message, response_headers["request-id"])
    else:
        response_headers = openai_headers()
        error_type = OPENAI_ERRORS.get(status, (_openai_fallback_type(status), None, ""))[0]
        payload = openai_error_body(message, error_type, param, code)
    response_headers.update(headers or {})
    return web.Response(
        status=status,
        text=dumps(payload, pretty=flavor == "openai"),
        content_type="application/json",
        headers=response_headers,
    )


def simulated_error_response(flavor: Flavor, status: int, message: str | None, retry_after: str | None) -> web.Response:
    """The error the provider usually sends for ``status`` (message overridable), for x-fake-status."""
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    fallback_message = f"Simulated HTTP {status} error."
    if flavor == "google":
        return error_response(
            flavor, status, message or GOOGLE_ERRORS.get(status, ("", fallback_message))[1], headers=headers
        )
    if flavor == "bedrock":
        return error_response(
            flavor, status, message or BEDROCK_ERRORS.get(status, ("", fallback_message))[1], headers=headers
        )
    if flavor == "anthropic":
        default_message = ANTHROPIC_ERRORS.get(status, ("", fallback_message))[1]
        return error_response(flavor, status, message or default_message, headers=headers)
    _, code, default_message = OPENAI_ERRORS.get(status, ("", None, fallback_message))
    return error_response(flavor, status, message or default_message, code=code, headers=headers)


def _openai_fallback_type(status: int) -> str:
    return "invalid_request_error" if status < 500 else "server_error"


def _anthropic_fallback_type(status: int) -> str:
    return "invalid_request_error" if status < 500 else "api_error"
