"""The gateway's Envoy configuration for a deployment (Kubernetes, containers), from the same generator as
the local stack's, then ``exec envoy``: ``python -m candela_stack.envoy_config.deployed``.

What differs from the local stack is only where things are: the listener and the admin interface bind all
interfaces (a pod's probes and scraper reach them on the pod's address; the admin port is never exposed by
the chart's Service), and each upstream is a DNS name resolved with STRICT_DNS. Behind a headless
Kubernetes Service that name resolves to every pod, so Envoy balances each gRPC call (HTTP/2 keeps one
connection per endpoint) and health-checks every pod itself; routes, retries, body limits, the transcoder
and the console are the local stack's, unchanged.

Environment (the addresses use the names the services already read):
``CANDELA_AUTH_ADDR``, ``CANDELA_INGEST_ADDR``, ``CANDELA_QUERY_ADDR``, ``CANDELA_PROMPTS_ADDR``,
``CANDELA_PROXY_ADDR`` (host:port each, required); ``CANDELA_GATEWAY_PORT`` (8080),
``CANDELA_ENVOY_ADMIN_PORT`` (9901), ``CANDELA_ENVOY_DIR`` (where the config is written, /tmp/envoy),
``CANDELA_CONSOLE_DIST`` (the built console; none served when unset), ``CANDELA_MAX_BODY_BYTES`` and
``CANDELA_MAX_CALL_BYTES`` (the proxy's and ingest's own limits, which Envoy enforces just above),
``CANDELA_ENVOY_CONCURRENCY`` (worker threads, 2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from candela_stack.binaries import envoy_binary
from candela_stack.envoy_config.bootstrap import build_config
from candela_stack.envoy_config.command import validate, write
from candela_stack.envoy_config.routes import BodyLimits
from candela_stack.envoy_config.services import descriptor_set_path
from candela_stack.ports import StackPorts

UPSTREAM_ENV = {
    "auth": "CANDELA_AUTH_ADDR",
    "ingest": "CANDELA_INGEST_ADDR",
    "query": "CANDELA_QUERY_ADDR",
    "prompts": "CANDELA_PROMPTS_ADDR",
    "proxy": "CANDELA_PROXY_ADDR",
}
"""Gateway cluster -> the variable holding its upstream's host:port."""

ANY_ADDRESS = "0.0.0.0"


@dataclass(frozen=True)
class DeployedGateway:
    """Where the gateway listens and where its upstreams are."""

    upstreams: Mapping[str, tuple[str, int]]
    listen_port: int = 8080
    admin_port: int = 9901
    concurrency: int = 2
    console_dist: Path | None = None
    body_limits: BodyLimits = BodyLimits()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> DeployedGateway:
        """Reads the variables listed in the module docstring; a missing upstream is an error naming it."""
        missing = [name for name in UPSTREAM_ENV.values() if not environ.get(name)]
        if missing:
            raise ValueError(f"the gateway needs {', '.join(missing)} (host:port of each upstream)")
        defaults = BodyLimits()
        console = environ.get("CANDELA_CONSOLE_DIST")
        return cls(
            upstreams={cluster: _host_port(name, environ[name]) for cluster, name in UPSTREAM_ENV.items()},
            listen_port=int(environ.get("CANDELA_GATEWAY_PORT", "8080")),
            admin_port=int(environ.get("CANDELA_ENVOY_ADMIN_PORT", "9901")),
            concurrency=int(environ.get("CANDELA_ENVOY_CONCURRENCY", "2")),
            console_dist=Path(console) if console else None,
            body_limits=BodyLimits(
                proxy=int(environ.get("CANDELA_MAX_BODY_BYTES", defaults.proxy)),
                ingest=int(environ.get("CANDELA_MAX_CALL_BYTES", defaults.ingest)),
            ),
        )

    def config(self, work_dir: Path) -> dict[str, Any]:
        """The Envoy bootstrap: the local stack's, re-addressed (descriptor set and console copies in work_dir)."""
        # Any valid layout: every loopback address it yields is replaced below.
        placeholder = StackPorts.from_base(20000)
        config = build_config(
            placeholder,
            descriptor_set_path(work_dir),
            body_limits=self.body_limits,
            console_dist=self.console_dist,
        )
        config["node"] = {"id": "candela-gateway", "cluster": "candela-gateway"}
        config["admin"]["address"] = _address(ANY_ADDRESS, self.admin_port)
        (listener,) = config["static_resources"]["listeners"]
        listener["address"] = _address(ANY_ADDRESS, self.listen_port)
        for cluster in config["static_resources"]["clusters"]:
            host, port = self.upstreams[cluster["name"]]
            cluster["type"] = "STRICT_DNS"
            cluster["dns_refresh_rate"] = "5s"  # new pods behind a headless Service join within seconds
            cluster["respect_dns_ttl"] = False
            cluster["load_assignment"]["endpoints"] = [
                {"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}
            ]
        return config

    def argv(self, config_path: Path) -> list[str]:
        """Envoy serving `config_path`."""
        return [
            str(envoy_binary()),
            "-c",
            str(config_path),
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            "warn",
        ]


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _host_port(name: str, value: str) -> tuple[str, int]:
    host, separator, port = value.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"{name} must be host:port, got {value!r}")
    return host, int(port)


def main() -> None:
    """Writes and validates the configuration, then becomes Envoy (its PID is the container's)."""
    try:
        gateway = DeployedGateway.from_environment(os.environ)
    except ValueError as error:
        sys.exit(f"candela gateway: {error}")
    work_dir = Path(os.environ.get("CANDELA_ENVOY_DIR", "/tmp/envoy"))
    config_path = write(gateway.config(work_dir), work_dir / "envoy.yaml")
    validate(envoy_binary(), config_path)
    argv = gateway.argv(config_path)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
