"""A small pool of blocking clickhouse-driver clients, used from worker threads off the event loop."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

from clickhouse_driver import Client


class ClickHouseReader:
    """Runs parameterised queries on a pool of native-protocol connections in threads."""

    def __init__(
        self, host: str, port: int, database: str, connections: int, *, user: str = "default", password: str = ""
    ) -> None:
        self._clients: queue.Queue[Client] = queue.Queue()
        for _ in range(connections):
            self._clients.put(
                Client(
                    host=host,
                    port=port,
                    database=database,
                    user=user,
                    password=password,
                    connect_timeout=5,
                    send_receive_timeout=30,
                )
            )

    def _run(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        client = self._clients.get()
        try:
            rows: list[tuple[Any, ...]] = client.execute(sql, params)
            return rows
        finally:
            self._clients.put(client)

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` with ``params`` bound by the driver (never by string formatting)."""
        return await asyncio.to_thread(self._run, sql, params)

    def close(self) -> None:
        """Closes every connection."""
        while not self._clients.empty():
            self._clients.get_nowait().disconnect()
