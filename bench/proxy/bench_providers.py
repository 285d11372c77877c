"""Provider wire formats through the proxy, side by side in one run: Gemini and Bedrock streams against
their direct upstream, and the OpenAI path against the proxy as it was before those formats existed.

The upstream is nginx on a loopback port serving fixed answers: an OpenAI chat completion (JSON) and its
SSE stream, a Gemini ``streamGenerateContent?alt=sse`` stream (CRLF-separated events, usage in the last
one) and a Bedrock ``converse-stream`` answer in AWS's binary event-stream framing (messageStart, five text
deltas, contentBlockStop, messageStop, metadata with usage), built with the fake provider's encoder. The
proxies run as one process each on CPU 0 with logging on (auth, ingest, Kafka, S3 and Redis from the
local stack launcher, moved to CPU 1 with wrk and nginx):

- ``candela``: this checkout's proxy. Gemini is reached as ``/gemini/v1beta/models/...`` with
  ``CANDELA_GEMINI_BASE_URL`` at nginx; Bedrock as ``/bedrock/model/<id>/converse-stream`` with
  ``CANDELA_BEDROCK_BASE_URL`` at nginx, re-signed with SigV4 from ``Candela-Aws-*`` credentials (the
  gateway's usual Bedrock mode, so the signing is in the CPU figure).
- ``candela-before``: the proxy of ``--before`` (default 8ab201a, the last commit before the Gemini,
  Vertex, Azure, Bedrock, compatible-family and binary-body work), its sources from a temporary git worktree
  put first on ``PYTHONPATH`` and run in this checkout's virtualenv. It knows only OpenAI and Anthropic,
  so it is measured on the OpenAI cases: the ratio candela / candela-before on those is what the new wire
  formats cost the OpenAI path.

Each case (openai, openai-stream, gemini-stream, bedrock-stream) x target (direct, candela,
candela-before where it applies) is measured ``--runs`` times, the targets alternating within each run:
req/s and the proxy's CPU per request under ``wrk`` at ``--connections``, and TTFT (first body byte, one
request at a time, ``--ttft-samples`` after a warm-up). The report gives medians and spreads (min-max),
the TTFT the proxy adds over direct, and the same-run ratios candela / candela-before.

    uv run python bench/proxy/bench_providers.py [--runs 3] [--duration 5] [--connections 16]
        [--ttft-samples 200] [--before 8ab201a] [--skip-install]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for bench.proxy.bench_proxy
from bench.proxy.bench_proxy import (
    _LATENCY_LINE,
    LOAD_CPU,
    REQUEST,
    RESULTS,
    ROOT,
    Servers,
    _pin_stack,
    cpu_seconds,
    install,
    start_candela,
    start_nginx,
)
from candela_stack.fake_provider.bedrock import event
from candela_stack.stack import Component, Stack, StackConfig

GEMINI_MODEL = "gemini-2.5-flash"
BEDROCK_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
WORDS = ["Echo:", " hello", " from", " the", " upstream"]
GEMINI_REQUEST: dict[str, object] = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
BEDROCK_REQUEST: dict[str, object] = {"messages": [{"role": "user", "content": [{"text": "Say hello"}]}]}
AWS_HEADERS = {
    "Candela-Aws-Access-Key-Id": "AKIDBENCHEXAMPLE",
    "Candela-Aws-Secret-Access-Key": "bench-secret-access-key",
    "Candela-Aws-Region": "us-east-1",
}
DEFAULT_BEFORE = "8ab201a"


def gemini_sse() -> str:
    events = []
    for index, word in enumerate(WORDS):
        chunk: dict[str, object] = {
            "candidates": [{"content": {"parts": [{"text": word}], "role": "model"}, "index": 0}],
            "modelVersion": GEMINI_MODEL,
            "responseId": "bench-gemini",
        }
        if index == len(WORDS) - 1:
            chunk["candidates"] = [
                {"content": {"parts": [{"text": word}], "role": "model"}, "finishReason": "STOP", "index": 0}
            ]
            chunk["usageMetadata"] = {"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 13}
        events.append(f"data: {json.dumps(chunk, separators=(',', ':'))}\r\n\r\n")
    return "".join(events)


def bedrock_event_stream() -> bytes:
    frames = [event("messageStart", {"role": "assistant"})]
    frames += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word}}) for word in WORDS]
    frames += [
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event(
            "metadata",
            {"usage": {"inputTokens": 8, "outputTokens": 5, "totalTokens": 13}, "metrics": {"latencyMs": 1}},
        ),
    ]
    return b"".join(frames)


def _nginx_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\r", "\\r").replace("\n", "\\n")
    return f"'{escaped}'"


def start_upstream(servers: Servers, workdir: Path) -> str:
    """bench_proxy's nginx, also serving the Gemini stream and the Bedrock event stream."""
    (workdir / "converse-stream.bin").write_bytes(bedrock_event_stream())
    workdir.chmod(0o755)  # nginx's worker runs as another user, and reads the file itself
    return start_nginx(
        servers,
        workdir,
        f"""
    location = /v1beta/models/{GEMINI_MODEL}:streamGenerateContent {{
      default_type text/event-stream;
      return 200 {_nginx_string(gemini_sse())};
    }}
    location ~ ^/model/[^/]+/converse-stream$ {{
      # A static file answers GET only: a POST's 405 becomes the file's 200 (error_page redirects as a GET).
      root {workdir};
      rewrite ^ /converse-stream.bin break;
      error_page 405 =200 /converse-stream.bin;
    }}
    location = /converse-stream.bin {{
      root {workdir};
      default_type application/vnd.amazon.eventstream;
    }}""",
    )


@dataclass(frozen=True)
class Case:
    """One request as a target sends it: where, with which headers and body."""

    url: str
    headers: dict[str, str]
    body: Mapping[str, object]


@dataclass
class Sample:
    requests_per_s: float
    cpu_us_per_request: float | None
    ttft_ms: list[float]
    errors: int


CASES = ("openai", "openai-stream", "gemini-stream", "bedrock-stream")


def cases_of(target: str, url: str, upstream: str, key: str) -> dict[str, Case]:
    """The cases ``target`` (at ``url``) is measured on."""
    openai_stream = {**REQUEST, "stream": True}
    if target == "direct":
        return {
            "openai": Case(f"{url}/v1/chat/completions", {}, REQUEST),
            "openai-stream": Case(f"{url}/stream/v1/chat/completions", {}, openai_stream),
            "gemini-stream": Case(
                f"{url}/v1beta/models/{GEMINI_MODEL}:streamGenerateContent?alt=sse", {}, GEMINI_REQUEST
            ),
            "bedrock-stream": Case(f"{url}/model/{BEDROCK_MODEL}/converse-stream", {}, BEDROCK_REQUEST),
        }
    auth = {"Candela-Auth": f"Bearer {key}"}
    cases = {
        "openai": Case(f"{url}/v1/chat/completions", auth, REQUEST),
        "openai-stream": Case(
            f"{url}/v1/chat/completions", {**auth, "Candela-Target-Url": f"{upstream}/stream"}, openai_stream
        ),
    }
    if target == "candela":
        cases["gemini-stream"] = Case(
            f"{url}/gemini/v1beta/models/{GEMINI_MODEL}:streamGenerateContent?alt=sse",
            {**auth, "x-goog-api-key": "bench-google-key"},
            GEMINI_REQUEST,
        )
        cases["bedrock-stream"] = Case(
            f"{url}/bedrock/model/{BEDROCK_MODEL}/converse-stream", {**auth, **AWS_HEADERS}, BEDROCK_REQUEST
        )
    return cases


def run_wrk(
    case: Case, pid: int | None, connections: int, duration_s: int, script: Path
) -> tuple[float, float | None, int]:
    """req/s, the proxy's CPU us per request (None for direct) and errors of one wrk run."""
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-x", **case.headers}
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(case.body))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    cpu_before = cpu_seconds(pid)
    wrk = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(script),
        case.url,
    ]
    output = subprocess.run(
        ["taskset", "-c", LOAD_CPU, *wrk],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu_after = cpu_seconds(pid)
    rate = float(output.split("Requests/sec:")[1].split()[0])
    total = int(output.split(" requests in ")[0].split()[-1])
    errors = 0
    if "Non-2xx or 3xx responses:" in output:
        errors += int(output.split("Non-2xx or 3xx responses:")[1].split()[0])
    if not _LATENCY_LINE.search(output) or total == 0:
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    cpu = (cpu_after - cpu_before) / total * 1e6 if cpu_before is not None and cpu_after is not None else None
    return rate, cpu, errors


async def ttft(case: Case, samples: int) -> list[float]:
    """Milliseconds to the first body byte, one request at a time (20 warm-up requests not counted)."""
    body = json.dumps(case.body).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-x", **case.headers}
    times: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for index in range(samples + 20):
            started = time.perf_counter()
            async with client.stream("POST", case.url, content=body, headers=headers) as response:
                first = True
                async for _ in response.aiter_raw():
                    if first and index >= 20:
                        times.append((time.perf_counter() - started) * 1000)
                    first = False
                if response.status_code != 200:
                    raise RuntimeError(f"{case.url} answered {response.status_code}: {await response.aread()!r}")
    return times


def check_answers(cases: dict[str, Case]) -> None:
    """Each case answers 200 with its format's body (so a misrouted request cannot pass for a fast one)."""
    expected = {
        "openai": b"chat.completion",
        "openai-stream": b"[DONE]",
        "gemini-stream": b"usageMetadata",
        "bedrock-stream": b"metadata",
    }
    for name, case in cases.items():
        answer = httpx.post(case.url, json=case.body, headers=case.headers, timeout=30)
        if answer.status_code != 200 or expected[name] not in answer.content:
            raise RuntimeError(f"{name} at {case.url}: {answer.status_code} {answer.content[:300]!r}")


@contextlib.contextmanager
def worktree_at(commit: str, workdir: Path) -> Iterator[Path]:
    path = workdir / f"before-{commit}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), commit], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def start_before(servers: Servers, stack: Stack, upstream: str, workdir: Path, source: Path) -> tuple[str, int]:
    """The proxy of an older commit: its sources first on PYTHONPATH, this virtualenv's packages after."""
    sources = [source / "services" / "proxy" / "src", source / "runtime" / "src", source / "api" / "src"]
    sources += [source / "schema" / "src"] if (source / "schema" / "src").exists() else []
    path = os.pathsep.join(str(part) for part in sources)
    url, process = start_candela(servers, stack, upstream, workdir, name="candela-before", PYTHONPATH=path)
    return url, process.pid


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def render(results: dict[tuple[str, str], list[Sample]], args: argparse.Namespace, loads: list[str]) -> str:
    lines = [
        f"# bench/proxy providers ({args.runs} runs; wrk {args.connections} connections x {args.duration} s;"
        f" TTFT {args.ttft_samples} sequential requests; median [min-max])",
        "",
        f"`uv run python bench/proxy/bench_providers.py --runs {args.runs} --duration {args.duration}"
        f" --connections {args.connections} --ttft-samples {args.ttft_samples} --before {args.before}`",
        "",
        "| case | target | req/s | proxy CPU us/req | TTFT p50 ms | TTFT p99 ms | TTFT added p50 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        direct = results.get((case, "direct"), [])
        for target in ("direct", "candela", "candela-before"):
            samples = results.get((case, target))
            if not samples:
                continue
            p50 = [statistics.median(s.ttft_ms) for s in samples]
            p99 = [statistics.quantiles(s.ttft_ms, n=100)[98] for s in samples]
            added = [
                statistics.median(s.ttft_ms) - statistics.median(d.ttft_ms)
                for s, d in zip(samples, direct, strict=True)
            ]
            cpu = [s.cpu_us_per_request for s in samples if s.cpu_us_per_request is not None]
            lines.append(
                f"| {case} | {target} | {_summary([s.requests_per_s for s in samples])} | {_summary(cpu)}"
                f" | {_summary(p50)} | {_summary(p99)} | {'-' if target == 'direct' else _summary(added)}"
                f" | {sum(s.errors for s in samples)} |"
            )
    lines += ["", "Same-run ratios, paired by run (candela / candela-before: what the new formats cost OpenAI):", ""]
    for case in ("openai", "openai-stream"):
        now, before = results[(case, "candela")], results[(case, "candela-before")]
        throughput = [a.requests_per_s / b.requests_per_s for a, b in zip(now, before, strict=True)]
        cpu = [
            a.cpu_us_per_request / b.cpu_us_per_request
            for a, b in zip(now, before, strict=True)
            if a.cpu_us_per_request and b.cpu_us_per_request
        ]
        ttft_ratio = [
            statistics.median(a.ttft_ms) / statistics.median(b.ttft_ms) for a, b in zip(now, before, strict=True)
        ]
        lines.append(
            f"- {case}: req/s {_summary(throughput)}x, CPU per request {_summary(cpu)}x,"
            f" TTFT p50 {_summary(ttft_ratio)}x"
        )
    lines += ["", "Against direct, paired by run (candela / direct TTFT p50):", ""]
    for case in CASES:
        now, direct = results[(case, "candela")], results[(case, "direct")]
        ratio = [statistics.median(a.ttft_ms) / statistics.median(d.ttft_ms) for a, d in zip(now, direct, strict=True)]
        lines.append(f"- {case}: {_summary(ratio)}x")
    lines += ["", f"Load average (1, 5, 15 min) before and after: {loads[0]}; {loads[1]}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ttft-samples", type=int, default=200)
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="the commit whose proxy is the OpenAI baseline")
    parser.add_argument("--skip-install", action="store_true")
    args = parser.parse_args()
    install(args.skip_install, litellm=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    servers = Servers()
    with (
        tempfile.TemporaryDirectory(prefix="candela-bench-providers-") as tmp,
        worktree_at(args.before, Path(tmp)) as source,
    ):
        workdir = Path(tmp)
        stack = Stack(
            StackConfig.for_tests(
                workdir / "stack",
                components=frozenset({Component.AUTH, Component.INGEST, Component.REDIS}),
                log_level="WARNING",
            )
        )
        try:
            upstream = start_upstream(servers, workdir)
            stack.start()
            _pin_stack(workdir / "stack")
            key = stack.bootstrap().api_key
            candela_url, candela = start_candela(
                servers,
                stack,
                upstream,
                workdir,
                CANDELA_GEMINI_BASE_URL=upstream,
                CANDELA_BEDROCK_BASE_URL=upstream,
            )
            before_url, before_pid = start_before(servers, stack, upstream, workdir, source)
            targets = {
                "direct": (cases_of("direct", upstream, upstream, key), None),
                "candela": (cases_of("candela", candela_url, upstream, key), candela.pid),
                "candela-before": (cases_of("candela-before", before_url, upstream, key), before_pid),
            }
            for cases, _pid in targets.values():
                check_answers(cases)
            results: dict[tuple[str, str], list[Sample]] = {}
            loads = [" ".join(Path("/proc/loadavg").read_text().split()[:3])]
            for run in range(args.runs):
                for case in CASES:
                    for target, (cases, pid) in targets.items():
                        if case not in cases:
                            continue
                        script = workdir / f"wrk-{target}-{case}.lua"
                        if run == 0:
                            run_wrk(cases[case], pid, 4, 1, script)  # warm-up
                        rate, cpu, errors = run_wrk(cases[case], pid, args.connections, args.duration, script)
                        times = asyncio.run(ttft(cases[case], args.ttft_samples))
                        results.setdefault((case, target), []).append(Sample(rate, cpu, times, errors))
                        print(
                            f"run {run + 1} {case:15} {target:15} {rate:8.0f} req/s  cpu/req {cpu or 0:6.0f} us"
                            f"  TTFT p50 {statistics.median(times):.3f} ms  errors {errors}",
                            flush=True,
                        )
            loads.append(" ".join(Path("/proc/loadavg").read_text().split()[:3]))
        finally:
            servers.stop()
            stack.stop()
    report = render(results, args, loads)
    print(report)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"proxy-providers-{stamp}.md").write_text(report)


if __name__ == "__main__":
    main()
