"""The web console in a real headless Chromium (Debian's, driven by playwright-core) against the real stack.

The browser parts are console/e2e/*.mjs: each signs in, browses as a person would and prints what it saw
as JSON; these tests make the logs it should see and assert on what it saw. Screenshots are kept under
each test's temp dir.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import anthropic
import grpc
import httpx
import openai
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela.prompts.v1 import prompts_service_pb2, prompts_service_pb2_grpc
from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import bearer, wait_for_logged_request
from tests.e2e.tenancy_support import make_tenant

pytestmark = pytest.mark.e2e

CONSOLE = Path(__file__).resolve().parents[2] / "console"
HUGE_LINE = "a very long line without a break " * 15_000  # ~500 KB
HOSTILE = "<script>alert('logged')</script><img src=x onerror=alert('img')><a href=\"javascript:alert(3)\">x</a>"


@pytest.fixture(autouse=True, scope="module")
def _console_built() -> None:
    """The gateway serves console/dist as it was when the stack started: an old build tests old code."""
    digest = subprocess.run(
        [CONSOLE.parent / "scripts" / "console_sources.sh"], check=True, capture_output=True, text=True
    ).stdout.strip()
    built = CONSOLE / "dist" / "SOURCES"
    if not built.is_file() or built.read_text().strip() != digest:
        pytest.fail(
            "console/dist is missing or was built from other sources: run ./scripts/install.sh (make test does)"
        )


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
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": HUGE_LINE}, {"role": "user", "content": HOSTILE}],
        )
    request_id = raw.headers["candela-id"]
    wait_for_logged_request(query_stub, admin.api_key, request_id)

    seen = _browse("browse.mjs", stack, admin.api_key, tmp_path, CANDELA_CONSOLE_REQUEST_ID=request_id)
    steps = seen["steps"]

    # A wrong key is told apart in words, not a blank page.
    assert "not accepted" in steps["badKeyMessage"]
    # The call made above is in the table with what the person needs to recognise it.
    row = steps["rowText"]
    for shown in ("openai", "gpt-4o-mini", "200", user, "feature=console"):
        assert shown in row
    # The hostile body is shown verbatim as text, in the conversation and the raw JSON, and nothing in it
    # ran (_browse: no dialog, no page error).
    huge_turn, user_turn, answer_turn = steps["conversation"]
    assert huge_turn == f"USER\n{HUGE_LINE}"
    assert user_turn == f"USER\n{HOSTILE}"
    assert answer_turn.startswith(f"ASSISTANT (ANSWER)\nEcho: {HOSTILE}")
    assert HOSTILE.replace('"', '\\"') in steps["requestBody"]
    for html in (steps["conversationHtml"], steps["detailHtml"]):
        assert "<script" not in html
        assert "<img" not in html
        assert "&lt;script&gt;" in html
    # A ~500 KB line does not stall the page: the detail opens and closes promptly.
    assert steps["openMs"] < 5000
    assert steps["closeMs"] < 1000
    # The cost is the logged one, exactly.
    record = query_stub.GetRequest(
        query_service_pb2.GetRequestRequest(request_id=request_id), metadata=bearer(admin.api_key)
    ).request
    assert steps["cost"] == record.cost_usd
    # The key went in a header only (_browse: in no URL), never in storage or a cookie; sign-out forgets it.
    assert steps["storage"] == {"local": 0, "session": 0, "cookies": "", "url": f"{stack.gateway_url}/"}
    assert steps["keyFieldAfterSignOut"] == ""
    assert sorted(path.name for path in (tmp_path / "screenshots").iterdir()) == [
        "01-sign-in.png",
        "02-bad-key.png",
        "03-requests.png",
        "04-detail.png",
        "05-signed-out.png",
    ]


def test_thumbs_up_and_a_score_in_the_detail_show_in_the_table_and_filter_it(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    user = f"console-scores-{uuid.uuid4()}"
    request_ids = _logged_calls(stack, admin, query_stub, ["first", "second"], **{"Candela-User-Id": user})
    scored = request_ids[0]

    seen = _browse(
        "scores.mjs", stack, admin.api_key, tmp_path, CANDELA_CONSOLE_USER=user, CANDELA_CONSOLE_REQUEST_ID=scored
    )
    steps = seen["steps"]

    assert steps["scoresColumn"] >= 0
    assert steps["cellBefore"] == ""
    assert "No feedback yet." in steps["panelBefore"]
    assert steps["feedbackShown"] == "Feedback: ▲ positive"
    assert steps["thumbPressed"] == "true"
    assert steps["accuracyShown"] == "0.8"
    # The table shows the detail's feedback and score in the call's row, without a reload.
    assert steps["cellAfter"] == "▲ up accuracy=0.8"
    # The filters live in the URL and keep only the scored call of the two.
    assert "feedback=up" in steps["filteredUrl"]
    assert steps["filteredIds"] == [scored]
    # What the browser showed is what the API stored.
    stored = query_stub.GetRequest(
        query_service_pb2.GetRequestRequest(request_id=scored), metadata=bearer(admin.api_key)
    ).scores
    assert dict(stored) == {"feedback": 1.0, "accuracy": 0.8}
    assert {path.name for path in (tmp_path / "screenshots").iterdir()} == {
        "50-scored-detail.png",
        "51-scored-table.png",
        "52-filtered-by-score.png",
    }


def _logged_calls(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    contents: list[str],
    **headers: str,
) -> list[str]:
    """The request ids of one chat completion per content, sent through the gateway with ``headers``
    (besides the key), once each is queryable."""
    with openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key="sk-local",
        default_headers={"Candela-Auth": f"Bearer {admin.api_key}", **headers},
        max_retries=0,
    ) as client:
        request_ids = [
            client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
            ).headers["candela-id"]
            for content in contents
        ]
    for request_id in request_ids:
        wait_for_logged_request(query_stub, admin.api_key, request_id)
    return request_ids


def _browse(script: str, stack: Stack, key: str, tmp_path: Path, **inputs: str) -> dict[str, Any]:
    """Runs one browser scenario and returns what it saw; a scenario that could not finish fails the test."""
    browsed = subprocess.run(
        ["node", str(CONSOLE / "e2e" / script)],
        env={
            **os.environ,
            "CANDELA_CONSOLE_GATEWAY": stack.gateway_url,
            "CANDELA_CONSOLE_KEY": key,
            "CANDELA_CONSOLE_SCREENSHOTS": str(tmp_path / "screenshots"),
            **inputs,
        },
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert browsed.returncode == 0, browsed.stderr
    seen: dict[str, Any] = json.loads(browsed.stdout)
    assert "failure" not in seen, seen["failure"]
    assert seen["dialogs"] == []
    assert seen["pageErrors"] == []
    assert seen["cspViolations"] == []
    assert seen["requestsWithKey"] == []
    return seen


def test_a_long_list_keeps_few_rows_in_the_page_and_the_keyboard_walks_all_of_it(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    user = f"console-long-{uuid.uuid4()}"
    total = 260
    _logged_calls(stack, admin, query_stub, [str(index) for index in range(total)], **{"Candela-User-Id": user})
    listed = query_service_pb2.QueryRequestsRequest(filter=query_service_pb2.RequestFilter(user_id=user), limit=1000)
    newest_first = [row.request_id for row in query_stub.QueryRequests(listed, metadata=bearer(admin.api_key)).requests]

    steps = _browse(
        "long.mjs", stack, admin.api_key, tmp_path, CANDELA_CONSOLE_USER=user, CANDELA_CONSOLE_TOTAL=str(total)
    )["steps"]

    # The first page is read, but only the rows near the viewport (800 px high) are in the page.
    assert steps["firstLoaded"] >= 50
    assert steps["firstRendered"] < 60
    # j walks down past what was first drawn, keeping the focused row on screen; k walks back; Enter opens
    # the focused request.
    assert steps["afterDown"] == 60
    assert steps["focusedInView"] is True
    assert steps["afterUp"] == 55
    assert steps["openedId"] == newest_first[55]
    # Scrolling to the end pages every request in, and the page still holds only a screenful of rows.
    assert steps["allLoaded"] == total
    assert steps["lastRendered"] == total - 1
    assert steps["renderedAtEnd"] < 60


WEATHER = "Today's weather in a city."
CITY_SCHEMA: dict[str, object] = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_a_stream_and_tool_calls_from_both_sdks_read_as_conversations(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    headers = {"Candela-Auth": f"Bearer {admin.api_key}", "Candela-User-Id": f"console-sdks-{uuid.uuid4()}"}
    with openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1", api_key="sk-local", default_headers=headers, max_retries=0
    ) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            tools=[
                {
                    "type": "function",
                    "function": {"name": "get_weather", "description": WEATHER, "parameters": CITY_SCHEMA},
                }
            ],
            messages=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_paris",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_paris", "content": "18 C and sunny"},
            ],
        )
        openai_id = stream.response.headers["candela-id"]
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    with anthropic.Anthropic(
        base_url=f"{stack.gateway_url}/anthropic",
        api_key="sk-ant-local",
        default_headers=headers,
        max_retries=0,
    ) as claude:
        raw = claude.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            tools=[{"name": "get_weather", "description": WEATHER, "input_schema": CITY_SCHEMA}],
            messages=[
                {"role": "user", "content": "And in Oslo?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_oslo", "name": "get_weather", "input": {"city": "Oslo"}}
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_oslo", "content": "-3 C, snow"}],
                },
            ],
        )
        anthropic_id = raw.headers["candela-id"]
        answer = raw.parse().content[0]
    records = [wait_for_logged_request(query_stub, admin.api_key, rid).request for rid in (openai_id, anthropic_id)]

    details = _browse(
        "sdks.mjs", stack, admin.api_key, tmp_path, CANDELA_CONSOLE_REQUEST_IDS=f"{openai_id},{anthropic_id}"
    )["steps"]["details"]

    chat, message = details
    assert chat["turns"][0] == "USER\nWhat is the weather in Paris?"
    assert chat["turns"][1].startswith("ASSISTANT\ntool call get_weather call_paris")
    assert '"city": "Paris"' in chat["turns"][1]
    assert chat["turns"][2] == "TOOL\ntool result call_paris\n18 C and sunny"
    assert streamed
    assert chat["turns"][3] == f"ASSISTANT (ANSWER)\n{streamed}", "the streamed answer, as text"
    assert message["turns"][0] == "USER\nAnd in Oslo?"
    assert message["turns"][1].startswith("ASSISTANT\ntool call get_weather toolu_oslo")
    assert '"city": "Oslo"' in message["turns"][1]
    assert message["turns"][2] == "USER\ntool result toolu_oslo\n-3 C, snow"
    assert answer.type == "text"
    assert message["turns"][3] == f"ASSISTANT (ANSWER)\n{answer.text}"
    for shown, record in zip(details, records, strict=True):
        # Tokens and the exact cost as logged: a stream is priced too (Candela asked for its usage).
        assert shown["cost"] == record.cost_usd
        assert f"Input\t{record.usage.prompt_tokens}" in shown["usage"]
        assert f"Output\t{record.usage.completion_tokens}" in shown["usage"]


def test_filters_live_mode_dashboard_session_and_users(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    user = f"console-pages-{uuid.uuid4()}"
    session = f"console-session-{uuid.uuid4()}"
    for path in ("/plan", "/plan/search", "/answer"):
        headers = {"Candela-User-Id": user, "Candela-Session-Id": session, "Candela-Session-Path": path}
        headers |= {"Candela-Session-Name": "Console trip", "Candela-Property-Feature": "console"}
        _logged_calls(stack, admin, query_stub, [f"step {path}"], **headers)

    seen = _browse(
        "pages.mjs", stack, admin.api_key, tmp_path, CANDELA_CONSOLE_USER=user, CANDELA_CONSOLE_SESSION=session
    )
    steps = seen["steps"]

    # The shared link's filters (a property named FEATURE, sent as Feature; a cost floor) found the calls.
    assert steps["filteredRows"] == 3
    # Live mode showed a call made after the page loaded, without a reload, within 2 s of its answer.
    assert steps["liveRows"] == 4
    assert steps["liveMs"] < 2000
    # The dashboard's totals are the query API's own aggregates over the same range.
    dashboard = steps["dashboard"]
    start, end = Timestamp(), Timestamp()
    start.FromJsonString(dashboard["start"])
    end.FromJsonString(dashboard["end"])
    total = (
        query_stub.AggregateRequests(
            query_service_pb2.AggregateRequestsRequest(start=start, end=end), metadata=bearer(admin.api_key)
        )
        .groups[0]
        .metrics
    )
    assert dashboard["requests"] == f"{total.request_count:,}"
    assert dashboard["cost"] == f"${total.cost_usd}"
    assert dashboard["charts"] == 6
    # The session's waterfall has one bar per call, in path order.
    bars = steps["sessionBars"]
    assert [bar.split()[0] for bar in bars] == ["/answer", "/plan", "/plan/search"]
    # The user's row links to exactly their requests.
    assert steps["userRow"].split("\t")[:2] == [user, "4"]
    assert steps["userRequestsUrl"] == f"/requests?user={user}"
    assert {path.name for path in (tmp_path / "screenshots").iterdir()} == {
        "10-filtered.png",
        "11-live.png",
        "20-dashboard.png",
        "30-session.png",
        "40-users.png",
    }


def test_prompts_and_settings_change_what_the_api_sees(
    stack: Stack, gateway_channel: grpc.Channel, tmp_path: Path
) -> None:
    tenant = make_tenant(stack, gateway_channel, "Console")
    seen = _browse("admin.mjs", stack, tenant.keys["admin"], tmp_path, CANDELA_CONSOLE_PROMPT=tenant.prompt_id)
    steps = seen["steps"]

    # The prompt's two versions, side by side: the first version's line against the second's.
    assert steps["versions"] == 2
    [changed] = steps["diff"]
    assert changed.startswith("Hello {{name}} from ")
    assert changed.endswith("\tHi {{name}}")
    # Moving an environment in the page moved it for the API.
    assert "staging" in steps["version2"]
    prompts = prompts_service_pb2_grpc.PromptsServiceStub(gateway_channel)
    got = prompts.GetPrompt(
        prompts_service_pb2.GetPromptRequest(prompt_id=tenant.prompt_id, environment="staging"),
        metadata=bearer(tenant.keys["admin"]),
    )
    assert got.prompt.version == 2
    # The render preview shows the input as text, not markup.
    assert steps["rendered"] == "USER\nHi <b>Ada</b>"
    assert "<b>" not in steps["renderedHtml"]
    # Limits saved in the page are the organization's.
    assert steps["limitsSaved"] == "Saved."
    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    organization = auth.GetOrganization(
        auth_service_pb2.GetOrganizationRequest(), metadata=bearer(tenant.keys["admin"])
    ).organization
    assert organization.retention_days == 30
    # A key made in the page is shown once, works, and stops working once revoked there.
    assert steps["secretShown"]
    assert steps["statusWithNewKey"] == 200
    assert steps["secretStillShown"] == 0
    assert "read" in steps["newKeyRow"]
    assert steps["statusAfterRevoke"] == 401
    assert steps["refusedAfterMs"] < 10_000


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


def test_export_downloads_the_listed_requests_as_csv_and_jsonl(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    # A user id a spreadsheet would run as a formula: the CSV must guard it, the JSON Lines keep it as sent.
    user = f"=export-{uuid.uuid4()}"
    request_ids = [
        _logged_calls(
            stack,
            admin,
            query_stub,
            [f"export {index}"],
            **{"Candela-User-Id": user, "Candela-Property-Note": f'+{index}, said "hi"'},
        )[0]
        for index in range(3)
    ]

    steps = _browse("export.mjs", stack, admin.api_key, tmp_path, CANDELA_CONSOLE_USER=user)["steps"]

    listed = query_stub.QueryRequests(
        query_service_pb2.QueryRequestsRequest(filter=query_service_pb2.RequestFilter(user_id=user)),
        metadata=bearer(admin.api_key),
    ).requests
    newest_first = [record.request_id for record in listed]
    assert sorted(newest_first) == sorted(request_ids)
    assert steps["listedIds"] == newest_first
    downloads = steps["downloads"]
    assert downloads["CSV"]["name"].startswith("candela-requests-")
    assert downloads["CSV"]["name"].endswith(".csv")
    assert downloads["CSV"]["result"].startswith("Exported 3 rows (")
    rows = list(csv.DictReader(io.StringIO(downloads["CSV"]["text"], newline="")))
    assert [row["request_id"] for row in rows] == newest_first
    assert {row["user_id"] for row in rows} == {"'" + user}
    assert {row["model"] for row in rows} == {"gpt-4o-mini"}
    by_id = {record.request_id: record for record in listed}
    for row in rows:
        record = by_id[row["request_id"]]
        assert row["cost_usd"] == record.cost_usd
        assert row["total_tokens"] == str(record.usage.total_tokens)
        assert json.loads(row["properties"]) == dict(record.properties)
    assert downloads["JSONL"]["name"].endswith(".jsonl")
    lines = [json.loads(line) for line in downloads["JSONL"]["text"].splitlines()]
    assert [line["request_id"] for line in lines] == newest_first
    assert {line["user_id"] for line in lines} == {user}
    assert [line["properties"]["note"] for line in reversed(lines)] == [f'+{index}, said "hi"' for index in range(3)]
    assert {path.name for path in (tmp_path / "screenshots").iterdir()} == {"50-export.png"}


def test_a_binary_body_shows_as_its_size_and_type_and_downloads_byte_for_byte(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    with openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key="sk-local",
        default_headers={"Candela-Auth": f"Bearer {admin.api_key}"},
        max_retries=0,
    ) as client:
        speech = client.audio.speech.with_raw_response.create(
            model="tts-1", voice="alloy", input="Say it", extra_headers={"x-fake-audio-bytes": "5000"}
        )
    request_id = speech.headers["candela-id"]
    assert wait_for_logged_request(query_stub, admin.api_key, request_id).response_body_bytes == speech.content

    steps = _browse("binary.mjs", stack, admin.api_key, tmp_path, CANDELA_CONSOLE_REQUEST_ID=request_id)["steps"]

    assert steps["binaryLine"] == "binary, 5,000 bytes, audio/mpeg Download"
    assert "\ufffd" not in steps["detailText"]
    assert steps["download"]["name"] == f"{request_id}-response.mp3"
    assert base64.b64decode(steps["download"]["base64"]) == speech.content
    assert {path.name for path in (tmp_path / "screenshots").iterdir()} == {"60-binary-detail.png"}
