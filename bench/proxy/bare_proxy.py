"""The floor under any aiohttp-based proxy: forward and answer, nothing else (no auth, parsing, logging).

Run by ``bench_proxy.py`` beside Candela so the report shows how much of Candela's cost is aiohttp and
uvloop themselves: ``python bare_proxy.py <port> <upstream base url>``.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

_SKIPPED = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})


async def main(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIPPED}
        async with session.post(upstream + request.path, data=body, headers=headers) as answer:
            payload = await answer.read()
            reply = {k: v for k, v in answer.headers.items() if k.lower() not in _SKIPPED}
            return web.Response(body=payload, status=answer.status, headers=reply)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM ends the process
    finally:
        await runner.cleanup()
        await session.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
