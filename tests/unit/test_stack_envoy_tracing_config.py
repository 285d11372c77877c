"""Envoy's OpenTelemetry tracing in the generated config, read as data.

Envoy's own validation of it and a real traced Envoy are integration tests
(tests/integration/test_stack_envoy_tracing.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from candela_stack import envoy_config
from candela_stack.ports import StackPorts
from candela_stack.stack import loopback_port

pytestmark = pytest.mark.unit


def manager_of(config: dict[str, Any]) -> dict[str, Any]:
    manager: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return manager


def test_tracing_is_off_without_a_collector(tmp_path: Path) -> None:
    config = envoy_config.build_config(StackPorts.from_base(7700), envoy_config.descriptor_set_path(tmp_path))
    assert "tracing" not in manager_of(config)
    assert envoy_config.OTLP_CLUSTER not in {cluster["name"] for cluster in config["static_resources"]["clusters"]}


def test_tracing_exports_to_the_collector_on_loopback_over_http2(tmp_path: Path) -> None:
    config = envoy_config.build_config(
        StackPorts.from_base(7700),
        envoy_config.descriptor_set_path(tmp_path),
        otlp_port=4317,
        otlp_flush_interval_ms=200,
    )
    provider = manager_of(config)["tracing"]["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == envoy_config.OTLP_CLUSTER
    collector = next(c for c in config["static_resources"]["clusters"] if c["name"] == envoy_config.OTLP_CLUSTER)
    [endpoint] = collector["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 4317}
    options = collector["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert list(options["explicit_http_config"]) == ["http2_protocol_options"]
    [layer] = config["layered_runtime"]["layers"]
    assert layer["static_layer"] == {"tracing.opentelemetry.flush_interval_ms": 200}


def test_stack_accepts_only_a_loopback_collector() -> None:
    assert loopback_port("http://127.0.0.1:4317") == 4317
    for endpoint in ("http://10.0.0.5:4317", "http://collector.example.com:4317", "http://127.0.0.1"):
        with pytest.raises(ValueError, match=re.escape("must be http://127.0.0.1:<port>")):
            loopback_port(endpoint)
