"""Custom targets: URL parsing, the address policy (every non-public range refused, public accepted), the
operator's allow-list, and a session that connects only to checked addresses, DNS rebinding included."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict

from candela_proxy.headers import HeaderError, parse_candela_headers
from candela_proxy.targets import (
    AllowEntry,
    AllowList,
    PolicyResolver,
    TargetRefused,
    TargetSession,
    TargetUrlError,
    address_refusal,
    parse_target_url,
    provider_name,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("240.0.0.1", ""),
        ("255.255.255.255", ""),
        ("192.0.2.1", ""),
        ("198.18.0.1", ""),
        ("2001:db8::1", ""),
        ("2001::1", ""),  # Teredo
        ("4000::1", "reserved"),  # outside the allocated 2000::/3
        # IPv6 spellings of refused IPv4 addresses: mapped, compatible, 6to4, NAT64.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::127.0.0.1", "loopback"),
        ("::10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),
        ("2002:a9fe:a9fe::1", "metadata"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b:1::a00:1", ""),  # local-use NAT64
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None, address
    assert reason in refusal


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_are_accepted(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("http://[::1", "is not a valid URL"),
        ("http://[::1]:99999", "is not a valid URL"),
        ("http://h:port", "is not a valid URL"),
        ("ftp://example.com", "must be an http(s) URL"),
        ("example.com", "must be an http(s) URL"),
        ("http://", "with a host"),
        ("http:///v1", "with a host"),
        ("http://user:secret@example.com", "user:password@"),
        ("http://@example.com", "user:password@"),
        ("http://127.0.0.1:8123?", "query string"),
        ("http://127.0.0.1:8123/?query=SELECT+1", "query string"),
        ("http://example.com/#x", "fragment"),
        ("http://exa mple.com", "spaces"),
        ("http://example.com\r\nX-Injected: 1", "control characters"),
        ("http://example.com\\@127.0.0.1", "backslashes"),
        ("http://127.1:8123", "not a valid IP address"),
        ("http://2130706433", "not a valid IP address"),
    ],
)
def test_malformed_targets_say_what_is_wrong(value: str, complaint: str) -> None:
    with pytest.raises(TargetUrlError, match=re.escape(complaint)) as caught:
        parse_target_url(value)
    assert "secret" not in str(caught.value), "a credential is not echoed"


@pytest.mark.parametrize("value", ["http://[::1", "http://a:b@example.com", "http://example.com/?"])
def test_malformed_targets_are_header_errors_in_target_url_and_fallbacks(value: str) -> None:
    with pytest.raises(HeaderError, match="Candela-Target-Url"):
        parse_candela_headers(CIMultiDict({"Candela-Target-Url": value}))
    fallbacks = f'[{{"target-url": "{value}"}}]'
    with pytest.raises(HeaderError, match=r"Candela-Fallbacks\[0\] target-url"):
        parse_candela_headers(CIMultiDict({"Candela-Fallbacks": fallbacks}))


@pytest.mark.parametrize(
    ("value", "parsed", "provider"),
    [
        (" https://api.groq.com/openai/ ", "https://api.groq.com/openai", "api.groq.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("http://[::1]:8000/v1/", "http://[::1]:8000/v1", "[::1]:8000"),
        ("HTTPS://API.Example.COM", "HTTPS://API.Example.COM", "api.example.com"),
    ],
)
def test_well_formed_targets_and_their_logged_provider(value: str, parsed: str, provider: str) -> None:
    assert parse_target_url(value) == parsed
    assert provider_name(parsed) == provider


def test_allow_list_entries() -> None:
    allow = AllowList.parse(" 127.0.0.1:8000, *.groq.com, ollama.lan, [::1]:9000, ::2 ,LOCALHOST.")
    assert allow.entries == (
        AllowEntry("127.0.0.1", 8000),
        AllowEntry("groq.com", None, wildcard=True),
        AllowEntry("ollama.lan"),
        AllowEntry("::1", 9000),
        AllowEntry("::2"),
        AllowEntry("localhost"),
    )
    assert allow.permits("127.0.0.1", 8000)
    assert not allow.permits("127.0.0.1", 8001)
    assert allow.permits("api.groq.com", 443)
    assert allow.permits("groq.com", 80)
    assert not allow.permits("evilgroq.com", 443)
    assert not allow.permits("api.groq.com.evil.example", 443)
    assert allow.permits("OLLAMA.LAN.", 11434)
    assert allow.permits("::1", 9000)
    assert allow.permits("0:0::1", 9000)
    assert not allow.permits("::1", 9001)
    assert allow.permits("::2", 1)
    assert allow.permits("localhost", 5)
    assert AllowList.parse("").entries == ()


@pytest.mark.parametrize("entry", ["http://x", "x/path", "x:notaport", "a@b", "x?y"])
def test_malformed_allow_list_entries_fail_at_start_up(entry: str) -> None:
    with pytest.raises(ValueError, match="CANDELA_TARGET_HOSTS entry"):
        AllowList.parse(f"ok.example, {entry}")


@dataclass
class ScriptedResolver(AbstractResolver):
    """Answers each lookup of a name with the next address in its script (the last one repeats)."""

    script: dict[str, list[str]]
    asked: list[str] = field(default_factory=list)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        answers = self.script[host]
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        kind = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [ResolveResult(hostname=host, host=address, port=port, family=kind, proto=6, flags=0)]

    async def close(self) -> None:
        pass


async def test_the_resolver_refuses_a_name_that_resolves_to_loopback() -> None:
    resolver = PolicyResolver(AllowList.parse(""))
    with pytest.raises(TargetRefused, match="'localhost': it resolves to a non-public address") as caught:
        await resolver.resolve("localhost", 8123, socket.AF_UNSPEC)
    assert "127.0.0.1" not in str(caught.value), "the client is not told what the name resolved to"
    assert "127.0.0.1" in caught.value.detail or "::1" in caught.value.detail


async def test_the_resolver_answers_an_allow_listed_local_host() -> None:
    resolver = PolicyResolver(AllowList.parse("localhost:8123"))
    answer = await resolver.resolve("localhost", 8123, socket.AF_INET)
    assert [result["host"] for result in answer] == ["127.0.0.1"]
    with pytest.raises(TargetRefused):
        await resolver.resolve("localhost", 8124, socket.AF_INET)


async def test_a_name_with_any_private_address_is_refused_and_metadata_even_when_listed() -> None:
    inner = ScriptedResolver({"mixed.example": ["8.8.8.8", "10.0.0.1"], "meta.lan": ["169.254.169.254"]})
    resolver = PolicyResolver(AllowList.parse("meta.lan"), inner)
    assert [r["host"] for r in await resolver.resolve("mixed.example", 443)] == ["8.8.8.8"]
    with pytest.raises(TargetRefused, match="non-public"):
        await resolver.resolve("mixed.example", 443)
    with pytest.raises(TargetRefused) as caught:
        await resolver.resolve("meta.lan", 80)
    assert "metadata" in caught.value.detail
    assert "CANDELA_TARGET_HOSTS" not in str(caught.value)


async def test_only_mode_refuses_unlisted_public_hosts() -> None:
    inner = ScriptedResolver({"api.groq.com": ["8.8.8.8"], "example.com": ["8.8.4.4"]})
    resolver = PolicyResolver(AllowList.parse("api.groq.com", only=True), inner)
    assert await resolver.resolve("api.groq.com", 443)
    with pytest.raises(TargetRefused, match="only to the hosts"):
        await resolver.resolve("example.com", 443)
    assert inner.asked == ["api.groq.com"], "an unlisted host is refused before any lookup"
    nothing = PolicyResolver(AllowList.parse("", only=True), inner)
    with pytest.raises(TargetRefused):
        await nothing.resolve("api.groq.com", 443)


@dataclass
class LocalServer:
    """A loopback HTTP server that counts the connections it accepts and answers each request."""

    port: int = 0
    connections: int = 0
    reply: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(self.reply)
        await writer.drain()
        writer.close()
        await writer.wait_closed()


@asynccontextmanager
async def local_server(reply: bytes | None = None) -> AsyncIterator[LocalServer]:
    state = LocalServer() if reply is None else LocalServer(reply=reply)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def target_session(resolver: PolicyResolver) -> AsyncIterator[TargetSession]:
    session = TargetSession(resolver, connect_timeout_s=5, read_timeout_s=5)
    try:
        yield session
    finally:
        await session.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "[::1]", "localhost", "127.1", "2130706433"])
async def test_a_local_target_is_refused_before_any_connection(host: str) -> None:
    async with local_server() as server, target_session(PolicyResolver(AllowList.parse(""))) as session:
        url = f"http://{host}:{server.port}"
        with pytest.raises(TargetRefused):
            await session.admit(url)
        with pytest.raises(TargetRefused):
            await session.request("POST", f"{url}/v1/chat/completions", data=b"{}")
    assert server.connections == 0


async def test_an_allow_listed_local_target_is_reached_and_its_redirect_is_not_followed() -> None:
    async with local_server() as other:
        redirect = f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{other.port}/\r\nContent-Length: 0\r\n\r\n"
        async with local_server(redirect.encode()) as server:
            allow = AllowList.parse(f"localhost:{server.port}")
            async with target_session(PolicyResolver(allow)) as session:
                await session.admit(f"http://localhost:{server.port}")
                answer = await session.request("GET", f"http://localhost:{server.port}/v1/models")
                assert answer.status == 302
                answer.release()
    assert (server.connections, other.connections) == (1, 0)


async def test_a_name_rebinding_to_loopback_after_admission_is_refused_where_it_connects() -> None:
    async with local_server() as server:
        # Public when admitted, loopback when the connector asks: the classic rebinding answer.
        inner = ScriptedResolver({"rebind.example": ["8.8.8.8", "127.0.0.1"]})
        async with target_session(PolicyResolver(AllowList.parse(""), inner)) as session:
            url = f"http://rebind.example:{server.port}"
            await session.admit(url)
            with pytest.raises(TargetRefused, match="non-public") as caught:
                await session.request("POST", f"{url}/v1/chat/completions", data=b"{}")
            assert "127.0.0.1" in caught.value.detail
            with pytest.raises(TargetRefused):  # no refused answer is cached as good
                await session.request("POST", f"{url}/v1/chat/completions", data=b"{}")
    assert inner.asked == ["rebind.example"] * 3
    assert server.connections == 0
