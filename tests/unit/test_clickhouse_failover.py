"""Failover between store members (candela_runtime.failover): the order members are tried in, when a failed one
is tried again, and which failures move on, against real sockets on the loopback.

A member here is a real listening socket that greets each connection (up), a port nobody listens on
(refused), or a listening socket that closes each connection before answering (reset mid-call).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from candela_ingest.config import WriterConfig
from candela_query.config import QueryConfig
from candela_runtime.config import ConfigError, load_config
from candela_runtime.failover import Address, Members, parse_members, run_with_failover

pytestmark = pytest.mark.unit

GREETING = b"hello"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Listener:
    """A real server socket on 127.0.0.1: greets each connection, or (``hang_up``) closes it unanswered."""

    def __init__(self, *, hang_up: bool = False, address: Address = ("127.0.0.1", 0)) -> None:
        self.socket = socket.create_server(address)
        self.socket.settimeout(0.2)
        self.address: Address = ("127.0.0.1", self.socket.getsockname()[1])
        self.hang_up = hang_up
        self.accepted = 0
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            with connection:
                if self.hang_up:
                    # An RST rather than a FIN: what a peer killed mid-call leaves.
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                else:
                    connection.sendall(GREETING)

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.socket.close()


def refused_address() -> Address:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return ("127.0.0.1", probe.getsockname()[1])


@pytest.fixture
def up() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def hanging_up() -> Iterator[Listener]:
    listener = Listener(hang_up=True)
    yield listener
    listener.close()


def greet(address: Address) -> tuple[Address, bytes]:
    """Connects to ``address`` and reads its greeting: a read, safe to repeat."""
    with socket.create_connection(address, timeout=2) as connection:
        answer = connection.recv(16)
        if not answer:
            raise EOFError(f"{address} closed the connection before answering")
        return address, answer


def failures_of(member: Address) -> float:
    value = REGISTRY.get_sample_value(
        "candela_store_member_failures_total", {"store": "clickhouse", "member": f"{member[0]}:{member[1]}"}
    )
    return value or 0.0


def failbacks_of(member: Address, *, store: str) -> float:
    value = REGISTRY.get_sample_value(
        "candela_store_member_failbacks_total", {"store": store, "member": f"{member[0]}:{member[1]}"}
    )
    return value or 0.0


def connection_failure(error: Exception) -> bool:
    return isinstance(error, OSError | EOFError)


# --- parsing the members ---------------------------------------------------------------------------------


def test_members_are_the_host_then_the_alt_hosts_with_the_default_port() -> None:
    assert parse_members("ch1", 9000, "") == (("ch1", 9000),)
    assert parse_members("ch1", 9000, "ch2, ch3:9440,,[::1]:9001,[::1]") == (
        ("ch1", 9000),
        ("ch2", 9000),
        ("ch3", 9440),
        ("::1", 9001),
        ("::1", 9000),
    )
    assert parse_members("ch1", 9000, "ch1:9000,ch2,ch2:9000") == (("ch1", 9000), ("ch2", 9000)), "repeats dropped"


@pytest.mark.parametrize("alt_hosts", ["ch2:port", "ch2:70000", ":9000", "user@ch2", "ch2/db", "ch2:-1"])
def test_a_malformed_member_is_refused(alt_hosts: str) -> None:
    with pytest.raises(ValueError, match="bad"):
        parse_members("ch1", 9000, alt_hosts)


def test_the_services_fail_fast_on_a_malformed_member_and_read_good_ones() -> None:
    base = {
        "CANDELA_SERVICE_TOKEN": "t",
        "CANDELA_AUTH_ADDR": "a:1",
        "CANDELA_S3_ENDPOINT": "http://s3",
        "CANDELA_S3_ACCESS_KEY": "k",
        "CANDELA_S3_SECRET_KEY": "s",
        "CANDELA_KAFKA_BOOTSTRAP": "k:9092",
        "CANDELA_POSTGRES_DSN": "postgresql://p/d",
        "CANDELA_CLICKHOUSE_HOST": "ch1",
        "CANDELA_CLICKHOUSE_PORT": "9100",
    }
    with_members = {**base, "CANDELA_CLICKHOUSE_ALT_HOSTS": "ch2,ch3:9440"}
    assert load_config(QueryConfig, base).clickhouse_alt_members == ()
    assert load_config(WriterConfig, base).clickhouse_alt_members == ()
    assert load_config(QueryConfig, with_members).clickhouse_alt_members == (("ch2", 9100), ("ch3", 9440))
    assert load_config(WriterConfig, with_members).clickhouse_alt_members == (("ch2", 9100), ("ch3", 9440))
    for config_class in (QueryConfig, WriterConfig):
        with pytest.raises(ConfigError, match="CANDELA_CLICKHOUSE_ALT_HOSTS"):
            load_config(config_class, {**base, "CANDELA_CLICKHOUSE_ALT_HOSTS": "ch2:nine"})
    assert load_config(QueryConfig, base).clickhouse_member_retry_s == 30
    assert load_config(WriterConfig, base).clickhouse_member_retry_s == 30
    every_2_5_s = {**base, "CANDELA_CLICKHOUSE_MEMBER_RETRY_S": "2.5"}
    assert load_config(QueryConfig, every_2_5_s).clickhouse_member_retry_s == 2.5
    assert load_config(WriterConfig, every_2_5_s).clickhouse_member_retry_s == 2.5
    for config_class in (QueryConfig, WriterConfig):
        with pytest.raises(ConfigError, match="CANDELA_CLICKHOUSE_MEMBER_RETRY_S"):
            load_config(config_class, {**base, "CANDELA_CLICKHOUSE_MEMBER_RETRY_S": "0"})


# --- the order members are tried in ---------------------------------------------------------------------


def test_a_failed_member_is_passed_over_then_tried_again_after_its_rest() -> None:
    clock = Clock()
    a, b, c = ("a", 1), ("b", 1), ("c", 1)
    members = Members([a, b, c], retry_after_s=30, clock=clock)
    assert members.candidates() == [a, b, c]

    members.failed(a)
    assert members.candidates() == [b, c, a], "the failed member last, as a last resort"
    members.succeeded(b)
    assert members.candidates() == [b, c, a]

    clock.now += 29
    assert members.candidates() == [b, c, a]
    members.failed(b)
    assert members.candidates() == [c, a, b], "the next one in use; the first still rests (a second)"
    members.succeeded(c)
    assert members.in_use == c


def test_once_a_preferred_member_rested_the_next_call_tries_it_first_and_stays_if_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    a, b, c = ("a", 1), ("b", 1), ("c", 1)
    members = Members([a, b, c], retry_after_s=30, clock=clock)
    members.failed(a)
    members.succeeded(b)
    clock.now += 30
    before = failbacks_of(a, store="clickhouse")
    assert members.candidates() == [a, b, c], "the way back: the preferred member first, the one in use next"
    # While that call tries it, the other calls stay on the member in use (one attempt, not one per thread).
    assert members.candidates() == [b, c, a]
    with caplog.at_level(logging.INFO, logger="candela_runtime.failover"):
        members.succeeded(a)
    assert members.in_use == a
    assert members.candidates() == [a, b, c]
    assert failbacks_of(a, store="clickhouse") == before + 1, "counted (candela_store_member_failbacks_total)"
    assert [record.getMessage() for record in caplog.records] == [
        "clickhouse member a:1 answers; back on it, a member the configuration prefers (it was on b:1)"
    ]


def test_a_preferred_member_still_down_costs_one_attempt_per_rest_period() -> None:
    clock = Clock()
    a, b = ("a", 1), ("b", 1)
    members = Members([a, b], retry_after_s=30, clock=clock)
    members.failed(a)
    members.succeeded(b)
    tried_a = 0
    for _ in range(90):  # 90 s of calls, one a second
        clock.now += 1
        candidates = members.candidates()
        if candidates[0] == a:
            tried_a += 1
            members.failed(a)  # still down
        members.succeeded(b)
    assert tried_a == 3, "once every 30 s"
    assert members.in_use == b


def test_the_way_back_steps_to_the_most_preferred_rested_member() -> None:
    clock = Clock()
    a, b, c = ("a", 1), ("b", 1), ("c", 1)
    members = Members([a, b, c], retry_after_s=30, clock=clock)
    members.failed(a)
    clock.now += 10
    members.failed(b)
    members.succeeded(c)
    clock.now += 25  # a rested, b not yet
    assert members.candidates() == [a, c, b]
    members.failed(a)  # a is still down: b is next once it rested, while c stays in use meanwhile
    assert members.candidates() == [c, b, a]
    clock.now += 5
    assert members.candidates() == [b, c, a]
    members.succeeded(b)
    assert members.in_use == b
    clock.now += 30
    assert members.candidates() == [a, b, c]


def test_a_member_before_the_one_in_use_reached_by_failing_over_is_no_way_back() -> None:
    """Moving on from the last member wraps to the first: a failover, which is not counted as a way back."""
    a, b = ("a", 1), ("b", 1)
    members = Members([a, b], store="failover-wrap")
    members.failed(a)
    members.succeeded(b)
    members.failed(b)
    assert members.candidates() == [a, b], "a rested longest: the last resort's order"
    members.succeeded(a)
    assert members.in_use == a
    assert failbacks_of(a, store="failover-wrap") == 0


def test_an_error_the_preferred_member_answers_with_leaves_the_service_where_it_is() -> None:
    clock = Clock()
    a, b = ("a", 1), ("b", 1)
    members = Members([a, b], retry_after_s=30, clock=clock)
    members.failed(a)
    members.succeeded(b)
    clock.now += 30

    def rejected(address: Address) -> Address:
        if address == a:
            raise ValueError("the server refused the statement")
        return address

    with pytest.raises(ValueError, match="refused the statement"):
        run_with_failover(members, rejected, is_connection_failure=connection_failure, retry=True)
    assert members.in_use == b
    assert run_with_failover(members, rejected, is_connection_failure=connection_failure, retry=True) == b, (
        "tried back again only after another rest"
    )
    clock.now += 30
    assert members.candidates()[0] == a


def test_when_every_member_failed_the_longest_rested_is_tried_first() -> None:
    clock = Clock()
    a, b = ("a", 1), ("b", 1)
    members = Members([a, b], retry_after_s=30, clock=clock)
    members.failed(b)
    clock.now += 5
    members.failed(a)
    assert members.candidates() == [b, a]
    members.succeeded(a)
    assert members.candidates() == [a, b], "a member that answered is in use and rested no more"


# --- failing over, on real sockets ----------------------------------------------------------------------


def test_a_refused_member_is_skipped_and_the_call_answered_by_the_next(up: Listener) -> None:
    dead = refused_address()
    members = Members([dead, up.address], store="clickhouse")
    assert failures_of(dead) == 0
    assert run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True) == (
        up.address,
        GREETING,
    )
    assert members.candidates() == [up.address, dead], "the live member is in use, the dead one rests"
    assert failures_of(dead) == 1, "counted for the operator (candela_store_member_failures_total)"
    # The next calls go straight to the live member: the dead one is not dialled again during its rest.
    before = up.accepted
    for _ in range(3):
        run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)
    assert up.accepted == before + 3


def test_a_member_that_hangs_up_mid_call_is_left_for_the_next(up: Listener, hanging_up: Listener) -> None:
    members = Members([hanging_up.address, up.address])
    assert run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)[0] == up.address
    assert hanging_up.accepted == 1, "the call reached the first member, which failed it"


def test_without_retry_the_failure_is_the_callers_and_the_next_call_goes_to_the_next_member(
    up: Listener, hanging_up: Listener
) -> None:
    members = Members([hanging_up.address, up.address])
    with pytest.raises((ConnectionResetError, EOFError)):
        run_with_failover(members, greet, is_connection_failure=connection_failure, retry=False)
    assert up.accepted == 0, "not run twice"
    assert run_with_failover(members, greet, is_connection_failure=connection_failure, retry=False)[0] == up.address


def test_a_member_back_from_its_rest_is_used_again_when_the_other_fails() -> None:
    clock = Clock()
    first = Listener()
    second = Listener()
    try:
        members = Members([first.address, second.address], retry_after_s=30, clock=clock)
        first_address = first.address
        first.close()  # the first member dies: its port now refuses
        assert run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)[0] == (
            second.address
        )
        # It comes back on the same port while the second dies; past its rest, the first answers again.
        revived = socket.create_server(first_address)
        second.close()
        clock.now += 30
        done: list[tuple[Address, bytes]] = []

        def serve_once() -> None:
            connection, _ = revived.accept()
            with connection:
                connection.sendall(GREETING)

        server = threading.Thread(target=serve_once)
        server.start()
        done.append(run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True))
        server.join()
        revived.close()
        assert done == [(first_address, GREETING)]
    finally:
        first.close()
        second.close()


def test_a_service_returns_to_the_first_member_once_it_is_back(up: Listener) -> None:
    """On real sockets: the first member dies, calls go to the second; once the first listens again and has
    rested, the next call is answered by it, and the calls after it too."""
    clock = Clock()
    first = Listener()
    first_address = first.address
    members = Members([first_address, up.address], retry_after_s=30, clock=clock)
    first.close()
    assert run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)[0] == up.address
    clock.now += 30
    # Still down past its rest: one call tries it (refused), and is answered by the member in use.
    failures = failures_of(first_address)
    assert run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)[0] == up.address
    assert failures_of(first_address) == failures + 1
    revived = Listener(address=first_address)
    try:
        assert run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)[0] == (
            up.address
        ), "resting again after that attempt"
        clock.now += 30
        before = up.accepted
        for _ in range(3):
            assert run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)[0] == (
                first_address
            )
        assert revived.accepted == 3
        assert up.accepted == before, "back on the first member: the second is not called"
    finally:
        revived.close()


def test_every_member_down_fails_with_the_last_failure() -> None:
    members = Members([refused_address(), refused_address()])
    with pytest.raises(ConnectionRefusedError):
        run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)
    # And the next call tries them again rather than failing without dialling.
    with pytest.raises(ConnectionRefusedError):
        run_with_failover(members, greet, is_connection_failure=connection_failure, retry=True)


def test_an_error_the_member_answered_with_is_not_a_reason_to_move(up: Listener) -> None:
    members = Members([up.address, refused_address()])

    def rejected(address: Address) -> None:
        greet(address)
        raise ValueError("the server refused the statement")

    with pytest.raises(ValueError, match="refused the statement"):
        run_with_failover(members, rejected, is_connection_failure=connection_failure, retry=True)
    assert members.candidates()[0] == up.address, "the member stays in use"
    assert up.accepted == 1, "not retried"
