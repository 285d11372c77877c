"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from candela_stack.fake_provider import create_app


@pytest.fixture
async def fake_provider_url() -> AsyncIterator[str]:
    """The fake provider (every provider API it speaks) on a free loopback port, in this test's event loop."""
    runner = web.AppRunner(create_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()
