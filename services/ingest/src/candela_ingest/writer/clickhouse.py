"""The ClickHouse requests table, written with clickhouse-driver (native protocol) on its own thread.

clickhouse-driver is blocking and its client is not thread-safe, so every call runs on one dedicated
worker thread: the event loop never waits on ClickHouse and calls never interleave on the connection.
Inserts are parameterised (rows sent in native blocks), never an inline VALUES string. The driver's
connection carries them, but their blocks are encoded by :mod:`candela_ingest.writer.native` from the
column lists as they are, by name (the driver's own encoder spent ~12 us of CPU per row on it).

Cluster mode (``cluster=``, CANDELA_CLICKHOUSE_CLUSTER): rows go through the Distributed tables (named as
the single-node tables; see ``candela_schema.migrator.cluster_statements``) with ``insert_distributed_sync``,
so an insert returns only once every shard's part of it is written on a replica of that shard, and the
writer commits its Kafka offsets only after that: an acknowledged row is on a shard, never in a node's
send queue. The Distributed table routes each row by the sharding key (a hash of the request id), so
every version of a request, and its scores, land on one shard, which the writer does not need to know.
(Inserting into the shards' local tables directly would save the hop but copy the sharding function and
the cluster's layout into the writer, and get them wrong the day an operator adds a shard.) Retention's
deletes run on each shard's own table, on one replica of it (ClickHouse replicates each mutation).
"""

from __future__ import annotations

import asyncio
import functools
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from clickhouse_driver import Client, defines
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.block import ColumnOrientedBlock
from clickhouse_driver.protocol import ClientPacketTypes
from clickhouse_driver.varint import write_varint
from clickhouse_driver.writer import write_binary_str

from candela_ingest.writer.errors import StoreRejected, StoreUnavailable
from candela_ingest.writer.native import driver_encoding, encode_block
from candela_ingest.writer.rows import (
    REQUESTS_TABLE,
    SCORE_COLUMNS,
    RequestColumns,
    Row,
    insert_statement,
    scores_insert_statement,
)
from candela_runtime.failover import MEMBER_RETRY_AFTER_S, Address, Members, run_with_failover
from candela_schema.migrator import LOCAL_SUFFIX, MigrationError, run_on_each_shard

T = TypeVar("T")

# Server error codes that blame the data sent, not the server: parse failures, type mismatches and
# out-of-range values. Every other failure (connection, timeout, memory, too many parts, missing table,
# authentication) says the server cannot take writes now, which is never a reason to dead-letter.
REJECTED_DATA_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        43,  # ILLEGAL_TYPE_OF_ARGUMENT
        53,  # TYPE_MISMATCH (also raised by the driver itself when a value does not fit its column)
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        190,  # SIZES_OF_ARRAYS_DOESNT_MATCH
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        376,  # CANNOT_PARSE_UUID
        407,  # DECIMAL_OVERFLOW
    }
)


CLUSTER_SETTINGS = {
    # An insert returns once each shard's rows are written (on one replica; replication copies them on).
    "insert_distributed_sync": 1,
}
"""Settings of a writer's connection in cluster mode."""


def classify_clickhouse_error(error: BaseException) -> StoreRejected | StoreUnavailable:
    """Whether a failed ClickHouse call blamed the data (rejected) or the server (unavailable)."""
    if isinstance(error, ch_errors.Error):
        code = getattr(error, "code", None)
        if code in REJECTED_DATA_CODES:
            return StoreRejected(f"ClickHouse rejected the rows (code {code}): {_first_line(error)}")
        return StoreUnavailable(f"ClickHouse failed (code {code}): {_first_line(error)}")
    if isinstance(error, ValueError | TypeError | OverflowError | struct.error):
        # Raised while a value is encoded into its column: the value is bad.
        return StoreRejected(f"a row does not fit the requests table: {error!r}")
    return StoreUnavailable(f"ClickHouse is unreachable: {error!r}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    # Server exceptions carry the server's stack trace after the message.
    return text.split("Stack trace:", 1)[0].strip().replace("\n", " ")[:500]


def _send_block(connection: Any, block: bytes) -> None:
    """The driver's ``Connection.send_data`` for a block already encoded: one Data packet."""
    write_varint(ClientPacketTypes.DATA, connection.fout)
    if connection.server_info.used_revision >= defines.DBMS_MIN_REVISION_WITH_TEMPORARY_TABLES:
        write_binary_str("", connection.fout)  # the name of a temporary table; none
    connection.fout.write(block)
    connection.fout.flush()


def _execute(client: Client, statement: str, params: Any = None) -> Any:
    return client.execute(statement, params)


def is_connection_failure(error: Exception) -> bool:
    """Whether a failed call could not reach its member (refused, reset, timed out, closed mid-answer), as
    opposed to an error the member answered with (which the next member would answer too)."""
    return isinstance(error, ch_errors.NetworkError | ch_errors.SocketTimeoutError | OSError | EOFError)


def columns_of(rows: Sequence[Row]) -> list[list[Any]]:
    """Rows transposed into columns (lists); runs in C (``zip``)."""
    return [list(column) for column in zip(*rows, strict=True)]


class ClickHouseRowSink:
    """Inserts rows into the ``requests`` table."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        database: str,
        user: str,
        password: str,
        table: str = REQUESTS_TABLE,
        cluster: str = "",
        connect_timeout_s: float = 3.0,
        send_receive_timeout_s: float = 60.0,
        alt_members: Sequence[Address] = (),
        member_retry_s: float = MEMBER_RETRY_AFTER_S,
    ) -> None:
        self._table = table
        self._cluster = cluster
        self._database = database
        self._insert = insert_statement(table)
        self._insert_scores = scores_insert_statement()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._connect = functools.partial(
            Client,
            database=database,
            user=user,
            password=password,
            client_name="candela-writer",
            connect_timeout=connect_timeout_s,
            send_receive_timeout=send_receive_timeout_s,
            settings=CLUSTER_SETTINGS if cluster else None,
        )
        self._members = Members([(host, port), *alt_members], retry_after_s=member_retry_s)
        self._member, self._client = (host, port), self._connect(host=host, port=port)
        if self._client.connection.compression:
            # _send_block writes the block as it is; a compressed connection would need it compressed.
            raise ValueError("ClickHouseRowSink does not support a compressed ClickHouse connection")

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(client, *args, **kwargs)`` on the worker thread, on the first member that answers.

        Every call may run again on the next member after a connection failure (:mod:`candela_runtime.failover`),
        because each is safe to run twice:
        - an insert that failed half-way may have stored its rows on some shards; written again (through any
          member: the Distributed table sends each row to its shard by request id, whichever member routes
          it), each row is a second copy of the same version of the same request on the same shard, which
          ReplacingMergeTree collapses (the reads use FINAL or argMax; it is what a redelivered Kafka message
          does already), and a replicated table drops an identical block outright (insert deduplication);
          the index views it feeds are read for min() and max() only, which a copy leaves as they are.
          Usage is counted in Postgres in the transaction held open around the insert
          (:mod:`candela_ingest.writer.postgres`), which commits once, after the insert that succeeded: the
          copy is never counted. Scores are a ReplacingMergeTree(version) by score too.
        - a retention delete (a mutation with a WHERE) deletes nothing more the second time;
        - the rest are reads.

        The same holds for the way back to a preferred member (:class:`~candela_runtime.failover.Members`): it
        is taken when a call starts, never within one, and a call cut off on the member it went back to runs
        again on the next as above.
        """
        loop = asyncio.get_running_loop()

        def operation(member: Address) -> T:
            return self._on_member(function, *args, member=member, **kwargs)

        try:
            return await loop.run_in_executor(
                self._executor,
                functools.partial(
                    run_with_failover,
                    self._members,
                    operation,
                    is_connection_failure=is_connection_failure,
                    retry=True,
                ),
            )
        except (
            ch_errors.Error,
            OSError,
            EOFError,
            ValueError,
            TypeError,
            OverflowError,
            struct.error,
            MigrationError,  # no replica of a shard answered (run_on_each_shard)
        ) as err:
            raise classify_clickhouse_error(err) from err

    def _on_member(self, function: Callable[..., T], *args: Any, member: Address, **kwargs: Any) -> T:
        """Runs on the worker thread: ``function`` with a client of ``member`` (made anew when it changes)."""
        if member != self._member:
            self._client.disconnect()
            self._member, self._client = member, self._connect(host=member[0], port=member[1])
        return function(self._client, *args, **kwargs)

    async def insert(self, columns: RequestColumns) -> None:
        """One columnar insert of a batch's rows (:func:`~candela_ingest.writer.rows.request_columns`)."""
        if columns.count:
            await self._run(self._insert_columns, self._insert, columns)

    async def insert_scores(self, rows: Sequence[Row]) -> None:
        """One insert of score rows into ``request_scores``."""
        if rows:
            await self._run(
                self._insert_columns, self._insert_scores, dict(zip(SCORE_COLUMNS, columns_of(rows), strict=True))
            )

    @staticmethod
    def _insert_columns(client: Client, statement: str, columns: Mapping[str, Sequence[Any]]) -> None:
        """Runs on the worker thread: what the driver's ``Client.execute`` does for a columnar INSERT (its
        ``process_insert_query``), with the block encoded by :func:`~candela_ingest.writer.native.encode_block`.

        As ``execute`` does, it connects first if need be and disconnects on any error, so the next call
        starts on a fresh connection (an insert that failed half-way leaves it unusable). The block is
        encoded for the types the server names in its sample block, so it matches the table whatever the
        server's version, and each column's values are taken by the name the server gives it. A batch is
        one block (the driver splits at ``insert_block_size``, a million rows; batches are far smaller). A
        value that does not fit its column raises ValueError, TypeError, OverflowError or struct.error
        (rejected data), as the driver's encoder did without ``types_check``.
        """
        with client.disconnect_on_error(statement, None):
            connection = client.connection
            connection.send_query(statement)
            connection.send_external_tables(None)  # none: only the empty block that ends them
            sample = client.receive_sample_block()
            revision = connection.server_info.used_revision
            block = encode_block(
                sample.columns_with_types,
                [columns[name] for name, _ in sample.columns_with_types],
                functools.partial(driver_encoding, connection.context),
                block_info=revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO,
                custom_serialization=revision >= defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION,
            )
            _send_block(connection, block)
            client.receive_profile_events()
            connection.send_data(ColumnOrientedBlock())  # an empty block ends the data
            client.receive_profile_events()
            client.receive_end_of_insert_query()

    async def delete_older_than(self, organization_id: uuid.UUID, cutoff: datetime) -> None:
        """Deletes the organization's rows created before ``cutoff`` (a background mutation; idempotent)."""
        statement = (
            f"ALTER TABLE {self._altered_table} DELETE "
            "WHERE organization_id = toUUID(%(organization)s) AND created_at < toDateTime(%(cutoff)s, 'UTC')"
        )
        params = {"organization": str(organization_id), "cutoff": int(cutoff.timestamp())}
        await self._alter(statement, params)

    async def partitions(self) -> list[str]:
        """The active monthly partitions (YYYYMM) of the table."""
        parts = f"cluster('{self._cluster}', system, parts)" if self._cluster else "system.parts"
        result = await self._run(
            _execute,
            f"SELECT DISTINCT partition FROM {parts} WHERE database = %(d)s AND table = %(t)s"
            " AND active ORDER BY partition",
            {"d": self._database, "t": f"{self._table}{LOCAL_SUFFIX}" if self._cluster else self._table},
        )
        return [str(row[0]).strip("'") for row in result]

    async def organizations_in_partition(self, partition: str) -> set[uuid.UUID]:
        """The organizations with rows in one monthly partition."""
        result = await self._run(
            _execute,
            f"SELECT DISTINCT organization_id FROM {self._table} WHERE toYYYYMM(created_at) = %(p)s",
            {"p": int(partition)},
        )
        return {uuid.UUID(str(row[0])) for row in result}

    async def drop_partition(self, partition: str) -> None:
        """Drops one monthly partition (its id is a YYYYMM number)."""
        if self._cluster:
            # 18.16 hands a replicated DROP PARTITION to the shard's leader replica over a connection
            # without the user's password, which a stack with a password refuses; a delete of the month
            # (its rows are already deleted by then, so the mutation rewrites nothing) works on every server.
            await self._alter(
                f"ALTER TABLE {self._altered_table} DELETE WHERE toYYYYMM(created_at) = %(p)s", {"p": int(partition)}
            )
            return
        await self._alter(f"ALTER TABLE {self._table} DROP PARTITION {int(partition)}")

    @property
    def _altered_table(self) -> str:
        """The table an ALTER changes: the table itself, or in cluster mode each shard's own table."""
        return f"{self._database}.{self._table}{LOCAL_SUFFIX}" if self._cluster else self._table

    async def _alter(self, statement: str, params: dict[str, Any] | None = None) -> None:
        """Runs an ALTER: on the server, or in cluster mode once per shard (replication does the rest)."""
        if not self._cluster:
            await self._run(_execute, statement, params)
            return
        await self._run(run_on_each_shard, self._connect_member, self._cluster, statement, params)

    def _connect_member(self, host: str, port: int) -> Client:
        return self._connect(host=host, port=port)

    async def check(self) -> None:
        """Raises StoreUnavailable unless the server answers and the table exists (readiness)."""
        result = await self._run(_execute, f"EXISTS TABLE {self._table}")
        if not result or not result[0][0]:
            raise StoreUnavailable(f"the ClickHouse table {self._table} does not exist (migrations not applied?)")

    async def close(self) -> None:
        """Closes the connection and the worker thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._client.disconnect)
        self._executor.shutdown(wait=True)
