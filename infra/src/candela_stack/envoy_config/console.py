"""The web console on the gateway: its built files served by Envoy itself, and gRPC-Web for its API calls.

The console (``console/``, built by Vite into ``console/dist``) is one HTML page and content-hashed assets.
Envoy answers them as direct responses read from disk when the config loads: ``GET /`` is the page and
``GET /assets/<file>`` each asset, gzip-compressed ahead of time for clients that accept it (Envoy's
compressor filter would also touch the proxy's LLM responses, which are relayed untouched). Nothing else
on the gateway changes: every API route keeps its path, and the console's own navigation lives in the URL
fragment (``/#/requests?...``), which never reaches a server.

Every console response carries a strict Content-Security-Policy: scripts and styles only from the gateway
itself (no inline script), API calls only to it, no frames. Logged bodies are attacker-controlled text;
the policy is the second wall behind a page that renders them only as text.
"""

from __future__ import annotations

import gzip
import mimetypes
from pathlib import Path
from typing import Any

from candela_stack.envoy_config.extensions import TYPE_URL

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

GRPC_WEB_FILTER: dict[str, Any] = {
    "name": "envoy.filters.http.grpc_web",
    "typed_config": {"@type": TYPE_URL + "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"},
}
"""Turns the console's gRPC-Web calls into gRPC (they then take the gRPC routes like any other call)."""

_COMPRESSED_TYPES = frozenset({"text/html", "text/css", "text/javascript", "application/javascript", "image/svg+xml"})
_GET_OR_HEAD = {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}
_ACCEPTS_GZIP = {"name": "accept-encoding", "string_match": {"contains": "gzip"}}


def console_routes(dist: Path, work_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Routes serving the built console in ``dist`` (none when it is not built), and the largest body.

    Compressed copies are written under ``work_dir``. The size is for the route table's
    ``max_direct_response_body_size_bytes``, whose default (4 KiB) is smaller than any script.
    """
    index = dist / "index.html"
    if not index.is_file():
        return [], 0
    files = [("/", index, "no-cache")]
    assets = dist / "assets"
    if assets.is_dir():
        files += [
            (f"/assets/{path.name}", path, "public, max-age=31536000, immutable")
            for path in sorted(assets.iterdir())
            if path.is_file()
        ]
    routes: list[dict[str, Any]] = []
    largest = 0
    for url_path, source, cache_control in files:
        content_type = _content_type(source)
        data = source.read_bytes()
        largest = max(largest, len(data))
        headers = {"content-type": content_type, "cache-control": cache_control}
        if content_type.split(";")[0] in _COMPRESSED_TYPES:
            packed = work_dir / "console" / (source.name + ".gz")
            packed.parent.mkdir(parents=True, exist_ok=True)
            packed.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
            routes.append(
                _file_route(
                    url_path, packed, {**headers, "content-encoding": "gzip", "vary": "accept-encoding"}, gzip=True
                )
            )
            headers["vary"] = "accept-encoding"
        routes.append(_file_route(url_path, source, headers, gzip=False))
    return routes, largest


def _content_type(path: Path) -> str:
    guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if guessed == "application/javascript":
        guessed = "text/javascript"
    return guessed + "; charset=utf-8" if guessed.startswith("text/") else guessed


def _file_route(url_path: str, body: Path, headers: dict[str, str], *, gzip: bool) -> dict[str, Any]:
    match: dict[str, Any] = {"path": url_path, "headers": [_GET_OR_HEAD, *([_ACCEPTS_GZIP] if gzip else [])]}
    security = {
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
    }
    return {
        "name": f"console{'-gzip' if gzip else ''}:{url_path}",
        "match": match,
        "direct_response": {"status": 200, "body": {"filename": str(body)}},
        "response_headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in {**headers, **security}.items()
        ],
    }
