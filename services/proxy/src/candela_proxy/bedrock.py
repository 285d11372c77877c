"""AWS Bedrock Runtime behind ``/bedrock``: its routes, how each request is signed upstream, and the usage of
its non-streamed answers (streams: :mod:`candela_proxy.eventstream`).

Paths: ``/bedrock[/<region>]/model/<modelId>/{converse,converse-stream,invoke,invoke-with-response-stream}``,
what boto3's ``bedrock-runtime`` client sends with ``endpoint_url=<gateway>/bedrock`` (or
``<gateway>/bedrock/<region>``). The region is, in order: the path's, the ``Candela-Aws-Region`` header, the
region of the caller's SigV4 credential scope, ``CANDELA_BEDROCK_REGION``. The upstream is
``CANDELA_BEDROCK_BASE_URL`` with ``{region}`` filled in.

Signing, one of:

- Re-signed: the caller sends its AWS credentials in ``Candela-Aws-Access-Key-Id``,
  ``Candela-Aws-Secret-Access-Key`` and optionally ``Candela-Aws-Session-Token`` (also with the ``Helicone-``
  prefix, or as Helicone's ``aws-access-key`` / ``aws-secret-key`` / ``aws-session-token``). Its own signature
  (made for the gateway's host and path) is dropped and botocore's ``SigV4Auth`` signs each attempt for the
  upstream URL. The credentials go nowhere else: not upstream, not in the log, not in a span.
- Passed through: the caller signed for the Bedrock host itself and says so, with ``Candela-Bedrock-Host:
  <host it signed for>`` or a ``Host`` that is a Bedrock Runtime host; or it sends a Bedrock API key
  (``Authorization: Bearer ...``). The request goes upstream as it came (that ``Host``, its path still
  percent-encoded as signed, every header).

Records: provider ``aws`` (genai-prices' id for Bedrock), model = the path's model id (a region-prefixed
inference profile such as ``us.anthropic...`` or an ARN included), priced by it. The Anthropic body's own
``model`` (e.g. ``claude-3-5-sonnet-20241022``) is not used: it cannot tell a ``global.`` profile from a
regional one, which Bedrock prices differently.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDictProxy
from yarl import URL

from candela_proxy.config import ProxyConfig
from candela_proxy.eventstream import apply_converse_usage, apply_invocation_metrics
from candela_proxy.exchange import ProxyError
from candela_proxy.providers import Provider, Route
from candela_proxy.response_usage import ResponseFacts, facts_from_json
from candela_runtime.limits import MAX_MODEL_NAME_LENGTH

PREFIX: Final = "/bedrock"
SIGNING_NAME: Final = "bedrock"
# Operation -> whether it streams.
OPERATIONS: Final = {"converse": False, "converse-stream": True, "invoke": False, "invoke-with-response-stream": True}
# A region goes into the upstream host name: only what a region can be (us-east-1, us-gov-west-1, ...).
_REGION: Final = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")
_BEDROCK_HOST: Final = re.compile(r"bedrock-runtime(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")
_SCOPE_REGION: Final = re.compile(r"Credential=[^/,\s]+/[0-9]{8}/(?P<region>[a-z0-9-]+)/")

_ACCESS_KEY_HEADERS: Final = ("candela-aws-access-key-id", "helicone-aws-access-key-id", "aws-access-key")
_SECRET_HEADERS: Final = ("candela-aws-secret-access-key", "helicone-aws-secret-access-key", "aws-secret-key")
_TOKEN_HEADERS: Final = ("candela-aws-session-token", "helicone-aws-session-token", "aws-session-token")
_REGION_HEADERS: Final = ("candela-aws-region", "helicone-aws-region")
_HOST_HEADERS: Final = ("candela-bedrock-host", "helicone-bedrock-host")
# Helicone's credential headers carry no prefix the proxy strips anyway: they never go upstream.
_CREDENTIAL_HEADERS: Final = frozenset({"aws-access-key", "aws-secret-key", "aws-session-token"})
# The caller's signature, replaced when the request is re-signed.
_SIGNATURE_HEADERS: Final = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})


def serves(path: str) -> bool:
    """Whether ``path`` is under the Bedrock prefix."""
    return path == PREFIX or path.startswith(PREFIX + "/")


class SigV4Resigner:
    """Signs each attempt anew with the caller's credentials (which no repr or log shows)."""

    __slots__ = ("_credentials", "_region")

    def __init__(self, credentials: Credentials, region: str) -> None:
        self._credentials = credentials
        self._region = region

    def __repr__(self) -> str:
        return f"SigV4Resigner(region={self._region!r})"

    def prepare(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[URL, dict[str, str]]:
        """The headers of one attempt, signed for ``url`` (the caller's signature and credentials left out)."""
        kept = {
            name: value
            for name, value in headers.items()
            if name.lower() not in _SIGNATURE_HEADERS and name.lower() not in _CREDENTIAL_HEADERS
        }
        signed = AWSRequest(method=method, url=url, headers=kept, data=body or b"")
        SigV4Auth(self._credentials, SIGNING_NAME, self._region).add_auth(signed)
        return URL(url, encoded=True), dict(signed.headers.items())


class PassThrough:
    """Sends the caller's own signature on, with the ``Host`` it signed for."""

    __slots__ = ("_host",)

    def __init__(self, host: str) -> None:
        self._host = host

    def __repr__(self) -> str:
        return f"PassThrough(host={self._host!r})"

    def prepare(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[URL, dict[str, str]]:
        """The caller's headers (minus any stray credential header), with its signed ``Host``."""
        kept = {name: value for name, value in headers.items() if name.lower() not in _CREDENTIAL_HEADERS}
        if self._host:
            kept["Host"] = self._host
        return URL(url, encoded=True), kept


def resolve_route(request: web.Request, config: ProxyConfig) -> Route:
    """The route of a ``/bedrock/...`` request, with its upstream signing; ProxyError (in Bedrock's shape)
    for a path Bedrock does not serve, a bad region or missing credentials."""
    # The path as the client sent it, still percent-encoded: what it signed, and what goes upstream.
    raw_target, _, raw_query = request.raw_path.partition("?")
    raw_path = raw_target[len(PREFIX) :]
    segments = raw_path.split("/")
    # ["", region?, "model", modelId, operation]
    region = ""
    if len(segments) == 5 and segments[1] != "model":
        region = segments.pop(1)
        if not _REGION.fullmatch(region):
            raise ProxyError(400, f"{region!r} is not an AWS region", "invalid_region")
    if len(segments) != 4 or segments[1] != "model" or not segments[2] or segments[3] not in OPERATIONS:
        raise ProxyError(
            404,
            f"no Bedrock operation at {request.path}; use /bedrock[/<region>]/model/<modelId>/"
            "converse|converse-stream|invoke|invoke-with-response-stream",
            "unknown_route",
        )
    model = unquote(segments[2])
    if len(model) > MAX_MODEL_NAME_LENGTH:
        raise ProxyError(400, f"the model id is longer than {MAX_MODEL_NAME_LENGTH} characters", "invalid_model")
    headers = request.headers
    region = region or _header_region(headers) or config.bedrock_region
    upstream_path = "/" + "/".join(segments[1:])
    base_url = config.bedrock_base_url.replace("{region}", region).rstrip("/")
    url = base_url + upstream_path
    if raw_query:
        url = f"{url}?{raw_query}"
    return Route(
        provider=Provider.BEDROCK,
        upstream_url=url,
        provider_path=f"/model/{model}/{segments[3]}",
        query_string=raw_query,
        model=model,
        streamed=OPERATIONS[segments[3]],
        upstream_path=upstream_path,
        upstream_auth=_upstream_auth(headers, region),
    )


def _header_region(headers: CIMultiDictProxy[str]) -> str:
    """The region a header names (Candela-Aws-Region, a Bedrock Host, the SigV4 scope), or ""."""
    for name in _REGION_HEADERS:
        if name in headers:
            region = headers[name].strip()
            if not _REGION.fullmatch(region):
                raise ProxyError(400, f"header {name} {region!r} is not an AWS region", "invalid_region")
            return region
    host = _signed_host(headers)
    if host and (match := _BEDROCK_HOST.fullmatch(host)) and _REGION.fullmatch(match["region"]):
        return match["region"]
    scope = _SCOPE_REGION.search(headers.get("authorization", ""))
    if scope and _REGION.fullmatch(scope["region"]):
        return scope["region"]
    return ""


def _signed_host(headers: CIMultiDictProxy[str]) -> str:
    """The Bedrock host the caller signed for: Candela-Bedrock-Host, or a Host that is one; "" otherwise."""
    named = _first(headers, _HOST_HEADERS)
    if named:
        return named.strip().lower()
    host = headers.get("host", "").lower()
    return host if _BEDROCK_HOST.fullmatch(host) else ""


def _first(headers: CIMultiDictProxy[str], names: tuple[str, ...]) -> str:
    return next((headers[name].strip() for name in names if headers.get(name, "").strip()), "")


def _upstream_auth(headers: CIMultiDictProxy[str], region: str) -> SigV4Resigner | PassThrough:
    access_key = _first(headers, _ACCESS_KEY_HEADERS)
    secret = _first(headers, _SECRET_HEADERS)
    if access_key and secret:
        return SigV4Resigner(Credentials(access_key, secret, _first(headers, _TOKEN_HEADERS) or None), region)
    if access_key or secret:
        raise ProxyError(
            400,
            "send both Candela-Aws-Access-Key-Id and Candela-Aws-Secret-Access-Key (the gateway re-signs with them)",
            "missing_aws_credentials",
        )
    host = _signed_host(headers)
    if host:
        if not re.fullmatch(r"[a-z0-9.-]+(?::[0-9]{1,5})?", host):
            raise ProxyError(400, f"header Candela-Bedrock-Host {host!r} is not a host name", "invalid_candela_header")
        return PassThrough(host)
    if headers.get("authorization", "").lower().startswith("bearer "):
        return PassThrough("")  # a Bedrock API key: nothing to re-sign
    raise ProxyError(
        400,
        "Bedrock requests need AWS credentials: send Candela-Aws-Access-Key-Id and Candela-Aws-Secret-Access-Key"
        " (and Candela-Aws-Session-Token) for the gateway to sign with, or sign for the Bedrock host yourself and"
        " name it in Candela-Bedrock-Host",
        "missing_aws_credentials",
    )


def response_facts(route: Route, body: bytes, headers: CIMultiDictProxy[str]) -> ResponseFacts:
    """Usage of a non-streamed answer: Converse's ``usage``, the Anthropic body's, else Bedrock's token-count
    headers (any model family's InvokeModel)."""
    if route.provider_path.endswith("/converse"):
        facts = ResponseFacts()
        document = _json_object(body)
        usage = document.get("usage") if document is not None else None
        if isinstance(usage, dict):
            apply_converse_usage(facts, usage)
        stop_reason = document.get("stopReason") if document is not None else None
        if isinstance(stop_reason, str):
            facts.finish_reason = stop_reason
        return facts
    facts = facts_from_json(Provider.ANTHROPIC, body)
    facts.response_model = ""  # priced by the path's model id (see the module's docstring)
    if not facts.has_usage and "x-amzn-bedrock-input-token-count" in headers:
        apply_invocation_metrics(
            facts,
            {
                "inputTokenCount": _header_int(headers, "x-amzn-bedrock-input-token-count"),
                "outputTokenCount": _header_int(headers, "x-amzn-bedrock-output-token-count"),
                "cacheReadInputTokenCount": _header_int(headers, "x-amzn-bedrock-cache-read-input-token-count"),
                "cacheWriteInputTokenCount": _header_int(headers, "x-amzn-bedrock-cache-write-input-token-count"),
            },
        )
    return facts


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _header_int(headers: CIMultiDictProxy[str], name: str) -> int | str | None:
    value = headers.get(name)
    if value is None:
        return None
    return int(value) if value.isascii() and value.isdigit() else value
