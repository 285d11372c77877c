"""Writes the seed corpus (``corpus/``): a few small valid LogMessages and IngestRequests to mutate
(``uv run python -m tests.fuzz.seeds``)."""

from __future__ import annotations

import hashlib
import uuid

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.logs.v1 import log_record_pb2
from tests.fuzz.logwire_fuzz import CORPUS


def _record(index: int) -> log_record_pb2.LogRecord:
    record = log_record_pb2.LogRecord(
        request_id=str(uuid.UUID(int=index + 10)), organization_id=str(uuid.UUID(int=1)), provider="openai",
        model="gpt-4o-mini", status_code=200, latency_ms=850, cost_usd="0.0001605", properties={"env": "prod"},
        usage=log_record_pb2.TokenUsage(prompt_tokens=230, completion_tokens=210, total_tokens=440),
        attempts=[log_record_pb2.UpstreamAttempt(target_url="https://api.openai.com/v1/chat", status_code=200)],
    )  # fmt: skip
    record.created_at.seconds = 1_796_000_000 + index
    if index % 2:
        record.time_to_first_token_ms = 0
        record.prompt_inputs["name"] = "é"
        record.cost_saved_usd = ""
    return record


def seeds() -> list[bytes]:
    """The seeds: LogMessages (with and without bodies, an update) and IngestRequests."""
    values = []
    for index in range(2):
        message = log_record_pb2.LogMessage(record=_record(index))
        if index:
            message.request_body.object_key = "bodies/o/1.zst"
            message.request_body.length = 10
            message.response_body.SetInParent()
            message.ingested_at.seconds = 1_796_000_100
        values.append(message.SerializeToString())
    update = log_record_pb2.LogMessage(update=log_record_pb2.LogUpdate(request_id=str(uuid.UUID(int=10))))
    values.append(update.SerializeToString())
    items = [pb.IngestRecord(record=_record(index), request_body=b"{}", response_body=b"{}") for index in range(2)]
    items[1].trace_context["traceparent"] = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    values.append(pb.IngestRequest(records=items).SerializeToString())
    return values


if __name__ == "__main__":
    CORPUS.mkdir(exist_ok=True)
    for value in seeds():
        (CORPUS / hashlib.sha1(value).hexdigest()).write_bytes(value)
