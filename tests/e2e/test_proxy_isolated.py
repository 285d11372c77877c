"""Proxies of their own, for settings the shared stack does not have: a small body limit, Redis down,
and ingest down for 30 s (with a proxy restart in the middle): answers unaffected, no log lost."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import httpx
import pytest

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import wait_for_logged_request
from tests.e2e.proxy_support import free_port, metric_value, services, start_ingest, start_proxy, wait_until

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


def _headers(admin: Bootstrap, **extra: str) -> dict[str, str]:
    return {"Candela-Auth": f"Bearer {admin.api_key}", "Authorization": "Bearer sk-x", **extra}


def test_body_over_the_limit_is_413_in_the_provider_shape(stack: Stack, admin: Bootstrap, tmp_path: Path) -> None:
    with services() as started:
        proxy, url = start_proxy(stack, tmp_path, CANDELA_MAX_BODY_BYTES="2000")
        started.append(proxy)
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 3000}]}
        refused = httpx.post(f"{url}/v1/chat/completions", json=big, headers=_headers(admin), timeout=10)
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "request_too_large"
        assert "2000-byte limit" in refused.json()["error"]["message"]
        anthropic_refused = httpx.post(
            f"{url}/anthropic/v1/messages",
            json={**big, "max_tokens": 10},
            headers=_headers(admin, **{"anthropic-version": "2023-06-01"}),
            timeout=10,
        )
        assert anthropic_refused.status_code == 413
        assert anthropic_refused.json()["error"]["type"] == "request_too_large"
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=_headers(admin), timeout=10).is_success


def test_targets_outside_the_allowed_hosts_are_refused_before_anything_goes_out(
    stack: Stack, admin: Bootstrap, tmp_path: Path
) -> None:
    assert stack.fake_provider_url is not None
    port = stack.fake_provider_url.rsplit(":", 1)[1]
    with services() as started:
        proxy, url = start_proxy(stack, tmp_path, CANDELA_TARGET_HOSTS="127.0.0.1, *.groq.com")
        started.append(proxy)
        allowed = httpx.post(
            f"{url}/v1/chat/completions",
            json=CHAT,
            headers=_headers(admin, **{"Candela-Target-Url": f"http://127.0.0.1:{port}"}),
            timeout=10,
        )
        assert allowed.status_code == 200
        fallbacks = json.dumps([{"target-url": f"http://localhost:{port}", "onCodes": [500]}])
        for extra in ({"Candela-Target-Url": f"http://localhost:{port}"}, {"Candela-Fallbacks": fallbacks}):
            refused = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=_headers(admin, **extra), timeout=10)
            assert refused.status_code == 403, extra
            error = refused.json()["error"]
            assert (error["type"], error["code"]) == ("permission_error", "target_not_allowed")
            assert "'localhost'" in error["message"]
            assert refused.headers["helicone-id"] == refused.headers["candela-id"], "a refusal has an id too"


def test_redis_down_turns_cache_off_and_rate_limits_open(stack: Stack, admin: Bootstrap, tmp_path: Path) -> None:
    with services() as started:
        proxy, url = start_proxy(stack, tmp_path, CANDELA_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        started.append(proxy)
        headers = _headers(admin, **{"Candela-Cache-Enabled": "true", "Candela-RateLimit-Policy": "1;w=60"})
        answers = [httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers, timeout=10) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.headers["candela-cache"] for a in answers] == ["MISS", "MISS", "MISS"]
        assert "candela-ratelimit-limit" not in answers[0].headers
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert metric_value(metrics, "candela_proxy_redis_errors_total") >= 2
        assert "redis unavailable" in proxy.output()


def test_ingest_down_for_30s_loses_no_log_and_slows_no_answer(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    ingest_port = free_port()
    proxy_port = free_port()
    overrides = {
        "CANDELA_INGEST_ADDR": f"127.0.0.1:{ingest_port}",
        "CANDELA_INGEST_TIMEOUT_S": "1",
        "CANDELA_LOG_FLUSH_INTERVAL_S": "0.05",
    }
    request_ids: list[str] = []
    with services() as started:
        ingest = start_ingest(stack, tmp_path, ingest_port)
        started.append(ingest)
        proxy, url = start_proxy(stack, tmp_path, port=proxy_port, **overrides)
        started.append(proxy)

        latencies: list[float] = []

        def call() -> None:
            started_at = time.monotonic()
            response = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=_headers(admin), timeout=10)
            assert response.status_code == 200
            latencies.append(time.monotonic() - started_at)
            request_ids.append(response.headers["candela-id"])

        call()
        wait_for_logged_request(query_stub, admin.api_key, request_ids[0])
        ingest.stop()
        down_since = time.monotonic()
        restarted = False
        while time.monotonic() - down_since < 30:
            call()
            if not restarted and time.monotonic() - down_since > 15:
                # The proxy restarts while ingest is still down: its spool survives and replays later.
                wait_until(lambda: any((tmp_path / "spool").glob("*.seg")), what="spooled logs")
                proxy.stop()
                proxy, url = start_proxy(stack, tmp_path, port=proxy_port, **overrides)
                started.append(proxy)
                restarted = True
            time.sleep(0.25)
        # Answers never waited for ingest (the typical one is milliseconds even on a loaded test machine).
        assert statistics.median(latencies) < 0.25, latencies
        spool_bytes = metric_value(httpx.get(f"{url}/metrics", timeout=10).text, "candela_proxy_spool_bytes")
        assert spool_bytes > 0
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        assert health["status"] == "SERVING"

        started.append(start_ingest(stack, tmp_path, ingest_port))
        for request_id in request_ids:
            wait_for_logged_request(query_stub, admin.api_key, request_id, timeout_s=60)
        wait_until(lambda: not any((tmp_path / "spool").glob("*.seg")), what="spool emptied")
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert metric_value(metrics, "candela_proxy_logs_dropped_total") == 0
        assert len(request_ids) > 60
        assert "spooling" in (tmp_path / f"proxy-{proxy_port}.log").read_text()
