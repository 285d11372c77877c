"""The cost of Authenticate on the proxy's hot path: KeyAuthenticator.authenticate cached and uncached.

Starts the auth service as its own process on a throwaway Postgres database (the stack launcher with
only AUTH, so the process, the port and the database are this run's), makes an organization and a key
with the service credential, then times, in this process, exactly what the proxy calls per request:

- cached: ``KeyAuthenticator.authenticate(key)`` with the answer in its TTL cache (a SHA-256 of the key
  and a dict hit);
- uncached: the same call with a zero TTL, so every call is a gRPC round trip to auth, which hashes the
  key, looks it up in Postgres by its unique index and compares the digest in constant time.

Reports p50 / p99 / mean in microseconds and writes them to bench/results/auth-<time>.md.

    uv run python bench/auth/bench_authenticate.py [--cached-calls 200000] [--uncached-calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela_runtime.security import KeyAuthenticator, service_metadata
from candela_stack.stack import Component, Stack, StackConfig

RESULTS = Path(__file__).resolve().parents[1] / "results"


@dataclass(frozen=True)
class Timing:
    """Latencies of one way of calling, in microseconds."""

    name: str
    samples_us: list[float]

    def percentile(self, fraction: float) -> float:
        """The ``fraction`` quantile (nearest rank)."""
        ordered = sorted(self.samples_us)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def row(self) -> str:
        """A Markdown table row."""
        return (
            f"| {self.name} | {len(self.samples_us)} | {self.percentile(0.50):.1f} | {self.percentile(0.99):.1f} |"
            f" {statistics.fmean(self.samples_us):.1f} |"
        )


async def _time_calls(authenticator: KeyAuthenticator, api_key: str, calls: int) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        began = clock()
        await authenticator.authenticate(api_key)
        samples.append((clock() - began) / 1000)
    return samples


async def _measure(stack: Stack, cached_calls: int, uncached_calls: int) -> list[Timing]:
    async with grpc.aio.insecure_channel(stack.auth_addr) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        internal = service_metadata(stack.service_token)
        organization = await stub.CreateOrganization(auth_pb.CreateOrganizationRequest(name="bench"), metadata=internal)
        created = await stub.CreateApiKey(
            auth_pb.CreateApiKeyRequest(
                organization_id=organization.organization.id, name="bench", scopes=[auth_pb.API_KEY_SCOPE_PROXY]
            ),
            metadata=internal,
        )
        cached = KeyAuthenticator(stub, stack.service_token, ttl_s=3600.0)
        uncached = KeyAuthenticator(stub, stack.service_token, ttl_s=0.0)
        # Warm-up: connections, the pool's prepared statements, the cache entry.
        await _time_calls(uncached, created.secret, 200)
        await _time_calls(cached, created.secret, 1000)
        return [
            Timing("cached (TTL cache hit)", await _time_calls(cached, created.secret, cached_calls)),
            Timing("uncached (gRPC to auth + Postgres)", await _time_calls(uncached, created.secret, uncached_calls)),
        ]


def main() -> None:
    """Runs the benchmark and prints the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cached-calls", type=int, default=200_000)
    parser.add_argument("--uncached-calls", type=int, default=3_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="candela-bench-auth-") as data_dir,
        Stack(StackConfig.for_tests(Path(data_dir), components=frozenset({Component.AUTH}))) as stack,
    ):
        timings = asyncio.run(_measure(stack, args.cached_calls, args.uncached_calls))
    lines = [
        "# KeyAuthenticator.authenticate on the proxy's hot path",
        "",
        "Microseconds per call, one caller, sequential calls, auth as a separate process on loopback.",
        "",
        "| path | calls | p50 us | p99 us | mean us |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(timing.row() for timing in timings),
        "",
        f"uncached / cached at p50: {timings[1].percentile(0.5) / timings[0].percentile(0.5):.0f}x",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"auth-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md").write_text(report)


if __name__ == "__main__":
    main()
