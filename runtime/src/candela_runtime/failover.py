"""Failover between the members of a replicated store: use one, move to the next when it cannot be reached.

A ClickHouse cluster answers any query and takes any insert on any member (its Distributed tables route
them), so a service given several members (CANDELA_CLICKHOUSE_HOST/_PORT plus CANDELA_CLICKHOUSE_ALT_HOSTS)
stays up while one of them is down. :class:`Members` keeps the order: the member in use first, then the
others, each member that failed set aside for ``retry_after_s`` (tried again after that, never forgotten; and
tried anyway, last, when every other member failed too). :func:`run_with_failover` runs one operation on the
first member that answers. Only a connection failure (refused, reset, timed out, closed mid-answer) moves to
the next member: an error the server answered with says nothing about the member and goes to the caller.
Whether an operation may run again after it failed half-way is the caller's to say (``retry``): a read
always may; a write only if writing it twice stores it once (each caller argues it where it calls).

A timeout counts as a connection failure although it cannot tell a member gone silent (a host down, a
network split: no reset comes) from a slow call: the clients' timeouts (seconds to connect, 30-60 s to
answer) are far above what any of their calls takes, and a query too heavy for its member fails with the
server's own TIMEOUT_EXCEEDED (max_execution_time), an answer, which does not move.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

from candela_runtime.metrics import STORE_MEMBER_FAILURES

logger = logging.getLogger(__name__)

T = TypeVar("T")

Address = tuple[str, int]
"""A member's (host, port)."""

MEMBER_RETRY_AFTER_S = 30.0
"""How long a member that failed is passed over before it is tried again (unless every other one fails)."""


def parse_members(host: str, port: int, alt_hosts: str) -> tuple[Address, ...]:
    """The members named by a host and port plus ``alt_hosts``, comma-separated ``host[:port]`` (the port
    defaults to ``port``; an IPv6 host goes in brackets, ``[::1]:9000``): clickhouse-driver's own
    ``alt_hosts`` syntax. The first member is ``host:port``; repeats are dropped. Raises ValueError."""
    members = [(host, _port(port, host))]
    for item in (part.strip() for part in alt_hosts.split(",")):
        if not item:
            continue
        try:
            parsed = urlsplit(f"clickhouse://{item}")
            member = (parsed.hostname or "", parsed.port or port)
        except ValueError as error:  # a port that is no number or out of range
            raise ValueError(f"bad ClickHouse member {item!r}: {error}") from None
        if not member[0] or parsed.path or parsed.username is not None:
            raise ValueError(f"bad ClickHouse member {item!r}: expected host or host:port")
        if member not in members:
            members.append(member)
    return tuple(members)


def _port(port: int, host: str) -> int:
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port} for {host}")
    return port


class Members:
    """The members of one store in the order to try them; thread-safe (a pool's threads share it)."""

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        store: str = "clickhouse",
        retry_after_s: float = MEMBER_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not addresses:
            raise ValueError("a store needs at least one member")
        self._addresses = tuple(dict.fromkeys(addresses))
        self.store = store
        """The store's name in logs and metrics."""
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._current = 0
        self._failed_at: dict[int, float] = {}
        self._lock = threading.Lock()

    def candidates(self) -> list[Address]:
        """The members to try, in order: the one in use (the last that answered), then the others after it in
        the configured order, skipping those that failed less than ``retry_after_s`` ago; then those, the
        longest rested first, as a last resort."""
        with self._lock:
            now = self._clock()
            count = len(self._addresses)
            ring = [(self._current + step) % count for step in range(count)]
            ready = [index for index in ring if now - self._failed_at.get(index, -float("inf")) >= self._retry_after_s]
            resting = sorted((index for index in ring if index not in ready), key=self._failed_at.__getitem__)
            return [self._addresses[index] for index in ready + resting]

    def failed(self, address: Address) -> None:
        """Sets ``address`` aside for ``retry_after_s``: it could not be reached."""
        with self._lock:
            self._failed_at[self._addresses.index(address)] = self._clock()

    def succeeded(self, address: Address) -> None:
        """``address`` answered: it is the member in use from now on."""
        with self._lock:
            index = self._addresses.index(address)
            self._current = index
            self._failed_at.pop(index, None)


def run_with_failover(
    members: Members,
    operation: Callable[[Address], T],
    *,
    is_connection_failure: Callable[[Exception], bool],
    retry: bool,
) -> T:
    """``operation(member)`` on the members in :meth:`Members.candidates` order until one answers.

    A connection failure sets the member aside and, with ``retry``, runs the operation again on the next
    member; without it, the failure goes to the caller (the next call starts on the next member). Any other
    error goes to the caller at once. When every member failed, the last failure goes to the caller.
    """
    failure: Exception | None = None
    for address in members.candidates():
        try:
            result = operation(address)
        except Exception as error:
            if not is_connection_failure(error):
                raise
            members.failed(address)
            STORE_MEMBER_FAILURES.labels(store=members.store, member=f"{address[0]}:{address[1]}").inc()
            logger.warning(
                "%s member %s:%s failed (%s); %s", members.store, *address, _one_line(error), _next_step(retry)
            )
            if not retry:
                raise
            failure = error
            continue
        members.succeeded(address)
        return result
    assert failure is not None, "a Members has at least one address"
    raise failure


def _next_step(retry: bool) -> str:
    return "trying the next member" if retry else "the next call goes to the next member"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__
