"""A small process supervisor: start, wait until ready, stop in reverse order, never leave a child behind.

Every process runs in its own session (so a terminal's Ctrl-C reaches only the launcher, which then stops
the children in order), logs to a file, and is stopped by its own PID and process group: SIGTERM, a
per-process grace period, then SIGKILL. Nothing here ever signals a process it did not start.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

Probe = Callable[[], bool]
"""A readiness check: True once the process serves; False (not an exception) while it does not yet."""

Reporter = Callable[[str], None]
"""Receives one human-readable progress line."""

DEFAULT_STOP_GRACE = 5.0
LOG_TAIL_LINES = 40


class StartupError(RuntimeError):
    """A process exited or did not become ready in time; the message carries the tail of its log."""


@dataclass
class ManagedProcess:
    """One child process this supervisor started."""

    name: str
    """Short name, also the log file's stem."""
    argv: list[str]
    """The command line it was started with."""
    popen: subprocess.Popen[bytes]
    """The live handle (its PID is also its process group id)."""
    log_path: Path
    """Where its stdout and stderr go."""
    stop_grace: float
    """Seconds between SIGTERM and SIGKILL."""
    start_time_ticks: int | None
    """Kernel start time of the PID (guards against PID reuse when cleaning up after a crash)."""
    started_at: float = field(default_factory=time.monotonic)
    """Monotonic time the process was started."""
    ready_seconds: float | None = None
    """Seconds from start to ready, once ready."""
    stop_signal: signal.Signals = signal.SIGTERM
    """The polite stop signal (Postgres's fast shutdown is SIGINT; its SIGTERM waits for every client)."""

    @property
    def pid(self) -> int:
        """The process id (and process group id)."""
        return self.popen.pid

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of its log file (empty if there is none)."""
        return read_log_tail(self.log_path, lines)


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a text file, decoded leniently; empty if it does not exist."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    after_name = stat.rsplit(")", 1)[1].split()
    return int(after_name[19])


class Supervisor:
    """Starts child processes, waits for their readiness, and stops them in reverse start order.

    Thread-safe: several threads may start and await processes at once. Once stop_all() has begun, the
    supervisor is closed and refuses to start anything, so no process can slip in behind a shutdown.
    """

    def __init__(self, log_dir: Path, pid_file: Path | None = None) -> None:
        """`log_dir` receives one `<name>.log` per process; `pid_file` (optional) records live children."""
        self.log_dir = log_dir
        self.pid_file = pid_file
        self.processes: list[ManagedProcess] = []
        self._lock = threading.RLock()
        self._closed = False
        self._atexit_registered = False

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> ManagedProcess:
        """Starts `argv` in a new session with stdout and stderr appended to `<log_dir>/<name>.log`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with self._lock, log_path.open("ab") as log_file:
            if self._closed:
                raise StartupError(f"not starting {name}: the stack is stopping")
            banner = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n"
            log_file.write(banner.encode())
            log_file.flush()
            try:
                popen = subprocess.Popen(
                    list(argv),
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise StartupError(f"cannot start {name} ({argv[0]}): {error}") from error
            process = ManagedProcess(
                name=name,
                argv=list(argv),
                popen=popen,
                log_path=log_path,
                stop_grace=stop_grace,
                stop_signal=stop_signal,
                start_time_ticks=process_start_ticks(popen.pid),
            )
            self.processes.append(process)
            if not self._atexit_registered:
                # A safety net for an interpreter that exits without stop_all() (e.g. an unhandled error).
                atexit.register(self.stop_all)
                self._atexit_registered = True
            self._write_pid_file()
        logger.debug("started %s pid=%s: %s", name, popen.pid, argv)
        return process

    def wait_ready(
        self,
        process: ManagedProcess,
        probe: Probe,
        *,
        timeout: float,
        abort: threading.Event | None = None,
    ) -> float:
        """Polls `probe` until it returns True; returns the seconds since the process started.

        Raises StartupError, with the tail of the process's log, if it exits first or `timeout` passes,
        and (without a log) as soon as `abort` is set.
        """
        deadline = time.monotonic() + timeout
        interval = 0.02
        pause = abort if abort is not None else threading.Event()
        while True:
            if pause.is_set():
                raise StartupError(f"{process.name}: start-up aborted")
            if not process.running():
                raise StartupError(
                    f"{process.name} (pid {process.pid}) exited with code {process.popen.returncode} "
                    f"before it was ready.\n{_describe_log(process)}"
                )
            if probe():
                process.ready_seconds = time.monotonic() - process.started_at
                return process.ready_seconds
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"{process.name} (pid {process.pid}) was not ready after {timeout:.0f} s.\n{_describe_log(process)}"
                )
            pause.wait(interval)
            interval = min(interval * 1.5, 0.25)

    def stop(self, process: ManagedProcess, report: Reporter | None = None) -> None:
        """Stops one process: SIGTERM to its group, up to its grace period, then SIGKILL to the group."""
        began = time.monotonic()
        how = "exited"
        if process.running():
            _signal_group(process.pid, process.stop_signal)
            try:
                process.popen.wait(timeout=process.stop_grace)
                how = "stopped"
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.popen.wait(timeout=10)
                how = f"killed after {process.stop_grace:.0f} s grace"
        else:
            process.popen.wait()
        # Children of the process left in its group (the leader's id stays reserved while they live).
        _signal_group(process.pid, signal.SIGKILL)
        with self._lock:
            if process in self.processes:
                self.processes.remove(process)
            self._write_pid_file()
        if report is not None:
            code = process.popen.returncode
            elapsed = time.monotonic() - began
            report(f"  {process.name:<14} {how} in {elapsed:.1f} s (pid {process.pid}, exit code {code})")

    def stop_all(self, report: Reporter | None = None) -> None:
        """Closes the supervisor and stops every process in reverse start order (each one is attempted
        even if another fails)."""
        with self._lock:
            self._closed = True
            remaining = list(self.processes)
        failures: list[str] = []
        for process in reversed(remaining):
            try:
                self.stop(process, report)
            except (OSError, subprocess.SubprocessError) as error:
                failures.append(f"{process.name} (pid {process.pid}): {error}")
        with self._lock:
            if self._atexit_registered and not self.processes:
                atexit.unregister(self.stop_all)
                self._atexit_registered = False
        if failures:
            raise RuntimeError("could not stop: " + "; ".join(failures))

    def kill_remaining(self) -> None:
        """SIGKILLs the process group of every process not yet stopped (safe inside a signal handler).

        The processes stay listed, so a stop_all() in progress (or a later one) still reaps each of them.
        """
        for process in list(self.processes):
            if process.popen.returncode is None:
                _signal_group(process.pid, signal.SIGKILL)

    def pids(self) -> list[int]:
        """PIDs of every process started and not yet stopped, in start order."""
        with self._lock:
            return [process.pid for process in self.processes]

    def _write_pid_file(self) -> None:
        if self.pid_file is None:
            return
        if not self.processes:
            self.pid_file.unlink(missing_ok=True)
            return
        record = {
            "launcher_pid": os.getpid(),
            "launcher_start_ticks": process_start_ticks(os.getpid()),
            "processes": [
                {"name": p.name, "pid": p.pid, "start_ticks": p.start_time_ticks, "argv": p.argv}
                for p in self.processes
            ],
        }
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.pid_file)


def clean_leftovers(pid_file: Path, report: Reporter | None = None, grace: float = 12.0) -> list[int]:
    """Stops the children a crashed launcher recorded in `pid_file`; returns their PIDs.

    Only processes whose PID and kernel start time both match the record are signalled, so a reused
    PID is never touched. Raises RuntimeError if the launcher that wrote the file is still alive.
    """
    try:
        record = json.loads(pid_file.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        raise RuntimeError(f"unreadable pid file {pid_file}: {error}") from error
    launcher = int(record["launcher_pid"])
    launcher_alive = _alive(launcher) and process_start_ticks(launcher) == record.get("launcher_start_ticks")
    if launcher != os.getpid() and launcher_alive:
        raise RuntimeError(
            f"a Candela stack launched by pid {launcher} is still running from {pid_file.parent} "
            "(stop it first, or use another CANDELA_STACK_DIR and CANDELA_STACK_PORT_BASE)"
        )
    leftovers = [
        (entry["name"], int(entry["pid"]))
        for entry in record["processes"]
        if entry.get("start_ticks") is not None and process_start_ticks(int(entry["pid"])) == entry["start_ticks"]
    ]
    for name, pid in reversed(leftovers):
        if report is not None:
            report(f"  stopping {name} (pid {pid}) left behind by a previous launcher")
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for _, pid in leftovers):
        time.sleep(0.1)
    for entry_pid, ticks in [(int(e["pid"]), e.get("start_ticks")) for e in record["processes"]]:
        if ticks is not None and process_start_ticks(entry_pid) == ticks:
            _signal_group(entry_pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return [pid for _, pid in leftovers]


def _alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    """Sends `signum` to the process group `pgid`; a group that no longer exists is not an error."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as error:
        raise OSError(f"not allowed to signal process group {pgid}: {error}") from error


def _describe_log(process: ManagedProcess) -> str:
    tail = process.log_tail()
    if not tail.strip():
        return f"Its log {process.log_path} is empty."
    return f"Last lines of {process.log_path}:\n{tail}"
