"""A rate limit by spend (`Candela-RateLimit-Policy: <cents>;w=<s>;u=cents`), with the openai SDK via the gateway."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from decimal import Decimal

import openai
import pytest

from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost

pytestmark = pytest.mark.e2e

MODEL = "gpt-4"
QUOTA_CENTS = 5
REPLY_WORDS = 400  # the fake counts a word as a token: 400 output tokens of gpt-4 are ~2.4 cents
PROMPT = "Count to many"
PROMPT_TOKENS = 3 + 3 + len(PROMPT.split())  # the fake's count: priming, per-message overhead, the words
SPEND_SETTLES_S = 0.5
"""The spend of an answer is counted just after it is sent (off the request path); a client calling
again within milliseconds may still see the earlier total, which the policy allows (it may overshoot once)."""


def test_calls_are_admitted_until_the_windows_spend_reaches_the_quota(
    stack: Stack, admin: Bootstrap, closing: contextlib.ExitStack
) -> None:
    policy = f"{QUOTA_CENTS};w=60;u=cents;s=user"
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-x",
            default_headers={
                "Candela-Auth": f"Bearer {admin.api_key}",
                "Candela-RateLimit-Policy": policy,
                "Candela-User-Id": f"spender-{uuid.uuid4().hex}",
                "x-fake-reply": " ".join(["count"] * REPLY_WORDS),
            },
            max_retries=0,  # the SDK would otherwise retry the 429 itself
        )
    )
    call_cents = expected_cost(MODEL, "openai", PROMPT_TOKENS, REPLY_WORDS) * 100
    assert 1 < call_cents < QUOTA_CENTS / 2, "the scenario needs a few calls to reach the quota"
    admitted_calls = math.ceil(Decimal(QUOTA_CENTS) / call_cents)  # admitted while the spend is under the quota

    remaining_seen = []
    for _ in range(admitted_calls):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}]
        )
        completion = raw.parse()
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, REPLY_WORDS)
        assert raw.headers["candela-ratelimit-limit"] == str(QUOTA_CENTS)
        assert raw.headers["candela-ratelimit-policy"] == policy
        remaining_seen.append(int(raw.headers["candela-ratelimit-remaining"]))
        time.sleep(SPEND_SETTLES_S)
    # Each admission reports what is left of the quota after the spend of the calls before it.
    assert remaining_seen == [max(0, math.floor(QUOTA_CENTS - n * call_cents)) for n in range(admitted_calls)]

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
    response = refused.value.response
    assert response.status_code == 429
    assert response.headers["candela-ratelimit-remaining"] == "0"
    assert response.headers["candela-ratelimit-limit"] == str(QUOTA_CENTS)
    assert response.headers["candela-ratelimit-policy"] == policy
    assert 1 <= int(response.headers["retry-after"]) <= 60
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "candela_rate_limited")
    assert f"{QUOTA_CENTS} cents per 60s" in error["message"]
