"""Helpers of the multi-tenancy tests: organizations with keys of every scope and data of their own, and
REST calls derived from an RPC's ``google.api.http`` rule (so every annotated RPC is reachable as REST)."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.prompts.v1 import prompts_service_pb2 as prompts_pb
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela.query.v1 import query_service_pb2_grpc
from candela_runtime.security import service_metadata
from candela_stack.stack import Stack
from tests.e2e.conftest import bearer, wait_for_logged_request

_PATH_PARAMETER = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=[^}]*)?\}")


@dataclass(frozen=True)
class Tenant:
    """An organization with one key per scope and one of each thing another tenant must not reach."""

    organization_id: str
    keys: dict[str, str]
    """Scope name ("admin", "read", "write", "proxy") -> secret."""
    key_ids: dict[str, str]
    """Scope name -> API key id."""
    spare_key_id: str
    """A key that may be revoked by the tests (its secret is in ``keys["spare"]``)."""
    prompt_id: str
    """A prompt with version 1 labelled "production" and version 2."""
    request_id: str
    """A logged proxied request."""
    user_id: str
    """The Candela-User-Id of that request."""
    session_id: str
    """The Candela-Session-Id of that request."""
    marker: str
    """Text only this tenant's prompt templates and request bodies contain."""
    spare_models: tuple[str, ...] = ()
    """Models with a price override (provider "openai") and an alias each; the tests may delete all but the last."""
    secrets_seen: list[str] = field(default_factory=list)
    """Every key secret made for this tenant."""

    def identifiers(self) -> list[str]:
        """Strings that only this tenant's data contains (not its prompt id: another tenant may reuse a name)."""
        return [
            self.organization_id,
            self.request_id,
            self.user_id,
            self.session_id,
            self.marker,
            *self.key_ids.values(),
            *self.spare_models,
        ]


SCOPES: dict[str, list[auth_pb.ApiKeyScope.ValueType]] = {
    "admin": [auth_pb.API_KEY_SCOPE_ADMIN],
    "read": [auth_pb.API_KEY_SCOPE_READ],
    "write": [auth_pb.API_KEY_SCOPE_WRITE],
    "proxy": [auth_pb.API_KEY_SCOPE_PROXY],
    "spare": [auth_pb.API_KEY_SCOPE_READ],
}


def make_tenant(stack: Stack, channel: grpc.Channel, name: str) -> Tenant:
    """Creates an organization through the gateway with the service credential, then its keys and data."""
    tag = f"{name.lower()}-{secrets.token_hex(3)}"
    auth = auth_service_pb2_grpc.AuthServiceStub(channel)
    internal = service_metadata(stack.service_token)
    organization = auth.CreateOrganization(
        auth_pb.CreateOrganizationRequest(name=name), metadata=internal, timeout=10
    ).organization
    keys: dict[str, str] = {}
    key_ids: dict[str, str] = {}
    for scope_name, scopes in SCOPES.items():
        created = auth.CreateApiKey(
            auth_pb.CreateApiKeyRequest(organization_id=organization.id, name=f"{tag} {scope_name}", scopes=scopes),
            metadata=internal,
            timeout=10,
        )
        keys[scope_name], key_ids[scope_name] = created.secret, created.api_key.id
    prompts = prompts_service_pb2_grpc.PromptsServiceStub(channel)
    prompt_id = f"prompt-{tag}"
    marker = f"from {tag}"
    for template, environment in ((f"Hello {{{{name}}}} {marker}", "production"), ("Hi {{name}}", "")):
        prompts.CreatePrompt(
            prompts_pb.CreatePromptRequest(prompt_id=prompt_id, template=template, environment=environment),
            metadata=bearer(keys["write"]),
            timeout=10,
        )
    spare_models = tuple(f"spare-{tag}-{index}" for index in (1, 2, 3))
    for model in spare_models:
        auth.SetPriceOverride(
            auth_pb.SetPriceOverrideRequest(
                price_override=auth_pb.PriceOverride(
                    provider="openai", model=model, input_price_per_mtok="1", output_price_per_mtok="2"
                )
            ),
            metadata=bearer(keys["admin"]),
            timeout=10,
        )
        auth.SetModelAlias(
            auth_pb.SetModelAliasRequest(
                model_alias=auth_pb.ModelAlias(model=model, target_provider="openai", target_model="gpt-4o-mini")
            ),
            metadata=bearer(keys["admin"]),
            timeout=10,
        )
    user_id, session_id = f"user-{tag}", f"session-{tag}"
    response = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {marker}"}]},
        headers={
            "Candela-Auth": f"Bearer {keys['proxy']}",
            "Candela-User-Id": user_id,
            "Candela-Session-Id": session_id,
            "Authorization": "Bearer sk-x",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["candela-id"]
    wait_for_logged_request(query_service_pb2_grpc.QueryServiceStub(channel), keys["read"], request_id)
    return Tenant(
        organization_id=organization.id,
        keys=keys,
        key_ids=key_ids,
        spare_key_id=key_ids["spare"],
        prompt_id=prompt_id,
        request_id=request_id,
        user_id=user_id,
        session_id=session_id,
        marker=marker,
        spare_models=spare_models,
        secrets_seen=list(keys.values()),
    )


def http_rule(method: descriptor.MethodDescriptor) -> http_pb2.HttpRule | None:
    """The RPC's REST mapping, if it has one."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def rest_call(
    client: httpx.Client, method: descriptor.MethodDescriptor, request: Message, headers: dict[str, str]
) -> httpx.Response:
    """Sends ``request`` as the REST call its ``google.api.http`` rule declares (what a REST user sends)."""
    rule = http_rule(method)
    assert rule is not None, f"{method.full_name} has no REST mapping"
    verb = rule.WhichOneof("pattern")
    assert verb in ("get", "post", "put", "patch", "delete"), verb
    template: str = getattr(rule, verb)
    fields: dict[str, Any] = json_format.MessageToDict(request, preserving_proto_field_name=True)
    path_fields = _PATH_PARAMETER.findall(template)
    path = _PATH_PARAMETER.sub(lambda match: str(fields.pop(match.group(1), "")), template)
    camel = json_format.MessageToDict(request)
    remaining = {name: value for name, value in camel.items() if _snake(name) not in path_fields}
    if rule.body == "*":
        return client.request(verb.upper(), path, content=json.dumps(remaining), headers=headers)
    params = {name: value for name, value in remaining.items() if not isinstance(value, dict | list)}
    return client.request(verb.upper(), path, params=params, headers=headers)


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda match: "_" + match.group(1).lower(), camel)
