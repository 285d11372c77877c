"""Envoy's OpenTelemetry tracing: Envoy's own validation of the generated config (read as data in
tests/unit/test_stack_envoy_tracing_config.py), and a real Envoy that continues the client's trace, hands its
own context to the upstream and exports its span over OTLP/gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from candela_stack import envoy_config
from candela_stack.binaries import envoy_binary
from candela_stack.ports import StackPorts, pick_free_port_base
from candela_stack.probes import http_ok
from candela_stack.processes import Supervisor
from candela_stack.stack import loopback_port
from tests.e2e.otlp_support import SpanKind, SpanReceiver, otlp_receiver

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.mark.integration
def test_envoy_accepts_the_traced_config(tmp_path: Path) -> None:
    config = envoy_config.build_config(
        StackPorts.from_base(7700), envoy_config.descriptor_set_path(tmp_path), otlp_port=4317
    )
    envoy_config.validate(envoy_binary(), envoy_config.write(config, tmp_path / "envoy.yaml"))


# --- A real Envoy between a client with a traceparent and an upstream that records what it received. ---


@pytest.fixture
def gateway_ports() -> StackPorts:
    return StackPorts.from_base(pick_free_port_base())


@pytest.fixture
def receiver() -> Iterator[SpanReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture
def traced_envoy(tmp_path: Path, gateway_ports: StackPorts, receiver: SpanReceiver) -> Iterator[None]:
    config = envoy_config.build_config(
        gateway_ports,
        envoy_config.descriptor_set_path(tmp_path),
        otlp_port=loopback_port(receiver.endpoint),
        otlp_flush_interval_ms=100,
    )
    config_path = envoy_config.write(config, tmp_path / "envoy.yaml")
    supervisor = Supervisor(tmp_path / "logs")
    process = supervisor.start(
        "envoy", envoy_config.server_argv(envoy_binary(), config_path, base_id=gateway_ports.base)
    )
    try:
        supervisor.wait_ready(
            process,
            lambda: http_ok(f"http://127.0.0.1:{gateway_ports.envoy_admin}/ready", expect_body=b"LIVE"),
            timeout=20,
        )
        yield
    finally:
        supervisor.stop_all()


@pytest.fixture
async def upstream_headers(gateway_ports: StackPorts) -> AsyncIterator[list[dict[str, str]]]:
    """A stand-in proxy on the proxy's port that keeps the headers of each request it gets (but Envoy's
    health checks, which may come at any time)."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        if request.path != "/healthz":
            seen.append({":path": request.path_qs, **{name.lower(): value for name, value in request.headers.items()}})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", gateway_ports.proxy_http).start()
    try:
        yield seen
    finally:
        await runner.cleanup()


@pytest.mark.integration
@pytest.mark.usefixtures("traced_envoy")
async def test_envoy_continues_the_client_trace_and_exports_its_span(
    gateway_ports: StackPorts, receiver: SpanReceiver, upstream_headers: list[dict[str, str]]
) -> None:
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{gateway_ports.gateway}/v1/chat/completions",
            json={"model": "gpt-4o-mini"},
            headers={"traceparent": traceparent, "authorization": "Bearer sk-provider-secret"},
        ) as response,
    ):
        assert response.status == 200

    [headers] = upstream_headers
    version, trace_id, envoy_span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE_ID, "01"), "the upstream is in the client's trace"
    assert envoy_span_id != CLIENT_SPAN_ID, "the upstream's parent is Envoy's own span, not the client's"

    spans = receiver.wait_for(
        "Envoy span", lambda spans: any(span.span_id == envoy_span_id for span in spans), timeout_s=15
    )
    [envoy_span] = [span for span in spans if span.span_id == envoy_span_id]
    assert envoy_span.service == "candela-gateway"
    assert (envoy_span.trace_id, envoy_span.parent_span_id) == (CLIENT_TRACE_ID, CLIENT_SPAN_ID)
    assert envoy_span.kind == SpanKind.SPAN_KIND_SERVER
    assert "sk-provider-secret" not in repr(envoy_span.attributes), "Envoy does not record the Authorization header"


@pytest.mark.integration
@pytest.mark.usefixtures("traced_envoy")
async def test_envoy_keeps_url_secrets_out_of_its_span_and_its_own_hop_out_of_the_upstream_request(
    gateway_ports: StackPorts, receiver: SpanReceiver, upstream_headers: list[dict[str, str]]
) -> None:
    secret = "AIza-never-in-a-span"
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{gateway_ports.gateway}/v1/chat/completions?key={secret}&alt=sse",
            json={"model": "gpt-4o-mini"},
            headers={"traceparent": traceparent, "x-client-custom": "kept"},
        ) as response,
    ):
        assert response.status == 200

    [headers] = upstream_headers
    assert headers[":path"] == f"/v1/chat/completions?key={secret}&alt=sse", "the query still reaches the upstream"
    assert headers["x-client-custom"] == "kept"
    added = [name for name in (*envoy_config.GATEWAY_HEADERS_REMOVED, "x-forwarded-for") if name in headers]
    assert added == [], f"Envoy sent its own {added} upstream"

    spans = receiver.wait_for(
        "Envoy span", lambda spans: any(span.service == "candela-gateway" for span in spans), timeout_s=15
    )
    [envoy_span] = [span for span in spans if span.service == "candela-gateway"]
    assert secret not in repr((envoy_span.name, envoy_span.attributes, envoy_span.events))
    assert envoy_span.attributes["http.url"] == f"http://127.0.0.1:{gateway_ports.gateway}/v1/chat/completions"
