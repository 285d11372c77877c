"""How a store failed, which decides what the writer does with the batch.

:class:`StoreUnavailable` means the store cannot take any write right now (down, unreachable, overloaded,
not migrated): the batch is retried with backoff for as long as it takes and never dead-lettered, since
nothing is wrong with the messages. :class:`StoreRejected` means the store refused the data itself: after
a bounded number of attempts the batch is split to find the messages responsible, which go to the DLQ.
"""

from __future__ import annotations

import asyncpg


class StoreUnavailable(Exception):
    """A store cannot be written now; retry the same batch later."""


class StoreRejected(Exception):
    """A store refused the data of the batch (some message in it is bad)."""


POSTGRES_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg's own confusion about a connection the server just closed: a Postgres that shuts down as a
    # transaction commits leaves the connection mid-operation, and returning it to the pool (its reset) raises
    # "cannot switch to state 15; another operation (2) is in progress". The server is going away; nothing
    # blames the data.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""What a call to Postgres raises when it fails (the statement, the connection, the pool, the deadline)."""
