"""The proxy's worker supervisor: restarts, ordered stop, give-up, slot directories and their locks.

The supervisor runs real child processes here (small Python scripts standing in for workers: what is
tested is the supervision, not the proxy); the proxy itself with several workers is tested end to end in
tests/e2e/test_proxy_workers.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from candela_proxy.config import ProxyConfig
from candela_proxy.spool import Spool
from candela_proxy.supervisor import (
    SlotLock,
    WorkerRole,
    adopt_orphaned_slots,
    slot_config,
    slot_dir,
)
from candela_proxy.wal import WriteAheadLog
from candela_runtime.workers import (
    RestartPolicy,
    Spawn,
    Supervisor,
    WorkerProcess,
    worker_count,
)

pytestmark = pytest.mark.unit

# A worker that runs until SIGTERM, then exits with the status given (0: a clean stop); once its handler is
# in place it creates a file named by its PID in the directory given (see _handlers_installed).
SERVES = (
    "import os, signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit({status}))\n"
    "open(os.path.join({ready!r}, str(os.getpid())), 'w').close()\ntime.sleep(60)\n"
)
IGNORES_SIGTERM = (
    "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "open(os.path.join({ready!r}, str(os.getpid())), 'w').close()\ntime.sleep(60)\n"
)
FAILS = "import sys\nsys.exit(3)\n"


def proxy_config(**settings: Any) -> ProxyConfig:
    return ProxyConfig(service_token="t", auth_addr="127.0.0.1:1", ingest_addr="127.0.0.1:2", **settings)


def _spawner(scripts: dict[int, str], started: list[tuple[int, int]]) -> Spawn:
    async def spawn(slot: int) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", scripts[slot])
        started.append((slot, process.pid))
        return process

    return spawn


def _handlers_installed(ready: Path, supervisor: Supervisor) -> bool:
    return all((ready / str(pid)).exists() for pid in supervisor.pids())


async def _until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_restart_delay_grows_with_quick_failures_then_gives_up() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=3.0, give_up_after=5)
    assert [policy.delay(failures) for failures in range(7)] == [0.0, 0.0, 0.5, 1.0, 2.0, None, None]


async def test_a_killed_worker_is_restarted_in_its_slot_and_the_others_keep_running(tmp_path: Path) -> None:
    started: list[tuple[int, int]] = []
    exited: list[int] = []
    serving = SERVES.format(status=0, ready=str(tmp_path))
    supervisor = Supervisor(
        2,
        _spawner({0: serving, 1: serving}, started),
        stop_grace_s=5,
        exited=exited.append,
    )
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: len(supervisor.pids()) == 2)
    first, second = supervisor.pids()
    os.kill(second, signal.SIGKILL)
    await _until(lambda: len(started) == 3)
    await _until(lambda: len(supervisor.pids()) == 2 and supervisor.pids()[1] != second)
    assert started[2][0] == 1, "the killed worker's slot is started again"
    assert supervisor.pids()[0] == first, "the other worker was left alone"
    assert exited == [second]
    assert supervisor.restarts == 1

    await _until(lambda: _handlers_installed(tmp_path, supervisor))
    supervisor.stop()
    assert await asyncio.wait_for(running, 10) == 0
    assert sorted(exited) == sorted([second, first, supervisor.pids()[1]])


async def test_stop_sigterms_every_worker_and_reports_one_that_exits_badly(tmp_path: Path) -> None:
    started: list[tuple[int, int]] = []
    scripts = {0: SERVES.format(status=0, ready=str(tmp_path)), 1: SERVES.format(status=2, ready=str(tmp_path))}
    supervisor = Supervisor(2, _spawner(scripts, started), stop_grace_s=5)
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: len(supervisor.pids()) == 2 and _handlers_installed(tmp_path, supervisor))
    supervisor.stop()
    assert await asyncio.wait_for(running, 10) == 1
    assert supervisor.restarts == 0, "a worker stopping during the shutdown is not started again"


async def test_a_worker_stopped_while_still_starting_is_a_clean_stop() -> None:
    started: list[tuple[int, int]] = []
    # No SIGTERM handler yet: SIGTERM's default action ends it, as it would a worker still importing.
    supervisor = Supervisor(1, _spawner({0: "import time\ntime.sleep(60)\n"}, started), stop_grace_s=5)
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: len(supervisor.pids()) == 1)
    supervisor.stop()
    assert await asyncio.wait_for(running, 10) == 0


async def test_a_worker_past_its_grace_is_killed(tmp_path: Path) -> None:
    started: list[tuple[int, int]] = []
    supervisor = Supervisor(1, _spawner({0: IGNORES_SIGTERM.format(ready=str(tmp_path))}, started), stop_grace_s=0.5)
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: len(supervisor.pids()) == 1 and _handlers_installed(tmp_path, supervisor))
    supervisor.stop()
    assert await asyncio.wait_for(running, 10) == 1  # killed: -SIGKILL, not a clean stop


async def test_a_worker_that_keeps_failing_at_start_stops_the_supervisor(tmp_path: Path) -> None:
    started: list[tuple[int, int]] = []
    supervisor = Supervisor(
        2,
        _spawner({0: SERVES.format(status=0, ready=str(tmp_path)), 1: FAILS}, started),
        stop_grace_s=5,
        policy=RestartPolicy(first_delay_s=0.01, give_up_after=3),
    )
    assert await asyncio.wait_for(supervisor.run(), 20) == 1
    assert supervisor.gave_up
    assert [slot for slot, _ in started].count(1) == 3
    assert [slot for slot, _ in started].count(0) == 1


def test_worker_count_defaults_to_the_cores_this_process_may_use(tmp_path: Path) -> None:
    assert worker_count(3) == 3
    # tmp_path as the control group: no CPU limit to cap it, whatever container the test runs in.
    assert worker_count(0, tmp_path) == len(os.sched_getaffinity(0))


def test_each_slot_has_its_own_stable_directories(tmp_path: Path) -> None:
    config = proxy_config(spool_dir=tmp_path / "spool")
    assert slot_config(config, 0) == {"CANDELA_SPOOL_DIR": str(tmp_path / "spool")}
    assert slot_config(config, 2) == {"CANDELA_SPOOL_DIR": str(tmp_path / "spool" / "worker-2")}
    own_wal = proxy_config(spool_dir=tmp_path / "spool", wal_dir=str(tmp_path / "wal"))
    assert slot_config(own_wal, 1)["CANDELA_WAL_DIR"] == str(tmp_path / "wal" / "worker-1")
    role = WorkerRole.from_environ(
        {"CANDELA_PROXY_WORKER_SLOT": "1", "CANDELA_PROXY_LISTEN_FD": "7", "CANDELA_PROXY_SUPERVISOR_PID": "42"}
    )
    assert role == WorkerRole(slot=1, listen_fd=7, supervisor_pid=42)
    assert WorkerRole.from_environ({}) is None


def test_a_slot_directory_has_one_holder_at_a_time(tmp_path: Path) -> None:
    holder, next_holder = SlotLock(tmp_path / "slot"), SlotLock(tmp_path / "slot")
    assert holder.try_acquire()
    assert not next_holder.try_acquire()
    holder.release()
    assert next_holder.try_acquire()
    next_holder.release()


def test_slots_beyond_the_worker_count_move_into_live_slots_in_order(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    live = Spool(slot_dir(root, 1), 1 << 20)
    live.append(b"live-1")
    live.close()
    orphan = Spool(slot_dir(root, 3), 1 << 20, segment_max_bytes=1)  # one batch per segment
    for batch in (b"orphan-1", b"orphan-2", b"orphan-3"):
        orphan.append(batch)
    orphan.close()
    wal = WriteAheadLog(slot_dir(root, 3) / "wal")
    wal.write([b"unsent"])
    wal.close(lambda _: False)

    moved = adopt_orphaned_slots(root, None, workers=2)

    assert moved == [slot_dir(root, 3)]
    adopted = Spool(slot_dir(root, 1), 1 << 20)
    batches = []
    while (segment := adopted.oldest()) is not None:
        batches += adopted.read(segment)
        adopted.delete(segment)
    assert batches == [b"live-1", b"orphan-1", b"orphan-2", b"orphan-3"]
    leftovers = WriteAheadLog(slot_dir(root, 1) / "wal").leftovers
    assert [WriteAheadLog.read(segment) for segment in leftovers] == [[b"unsent"]]
    assert not list(slot_dir(root, 3).glob("*.seg"))


def test_an_orphaned_slot_still_held_by_a_process_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    orphan = Spool(slot_dir(root, 2), 1 << 20)
    orphan.append(b"draining")
    orphan.close()
    draining = SlotLock(slot_dir(root, 2))
    assert draining.try_acquire()
    try:
        assert adopt_orphaned_slots(root, None, workers=2) == []
        assert len(list(slot_dir(root, 2).glob("*.seg"))) == 1
    finally:
        draining.release()
    assert adopt_orphaned_slots(root, None, workers=2) == [slot_dir(root, 2)]
    assert len(list(root.glob("*.seg"))) == 1, "slot 2 goes to slot 0, the spool root"


@pytest.mark.parametrize("workers", [1, 3])
def test_nothing_moves_when_every_slot_is_live(tmp_path: Path, workers: int) -> None:
    root = tmp_path / "spool"
    mine = Spool(slot_dir(root, 0), 1 << 20)
    mine.append(b"mine")
    mine.close()
    assert adopt_orphaned_slots(root, None, workers) == []
    assert adopt_orphaned_slots(tmp_path / "absent", None, workers) == []
