"""bench/console: the web console on the query benchmark's data, measured in Chromium.

Starts a private stack (Postgres, ClickHouse 18.16, S3, auth, query, Envoy serving the built console),
fills ClickHouse with bench/query's generator (default 10 million requests over 90 days, one
organization holding ~20% of them), then opens the console in Debian's Chromium (playwright-core,
console/e2e/timings.mjs) as that organization and times, from the in-page navigation until drawn:

- the requests page until its first 50 rows are shown (target <= 1.0 s);
- the dashboard over 30 days until its six charts are drawn (target <= 1.5 s);
- a session view until its waterfall is drawn (target <= 0.5 s);

and reports the gzipped size of the JavaScript the first page loads (target <= 300 KB). Medians and
spreads go to bench/results/console-<UTC time>.md.

    uv run python bench/console/bench_console.py [--rows 10000000] [--runs 7] [--screenshots docs/screenshots]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clickhouse_driver import Client

from candela_stack.stack import Component, Stack, StackConfig

REPO = Path(__file__).resolve().parents[2]
TARGETS_MS = {"requests": 1000, "dashboard": 1500, "session": 500}
TARGET_JS_GZIP_KB = 300


def _query_bench() -> Any:
    """bench/query/run.py, for its data generator (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("candela_bench_query", REPO / "bench" / "query" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def first_load_javascript() -> tuple[int, int]:
    """Bytes and gzipped bytes of the scripts index.html loads."""
    dist = REPO / "console" / "dist"
    scripts = re.findall(r'<script[^>]+src="/([^"]+)"', (dist / "index.html").read_text())
    raw = b"".join((dist / script).read_bytes() for script in scripts)
    return len(raw), len(gzip.compress(raw, compresslevel=9))


def spread(values: list[int]) -> str:
    return f"{statistics.median(values):.0f} ({min(values)}-{max(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--screenshots", type=Path, help="a directory for a screenshot of each view after the runs")
    args = parser.parse_args()
    # install.sh builds the console when its sources changed (and records their digest, which the browser
    # tests check), so a benchmark never measures an old build and leaves none behind.
    subprocess.run([REPO / "scripts" / "install.sh"], check=True, stdout=subprocess.DEVNULL)
    generator = _query_bench()
    with tempfile.TemporaryDirectory(prefix="candela-bench-console-") as tmp:
        components = {Component.POSTGRES, Component.CLICKHOUSE, Component.S3, Component.AUTH, Component.QUERY}
        config = StackConfig.for_tests(Path(tmp), components=frozenset({*components, Component.ENVOY}))
        with Stack(config) as stack:
            admin = stack.bootstrap()
            end = int(time.time()) // 3600 * 3600
            client = Client(
                host=stack.clickhouse_host,
                port=stack.clickhouse_port,
                database=stack.clickhouse_database,
                user=stack.clickhouse_user,
                password=stack.clickhouse_password,
                send_receive_timeout=600,
            )
            print(f"generating {args.rows:,} rows ...")
            seconds = generator.generate(client, admin.organization_id, args.rows, end - generator.SPAN_DAYS * 86_400)
            settle = time.perf_counter()
            while (
                time.perf_counter() - settle < 300
                and client.execute("SELECT count() FROM system.merges WHERE table = 'requests'")[0][0]
            ):
                time.sleep(2)
            rows_in_org = client.execute(
                "SELECT count() FROM requests WHERE organization_id = toUUID(%(org)s)", {"org": admin.organization_id}
            )[0][0]
            sessions = [
                row[0]
                for row in client.execute(
                    "SELECT session_id FROM request_sessions WHERE organization_id = toUUID(%(org)s)"
                    " GROUP BY session_id ORDER BY cityHash64(session_id) LIMIT 20",
                    {"org": admin.organization_id},
                )
            ]
            client.disconnect()
            timed = subprocess.run(
                ["node", str(REPO / "console" / "e2e" / "timings.mjs")],
                env={
                    **os.environ,
                    "CANDELA_CONSOLE_GATEWAY": stack.gateway_url,
                    "CANDELA_CONSOLE_KEY": admin.api_key,
                    "CANDELA_CONSOLE_SESSIONS": ",".join(sessions),
                    "CANDELA_CONSOLE_RUNS": str(args.runs),
                    **({"CANDELA_CONSOLE_SCREENSHOTS": str(args.screenshots.resolve())} if args.screenshots else {}),
                },
                capture_output=True,
                text=True,
                check=True,
                timeout=1800,
            )
    result = json.loads(timed.stdout)
    if result["errors"]:
        raise SystemExit(f"the browser run failed: {result['errors']}")
    raw, packed = first_load_javascript()
    load = os.getloadavg()[0]
    lines = [
        f"# Console in Chromium on {args.rows:,} requests (bench/console)",
        "",
        f"`uv run python bench/console/bench_console.py --rows {args.rows} --runs {args.runs}`,"
        f" {time.strftime('%a %b %d %H:%M:%S %Y UTC', time.gmtime())}; {rows_in_org:,} requests in the measured"
        f" organization, generated in {seconds:.0f} s; 1-minute load average after the runs {load:.2f}.",
        "",
        "| view | target | median (min-max), ms | runs within target |",
        "|---|---|---|---|",
    ]
    for view, target in TARGETS_MS.items():
        values: list[int] = result[view]
        within = sum(value <= target for value in values)
        lines.append(f"| {view} | <= {target} ms | {spread(values)} | {within}/{len(values)} |")
    lines += [
        "",
        f"First-load JavaScript: {raw / 1024:.0f} KB, **{packed / 1024:.0f} KB gzipped**"
        f" (target <= {TARGET_JS_GZIP_KB} KB).",
        "",
        "Each time runs from the in-page navigation (the URL fragment changes, as a click does) until the view's",
        "content is drawn: the requests page's first 50 rows read and its first rows drawn (newest first, no",
        "filter; the table draws only the rows in view), the sixth chart of the dashboard over 30 days, the first",
        "bar of a session's waterfall (20 sessions in turn). The stack and the browser share the machine's 2 cores.",
    ]
    report = REPO / "bench" / "results" / f"console-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
