"""Envoy's own answers (413, 503, ...) as JSON in the caller's SDK error shape."""

from __future__ import annotations

from typing import Any


def local_reply_config() -> dict[str, Any]:
    """Envoy's own answers (413, 503 no healthy upstream, ...) as JSON in the caller's SDK error shape.

    gRPC callers get the message alone (Envoy puts it in grpc-message with the matching grpc-status);
    Anthropic paths get Anthropic's shape; Bedrock paths Bedrock's (`{"message"}`, the exception name in
    `x-amzn-ErrorType`, so boto3 raises its ClientError); Gemini and Vertex AI paths Google's (``{"error":
    {"code", "message", "status"}}``); everything else OpenAI's. `code` says why Envoy answered
    (e.g. `request_payload_too_large`, `no_healthy_upstream`).
    """
    # A REST call turned into gRPC by the transcoder also says application/grpc, but keeps its original
    # path in x-envoy-original-path and wants JSON like any HTTP caller.
    grpc = {
        "and_filter": {
            "filters": [
                {"header_filter": {"header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}}}},
                {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": False}}},
            ]
        }
    }
    anthropic = {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": prefix}}}}
                for prefix in ("/anthropic/", "/v1/messages")
            ]
        }
    }
    bedrock = {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": "/bedrock/"}}}}
    # Google's APIs, but for Gemini's OpenAI-compatible endpoint, which speaks OpenAI's.
    google = {
        "and_filter": {
            "filters": [
                {
                    "or_filter": {
                        "filters": [
                            {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": prefix}}}}
                            for prefix in ("/gemini/", "/vertex/")
                        ]
                    }
                },
                {
                    "header_filter": {
                        "header": {
                            "name": ":path",
                            "string_match": {"prefix": "/gemini/v1beta/openai/"},
                            "invert_match": True,
                        }
                    }
                },
            ]
        }
    }
    server_fault = {
        "status_code_filter": {
            "comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "candela.local_reply.server"}}
        }
    }
    refused = {
        "status_code_filter": {
            "comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "candela.local_reply.refused"}}
        }
    }
    too_large = {"default_value": 413, "runtime_key": "candela.local_reply.too_large"}
    mappers = [
        {"filter": grpc, "body_format_override": {"text_format": "%LOCAL_REPLY_BODY%"}},
        {
            "filter": {"and_filter": {"filters": [bedrock, server_fault]}},
            **_bedrock_error("ServiceUnavailableException"),
        },
        {"filter": bedrock, **_bedrock_error("ValidationException")},
        {
            "filter": {"and_filter": {"filters": [anthropic, server_fault]}},
            "body_format_override": _anthropic_error("api_error"),
        },
        {"filter": anthropic, "body_format_override": _anthropic_error("invalid_request_error")},
        {
            "filter": {"and_filter": {"filters": [google, server_fault]}},
            "body_format_override": _google_error("UNAVAILABLE"),
        },
        {"filter": google, "body_format_override": _google_error("INVALID_ARGUMENT")},
        {
            # An LLM call's 413 says the same, whether the declared-too-large route or the buffer filter
            # refused it (a REST call's, from the transcoder, keeps its own code).
            "filter": {
                "and_filter": {
                    "filters": [
                        {"status_code_filter": {"comparison": {"op": "EQ", "value": too_large}}},
                        {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": False}}},
                    ]
                }
            },
            "body_format_override": _openai_error("invalid_request_error", code="request_payload_too_large"),
        },
        {"filter": server_fault, "body_format_override": _openai_error("server_error")},
        # Every other refusal. A 200 direct response (a console file) matches no mapper and keeps its body.
        {"filter": refused, "body_format_override": _openai_error("invalid_request_error")},
    ]
    return {"mappers": mappers}


def _openai_error(error_type: str, code: str = "%RESPONSE_CODE_DETAILS%") -> dict[str, Any]:
    message = {"message": "%LOCAL_REPLY_BODY%", "type": error_type, "code": code}
    return {"json_format": {"error": message}}


def _anthropic_error(error_type: str) -> dict[str, Any]:
    return {"json_format": {"type": "error", "error": {"type": error_type, "message": "%LOCAL_REPLY_BODY%"}}}


def _bedrock_error(exception: str) -> dict[str, Any]:
    return {
        "headers_to_add": [
            {"header": {"key": "x-amzn-ErrorType", "value": exception}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
        "body_format_override": {"json_format": {"message": "%LOCAL_REPLY_BODY%", "code": "%RESPONSE_CODE_DETAILS%"}},
    }


def _google_error(status: str) -> dict[str, Any]:
    # A lone command operator keeps its type in json_format: "code" is the HTTP status as a number.
    return {"json_format": {"error": {"code": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%", "status": status}}}
