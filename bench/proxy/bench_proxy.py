"""Proxy overhead, side by side in one run: direct to a static upstream, through Candela, through LiteLLM.

The upstream is nginx on a loopback port serving a fixed chat completion (JSON) and a fixed SSE stream,
from a config in a temp dir. Candela runs as one proxy process with logging on (auth, ingest, S3, Kafka
and Redis from the local stack launcher; the proxy is started here so its PID and RSS are ours).
``bare_proxy.py`` (aiohttp server + client forwarding and nothing else) shows the floor of the stack
Candela is built on. LiteLLM proxy 1.100.5 runs from its own virtualenv (bench/.venv-litellm) with one
worker. The proxy under
test is pinned to CPU 0 and wrk and nginx to CPU 1, so "one proxy process on these 2 cores" is what is
measured. Each (target, connections) cell runs ``--runs`` times; the report gives the median and the
spread (min-max). Added latency is the proxy's percentile minus the direct percentile of the same run.

The cost of the write-ahead log (every finished log fsync'd, group-committed, before the client sees the
end of its answer) is measured in the same run: "candela" runs with it (the default), "candela-no-wal"
is a second proxy with ``CANDELA_WAL=false``, measured right after it in every run, so each run gives
one on/off pair; the report gives the ratio of each pair and how many fsyncs the WAL did per request.
``--wal-only`` measures just those two, the same pair with 2 workers ("candela-2w", "candela-2w-no-wal")
and the direct upstream (a shorter run, still paired).

Workers (``CANDELA_PROXY_WORKERS``): "candela" is one process on CPU 0; "candela-2w" is a supervisor with
two workers on CPUs 0 and 1, measured in the same runs, so each run gives one 2-worker / 1-worker pair
(the scaling ratio) and one 2-worker / LiteLLM pair. On a 2-core machine the second worker shares CPU 1
with wrk, nginx and the log pipeline (ingest, Kafka, S3), so the ratio is a floor of what two free cores
give; the CPU each request costs (summed over the supervisor and its workers) shows whether a worker does
more work per request than a single process. Each run also counts the CPU spent beside the proxy (wrk from
its rusage; everything else as the machine's busy time from /proc/stat less the proxy's and wrk's) and from
it the ratio's ceiling on these cores: what 2 workers would reach if the second cost nothing extra.
``--workers-only`` measures direct, candela and candela-2w (and LiteLLM unless ``--no-litellm``).

``--baseline REF`` adds the proxy of another commit (its ``services/proxy/src`` and ``runtime/src``, taken
with ``git archive`` and put first on PYTHONPATH; every other package is this checkout's) as
"candela-base" and "candela-base-2w", started and measured exactly as "candela" and "candela-2w" in the
same runs, so a change's effect is a ratio paired by run: req/s and CPU per request, before and after.

    uv run python bench/proxy/bench_proxy.py [--runs 3] [--duration 8] [--skip-install] [--wal-only]
        [--workers-only] [--no-litellm] [--baseline REF]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from candela_stack.stack import Component, Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
LITELLM_VERSION = "1.100.5"
RESULTS = ROOT / "bench" / "results"
MODEL = "gpt-4o-mini"
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Echo: hello from the static upstream", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14},
}
REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}]}
PROXY_CPU = "0"
LOAD_CPU = "1"
WORKERS_CPUS = "0,1"
"""The multi-worker proxy's cores: the one a single process gets, and the load generator's."""


def _sse_body() -> str:
    chunks = []
    for index, word in enumerate(["Echo:", " hello", " from", " the", " upstream"]):
        delta = {"role": "assistant", "content": word} if index == 0 else {"content": word}
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        chunks.append(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n")
    final = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13},
    }
    chunks.append(f"data: {json.dumps(final, separators=(',', ':'))}\n\ndata: [DONE]\n\n")
    return "".join(chunks)


def _nginx_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float = 120.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Polls ``url`` until it answers (any status), or fails when ``process`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout_s}s")


def install(skip: bool, *, litellm: bool = True) -> None:
    """nginx-light and wrk from apt, LiteLLM (unless not wanted) into its own virtualenv (each only when missing)."""
    if skip:
        return
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) or not shutil.which("wrk"):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "install", "-y", "nginx-light", "wrk"], check=True)
    if litellm and not (LITELLM_VENV / "bin" / "litellm").exists():
        subprocess.run(["uv", "venv", "-q", "--python", "3.11", str(LITELLM_VENV)], check=True)
        # --no-config: LiteLLM's own pins, not the workspace's constraints.
        subprocess.run(
            [
                "uv",
                "pip",
                "install",
                "-q",
                "--no-config",
                "--python",
                str(LITELLM_VENV / "bin" / "python"),
                f"litellm[proxy]=={LITELLM_VERSION}",
            ],
            check=True,
            cwd=tempfile.gettempdir(),
        )


@dataclass
class Servers:
    """Everything the bench started, stopped by PID in reverse order."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def start_nginx(servers: Servers, workdir: Path, extra_locations: str = "") -> str:
    """nginx on a free loopback port serving the fixed completion and stream (and ``extra_locations``)."""
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body; proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fcgi; uwsgi_temp_path {workdir}/uwsgi; scgi_temp_path {workdir}/scgi;
  keepalive_requests 10000000; keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port};
    location = /v1/chat/completions {{
      default_type application/json;
      return 200 {_nginx_string(json.dumps(COMPLETION))};
    }}
    location = /stream/v1/chat/completions {{
      default_type text/event-stream;
      return 200 {_nginx_string(_sse_body())};
    }}
{extra_locations}
    location / {{ return 200 'ok'; }}
  }}
}}
"""
    )
    servers.start(
        ["taskset", "-c", LOAD_CPU, "/usr/sbin/nginx", "-c", str(conf), "-p", str(workdir)], workdir / "nginx.log"
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url)
    return url


def start_candela(
    servers: Servers,
    stack: Stack,
    upstream: str,
    workdir: Path,
    port: int | None = None,
    name: str = "candela",
    cpus: str = PROXY_CPU,
    **overrides: str,
) -> tuple[str, subprocess.Popen[bytes]]:
    """One Candela proxy (a single process unless CANDELA_PROXY_WORKERS is overridden) on ``cpus``, on
    `port` (a free one when None), logging to the stack's ingest."""
    port = port or free_port()
    env = {
        **stack.service_env(Component.PROXY),
        "CANDELA_HTTP_PORT": str(port),
        "CANDELA_OPENAI_BASE_URL": f"{upstream}/v1",
        # The streaming runs name nginx with Candela-Target-Url: a local target the operator allows.
        "CANDELA_TARGET_HOSTS": upstream.removeprefix("http://"),
        "CANDELA_SPOOL_DIR": str(workdir / f"spool-{name}"),
        "CANDELA_LOG_LEVEL": "WARNING",
        "CANDELA_PROXY_WORKERS": "1",
        **overrides,
    }
    process = servers.start(
        ["taskset", "-c", cpus, sys.executable, "-m", "candela_proxy"], workdir / f"{name}-proxy.log", env
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", process=process)
    workers = int(env["CANDELA_PROXY_WORKERS"])
    deadline = time.monotonic() + 120
    while workers > 1 and len(_children(process.pid)) < workers:  # the supervisor's workers all started
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {workers} workers did not start")
        time.sleep(0.1)
    return url, process


def _children(pid: int) -> list[int]:
    """The PIDs of a process's children (a proxy supervisor's workers)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start_bare(servers: Servers, upstream: str, workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """The aiohttp floor: the same server and client stack as Candela, doing nothing but forwarding."""
    port = free_port()
    process = servers.start(
        [
            "taskset",
            "-c",
            PROXY_CPU,
            sys.executable,
            str(Path(__file__).with_name("bare_proxy.py")),
            str(port),
            upstream,
        ],
        workdir / "bare-proxy.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url, process=process)
    return url, process


def start_litellm(servers: Servers, upstream: str, workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    config = workdir / "litellm.yaml"
    models = [
        {
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{upstream}/v1", "api_key": "sk-x"},
        },
        {
            "model_name": f"{MODEL}-stream",
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{upstream}/stream/v1", "api_key": "sk-x"},
        },
    ]
    config.write_text(json.dumps({"model_list": models, "litellm_settings": {"telemetry": False}}))
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
    }
    env.pop("VIRTUAL_ENV", None)
    process = servers.start(
        [
            "taskset",
            "-c",
            PROXY_CPU,
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        workdir / "litellm.log",
        env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health/liveliness", timeout_s=240, process=process)
    return url, process


def _pin_stack(stack_dir: Path) -> None:
    """Moves the stack's processes (ingest, Kafka, S3, auth, Redis) to the load core, off the proxy's."""
    record = json.loads((stack_dir / "run" / "pids.json").read_text())
    for process in record["processes"]:
        subprocess.run(["taskset", "-a", "-p", "-c", LOAD_CPU, str(process["pid"])], check=False, capture_output=True)


@dataclass
class Target:
    """One way to reach the upstream: its URL, headers, and the process whose RSS counts."""

    name: str
    url: str
    headers: dict[str, str]
    stream_url: str
    stream_headers: dict[str, str]
    stream_body: dict[str, object]
    pid: int | None = None


@dataclass
class WrkResult:
    """One wrk run, plus the CPU the proxy process spent per request during it."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float | None = None
    worker_cpu_shares: list[float] = field(default_factory=list)
    """With several workers: each one's share of the workers' CPU during the run (how evenly they split it)."""
    load_us_per_request: float | None = None
    """CPU of the load generator (wrk) per request."""
    beside_us_per_request: float | None = None
    """CPU of everything else on the machine per request: the upstream (nginx), the log pipeline (ingest,
    Kafka, S3, auth, Redis) and whatever else ran; neither wrk's nor the proxy's."""


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process, its threads and its children (a proxy's workers) so far."""
    if pid is None:
        return None
    total = 0.0
    for member in (pid, *_children(pid)):
        fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq), from /proc/stat.

    Steal (time the hypervisor gave another guest) and idle and I/O wait are not work done here."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU of this process's children that have been waited for (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_LATENCY_LINE = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(target: Target, connections: int, duration_s: int, workdir: Path) -> WrkResult:
    script = workdir / f"wrk-{target.name}.lua"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-x", **target.headers}
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(REQUEST))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    threads = 1 if connections < 4 else 2
    cpu_before = cpu_seconds(target.pid)
    workers_before = _worker_cpu(target.pid)
    machine_before, load_before = machine_busy_seconds(), children_cpu_seconds()
    output = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--latency",
            "-s",
            str(script),
            f"{target.url}/v1/chat/completions",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu_after = cpu_seconds(target.pid)
    machine, load = machine_busy_seconds() - machine_before, children_cpu_seconds() - load_before
    worker_cpu = [after - workers_before.get(pid, 0.0) for pid, after in _worker_cpu(target.pid).items()]
    total_worker_cpu = sum(worker_cpu)
    shares = [cpu / total_worker_cpu for cpu in worker_cpu] if len(worker_cpu) > 1 and total_worker_cpu else []
    percentiles = {int(m.group(1)): _ms(m.group(2), m.group(3)) for m in _LATENCY_LINE.finditer(output)}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(part) for part in socket_errors.groups())
    if rate is None or 50 not in percentiles or 99 not in percentiles:
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    total = re.search(r"(\d+) requests in", output)
    count = int(total.group(1)) if total is not None else 0
    if not count:
        return WrkResult(float(rate.group(1)), percentiles[50], percentiles[99], errors, None, shares)
    proxy = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else 0.0
    return WrkResult(
        float(rate.group(1)),
        percentiles[50],
        percentiles[99],
        errors,
        proxy / count * 1e6 if cpu_before is not None else None,
        shares,
        load / count * 1e6,
        (machine - proxy - load) / count * 1e6,
    )


def _worker_cpu(pid: int | None) -> dict[int, float]:
    """CPU seconds of each child (worker) of a process."""
    if pid is None:
        return {}
    found: dict[int, float] = {}
    for child in _children(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()
            found[child] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


async def _ttft(target: Target, samples: int) -> list[float]:
    """Milliseconds to the first body byte of a streamed completion, one request at a time."""
    body = json.dumps(target.stream_body).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-x", **target.stream_headers}
    times: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for index in range(samples + 20):
            started = time.perf_counter()
            async with client.stream("POST", target.stream_url, content=body, headers=headers) as response:
                first = True
                async for _ in response.aiter_raw():
                    if first and index >= 20:  # warm-up excluded
                        times.append((time.perf_counter() - started) * 1000)
                    first = False
                if response.status_code != 200:
                    raise RuntimeError(f"{target.name} stream answered {response.status_code}")
    return times


def peak_rss_mb(pid: int | None) -> float | None:
    """VmHWM of a process (plus its children's: a proxy's workers): peak resident set size so far."""
    if pid is None:
        return None
    total = 0.0
    for member in (pid, *_children(pid)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total or None


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def baseline_tree(ref: str, workdir: Path) -> Path:
    """The proxy and runtime sources of commit ``ref``, extracted under ``workdir`` (for PYTHONPATH)."""
    tree = workdir / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "services/proxy/src", "runtime/src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


@contextlib.contextmanager
def environment(
    workdir: Path,
    with_litellm: bool,
    wal_only: bool = False,
    workers_only: bool = False,
    baseline: str | None = None,
) -> Iterator[list[Target]]:
    servers = Servers()
    stack_dir = workdir / "stack"
    stack = Stack(
        StackConfig.for_tests(
            stack_dir,
            components=frozenset({Component.AUTH, Component.INGEST, Component.REDIS}),
            log_level="WARNING",
        )
    )
    try:
        upstream = start_nginx(servers, workdir)
        stack.start()
        _pin_stack(stack_dir)
        key = stack.bootstrap().api_key
        candela_headers = {"Candela-Auth": f"Bearer {key}"}

        def candela(name: str, cpus: str = PROXY_CPU, **overrides: str) -> Target:
            url, process = start_candela(servers, stack, upstream, workdir, None, name, cpus, **overrides)
            return Target(
                name,
                url,
                candela_headers,
                f"{url}/v1/chat/completions",
                {**candela_headers, "Candela-Target-Url": f"{upstream}/stream"},
                {**REQUEST, "stream": True},
                process.pid,
            )

        targets = [
            Target("direct", upstream, {}, f"{upstream}/stream/v1/chat/completions", {}, {**REQUEST, "stream": True}),
            candela("candela"),
        ]
        if not workers_only:
            targets.append(candela("candela-no-wal", CANDELA_WAL="false"))
        if not (workers_only or wal_only):
            bare_url, bare = start_bare(servers, upstream, workdir)
            targets.append(
                Target(
                    "aiohttp-floor",
                    bare_url,
                    {},
                    f"{bare_url}/stream/v1/chat/completions",
                    {},
                    {**REQUEST, "stream": True},
                    bare.pid,
                )
            )
        targets.append(candela("candela-2w", WORKERS_CPUS, CANDELA_PROXY_WORKERS="2"))
        if wal_only:
            targets.append(candela("candela-2w-no-wal", WORKERS_CPUS, CANDELA_PROXY_WORKERS="2", CANDELA_WAL="false"))
            yield targets
            return
        if baseline is not None:
            tree = baseline_tree(baseline, workdir)
            source = f"{tree}/services/proxy/src:{tree}/runtime/src"
            targets.append(candela("candela-base", CANDELA_PROXY_WORKERS="1", PYTHONPATH=source))
            targets.append(candela("candela-base-2w", WORKERS_CPUS, CANDELA_PROXY_WORKERS="2", PYTHONPATH=source))
        if with_litellm:
            litellm_url, litellm = start_litellm(servers, upstream, workdir)
            targets.append(
                Target(
                    "litellm",
                    litellm_url,
                    {},
                    f"{litellm_url}/v1/chat/completions",
                    {},
                    {**REQUEST, "model": f"{MODEL}-stream", "stream": True},
                    litellm.pid,
                )
            )
        yield targets
    finally:
        servers.stop()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every cell (median and spread)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--ttft-samples", type=int, default=200)
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--no-litellm", action="store_true", help="Candela and direct only (quick)")
    parser.add_argument(
        "--wal-only", action="store_true", help="direct and Candela with and without its write-ahead log (quick)"
    )
    parser.add_argument(
        "--workers-only", action="store_true", help="direct, Candela with 1 and 2 workers, and LiteLLM (quick)"
    )
    parser.add_argument(
        "--baseline", metavar="REF", help="also run the proxy of commit REF (1 and 2 workers) side by side"
    )
    args = parser.parse_args()
    install(args.skip_install, litellm=not (args.no_litellm or args.wal_only))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="candela-bench-") as tmp,
        environment(
            Path(tmp), not (args.no_litellm or args.wal_only), args.wal_only, args.workers_only, args.baseline
        ) as targets,
    ):
        workdir = Path(tmp)
        for target in targets:  # warm-up: connection pools, caches, LiteLLM's lazy imports
            run_wrk(target, 4, 2, workdir)
        cells: dict[tuple[str, int], list[WrkResult]] = {}
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        for run in range(args.runs):
            # Every other run goes through the targets backwards: a target measured always right after the
            # same one (direct's 40k req/s, or the 2-worker proxy's logs still being ingested) would carry
            # that neighbour's after-effects into every run of a pair.
            ordered = targets if run % 2 == 0 else targets[::-1]
            for connections in (1, 64):
                for target in ordered:
                    result = run_wrk(target, connections, args.duration, workdir)
                    cells.setdefault((target.name, connections), []).append(result)
                    print(
                        f"run {run + 1} {target.name:8} c={connections:<3} {result.requests_per_s:9.0f} req/s"
                        f"  p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms  errors {result.errors}"
                        f"  cpu/req {result.cpu_us_per_request or 0:6.0f} us"
                        + (f"  worker CPU split {_split(result)}" if result.worker_cpu_shares else ""),
                        flush=True,
                    )
        load_after = Path("/proc/loadavg").read_text().split()[:3]
        ttft = {target.name: asyncio.run(_ttft(target, args.ttft_samples)) for target in targets}
        rss = {target.name: peak_rss_mb(target.pid) for target in targets}
        wal_target = next(target for target in targets if target.name == "candela")
        fsyncs = wal_fsyncs_per_request(httpx.get(f"{wal_target.url}/metrics", timeout=10).text)
    report = render(cells, ttft, rss, args, fsyncs)
    report += (
        f"\nLoad average (1, 5, 15 min) before the timed runs: {' '.join(load_before)}; after: {' '.join(load_after)}"
        f" (this bench's own processes account for about 3-4 of it).\n"
    )
    print(report)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"proxy-{stamp}.md").write_text(report)


def _metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (every label set)."""
    return sum(
        float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))
    )


def wal_fsyncs_per_request(metrics_text: str) -> float | None:
    """Write-ahead log group commits (one fsync each) per request answered, from a proxy's /metrics."""
    requests = _metric(metrics_text, "candela_proxy_requests_total")
    commits = _metric(metrics_text, "candela_proxy_wal_commit_seconds_count")
    return commits / requests if requests else None


def _split(result: WrkResult) -> str:
    return "/".join(f"{share * 100:.0f}" for share in sorted(result.worker_cpu_shares, reverse=True))


def _ratios(cells: dict[tuple[str, int], list[WrkResult]], ours: str, theirs: str, connections: int) -> list[float]:
    """req/s of ``ours`` over ``theirs`` in each run."""
    pairs = zip(cells[(ours, connections)], cells[(theirs, connections)], strict=True)
    return [mine.requests_per_s / other.requests_per_s for mine, other in pairs]


def _paired(cells: dict[tuple[str, int], list[WrkResult]], ours: str, theirs: str, connections: int) -> str:
    """req/s and CPU per request of ``ours`` over ``theirs``, paired by run."""
    pairs = zip(cells[(ours, connections)], cells[(theirs, connections)], strict=True)
    cpu = [
        a.cpu_us_per_request / b.cpu_us_per_request for a, b in pairs if a.cpu_us_per_request and b.cpu_us_per_request
    ]
    return (
        f"at {connections} connection(s), paired by run: req/s {_summary(_ratios(cells, ours, theirs, connections))}x,"
        f" CPU per request {_summary(cpu)}x"
    )


def _scaling_ceiling(cells: dict[tuple[str, int], list[WrkResult]]) -> list[str]:
    """What 2 workers could reach on this machine's cores at 64 connections, given the CPU spent beside them.

    Everything shares the cores: the workers, wrk, nginx and the log pipeline. If a second worker cost not a
    microsecond more per request than one process does alone, the cores would serve at most
    ``cores / (one process's CPU per request + the CPU beside the proxy per request)``; over the one
    process's req/s in the same run, that is the ceiling of the 2-worker / 1-worker ratio. The measured
    ratio over that ceiling is what the workers make of the cores left to them.
    """
    cores = len(os.sched_getaffinity(0))
    rows = []
    for one, two in zip(cells[("candela", 64)], cells[("candela-2w", 64)], strict=True):
        if one.cpu_us_per_request is None or two.load_us_per_request is None or two.beside_us_per_request is None:
            continue
        beside = two.load_us_per_request + two.beside_us_per_request
        ceiling = cores * 1e6 / (one.cpu_us_per_request + beside) / one.requests_per_s
        rows.append((ceiling, two.requests_per_s / one.requests_per_s / ceiling))
    if not rows:
        return []
    return [
        "",
        "CPU beside the proxy at 64 connections, us per request (median [min-max]):",
        "",
        "| target | proxy | wrk | everything else (nginx, log pipeline, machine) |",
        "|---|---|---|---|",
        *(
            f"| {name} | {_summary([r.cpu_us_per_request for r in results if r.cpu_us_per_request is not None])} |"
            f" {_summary([r.load_us_per_request for r in results if r.load_us_per_request is not None])} |"
            f" {_summary([r.beside_us_per_request for r in results if r.beside_us_per_request is not None])} |"
            for name in ("candela", "candela-2w")
            for results in [cells[(name, 64)]]
        ),
        "",
        f"2-worker / 1-worker ceiling on these {cores} cores (the second worker free, the CPU beside the proxy"
        f" as measured in the 2-worker run), by run: {_summary([ceiling for ceiling, _ in rows])}x;"
        f" the measured ratio is {_summary([share * 100 for _, share in rows])}% of it.",
    ]


def render(
    cells: dict[tuple[str, int], list[WrkResult]],
    ttft: dict[str, list[float]],
    rss: dict[str, float | None],
    args: argparse.Namespace,
    fsyncs_per_request: float | None = None,
) -> str:
    names = list(dict.fromkeys(name for name, _ in cells))
    lines = [
        f"# bench/proxy ({args.runs} runs x {args.duration}s per cell; median [min-max])",
        "",
        "| target | conns | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | proxy CPU us/req | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for connections in (1, 64):
        direct = cells[("direct", connections)]
        for name in names:
            results = cells[(name, connections)]
            added50 = [r.p50_ms - d.p50_ms for r, d in zip(results, direct, strict=True)]
            added99 = [r.p99_ms - d.p99_ms for r, d in zip(results, direct, strict=True)]
            lines.append(
                f"| {name} | {connections} | {_summary([r.requests_per_s for r in results])} |"
                f" {_summary([r.p50_ms for r in results])} | {_summary([r.p99_ms for r in results])} |"
                f" {'-' if name == 'direct' else _summary(added50)} |"
                f" {'-' if name == 'direct' else _summary(added99)} |"
                f" {_summary([r.cpu_us_per_request for r in results if r.cpu_us_per_request is not None])} |"
                f" {sum(r.errors for r in results)} |"
            )
    direct_ttft = statistics.median(ttft["direct"])
    lines += [
        "",
        "| target | TTFT p50 ms | TTFT p99 ms | TTFT overhead p50 ms | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        samples = sorted(ttft[name])
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        memory = rss.get(name)
        lines.append(
            f"| {name} | {statistics.median(samples):.3f} | {p99:.3f} |"
            f" {statistics.median(samples) - direct_ttft:.3f} | {f'{memory:.0f}' if memory else '-'} |"
        )
    for with_wal, without in (("candela", "candela-no-wal"), ("candela-2w", "candela-2w-no-wal")):
        if without not in names:
            continue
        for connections in (1, 64):
            lines.append(f"\n{with_wal}: WAL on / off {_paired(cells, with_wal, without, connections)}")
    if fsyncs_per_request is not None:
        lines.append(f"\nWAL fsyncs per request (whole run, all cells): {fsyncs_per_request:.3f}")
    if "candela-2w" in names:
        splits = ", ".join(_split(result) for result in cells[("candela-2w", 64)])
        lines.append(f"\nCandela 2 workers at 64 connections, each worker's share of their CPU (%), by run: {splits}")
        for connections in (1, 64):
            lines.append(
                f"\nCandela 2 workers / 1 worker req/s at {connections} connection(s), paired by run:"
                f" {_summary(_ratios(cells, 'candela-2w', 'candela', connections))}x"
            )
        lines += _scaling_ceiling(cells)
    for ours, base in (("candela", "candela-base"), ("candela-2w", "candela-base-2w")):
        if base not in names:
            continue
        for connections in (1, 64):
            lines.append(f"\n{ours} / {base} ({args.baseline}) {_paired(cells, ours, base, connections)}")
    if "litellm" in names:
        for ours in ("candela", "candela-2w", "candela-base", "candela-base-2w"):
            if ours not in names:
                continue
            for connections in (1, 64):
                lines.append(
                    f"\n{ours} / LiteLLM (1 worker) req/s at {connections} connection(s), paired by run:"
                    f" {_summary(_ratios(cells, ours, 'litellm', connections))}x"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
