"""Domain errors raised by core code, and their one mapping to gRPC statuses with ``google.rpc`` details.

Core code raises these; the servicer boundary (see :mod:`candela_runtime.grpc_server`) turns them into
status codes. Anything else that escapes a handler is our fault: it is logged with its traceback and the
caller gets INTERNAL with a trace id, never the exception text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "candela.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. ``records[3].record.request_id``) and what is wrong."""

    field: str
    description: str


class CandelaError(Exception):
    """A failure with a gRPC status; ``details`` are ``google.rpc`` messages a caller can act on."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, details: Sequence[Message] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)

    def to_status(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` carried in the trailers."""
        packed = []
        for detail in self.details:
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(CandelaError):
    """The request is malformed; ``violations`` say which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, violations: Iterable[FieldViolation] = ()) -> None:
        self.violations = tuple(violations)
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ]
        )
        super().__init__(message, [bad_request] if self.violations else [])


class NotFound(CandelaError):
    """The named thing does not exist (or is not the caller's to see)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CandelaError):
    """The thing to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(CandelaError):
    """No valid credential was presented."""

    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str, reason: str = "UNAUTHENTICATED") -> None:
        super().__init__(message, [error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)])


class PermissionDenied(CandelaError):
    """The credential is valid but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(CandelaError):
    """A limit or quota was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(CandelaError):
    """A dependency is down; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class Violations:
    """Collects field violations while validating a request, then raises them together."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        """Records that ``field`` is wrong."""
        self.items.append(FieldViolation(field, description))

    def require(self, field: str, value: object) -> None:
        """Records ``field`` as missing when ``value`` is empty."""
        if not value:
            self.add(field, "is required")

    def raise_if_any(self, message: str = "the request is invalid") -> None:
        """Raises :class:`InvalidArgument` with every violation collected, if there are any."""
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items[:5])
            raise InvalidArgument(f"{message}: {summary}", self.items)


def bad_request_violations(status: status_pb2.Status) -> list[FieldViolation]:
    """The field violations in a ``google.rpc.Status`` (for clients and tests)."""
    found: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
    return found


def rpc_error_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` (with details) a failed call carried, from a sync or aio call error."""
    # grpc_status types its argument as a sync Call; AioRpcError offers the same accessors.
    status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    return status
