"""bench/ingest: reading a batch in C against the protobuf runtime, side by side, in the writers or in ingest.

``--stage writer``: both turn the same serialized LogMessages (what the proxy logs for a chat completion, as
in bench_ingest.py) into the ``requests`` columns and their suspects: the runtime parses each message and
reads its fields back (``checked_request_columns``), the wire decoder reads the bytes once
(``wire_request_columns``).

``--stage ingest``: both turn one serialized IngestRequest of ``--logs`` records (2 KiB of JSON bodies each)
into the parts ingest packs: the runtime parses it, validates it and serializes each record again
(``validate_ingest_request``, ``batch_parts``), the C reader checks and slices the bytes
(``wire_batch_parts``). Ingest takes at most 1,000 records per call.

The two are timed alternately, the garbage collector off, and the medians and spreads of CPU microseconds
per log are printed with their ratio: a ratio of two timings taken a moment apart holds when the host's
speed drifts.

    uv run python -m bench.ingest.bench_decode --stage writer --logs 20000 --rounds 15
    uv run python -m bench.ingest.bench_decode --stage ingest --logs 1000 --rounds 50
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bench.ingest.bench_ingest import Bodies, _batch
from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.logs.v1 import log_record_pb2
from candela_ingest.packing import BatchParts, batch_parts, wire_batch_parts
from candela_ingest.wire.validation import BatchLimits, validate_ingest_request
from candela_ingest.writer.rows import checked_request_columns, wire_request_columns


def _messages(logs: int) -> list[bytes]:
    """``logs`` serialized LogMessages, each with both body references set."""
    request, _ = _batch(str(uuid.uuid4()), logs, Bodies("repeated"))
    key = f"bodies/{uuid.uuid4()}/object.zst"
    messages = []
    for index, item in enumerate(request.records):
        message = log_record_pb2.LogMessage(record=item.record)
        for body in (message.request_body, message.response_body):
            body.object_key = key
            body.offset, body.length = index * 1024, 1024
            body.frame_offset, body.frame_length = index * 300, 300
        message.ingested_at.GetCurrentTime()
        messages.append(message.SerializeToString())
    return messages


def _cpu_us_per_log(decode: Callable[[], object], logs: int) -> float:
    began = time.process_time()
    decode()
    return (time.process_time() - began) / logs * 1e6


def _writer_stage(logs: int) -> tuple[Callable[[], object], Callable[[], object]]:
    values = _messages(logs)

    def by_runtime() -> object:
        return checked_request_columns([log_record_pb2.LogMessage.FromString(value) for value in values], 0)

    def by_wire() -> object:
        return wire_request_columns(values, 0)

    assert by_runtime() == wire_request_columns(values, 0)[:2], "both decoders read the same columns"
    return by_runtime, by_wire


def _ingest_stage(logs: int) -> tuple[Callable[[], object], Callable[[], object]]:
    request, _ = _batch(str(uuid.uuid4()), logs, Bodies("json"))
    data = request.SerializeToString()
    limits = BatchLimits(
        max_batch_records=logs,
        max_record_bytes=64 * 1024 * 1024,
        max_metadata_bytes=1024 * 1024,
        max_clock_skew=timedelta(days=1),
    )
    now = datetime.now(UTC)

    def by_runtime() -> BatchParts:
        parsed = pb.IngestRequest.FromString(data)
        validate_ingest_request(parsed, limits, now)
        return batch_parts(parsed.records)

    def by_wire() -> BatchParts | None:
        return wire_batch_parts(data, limits, now + limits.max_clock_skew)

    parts = by_wire()
    assert parts is not None, "a valid batch is read in C"
    assert parts[1:5] == by_runtime()[1:5], "both read the same keys, organizations and bodies"
    return by_runtime, by_wire


def main() -> None:
    """Times both readers and prints medians, spreads and the ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", choices=("writer", "ingest"), default="writer")
    parser.add_argument("--logs", type=int, default=20_000, help="logs per batch (the writers' batch size)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    by_runtime, by_wire = (_writer_stage if args.stage == "writer" else _ingest_stage)(args.logs)
    gc.disable()
    runtime, wire = [], []
    for _ in range(args.rounds):
        runtime.append(_cpu_us_per_log(by_runtime, args.logs))
        wire.append(_cpu_us_per_log(by_wire, args.logs))
    ratios = sorted(r / w for r, w in zip(runtime, wire, strict=True))
    for name, timings in (("protobuf runtime", runtime), ("C wire reader", wire)):
        print(
            f"{name}: median {statistics.median(timings):.2f} us of CPU per log "
            f"(min {min(timings):.2f}, max {max(timings):.2f})"
        )
    print(f"runtime / wire: median {statistics.median(ratios):.2f}x (min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)")


if __name__ == "__main__":
    main()
