"""Where the mesh is and who the CLI is: the gateway address, the Envoy admin URL and the credential.

Every value comes from a flag or its ``CANDELA_*`` variable; without either, the `make run` stack's
addresses (``CANDELA_STACK_PORT_BASE``, 7700 by default: the gateway on the base port, Envoy's admin on
the next one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from candela_runtime.security import service_metadata

DEV_PORT_BASE = 7700
"""The `make run` stack's base port unless CANDELA_STACK_PORT_BASE says otherwise."""


class CredentialError(Exception):
    """No usable credential for a command that needs one."""


@dataclass(frozen=True)
class Mesh:
    """How to reach the running mesh, and with which credential."""

    gateway: str
    """The Envoy gateway's host:port (gRPC)."""
    admin_url: str
    """Envoy's admin URL (cluster health), e.g. http://127.0.0.1:7701."""
    service_token: str | None
    """The internal service credential: may act on any organization (and create organizations)."""
    api_key: str | None
    """A Candela API key: acts on its own organization only (ADMIN for keys, READ for export)."""
    timeout_s: float = 15.0

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str],
        *,
        gateway: str | None = None,
        admin_url: str | None = None,
        service_token_file: str | None = None,
        api_key: str | None = None,
    ) -> Mesh:
        """Flags first, then CANDELA_GATEWAY, CANDELA_ENVOY_ADMIN_URL, CANDELA_SERVICE_TOKEN_FILE or
        CANDELA_SERVICE_TOKEN, CANDELA_API_KEY. The token itself is never a flag (`ps` would show it)."""
        base = int(environ.get("CANDELA_STACK_PORT_BASE") or DEV_PORT_BASE)
        token_file = service_token_file or environ.get("CANDELA_SERVICE_TOKEN_FILE") or None
        if token_file is not None:
            token = Path(token_file).read_text().strip() or None
        else:
            token = environ.get("CANDELA_SERVICE_TOKEN") or None
        return cls(
            gateway=gateway or environ.get("CANDELA_GATEWAY") or f"127.0.0.1:{base}",
            admin_url=(admin_url or environ.get("CANDELA_ENVOY_ADMIN_URL") or f"http://127.0.0.1:{base + 1}").rstrip(
                "/"
            ),
            service_token=token,
            api_key=api_key or environ.get("CANDELA_API_KEY") or None,
        )

    def channel(self) -> grpc.Channel:
        """A channel to the gateway (never through an HTTP proxy from the environment)."""
        return grpc.insecure_channel(
            self.gateway,
            options=[("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )

    def metadata(self, *, internal_only: bool = False) -> tuple[tuple[str, str], ...]:
        """The credential as gRPC metadata: the service token if given, else the admin key."""
        if self.service_token is not None:
            return service_metadata(self.service_token)
        if internal_only:
            raise CredentialError(
                "this command needs the service credential: --service-token-file PATH or CANDELA_SERVICE_TOKEN(_FILE)"
            )
        if self.api_key is not None:
            return (("authorization", f"Bearer {self.api_key}"),)
        raise CredentialError(
            "no credential: give the service token (--service-token-file, CANDELA_SERVICE_TOKEN_FILE or "
            "CANDELA_SERVICE_TOKEN) or an admin key (--api-key or CANDELA_API_KEY)"
        )

    def key_metadata(self) -> tuple[tuple[str, str], ...]:
        """The API key as gRPC metadata, for calls that read as one organization (the query API)."""
        if self.api_key is None:
            raise CredentialError("this command reads as one organization: give a READ key (CANDELA_API_KEY)")
        return (("authorization", f"Bearer {self.api_key}"),)
