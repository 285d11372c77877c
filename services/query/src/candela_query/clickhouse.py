"""A small pool of blocking clickhouse-driver clients, used from worker threads off the event loop.

Cluster mode (``cluster=``, CANDELA_CLICKHOUSE_CLUSTER): the tables the queries name are Distributed tables
over each shard's replicated table (``candela_schema.migrator.cluster_statements``), so every query reads
the whole cluster unchanged, and stays exact because every version of a request (and its scores) is on one
shard, chosen by a hash of its request id:
- ``FROM requests FINAL`` runs FINAL on each shard, which merges all of a request's versions there;
- ``argMax(.., version) .. GROUP BY request_id`` (RowReads, scores) merges partial states across shards,
  exact whatever the placement;
- a join of requests to their scores runs on each shard against that shard's scores
  (``distributed_product_mode = 'local'``), which holds every score of its requests;
- the copy-free proofs count (created_at_us, request_id) pairs and sum versions over the whole cluster,
  and read each member's parts directly (:func:`cluster_members`): which replica a Distributed read meets
  is unknown, so a proof must hold on every one (see candela_query.copy_free_proofs).
Reads never leave a shard out: ``skip_unavailable_shards`` stays off, so a shard with no live replica fails
the query (UNAVAILABLE to the caller) rather than answering with part of the numbers, and a replica more
than a few seconds behind its shard is passed over for a fresh one.
"""

from __future__ import annotations

import asyncio
import functools
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from candela_runtime.errors import Unavailable
from candela_runtime.failover import MEMBER_RETRY_AFTER_S, Address, Members, run_with_failover

CLUSTER_SETTINGS: dict[str, Any] = {
    "distributed_product_mode": "local",
    # A replica that missed writes (back from an outage, still fetching) is not read while a fresh one
    # answers; if none is fresh, the query fails rather than answering with rows missing.
    "max_replica_delay_for_distributed_queries": 5,
    "fallback_to_stale_replicas_for_distributed_queries": 0,
    # The copy-free proofs are recorded through the Distributed table: written on the shard at once.
    "insert_distributed_sync": 1,
}
"""Settings of every query in cluster mode."""

_UNAVAILABLE_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        279,  # ALL_CONNECTION_TRIES_FAILED: every replica of a shard is down
        285,  # TOO_FEW_LIVE_REPLICAS
        369,  # ALL_REPLICAS_ARE_STALE: no replica of a shard known to be fresh (e.g. ZooKeeper down)
        319,  # UNKNOWN_STATUS_OF_INSERT
        242,  # TABLE_IS_READ_ONLY (ZooKeeper unreachable)
        225,  # NO_ZOOKEEPER
        999,  # KEEPER_EXCEPTION
        3,  # UNEXPECTED_END_OF_FILE (a server gone mid-answer)
        32,  # ATTEMPT_TO_READ_AFTER_EOF
    }
)


def is_connection_failure(error: Exception) -> bool:
    """Whether a failed call could not reach its member (refused, reset, timed out, closed mid-answer), as
    opposed to an error the member answered with."""
    return isinstance(error, _CONNECTION_FAILURES)


_CONNECTION_FAILURES = (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError, EOFError)


class _Connection:
    """One pooled client and the member it talks to."""

    def __init__(self) -> None:
        self.member: Address | None = None
        self.client: Client | None = None


class ClickHouseReader:
    """Runs parameterised queries on a pool of native-protocol connections in threads.

    Given several members (cluster mode), the pool talks to one and moves to the next on a connection
    failure (:mod:`candela_runtime.failover`), running the query again there: a read changes nothing, so
    running it twice is always safe, and every member answers it for the whole cluster. Each query asks the
    members which to use, and a pooled connection whose member is no longer the one to use reconnects, so the
    pool also moves back to a preferred member once it answers again (after ``member_retry_s``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        database: str,
        connections: int,
        *,
        user: str = "default",
        password: str = "",
        cluster: str = "",
        alt_members: Sequence[Address] = (),
        member_retry_s: float = MEMBER_RETRY_AFTER_S,
    ) -> None:
        self._members = Members([(host, port), *alt_members], retry_after_s=member_retry_s)
        self._connect = functools.partial(
            Client,
            database=database,
            user=user,
            password=password,
            connect_timeout=5,
            send_receive_timeout=30,
            settings=CLUSTER_SETTINGS if cluster else None,
        )
        self._connections: queue.Queue[_Connection] = queue.Queue()
        for _ in range(connections):
            self._connections.put(_Connection())

    def _run(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        connection = self._connections.get()
        try:
            return run_with_failover(
                self._members,
                functools.partial(self._execute, connection, sql, params),
                is_connection_failure=is_connection_failure,
                retry=True,
            )
        except ch_errors.ServerException as error:
            if error.code in _UNAVAILABLE_CODES:
                raise Unavailable(f"ClickHouse cannot answer now (code {error.code}); retry") from error
            raise
        except _CONNECTION_FAILURES as error:
            raise Unavailable("ClickHouse is unreachable; retry") from error
        finally:
            self._connections.put(connection)

    def _execute(
        self, connection: _Connection, sql: str, params: dict[str, Any], member: Address
    ) -> list[tuple[Any, ...]]:
        if connection.member != member or connection.client is None:
            if connection.client is not None:
                connection.client.disconnect()
            connection.client = self._connect(host=member[0], port=member[1])
            connection.member = member
        rows: list[tuple[Any, ...]] = connection.client.execute(sql, params)
        return rows

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` with ``params`` bound by the driver (never by string formatting); Unavailable when
        ClickHouse (or, in cluster mode, every replica of a shard) cannot answer now."""
        return await asyncio.to_thread(self._run, sql, params)

    def close(self) -> None:
        """Closes every connection."""
        while not self._connections.empty():
            client = self._connections.get_nowait().client
            if client is not None:
                client.disconnect()


@dataclass(frozen=True)
class ClusterMember:
    """One replica of one shard of the cluster, read directly (its own ``<table>_local`` tables)."""

    shard: int
    address: str
    """host:port, as the cluster's ``<remote_servers>`` names it."""
    reader: ClickHouseReader


async def cluster_members(
    reader: ClickHouseReader, cluster: str, database: str, *, connections: int, user: str, password: str
) -> list[ClusterMember]:
    """A reader for each member of ``cluster``, as the server ``reader`` talks to knows them
    (system.clusters). The caller closes their readers."""
    rows = await reader.fetch(
        "SELECT shard_num, host_name, port FROM system.clusters WHERE cluster = %(cluster)s"
        " ORDER BY shard_num, replica_num",
        {"cluster": cluster},
    )
    if not rows:
        raise ValueError(f"the ClickHouse server knows no cluster {cluster!r} (see its <remote_servers>)")
    return [
        ClusterMember(
            int(shard),
            f"{host}:{port}",
            ClickHouseReader(str(host), int(port), database, connections, user=user, password=password),
        )
        for shard, host, port in rows
    ]
