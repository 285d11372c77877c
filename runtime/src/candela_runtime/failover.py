"""Failover between the members of a replicated store: use one, move to the next when it cannot be reached,
and back to the preferred one once it answers again.

A ClickHouse cluster answers any query and takes any insert on any member (its Distributed tables route
them), so a service given several members (CANDELA_CLICKHOUSE_HOST/_PORT plus CANDELA_CLICKHOUSE_ALT_HOSTS)
stays up while one of them is down. :class:`Members` keeps the order: the member in use first, then the
others, each member that failed set aside for ``retry_after_s`` (tried again after that, never forgotten; and
tried anyway, last, when every other member failed too). :func:`run_with_failover` runs one operation on the
first member that answers. Only a connection failure (refused, reset, timed out, closed mid-answer) moves to
the next member: an error the server answered with says nothing about the member and goes to the caller.
Whether an operation may run again after it failed half-way is the caller's to say (``retry``): a read
always may; a write only if writing it twice stores it once (each caller argues it where it calls).

Failback. The configured order is the operator's preference (the first member is, say, the replica in the
service's own zone), so a service does not stay on a member it moved to: once a member configured before
the one in use has rested ``retry_after_s``, the next call tries it first, and if it answers it is the
member in use again (logged, and counted in ``candela_store_member_failbacks_total``). If it fails, it
rests again and the same call goes on to the member in use: a member still down costs one failed attempt
per rest period for each :class:`Members` (one per client: the query service's pool, each writer's sink),
which is a refused connection (nothing) or, for a silent host, one call waiting the client's connect timeout
(a few seconds) once every ``retry_after_s``; never more, because while one call tries the way back the
member counts as resting for every other call (the pool's threads do not all dial it at once). The way
back is taken between calls only, by the same rule as a failover (a call that fails half-way on the member
tried back runs again on the next one, which its caller said is safe), so it keeps every guarantee a
failover keeps; the pooled clients follow because they ask :meth:`Members.candidates` on every call and
reconnect when the member changes. The alternative, staying on the member that answered until it fails,
spares that attempt but leaves a service on a remote member for good after any blip of the local one.

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

from candela_runtime.metrics import STORE_MEMBER_FAILBACKS, STORE_MEMBER_FAILURES

logger = logging.getLogger(__name__)

T = TypeVar("T")

Address = tuple[str, int]
"""A member's (host, port)."""

MEMBER_RETRY_AFTER_S = 30.0
"""How long a member that failed is passed over before it is tried again (unless every other one fails), and
so how soon a service tries its way back to a preferred member (CANDELA_CLICKHOUSE_MEMBER_RETRY_S)."""


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
        self._trying_back: set[int] = set()
        """Members offered first as the way back whose call has not reported yet."""
        self._lock = threading.Lock()

    def candidates(self) -> list[Address]:
        """The members to try, in order: the one in use (the last that answered), then the others after it in
        the configured order, skipping those that failed less than ``retry_after_s`` ago; then those, the
        longest rested first, as a last resort. A member configured before the one in use that has rested
        goes first (the first such one; the way back, see the module's docstring), and rests again from now
        until the call reports on it, so that one call at a time tries it."""
        with self._lock:
            now = self._clock()
            count = len(self._addresses)
            ring = [(self._current + step) % count for step in range(count)]
            ready = [index for index in ring if now - self._failed_at.get(index, -float("inf")) >= self._retry_after_s]
            resting = sorted((index for index in ring if index not in ready), key=self._failed_at.__getitem__)
            way_back = min(ready) if ready and min(ready) < self._current else None
            if way_back is not None:
                ready.remove(way_back)
                ready.insert(0, way_back)
                self._failed_at[way_back] = now
                self._trying_back.add(way_back)
            return [self._addresses[index] for index in ready + resting]

    def failed(self, address: Address) -> None:
        """Sets ``address`` aside for ``retry_after_s``: it could not be reached."""
        with self._lock:
            index = self._addresses.index(address)
            self._failed_at[index] = self._clock()
            self._trying_back.discard(index)

    def succeeded(self, address: Address) -> None:
        """``address`` answered: it is the member in use from now on."""
        with self._lock:
            index = self._addresses.index(address)
            previous, self._current = self._current, index
            self._failed_at.pop(index, None)
            back = index in self._trying_back
            self._trying_back.discard(index)
        if index == previous:
            return
        if back:
            STORE_MEMBER_FAILBACKS.labels(store=self.store, member=f"{address[0]}:{address[1]}").inc()
        logger.info(
            "%s member %s:%s answers; %s (it was on %s:%s)",
            self.store,
            *address,
            "back on it, a member the configuration prefers" if back else "using it from now on",
            *self._addresses[previous],
        )

    @property
    def in_use(self) -> Address:
        """The member in use: the last that answered (the first configured one until a call ran)."""
        with self._lock:
            return self._addresses[self._current]


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
