"""The log's wait for an organization's pricing still being fetched: bounded, only when there is a cost to
compute, never cancelling the fetch other requests share; past the bound the log is unpriced."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import cast

import orjson
import pytest

from candela.ingest.v1 import ingest_service_pb2
from candela_proxy import metrics
from candela_proxy.exchange import Exchange
from candela_proxy.headers import CandelaHeaders
from candela_proxy.org_pricing import OrganizationPricing, PriceOverride
from candela_proxy.providers import Provider, resolve_route
from candela_proxy.record import Recorder
from candela_proxy.response_usage import facts_from_json
from candela_proxy.shipping import LogShipper

pytestmark = pytest.mark.unit

ANSWER = {
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 100},
}
OVERRIDDEN = OrganizationPricing(
    overrides={("openai", "gpt-4o-mini"): PriceOverride(Decimal(1), Decimal(2), Decimal(1), Decimal(1))}
)
WAIT_S = 0.3


class _Shipper:
    """Takes the records; nothing to wait for (no write-ahead log)."""

    def __init__(self) -> None:
        self.records: list[ingest_service_pb2.IngestRecord] = []

    def submit(self, record: ingest_service_pb2.IngestRecord) -> None:
        self.records.append(record)


def _recorder() -> tuple[Recorder, _Shipper]:
    shipper = _Shipper()
    return Recorder(cast(LogShipper, shipper), None, None, False, pricing_wait_s=WAIT_S), shipper


def _exchange(fetch: asyncio.Task[OrganizationPricing]) -> Exchange:
    route = resolve_route("/v1/chat/completions", "", "https://api.openai.com/v1", "https://api.anthropic.com")
    assert route is not None
    exchange = Exchange(
        request_id="r-1",
        started_at_us=0,
        started=time.perf_counter(),
        route=route,
        options=CandelaHeaders(),
        organization_id="org",
        api_key_id="key",
        model="gpt-4o-mini",
        status=200,
        complete=True,
        pricing_fetch=fetch,
    )
    exchange.facts = facts_from_json(Provider.OPENAI, orjson.dumps(ANSWER))
    return exchange


async def _answer_after(delay_s: float) -> OrganizationPricing:
    await asyncio.sleep(delay_s)
    return OVERRIDDEN


async def test_a_fetch_that_ends_within_the_bound_prices_the_log_with_the_organizations_prices() -> None:
    recorder, shipper = _recorder()
    fetch = asyncio.get_running_loop().create_task(_answer_after(0.1))
    started = time.perf_counter()
    await recorder.log_durably(_exchange(fetch))
    assert time.perf_counter() - started < WAIT_S
    assert shipper.records[0].record.cost_usd == "0.0012", "1000 x $1 + 100 x $2 per million"


async def test_a_fetch_past_the_bound_leaves_the_log_unpriced_and_goes_on_for_the_others() -> None:
    recorder, shipper = _recorder()
    fetch = asyncio.get_running_loop().create_task(_answer_after(2.0))
    late_before = metrics.PRICING_LATE._value.get()
    started = time.perf_counter()
    await recorder.log_durably(_exchange(fetch))
    assert WAIT_S - 0.05 < time.perf_counter() - started < WAIT_S + 0.5
    record = shipper.records[0].record
    assert record.usage.prompt_tokens == 1000
    assert not record.HasField("cost_usd"), "unpriced, never priced without the organization's override"
    assert metrics.PRICING_LATE._value.get() == late_before + 1
    assert not fetch.done(), "still under way, for the requests that follow"
    fetch.cancel()


async def test_nothing_waits_for_pricing_a_log_does_not_need() -> None:
    recorder, shipper = _recorder()
    never = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    hit = _exchange(never)  # type: ignore[arg-type]
    hit.cache_hit, hit.cost_saved_usd = True, "0.5"
    failed = _exchange(never)  # type: ignore[arg-type]
    failed.status, failed.facts = 502, facts_from_json(Provider.OPENAI, b"{}")
    started = time.perf_counter()
    await recorder.log_durably(hit)
    await recorder.log_durably(failed)
    assert time.perf_counter() - started < 0.1
    assert (shipper.records[0].record.cost_usd, shipper.records[0].record.cost_saved_usd) == ("0", "0.5")
    assert not shipper.records[1].record.HasField("cost_usd")
    never.cancel()


async def test_a_request_cancelled_while_its_log_waits_does_not_cancel_the_shared_fetch() -> None:
    recorder, _ = _recorder()
    fetch = asyncio.get_running_loop().create_task(_answer_after(0.2))
    waiting = asyncio.get_running_loop().create_task(recorder.log_durably(_exchange(fetch)))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await fetch is OVERRIDDEN
