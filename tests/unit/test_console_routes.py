"""The gateway's routes for the built web console: what each file is served as, and nothing when unbuilt."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from candela_stack.envoy_config.console import CONTENT_SECURITY_POLICY, console_routes

pytestmark = pytest.mark.unit


def _headers(route: dict[str, object]) -> dict[str, str]:
    added = route["response_headers_to_add"]
    assert isinstance(added, list)
    return {item["header"]["key"]: item["header"]["value"] for item in added}


def test_an_unbuilt_console_adds_no_route(tmp_path: Path) -> None:
    assert console_routes(tmp_path / "dist", tmp_path / "work") == ([], 0)


def test_each_file_is_served_with_its_type_caching_and_the_policy(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><script type=module src=/assets/app-1.js></script>")
    script = b"console.log('candela');" * 400
    (dist / "assets" / "app-1.js").write_bytes(script)
    (dist / "assets" / "logo-2.png").write_bytes(b"\x89PNG" + bytes(100))

    routes, largest = console_routes(dist, tmp_path / "work")

    by_name = {route["name"]: route for route in routes}
    assert list(by_name) == [
        "console-gzip:/",
        "console:/",
        "console-gzip:/assets/app-1.js",
        "console:/assets/app-1.js",
        "console:/assets/logo-2.png",
    ]
    assert largest == len(script)
    page = _headers(by_name["console:/"])
    assert page["content-type"] == "text/html; charset=utf-8"
    assert page["cache-control"] == "no-cache"
    assert page["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    asset = _headers(by_name["console:/assets/app-1.js"])
    assert asset["content-type"] == "text/javascript; charset=utf-8"
    assert "immutable" in asset["cache-control"]
    assert _headers(by_name["console:/assets/logo-2.png"])["content-type"] == "image/png"

    packed = by_name["console-gzip:/assets/app-1.js"]
    assert _headers(packed)["content-encoding"] == "gzip"
    assert {"name": "accept-encoding", "string_match": {"contains": "gzip"}} in packed["match"]["headers"]
    body = packed["direct_response"]["body"]["filename"]
    assert gzip.decompress(Path(body).read_bytes()) == script
    # Only GET and HEAD: a POST to / still reaches the proxy (and its error in the SDK's shape).
    assert all(
        {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}} in route["match"]["headers"]
        for route in routes
    )
