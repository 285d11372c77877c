"""The proxy's Bedrock pieces: routes and regions, upstream signing, event-stream relay cutting and usage."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from candela_proxy import bedrock, pricing
from candela_proxy.config import ProxyConfig
from candela_proxy.eventstream import EventStreamFacts, MessageSplitter, readable
from candela_proxy.exchange import ProxyError, error_response
from candela_proxy.headers import parse_candela_headers
from candela_proxy.providers import Provider
from candela_stack.fake_provider.bedrock import event, event_stream_message

pytestmark = pytest.mark.unit

CONFIG = ProxyConfig(
    service_token="t",
    auth_addr="a",
    ingest_addr="i",
    bedrock_base_url="https://bedrock-runtime.{region}.amazonaws.com",
    bedrock_region="eu-west-1",
)
CLAUDE = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
CLAUDE_IN_PATH = "us.anthropic.claude-3-5-sonnet-20241022-v2%3A0"  # as boto3 sends it
CREDENTIALS = {"Candela-Aws-Access-Key-Id": "AKIAEXAMPLE", "Candela-Aws-Secret-Access-Key": "s3cret"}


def _route(path: str, **headers: str) -> Any:
    return bedrock.resolve_route(make_mocked_request("POST", path, headers=headers), CONFIG)


def test_route_of_each_operation_keeps_the_encoded_model_id() -> None:
    route = _route("/bedrock/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream", **CREDENTIALS)
    assert route.provider is Provider.BEDROCK
    assert (route.model, route.streamed) == (CLAUDE, True)
    assert route.provider_path == f"/model/{CLAUDE}/converse-stream"
    assert route.upstream_url == (
        "https://bedrock-runtime.eu-west-1.amazonaws.com/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0"
        "/converse-stream"
    )
    assert not _route(f"/bedrock/model/{CLAUDE}/invoke", **CREDENTIALS).streamed


def test_region_comes_from_the_path_then_the_header_then_the_signature() -> None:
    signed = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261207/ap-southeast-2/bedrock/aws4_request, SignedHeaders=host"
    assert "us-west-2" in _route("/bedrock/us-west-2/model/m/converse", **CREDENTIALS).upstream_url
    assert (
        "ca-central-1"
        in _route("/bedrock/model/m/converse", **CREDENTIALS, **{"Candela-Aws-Region": "ca-central-1"}).upstream_url
    )
    assert "ap-southeast-2" in _route("/bedrock/model/m/converse", **CREDENTIALS, Authorization=signed).upstream_url
    assert "eu-west-1" in _route("/bedrock/model/m/converse", **CREDENTIALS).upstream_url


@pytest.mark.parametrize("region", ["evil.example.com#", "us-east-1.attacker", "US-EAST-1"])
def test_a_region_that_is_no_region_is_refused(region: str) -> None:
    with pytest.raises(ProxyError) as caught:
        _route("/bedrock/model/m/converse", **CREDENTIALS, **{"Candela-Aws-Region": region})
    assert caught.value.status == 400


@pytest.mark.parametrize("path", ["/bedrock", "/bedrock/model/m", "/bedrock/model/m/delete", "/bedrock/x/y/z/w/v"])
def test_unknown_bedrock_paths_are_404(path: str) -> None:
    with pytest.raises(ProxyError) as caught:
        _route(path, **CREDENTIALS)
    assert caught.value.status == 404


def test_without_credentials_or_a_signed_host_the_request_is_refused() -> None:
    with pytest.raises(ProxyError) as caught:
        _route("/bedrock/model/m/converse")
    assert (caught.value.status, caught.value.code) == (400, "missing_aws_credentials")
    with pytest.raises(ProxyError):
        _route("/bedrock/model/m/converse", **{"Candela-Aws-Access-Key-Id": "AKIAEXAMPLE"})


def test_resigning_replaces_the_callers_signature_and_drops_its_credentials() -> None:
    route = _route(f"/bedrock/model/{CLAUDE_IN_PATH}/converse", **CREDENTIALS, **{"Candela-Aws-Session-Token": "tok"})
    assert "s3cret" not in repr(route)
    body = b'{"messages": []}'
    caller = {"Authorization": "AWS4-HMAC-SHA256 stale", "X-Amz-Date": "20200101T000000Z", "aws-secret-key": "x"}
    url, headers = route.upstream_auth.prepare(
        "POST", route.upstream_url, {**caller, "Content-Type": "application/json"}, body
    )
    assert url.raw_path.endswith("v2%3A0/converse")  # sent as signed, not re-quoted
    assert "aws-secret-key" not in {name.lower() for name in headers}
    assert headers["X-Amz-Security-Token"] == "tok"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
    assert "/eu-west-1/bedrock/aws4_request" in headers["Authorization"]
    # The signature is botocore's own over the request as sent.
    check = AWSRequest(method="POST", url=str(url), data=body)
    for name in ("Content-Type", "X-Amz-Date", "X-Amz-Security-Token"):
        check.headers[name] = headers[name]
    check.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials("AKIAEXAMPLE", "s3cret", "tok"), "bedrock", "eu-west-1")
    expected = signer.signature(signer.string_to_sign(check, signer.canonical_request(check)), check)
    assert headers["Authorization"].endswith(f"Signature={expected}")


def test_a_long_session_token_is_accepted() -> None:
    token = "IQoJb3JpZ2luX2VjE" * 150  # STS tokens run past the 1024 characters other Candela headers get
    headers = {**CREDENTIALS, "Candela-Aws-Session-Token": token}
    assert parse_candela_headers(CIMultiDict(headers)).auth is None
    route = _route(f"/bedrock/model/{CLAUDE_IN_PATH}/converse", **headers)
    _, signed = route.upstream_auth.prepare("POST", route.upstream_url, {}, b"{}")
    assert signed["X-Amz-Security-Token"] == token


def test_pass_through_keeps_the_callers_signature_and_host() -> None:
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261207/us-east-1/bedrock/aws4_request"}
    route = _route(
        f"/bedrock/model/{CLAUDE}/converse",
        **signed,
        **{"Candela-Bedrock-Host": "bedrock-runtime.us-east-1.amazonaws.com"},
    )
    assert route.upstream_url.startswith("https://bedrock-runtime.us-east-1.amazonaws.com/")
    _, headers = route.upstream_auth.prepare("POST", route.upstream_url, dict(signed), b"{}")
    assert headers == {**signed, "Host": "bedrock-runtime.us-east-1.amazonaws.com"}


def test_refusals_are_in_bedrocks_error_shape() -> None:
    response = error_response(Provider.BEDROCK, ProxyError(401, "missing Candela key", "missing_candela_key"), None)
    assert response.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert json.loads(response.body)["message"] == "missing Candela key"  # type: ignore[arg-type]


def _converse_stream(usage: dict[str, int]) -> list[bytes]:
    return [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": usage, "metrics": {"latencyMs": 5}}),
    ]


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
def test_a_converse_stream_cut_anywhere_is_relayed_whole_and_priced(piece: int) -> None:
    messages = _converse_stream(
        {"inputTokens": 10, "outputTokens": 3, "cacheReadInputTokens": 4, "cacheWriteInputTokens": 2}
    )
    stream = b"".join(messages)
    splitter, reader = MessageSplitter(), EventStreamFacts()
    relayed, ends = [], []
    for start in range(0, len(stream), piece):
        for message in splitter.feed(stream[start : start + piece]):
            relayed.append(message)
            ends.append(reader.observe(message))
    assert relayed == messages
    assert ends == [False, False, False, False, True]  # metadata ends it
    facts = reader.finish()
    assert (facts.prompt_tokens, facts.completion_tokens) == (16, 3)
    assert (facts.cache_read_tokens, facts.cache_write_tokens, facts.finish_reason) == (4, 2, "end_turn")
    rendered = b"".join(reader.rendered).decode()
    assert readable(stream).decode() == rendered
    assert 'event: contentBlockDelta\ndata: {"contentBlockIndex":0,"delta":{"text":"Hello"}' in rendered


def _chunk(document: dict[str, Any]) -> bytes:
    return event("chunk", {"bytes": base64.b64encode(json.dumps(document).encode()).decode()})


def test_an_invoke_stream_is_priced_from_anthropics_events() -> None:
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": 7, "output_tokens": 1}},
    }
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}
    stop = {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5, "outputTokenCount": 9}}
    reader = EventStreamFacts()
    assert [reader.observe(_chunk(item)) for item in (start, delta, stop)] == [False, False, True]
    facts = reader.finish()
    assert (facts.prompt_tokens, facts.cache_read_tokens, facts.completion_tokens) == (12, 7, 9)
    assert facts.finish_reason == "end_turn"
    assert b'event: chunk\ndata: {"type": "message_delta"' in b"".join(reader.rendered)


def test_an_invoke_stream_of_another_family_is_priced_from_the_invocation_metrics() -> None:
    reader = EventStreamFacts()
    reader.observe(_chunk({"generation": "Hi", "prompt_token_count": None}))
    reader.observe(
        _chunk({"generation": "", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 21, "outputTokenCount": 4}})
    )
    facts = reader.finish()
    assert (facts.has_usage, facts.prompt_tokens, facts.completion_tokens) == (True, 21, 4)


def test_a_corrupt_message_or_framing_is_relayed_unparsed() -> None:
    message = bytearray(event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1}}))
    message[-1] ^= 0xFF  # the message CRC no longer matches
    reader = EventStreamFacts()
    assert reader.observe(bytes(message)) is False
    assert not reader.finish().has_usage
    splitter = MessageSplitter()
    assert splitter.feed(b"\x00\x00\x00\x01garbage") == [b"\x00\x00\x00\x01garbage"]
    assert splitter.broken
    assert splitter.feed(b"more") == [b"more"]


def test_an_exception_message_ends_the_stream() -> None:
    headers = [
        (":exception-type", "throttlingException"),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    ]
    reader = EventStreamFacts()
    assert reader.observe(event_stream_message(headers, b'{"message":"slow down"}')) is True
    assert reader.stream_error == "throttlingException: slow down"


def test_non_streamed_usage() -> None:
    empty: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
    converse = _route(f"/bedrock/model/{CLAUDE}/converse", **CREDENTIALS)
    body = {"output": {}, "stopReason": "max_tokens", "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}}
    facts = bedrock.response_facts(converse, json.dumps(body).encode(), empty)
    assert (facts.prompt_tokens, facts.completion_tokens, facts.finish_reason) == (3, 2, "max_tokens")
    invoke = _route(f"/bedrock/model/{CLAUDE}/invoke", **CREDENTIALS)
    message = {
        "type": "message",
        "model": "claude-3-5-sonnet-20241022",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 4, "output_tokens": 6},
    }
    facts = bedrock.response_facts(invoke, json.dumps(message).encode(), empty)
    assert (facts.prompt_tokens, facts.completion_tokens, facts.response_model) == (4, 6, "")
    counted = CIMultiDictProxy(
        CIMultiDict({"X-Amzn-Bedrock-Input-Token-Count": "11", "X-Amzn-Bedrock-Output-Token-Count": "2"})
    )
    facts = bedrock.response_facts(invoke, b'{"generation": "hi"}', counted)
    assert (facts.prompt_tokens, facts.completion_tokens) == (11, 2)


def test_global_and_regional_profiles_are_priced_apart() -> None:
    facts = EventStreamFacts()
    facts.observe(_converse_stream({"inputTokens": 1_000_000, "outputTokens": 0})[-1])
    usage = facts.finish()
    regional = pricing.cost_usd("aws", "us.anthropic.claude-haiku-4-5-20251001-v1:0", usage)
    global_ = pricing.cost_usd("aws", "global.anthropic.claude-haiku-4-5-20251001-v1:0", usage)
    assert regional is not None
    assert global_ is not None
    assert regional > global_
    assert global_ == Decimal("1")
