"""The IngestService servicer: validate a batch, make its bodies durable in S3, then its metadata in Kafka.

A batch is acknowledged only when both happened. Any failure after validation is UNAVAILABLE: the caller
resends the whole batch, which may store some bodies twice (unreferenced objects, harmless) and produce
some messages twice (the writers are idempotent by request id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela_ingest import metrics
from candela_ingest.body_store import S3Stalled
from candela_ingest.kafka import KafkaUnavailable, OutgoingMessage
from candela_ingest.organizations import OrganizationDirectory
from candela_ingest.packing import BatchParts, PackedObject, batch_parts, pack_parts, wire_batch_parts
from candela_ingest.propagation import inject_headers, record_headers
from candela_ingest.stalls import StallWatch
from candela_ingest.wire.validation import BatchLimits, validate_ingest_request, validate_update_logs_request
from candela_runtime.decoding import undecodable
from candela_runtime.errors import InvalidArgument, Unavailable, Violations
from candela_runtime.security import require_service_credential

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Context = grpc.aio.ServicerContext[object, object]


class BodyStore(Protocol):
    """Where packed bodies go (S3 in production)."""

    async def put_objects(self, objects: Sequence[PackedObject]) -> None:
        """Stores every object durably, or raises."""


class MessageSink(Protocol):
    """Where LogMessages go (Kafka in production)."""

    async def send_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Returns once every message is acknowledged, else raises KafkaUnavailable."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    """Accepts batches of finished logs from the proxies."""

    def __init__(
        self,
        *,
        bodies: BodyStore,
        messages: MessageSink,
        topic: str,
        service_token: str,
        limits: BatchLimits,
        store_timeout_s: float,
        organizations: OrganizationDirectory | None = None,
        stalls: StallWatch | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._bodies = bodies
        self._messages = messages
        self._topic = topic
        self._service_token = service_token
        self._limits = limits
        self._store_timeout_s = store_timeout_s
        self._organizations = organizations
        self._stalls = stalls if stalls is not None else StallWatch()
        self._clock = clock

    async def Ingest(self, request: pb.IngestRequest | bytes, context: Context) -> pb.IngestResponse:
        """Takes the request as bytes when registered by :func:`add_to_server` (or parsed, as the generated
        registration passes it)."""
        require_service_credential(context, self._service_token)
        now = self._clock()
        parts = self._validated_parts(request, now)
        await self._refuse_unknown_organizations(parts.organization_ids)
        packed = pack_parts(parts, now)
        # Each message carries its own request's trace context (see candela_ingest.propagation), so the
        # writer continues that request's trace; a log shipped without one carries this call's context.
        call_headers = inject_headers()
        outgoing = [
            OutgoingMessage(key, value, record_headers(trace_context, call_headers))
            for trace_context, key, value in zip(parts.trace_contexts, packed.keys, packed.values, strict=True)
        ]
        # The store being waited on when the deadline passes is the stalled one.
        waiting_on = "s3"
        try:
            async with asyncio.timeout(self._store_timeout_s):
                with tracer.start_as_current_span("ingest.store_bodies") as span:
                    span.set_attribute("candela.ingest.objects", len(packed.objects))
                    span.set_attribute("candela.ingest.body_bytes", sum(len(o.data) for o in packed.objects))
                    with metrics.S3_PUT_SECONDS.time():
                        await self._bodies.put_objects(packed.objects)
                if packed.objects:
                    await self._stalls.answered("s3")
                waiting_on = "kafka"
                with tracer.start_as_current_span("ingest.produce") as span:
                    span.set_attribute("messaging.destination.name", self._topic)
                    span.set_attribute("messaging.batch.message_count", len(outgoing))
                    with metrics.KAFKA_PRODUCE_SECONDS.labels("logs").time():
                        await self._messages.send_all(self._topic, outgoing)
                await self._stalls.answered("kafka")
        except TimeoutError as err:
            metrics.STORE_FAILURES.labels("timeout").inc()
            await self._stalls.timed_out(
                waiting_on, "ingest", f"a batch waited on it for over {self._store_timeout_s:.1f}s"
            )
            logger.warning(
                "storing a batch of %d logs took over %.1fs (waiting on %s)",
                len(outgoing),
                self._store_timeout_s,
                waiting_on,
            )
            raise Unavailable(
                f"storing the batch took over {self._store_timeout_s:.1f}s ({waiting_on} is stalled); retry it"
            ) from err
        except KafkaUnavailable as err:
            metrics.STORE_FAILURES.labels("kafka").inc()
            if err.timed_out:
                await self._stalls.timed_out("kafka", "produce", str(err))
            logger.warning("Kafka refused a batch of %d logs: %s", len(outgoing), err)
            raise Unavailable(f"the log topic is unavailable; retry the batch ({err})") from err
        except Unavailable as err:
            metrics.STORE_FAILURES.labels("s3").inc()
            if isinstance(err, S3Stalled):
                await self._stalls.timed_out("s3", "put", err.message)
            logger.warning("a batch of %d logs was not stored: %s", len(outgoing), err.message)
            raise
        metrics.count_accepted(len(outgoing), packed.objects)
        return pb.IngestResponse(accepted_count=len(outgoing))

    def _validated_parts(self, request: pb.IngestRequest | bytes, now: datetime) -> BatchParts:
        """The batch's parts once it passed validation; else INVALID_ARGUMENT naming every problem.

        A request received as bytes is read in C when every record surely passes (the common case), and
        otherwise parsed and checked by the protobuf runtime, which names each problem.
        """
        if isinstance(request, bytes):
            parts = wire_batch_parts(request, self._limits, now + self._limits.max_clock_skew)
            if parts is not None:
                metrics.BATCHES_READ.labels("c").inc()
                return parts
            metrics.BATCHES_READ.labels("runtime").inc()
            data = request
            try:
                request = pb.IngestRequest.FromString(data)
            except DecodeError as err:
                metrics.RECORDS_REFUSED.labels("invalid").inc()  # records it held: not known
                raise undecodable(pb.IngestRequest.DESCRIPTOR, data) from err
        try:
            validate_ingest_request(request, self._limits, now)
        except InvalidArgument:
            metrics.RECORDS_REFUSED.labels(metrics.refusal_reason(request, self._limits)).inc(len(request.records))
            raise
        return batch_parts(request.records)

    async def _refuse_unknown_organizations(self, organization_ids: Sequence[str]) -> None:
        """INVALID_ARGUMENT naming each record of an organization that does not exist (a cached lookup of
        the batch's few distinct organizations); ``organization_ids`` are the records', in canonical form."""
        if self._organizations is None:
            return
        unknown = await self._organizations.unknown(set(organization_ids))
        if not unknown:
            return
        violations = Violations()
        for index, organization_id in enumerate(organization_ids):
            if organization_id in unknown:
                violations.add(f"records[{index}].record.organization_id", "no such organization")
        metrics.RECORDS_REFUSED.labels("unknown_organization").inc(len(organization_ids))
        violations.raise_if_any("the batch of logs is invalid")

    async def UpdateLogs(self, request: pb.UpdateLogsRequest, context: Context) -> pb.UpdateLogsResponse:
        require_service_credential(context, self._service_token)
        now = self._clock()
        validate_update_logs_request(request, self._limits, now)
        headers = inject_headers()
        outgoing = []
        for update in request.updates:
            message = log_record_pb2.LogMessage(update=update)
            message.update.request_id = update.request_id.lower()
            message.update.organization_id = update.organization_id.lower()
            if not update.HasField("updated_at"):
                message.update.updated_at.FromDatetime(now)
            message.ingested_at.FromDatetime(now)
            outgoing.append(
                OutgoingMessage(
                    key=message.update.request_id.encode(), value=message.SerializeToString(), headers=headers
                )
            )
        try:
            async with asyncio.timeout(self._store_timeout_s):
                with metrics.KAFKA_PRODUCE_SECONDS.labels("updates").time():
                    await self._messages.send_all(self._topic, outgoing)
            await self._stalls.answered("kafka")
        except TimeoutError as err:
            metrics.STORE_FAILURES.labels("timeout").inc()
            await self._stalls.timed_out(
                "kafka", "updates", f"updates waited on it for over {self._store_timeout_s:.1f}s"
            )
            raise Unavailable(f"storing the updates took over {self._store_timeout_s:.1f}s; retry them") from err
        except KafkaUnavailable as err:
            metrics.STORE_FAILURES.labels("kafka").inc()
            if err.timed_out:
                await self._stalls.timed_out("kafka", "updates", str(err))
            logger.warning("Kafka refused %d log updates: %s", len(outgoing), err)
            raise Unavailable(f"the log topic is unavailable; retry the updates ({err})") from err
        metrics.UPDATES_ACCEPTED.inc(len(outgoing))
        return pb.UpdateLogsResponse(accepted_count=len(outgoing))


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IngestService"].full_name


def add_to_server(servicer: IngestServicer, server: grpc.aio.Server) -> None:
    """Registers ``servicer`` as the generated registration does, except that Ingest takes its request as
    bytes (no deserializer): a valid batch is then read in C rather than parsed (see ``Ingest``)."""
    handlers = {
        "Ingest": grpc.unary_unary_rpc_method_handler(
            servicer.Ingest, response_serializer=pb.IngestResponse.SerializeToString
        ),
        "UpdateLogs": grpc.unary_unary_rpc_method_handler(
            servicer.UpdateLogs,
            request_deserializer=pb.UpdateLogsRequest.FromString,
            response_serializer=pb.UpdateLogsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
