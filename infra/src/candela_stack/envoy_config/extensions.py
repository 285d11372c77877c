"""The Envoy extensions the configuration names, and their `@type` URLs."""

from __future__ import annotations

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TYPE_URL = "type.googleapis.com/"
BUFFER_FILTER = "envoy.filters.http.buffer"
BUFFER_TYPE = TYPE_URL + "envoy.extensions.filters.http.buffer.v3.Buffer"
BUFFER_PER_ROUTE_TYPE = TYPE_URL + "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
