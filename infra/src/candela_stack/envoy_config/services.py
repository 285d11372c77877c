"""The services behind the gateway, and what their protos say: gRPC paths and clusters, the REST-transcoded
services, the descriptor set, and which RPCs are safe to retry."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2

TRANSCODED_SERVICES = (
    "candela.auth.v1.AuthService",
    "candela.query.v1.QueryService",
    "candela.prompts.v1.PromptsService",
)
"""Services whose `google.api.http` REST mappings the gateway serves."""

GRPC_ROUTES = (
    ("/candela.auth.v1.AuthService/", "auth"),
    ("/candela.ingest.v1.IngestService/", "ingest"),
    ("/candela.query.v1.QueryService/", "query"),
    ("/candela.prompts.v1.PromptsService/", "prompts"),
)
"""(gRPC path prefix, cluster name) for each gRPC service behind the gateway."""

GRPC_SERVICES = {cluster: prefix.strip("/") for prefix, cluster in GRPC_ROUTES}
"""Cluster name -> the full name of the gRPC service it serves (also its `grpc.health.v1` service name)."""

NEVER_RETRIED_CLUSTERS = frozenset({"ingest"})
"""Clusters whose calls Envoy never retries, whatever their methods say: an Ingest batch retried by the
gateway could be stored twice before its caller learns the first attempt's fate (the proxy spools and
replays batches itself). The proxy's LLM routes are never retried either (they are not gRPC at all)."""

DESCRIPTOR_SET_RESOURCE = "descriptor_set.binpb"
"""The API's descriptor set, generated into the installed `candela` package (`make protos`)."""


def idempotent_methods(descriptor_set: Path) -> list[tuple[str, str]]:
    """(gRPC path, cluster) of every RPC behind the gateway whose proto says it is safe to retry.

    The one description is the method option `idempotency_level` (NO_SIDE_EFFECTS or IDEMPOTENT) in
    protos/, read back from the descriptor set the transcoder uses. Clusters in NEVER_RETRIED_CLUSTERS
    are left out whatever their methods say.
    """
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    cluster_of = {service: cluster for cluster, service in GRPC_SERVICES.items()}
    safe = {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
    methods: list[tuple[str, str]] = []
    for file in files.file:
        for service in file.service:
            cluster = cluster_of.get(f"{file.package}.{service.name}")
            if cluster is None or cluster in NEVER_RETRIED_CLUSTERS:
                continue
            methods += [
                (f"/{file.package}.{service.name}/{method.name}", cluster)
                for method in service.method
                if method.options.idempotency_level in safe
            ]
    return methods


def descriptor_set_path(copy_to: Path) -> Path:
    """The API's descriptor set (generated into the installed `candela` package), written into `copy_to`.

    The copy also carries `google/rpc/error_details.proto`: services put `google.rpc.BadRequest` (and
    other details) into `grpc-status-details-bin`, and the transcoder's `convert_grpc_status` can only
    turn that status into a JSON body when it can resolve every detail's type. Without it, a REST caller
    gets the right HTTP status (e.g. 400) with an empty body.
    """
    resource = importlib.resources.files("candela") / DESCRIPTOR_SET_RESOURCE
    if not resource.is_file():
        raise FileNotFoundError(f"candela/{DESCRIPTOR_SET_RESOURCE} not found: run `make protos`")
    copy_to.mkdir(parents=True, exist_ok=True)
    target = copy_to / DESCRIPTOR_SET_RESOURCE
    target.write_bytes(_with_error_details(resource.read_bytes()))
    return target


def _with_error_details(descriptor_set: bytes) -> bytes:
    """`descriptor_set` plus google/rpc/error_details.proto and whatever it imports that is missing."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    present = {file.name for file in files.file}

    def add(file: FileDescriptor) -> None:
        if file.name in present:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.file.append(proto)
        present.add(file.name)

    add(error_details_pb2.DESCRIPTOR)
    return files.SerializeToString()
