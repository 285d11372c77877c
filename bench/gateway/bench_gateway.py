"""What the Envoy gateway adds, side by side in one run: direct to the upstream, straight to the proxy,
and through Envoy to the same proxy.

Reuses bench/proxy's machinery: the same nginx upstream (a fixed chat completion and SSE stream), the
same Candela proxy process with logging on (auth, ingest and Redis from the stack launcher), the same wrk
load. Envoy runs the configuration the stack generates (envoy_config.build_config, access log on,
`envoy --mode validate` first), with one worker thread. The proxy is pinned to CPU 0; wrk, nginx and
Envoy to CPU 1, so the proxy keeps its core and Envoy's cost shows as latency rather than as a proxy
slowed by a neighbour. Each (target, connections) cell runs ``--runs`` times; the report gives the
median and the spread (min-max). Envoy's added latency is, per run, the gateway's percentile minus the
proxy's.

    uv run python bench/gateway/bench_gateway.py [--runs 3] [--duration 8] [--skip-install]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

# Run as a script: the repository root makes bench/proxy importable (a namespace package of scripts).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.proxy.bench_proxy import (
    LOAD_CPU,
    REQUEST,
    RESULTS,
    Servers,
    Target,
    WrkResult,
    _pin_stack,
    _summary,
    _ttft,
    install,
    run_wrk,
    start_candela,
    start_nginx,
    wait_http,
)
from candela_stack import envoy_config
from candela_stack.binaries import envoy_binary
from candela_stack.ports import StackPorts, pick_free_port_base
from candela_stack.stack import Component, Stack, StackConfig

CONNECTIONS = (1, 64)


def start_envoy(servers: Servers, proxy_port: int, workdir: Path) -> tuple[str, int]:
    """Envoy with the stack's generated configuration in front of the proxy on `proxy_port`.

    Only the proxy's cluster has a live upstream here; the gRPC clusters point at free ports (their
    health checks fail, which changes nothing for LLM routes).
    """
    ports = replace(StackPorts.from_base(pick_free_port_base()), proxy_http=proxy_port)
    config = envoy_config.build_config(
        ports, envoy_config.descriptor_set_path(workdir / "envoy"), access_log=workdir / "envoy-access.log"
    )
    config_path = envoy_config.write(config, workdir / "envoy" / "envoy.yaml")
    binary = envoy_binary()
    envoy_config.validate(binary, config_path)
    argv = envoy_config.server_argv(binary, config_path, base_id=ports.base)
    process = servers.start(["taskset", "-c", LOAD_CPU, *argv], workdir / "envoy.log")
    wait_http(f"http://127.0.0.1:{ports.envoy_admin}/ready", process=process)
    return f"http://127.0.0.1:{ports.gateway}", process.pid


@contextlib.contextmanager
def environment(workdir: Path) -> Iterator[list[Target]]:
    """nginx, the stack's auth/ingest/Redis, one proxy and Envoy; yields the three ways in."""
    servers = Servers()
    stack_dir = workdir / "stack"
    stack = Stack(
        StackConfig.for_tests(
            stack_dir, components=frozenset({Component.AUTH, Component.INGEST, Component.REDIS}), log_level="WARNING"
        )
    )
    try:
        upstream = start_nginx(servers, workdir)
        stack.start()
        _pin_stack(stack_dir)
        key = stack.bootstrap().api_key
        proxy_url, proxy = start_candela(servers, stack, upstream, workdir)
        gateway_url, envoy_pid = start_envoy(servers, int(proxy_url.rpartition(":")[2]), workdir)
        headers = {"Candela-Auth": f"Bearer {key}"}
        stream_headers = {**headers, "Candela-Target-Url": f"{upstream}/stream"}
        stream_body = {**REQUEST, "stream": True}
        yield [
            Target("direct", upstream, {}, f"{upstream}/stream/v1/chat/completions", {}, stream_body),
            Target(
                "proxy", proxy_url, headers, f"{proxy_url}/v1/chat/completions", stream_headers, stream_body, proxy.pid
            ),
            Target(
                "envoy+proxy",
                gateway_url,
                headers,
                f"{gateway_url}/v1/chat/completions",
                stream_headers,
                stream_body,
                envoy_pid,
            ),
        ]
    finally:
        servers.stop()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every cell (median and spread)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--ttft-samples", type=int, default=200)
    parser.add_argument("--skip-install", action="store_true")
    args = parser.parse_args()
    install(args.skip_install, litellm=False)  # nginx and wrk only
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="candela-bench-gateway-") as tmp, environment(Path(tmp)) as targets:
        workdir = Path(tmp)
        for target in targets:  # warm-up: connection pools, caches
            run_wrk(target, 4, 2, workdir)
        cells: dict[tuple[str, int], list[WrkResult]] = {}
        for run in range(args.runs):
            for connections in CONNECTIONS:
                for target in targets:
                    result = run_wrk(target, connections, args.duration, workdir)
                    cells.setdefault((target.name, connections), []).append(result)
                    print(
                        f"run {run + 1} {target.name:12} c={connections:<3} {result.requests_per_s:9.0f} req/s"
                        f"  p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms  errors {result.errors}",
                        flush=True,
                    )
        ttft = {target.name: asyncio.run(_ttft(target, args.ttft_samples)) for target in targets}
    load = (load_before, os.getloadavg())
    report = render(cells, ttft, load, args)
    print(report)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"gateway-{stamp}.md").write_text(report)


def _added(cells: dict[tuple[str, int], list[WrkResult]], name: str, base: str, connections: int) -> list[str]:
    """Per-run differences (p50, p99 in ms; req/s as a ratio) of `name` over `base`, summarised."""
    pairs = list(zip(cells[(name, connections)], cells[(base, connections)], strict=True))
    return [
        _summary([ours.p50_ms - theirs.p50_ms for ours, theirs in pairs]),
        _summary([ours.p99_ms - theirs.p99_ms for ours, theirs in pairs]),
        _summary([ours.requests_per_s / theirs.requests_per_s for ours, theirs in pairs]),
    ]


def render(
    cells: dict[tuple[str, int], list[WrkResult]],
    ttft: dict[str, list[float]],
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
    args: argparse.Namespace,
) -> str:
    names = list(dict.fromkeys(name for name, _ in cells))
    lines = [
        f"# bench/gateway ({args.runs} runs x {args.duration}s per cell; median [min-max])",
        "",
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load[0])},"
        f" after: {'/'.join(f'{x:.2f}' for x in load[1])} on {os.cpu_count()} CPUs.",
        "",
        "| target | conns | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for connections in CONNECTIONS:
        for name in names:
            results = cells[(name, connections)]
            lines.append(
                f"| {name} | {connections} | {_summary([r.requests_per_s for r in results])} |"
                f" {_summary([r.p50_ms for r in results])} | {_summary([r.p99_ms for r in results])} |"
                f" {sum(r.errors for r in results)} |"
            )
    lines += [
        "",
        "Added by Envoy (envoy+proxy minus proxy, per run) and by the whole gateway path (envoy+proxy minus direct):",
        "",
        "| comparison | conns | added p50 ms | added p99 ms | req/s ratio |",
        "|---|---|---|---|---|",
    ]
    for connections in CONNECTIONS:
        for label, base in (("Envoy (vs proxy)", "proxy"), ("Envoy + proxy (vs direct)", "direct")):
            added50, added99, ratio = _added(cells, "envoy+proxy", base, connections)
            lines.append(f"| {label} | {connections} | {added50} | {added99} | {ratio}x |")
    lines += ["", "| target | TTFT p50 ms | TTFT p99 ms |", "|---|---|---|"]
    for name in names:
        samples = sorted(ttft[name])
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        lines.append(f"| {name} | {statistics.median(samples):.3f} | {p99:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
