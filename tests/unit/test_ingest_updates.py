"""IngestService.UpdateLogs in-process: scores and feedback become keyed update messages; bad ones refused."""

from __future__ import annotations

import uuid

import grpc
import pytest

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.logs.v1 import log_record_pb2
from candela_ingest.writer.rows import score_rows
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import service_metadata
from tests.unit.test_ingest_service import TOKEN, Running, ingest

pytestmark = pytest.mark.unit
__all__ = ["ingest"]  # the fixture, imported so pytest finds it here


async def test_updates_are_produced_keyed_by_request_id(ingest: Running) -> None:
    request_id = str(uuid.uuid4()).upper()
    update = log_record_pb2.LogUpdate(
        request_id=request_id, organization_id=str(uuid.uuid4()), scores={"accuracy": 0.75}, feedback=False
    )
    response = await ingest.stub.UpdateLogs(pb.UpdateLogsRequest(updates=[update]), metadata=service_metadata(TOKEN))

    assert response.accepted_count == 1
    [sent] = ingest.stores.sent
    assert sent.key == request_id.lower().encode(), "same key as the log: the update follows it in its partition"
    message = log_record_pb2.LogMessage.FromString(sent.value)
    assert not message.HasField("record")
    assert message.update.HasField("updated_at"), "stamped by ingest when the caller did not"
    assert [(row[2], row[3]) for row in score_rows(message.update)] == [("accuracy", 0.75), ("feedback", 0.0)]


async def test_bad_updates_are_refused_with_field_violations_and_nothing_is_sent(ingest: Running) -> None:
    good = log_record_pb2.LogUpdate(request_id=str(uuid.uuid4()), organization_id=str(uuid.uuid4()), feedback=True)
    empty = log_record_pb2.LogUpdate(request_id="nope", organization_id="")
    not_finite = log_record_pb2.LogUpdate(
        request_id=str(uuid.uuid4()), organization_id=str(uuid.uuid4()), scores={"x": float("nan")}
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.UpdateLogs(
            pb.UpdateLogsRequest(updates=[good, empty, not_finite]), metadata=service_metadata(TOKEN)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(caught.value)
    assert status is not None
    assert [v.field for v in bad_request_violations(status)] == [
        "updates[1].request_id",
        "updates[1].organization_id",
        "updates[1]",
        "updates[2].scores[x]",
    ]
    assert ingest.stores.sent == []
