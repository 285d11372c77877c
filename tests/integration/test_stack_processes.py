"""The launcher's supervisor and port layout: real child processes, started and stopped by PID only."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from candela_stack.ports import (
    MAX_PORT_BASE,
    MAX_WRITERS,
    SEAWEED_GRPC_OFFSET,
    StackPorts,
    busy_ports,
    ephemeral_port_start,
    pick_free_port_base,
    port_is_free,
)
from candela_stack.processes import StartupError, Supervisor, clean_leftovers, process_start_ticks


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.unit
def test_ports_are_offsets_of_the_base() -> None:
    ports = StackPorts.from_base(7700)
    assert (ports.gateway, ports.envoy_admin, ports.proxy_http, ports.writer_grpc) == (7700, 7701, 7710, 7715)
    assert (ports.fake_provider, ports.redis, ports.clickhouse_tcp, ports.clickhouse_http) == (7720, 7730, 7740, 7741)
    assert (ports.kafka, ports.seaweed_master, ports.seaweed_s3) == (7750, 7760, 7763)
    assert len(set(ports.named().values())) == len(ports.named())
    assert ports.seaweed_s3 + SEAWEED_GRPC_OFFSET in ports.all_bound()


@pytest.mark.unit
def test_every_writer_slot_has_its_own_ports_reserved_with_the_stack() -> None:
    ports = StackPorts.from_base(7700)
    grpc = [ports.writer_grpc_port(index) for index in range(MAX_WRITERS)]
    metrics = [ports.writer_metrics_port(index) for index in range(MAX_WRITERS)]
    assert (grpc, metrics) == ([7715, 7716, 7717, 7718, 7719], [7775, 7776, 7777, 7778, 7779])
    bound = ports.all_bound()
    assert len(set(bound)) == len(bound), "no writer slot collides with another port"
    assert set(grpc + metrics) <= set(bound), "a free port base is free for every writer"
    with pytest.raises(ValueError, match="writer index"):
        ports.writer_grpc_port(MAX_WRITERS)


@pytest.mark.unit
@pytest.mark.parametrize("base", [80, MAX_PORT_BASE, 65000])
def test_a_base_whose_ports_do_not_fit_is_refused(base: int) -> None:
    with pytest.raises(ValueError, match="port base"):
        StackPorts.from_base(base)


@pytest.mark.unit
def test_a_picked_base_has_every_port_free_and_below_the_ephemeral_range() -> None:
    base = pick_free_port_base()
    ports = StackPorts.from_base(base)
    assert busy_ports(ports) == []
    # An outgoing connection may take any port of the ephemeral range at any moment.
    assert base >= 10000
    assert max(ports.all_bound()) < ephemeral_port_start()


@pytest.mark.unit
def test_a_listening_port_is_busy() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_is_free(listener.getsockname()[1])


@pytest.mark.integration
def test_start_wait_and_stop_a_process(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    process = supervisor.start("sleeper", ["sleep", "30"])
    assert supervisor.wait_ready(process, lambda: True, timeout=5) >= 0
    began = time.monotonic()
    supervisor.stop_all()
    assert time.monotonic() - began < 2
    assert process.popen.returncode == -15
    assert not alive(process.pid)
    assert supervisor.pids() == []


@pytest.mark.integration
def test_a_process_that_ignores_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    script = "trap '' TERM; sleep 300 & echo child=$!; wait"
    process = supervisor.start("stubborn", ["bash", "-c", script], stop_grace=0.5)
    # The log starts with a banner that quotes the script: the child's pid is on the last line.
    supervisor.wait_ready(process, lambda: process.log_tail(1).startswith("child="), timeout=5)
    child = int(process.log_tail(1).removeprefix("child="))
    assert alive(child)
    began = time.monotonic()
    supervisor.stop_all()
    assert 0.5 <= time.monotonic() - began < 3
    assert process.popen.returncode == -9
    deadline = time.monotonic() + 2
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


@pytest.mark.integration
def test_a_process_that_exits_before_ready_reports_its_log(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    process = supervisor.start("crasher", ["bash", "-c", "echo 'port 1234 already in use' >&2; exit 3"])
    with pytest.raises(StartupError, match=r"(?s)exited with code 3.*port 1234 already in use"):
        supervisor.wait_ready(process, lambda: False, timeout=5)
    supervisor.stop_all()


@pytest.mark.integration
def test_a_process_that_never_gets_ready_times_out_with_its_log(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    process = supervisor.start("slowpoke", ["bash", "-c", "echo still warming up; sleep 30"])
    with pytest.raises(StartupError, match=r"(?s)not ready after 1 s.*still warming up"):
        supervisor.wait_ready(process, lambda: False, timeout=1)
    supervisor.stop_all()
    assert not alive(process.pid)


@pytest.mark.integration
def test_a_stopping_supervisor_starts_nothing(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    supervisor.stop_all()
    with pytest.raises(StartupError, match="stopping"):
        supervisor.start("late", ["sleep", "30"])
    assert supervisor.pids() == []


@pytest.mark.integration
def test_leftovers_of_a_crashed_launcher_are_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "pids.json"
    # A launcher that starts a server and dies without stopping it (os._exit skips every cleanup).
    launcher = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from candela_stack.processes import Supervisor
        supervisor = Supervisor(Path({str(tmp_path / "logs")!r}), pid_file=Path({str(pid_file)!r}))
        print(supervisor.start("orphan", ["sleep", "300"]).pid, flush=True)
        os._exit(0)
        """
    )
    completed = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, check=True)
    orphan = int(completed.stdout.strip())
    assert alive(orphan)
    assert process_start_ticks(orphan) is not None

    assert clean_leftovers(pid_file) == [orphan]
    deadline = time.monotonic() + 5
    while alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(orphan)
    assert not pid_file.exists()
    assert clean_leftovers(pid_file) == []
