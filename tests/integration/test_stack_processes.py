"""The launcher's supervisor: real child processes, started and stopped by PID only (the port layout is
tests/unit/test_stack_ports.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from candela_stack.processes import StartupError, Supervisor, clean_leftovers, process_start_ticks


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


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
