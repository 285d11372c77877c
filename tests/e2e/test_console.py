"""The web console in a real headless Chromium (Debian's, driven by playwright-core) against the real stack.

The browser part is console/e2e/browse.mjs: it signs in, browses and signs out as a person would and
prints what it saw as JSON; this test makes the logs it should see and asserts on what it saw.
Screenshots are kept under the test's temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import wait_for_logged_request

pytestmark = pytest.mark.e2e

CONSOLE = Path(__file__).resolve().parents[2] / "console"
HOSTILE = "<script>alert('logged')</script><img src=x onerror=alert('img')><a href=\"javascript:alert(3)\">x</a>"


def test_sign_in_see_a_logged_call_open_it_and_sign_out(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    user = f"console-user-{uuid.uuid4()}"
    with openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key="sk-local",
        default_headers={
            "Candela-Auth": f"Bearer {admin.api_key}",
            "Candela-User-Id": user,
            "Candela-Property-Feature": "console",
        },
        max_retries=0,
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": HOSTILE}]
        )
    request_id = raw.headers["candela-id"]
    wait_for_logged_request(query_stub, admin.api_key, request_id)

    screenshots = tmp_path / "screenshots"
    browsed = subprocess.run(
        ["node", str(CONSOLE / "e2e" / "browse.mjs")],
        env={
            **os.environ,
            "CANDELA_CONSOLE_GATEWAY": stack.gateway_url,
            "CANDELA_CONSOLE_KEY": admin.api_key,
            "CANDELA_CONSOLE_REQUEST_ID": request_id,
            "CANDELA_CONSOLE_SCREENSHOTS": str(screenshots),
        },
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert browsed.returncode == 0, browsed.stderr
    seen = json.loads(browsed.stdout)
    assert "failure" not in seen, seen["failure"]
    steps = seen["steps"]

    # A wrong key is told apart in words, not a blank page.
    assert "not accepted" in steps["badKeyMessage"]
    # The call made above is in the table with what the person needs to recognise it.
    row = steps["rowText"]
    for shown in ("openai", "gpt-4o-mini", "200", user, "feature=console"):
        assert shown in row
    # The hostile body is shown verbatim as text and nothing in it ran.
    assert HOSTILE.replace('"', '\\"') in steps["requestBody"]
    assert "<script" not in steps["detailHtml"]
    assert "&lt;script&gt;" in steps["detailHtml"]
    assert seen["dialogs"] == []
    assert seen["pageErrors"] == []
    assert seen["cspViolations"] == []
    # The key went in a header only: never in a URL, storage or a cookie; signing out forgets it.
    assert seen["requestsWithKey"] == []
    assert steps["storage"] == {"local": 0, "session": 0, "cookies": "", "url": f"{stack.gateway_url}/"}
    assert steps["keyFieldAfterSignOut"] == ""
    assert sorted(path.name for path in screenshots.iterdir()) == [
        "01-sign-in.png",
        "02-bad-key.png",
        "03-requests.png",
        "04-detail.png",
        "05-signed-out.png",
    ]


def test_the_console_is_served_with_a_strict_content_security_policy(stack: Stack) -> None:
    page = httpx.get(f"{stack.gateway_url}/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    script = page.text.split('src="', 1)[1].split('"', 1)[0]
    plain = httpx.get(f"{stack.gateway_url}{script}", headers={"accept-encoding": "identity"}, timeout=10)
    packed = httpx.get(f"{stack.gateway_url}{script}", headers={"accept-encoding": "gzip"}, timeout=10)
    assert plain.status_code == packed.status_code == 200
    assert packed.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert packed.content == plain.content  # httpx undid the gzip: the same script either way
    assert int(packed.headers["content-length"]) < len(plain.content) / 2
    # The API and the proxy keep their paths: an LLM route without a key is still the proxy's 401.
    assert httpx.post(f"{stack.gateway_url}/v1/chat/completions", json={}, timeout=10).status_code == 401
