"""The health of every service: as the gateway sees it, plus the writers, which sit behind no route.

Envoy probes each upstream (auth, ingest, query, prompts with ``grpc.health.v1``, the proxy's
``/healthz``) every second; its admin ``/clusters`` says which endpoints passed. The writers serve only
``grpc.health.v1`` on their own port, so they are checked directly at the addresses given.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

GATEWAY_CLUSTERS = ("auth", "ingest", "query", "prompts", "proxy")
"""The gateway's upstream clusters: one per service behind it."""


@dataclass(frozen=True)
class ServiceHealth:
    """One endpoint's health."""

    service: str
    endpoint: str
    healthy: bool
    detail: str


def gateway_health(admin_url: str, timeout_s: float) -> list[ServiceHealth]:
    """Envoy itself (admin ``/ready``) and every endpoint of each gateway cluster (admin ``/clusters``)."""
    results = [_envoy_ready(admin_url, timeout_s)]
    if not results[0].healthy:
        return results
    with urllib.request.urlopen(f"{admin_url}/clusters?format=json", timeout=timeout_s) as reply:
        statuses = json.load(reply)["cluster_statuses"]
    by_name = {cluster["name"]: cluster for cluster in statuses}
    for name in GATEWAY_CLUSTERS:
        cluster = by_name.get(name)
        if cluster is None:
            results.append(ServiceHealth(name, "-", False, "no such cluster in the gateway"))
            continue
        hosts = cluster.get("host_statuses", [])
        if not hosts:
            results.append(ServiceHealth(name, "-", False, "no endpoint"))
        for host in hosts:
            address = host["address"]["socket_address"]
            failed = sorted(flag for flag, value in host["health_status"].items() if value is True)
            endpoint = f"{address['address']}:{address.get('port_value', '')}"
            results.append(ServiceHealth(name, endpoint, not failed, ", ".join(failed) or "healthy"))
    return results


def grpc_health(service: str, address: str, timeout_s: float) -> ServiceHealth:
    """A direct ``grpc.health.v1`` Check of the server at ``address`` (overall health, service "")."""
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as error:
            # Errors of the synchronous stubs are also grpc.Call objects, which carry the status code.
            code = cast(grpc.Call, error).code()
            return ServiceHealth(service, address, False, f"unreachable ({code.name})")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return ServiceHealth(service, address, reply.status == health_pb2.HealthCheckResponse.SERVING, status)


def _envoy_ready(admin_url: str, timeout_s: float) -> ServiceHealth:
    try:
        with urllib.request.urlopen(f"{admin_url}/ready", timeout=timeout_s) as reply:
            state = reply.read().decode().strip()
    except urllib.error.HTTPError as error:
        with error:  # the error is also the response: read it, then close its socket
            state = error.read().decode().strip() or f"HTTP {error.code}"
    except OSError as error:
        return ServiceHealth("gateway", admin_url, False, f"admin unreachable: {error}")
    return ServiceHealth("gateway", admin_url, state == "LIVE", state)
