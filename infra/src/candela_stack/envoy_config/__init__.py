"""The Envoy gateway's configuration, built as a Python dict and dumped as YAML.

One listener (HTTP/1.1 and h2c) in front of the whole mesh:

- `/candela.<svc>.v1.<Svc>Service/...` (native gRPC) goes to that service over HTTP/2. RPCs whose proto
  marks them `idempotency_level = NO_SIDE_EFFECTS` get a route of their own with a retry policy; no
  other route retries. A gRPC call for a service not behind the gateway gets UNIMPLEMENTED from Envoy.
- REST calls declared with `google.api.http` on the RPCs (e.g. `POST /v1/request/query`) are turned
  into gRPC by the `grpc_json_transcoder` filter. Routes are matched on the transcoded gRPC path: the
  transcoder rewrites `:path` to `/<package>.<Service>/<Method>` and clears the route cache (the
  default, `match_incoming_request_route: false`), so the router picks the gRPC route above.
- `GET /` and `/assets/*` are the web console's files, served by Envoy itself; its gRPC-Web calls become
  gRPC (the `grpc_web` filter) and take the gRPC routes.
- Everything else (`/v1/chat/completions`, `/v1/messages`, `/openai/...`, `/anthropic/...`) goes to the
  proxy over HTTP/1.1 with no route timeout and a long idle timeout; responses stream, never buffered.
- Every upstream is health checked (grpc.health.v1, the proxy's /healthz) and circuit broken; request
  bodies above each service's own limit get a 413; Envoy's own replies are JSON in the SDK's error
  shape; the access log is JSON lines without any credential-carrying header or query string.
- Given an OTLP collector port, Envoy traces every request with its OpenTelemetry tracer (OTLP/gRPC to
  that collector): its span continues the client's `traceparent` (if any) and its own context is what
  the upstream (e.g. the proxy) receives, so the gateway hop is part of the request's one trace. Its
  `http.url` leaves out the query string.
- Envoy's own hop does not reach a provider: no X-Forwarded-For entry is appended, and the headers it sets
  on every request are removed before the upstream (GATEWAY_HEADERS_REMOVED; the proxy drops the rest).

Layout: `bootstrap` (build_config: the listener and its filters), `routes` (which request goes where,
retries, body limits), `clusters` (the upstreams, their health checks and circuit breakers), `services`
(the services behind the gateway, from the protos' descriptor set), `console` (the web console's files
and gRPC-Web), `replies` (Envoy's own error bodies), `telemetry` (tracing and the access log), `command`
(the YAML file, `envoy --mode validate` and the server's command line), `extensions` (the Envoy extension
names and type URLs).
"""

from candela_stack.envoy_config.bootstrap import GATEWAY_HEADERS_REMOVED, build_config
from candela_stack.envoy_config.clusters import (
    HEALTH_CHECK_INTERVAL,
    HEALTH_CHECK_UNHEALTHY_INTERVAL,
    PROXY_IDLE_TIMEOUT,
)
from candela_stack.envoy_config.command import EnvoyConfigError, dump, server_argv, validate, write
from candela_stack.envoy_config.routes import BODY_LIMIT_HEADROOM, RETRY_POLICY, BodyLimits, declared_too_large_route
from candela_stack.envoy_config.services import (
    DESCRIPTOR_SET_RESOURCE,
    GRPC_ROUTES,
    GRPC_SERVICES,
    NEVER_RETRIED_CLUSTERS,
    TRANSCODED_SERVICES,
    descriptor_set_path,
    idempotent_methods,
)
from candela_stack.envoy_config.telemetry import ACCESS_LOG_FIELDS, OTLP_CLUSTER, TRACED_URL, add_tracing

__all__ = [
    "ACCESS_LOG_FIELDS",
    "BODY_LIMIT_HEADROOM",
    "DESCRIPTOR_SET_RESOURCE",
    "GATEWAY_HEADERS_REMOVED",
    "GRPC_ROUTES",
    "GRPC_SERVICES",
    "HEALTH_CHECK_INTERVAL",
    "HEALTH_CHECK_UNHEALTHY_INTERVAL",
    "NEVER_RETRIED_CLUSTERS",
    "OTLP_CLUSTER",
    "PROXY_IDLE_TIMEOUT",
    "RETRY_POLICY",
    "TRACED_URL",
    "TRANSCODED_SERVICES",
    "BodyLimits",
    "EnvoyConfigError",
    "add_tracing",
    "build_config",
    "declared_too_large_route",
    "descriptor_set_path",
    "dump",
    "idempotent_methods",
    "server_argv",
    "validate",
    "write",
]
