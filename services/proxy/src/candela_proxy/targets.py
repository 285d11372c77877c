"""Custom targets (``Candela-Target-Url``, each ``Candela-Fallbacks`` ``target-url``): how a client's target
URL is parsed, which addresses the proxy may reach on a client's say-so, and the HTTP session that connects
only to addresses it checked.

A client holding an ordinary proxy key must not turn the gateway into a way into the network it runs in
(ClickHouse's HTTP port, the S3 filer, Envoy's admin, cloud metadata). So a target is reached only when
every address its host resolves to is public, or when the operator listed the host in
``CANDELA_TARGET_HOSTS`` (a local vLLM or Ollama). The check runs twice: at admission, so a refused request
gets its 403 before anything goes upstream, and again inside the connector's resolver, so the address
connected to is the one checked (a DNS answer that changes in between, "rebinding", cannot reach inside).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services: credentials of the machine the gateway runs on. No name ever reaches them, allow
# list or not (an operator who means them can still call them without a gateway in between).
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_ALLOW_HINT = "an operator can allow it in CANDELA_TARGET_HOSTS"


class TargetUrlError(ValueError):
    """A target URL is malformed; the message completes "header <name> ...", e.g. "must be an http(s) URL"."""


class TargetRefused(OSError):
    """The address policy does not let the proxy reach a target.

    An ``OSError`` so that, raised inside the connector's resolver, aiohttp wraps it in
    ``ClientConnectorDNSError`` like any failed lookup instead of letting it escape as something else.
    ``str()`` is the message for the client (it names the host, never what the host resolved to: that would
    map the internal DNS for a caller); ``detail`` is for the proxy's own log.
    """

    def __init__(self, host: str, why: str, detail: str = "") -> None:
        super().__init__(f"this gateway does not send requests to {host!r}: {why}")
        self.host = host
        self.detail = detail or why


# --- parsing ------------------------------------------------------------------------------------------


def parse_target_url(value: str) -> str:
    """The base URL a client named, checked: http(s), a host, no userinfo, query or fragment.

    Returns it stripped of surrounding space and trailing slashes (the provider path is appended to it).
    A ``?`` or ``#`` would turn the appended ``/v1/...`` into a query or fragment, so the client would pick
    any path of the host; userinfo would put a credential into the log and clash with ``Authorization``.
    """
    text = value.strip()
    scheme, separator, rest = text.partition("://")
    if scheme.lower() not in {"http", "https"} or not separator:
        raise TargetUrlError(f"must be an http(s) URL, got {value!r}")
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F or char == "\\" for char in text):
        raise TargetUrlError(f"must not contain spaces, backslashes or control characters, got {value!r}")
    if "?" in text:
        raise TargetUrlError(f"must not carry a query string ('?'): the provider path is appended to it, got {value!r}")
    if "#" in text:
        raise TargetUrlError(f"must not carry a fragment ('#'), got {value!r}")
    if "@" in rest.split("/", 1)[0]:
        # The value is not echoed: it holds a credential.
        raise TargetUrlError("must not carry user:password@ (send the provider key in a header)")
    try:
        url = URL(text)
    except ValueError as err:
        raise TargetUrlError(f"is not a valid URL ({err}), got {value!r}") from None
    if not url.raw_host:
        raise TargetUrlError(f"must be an http(s) URL with a host, got {value!r}")
    if _looks_numeric(url.raw_host) and _ip_literal(url) is None:
        # aiohttp takes such a host for an address and refuses it (127.1, 2130706433); say so up front.
        raise TargetUrlError(f"has a host that is not a valid IP address ({url.raw_host!r}), got {value!r}")
    return text.rstrip("/")


def provider_name(target_url: str) -> str:
    """``host[:port]`` of a target, as logged for its provider (never its userinfo)."""
    try:
        url = URL(target_url)
    except ValueError:
        return ""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.explicit_port}" if url.explicit_port is not None else host


def _looks_numeric(host: str) -> bool:
    # aiohttp's own test (helpers.is_ip_address): such a host skips the resolver and is connected to as is.
    return ":" in host or host.replace(".", "").isdigit()


def _ip_literal(url: URL) -> IPAddress | None:
    """The address a URL's host names literally, or None for a name (or a non-canonical numeric host)."""
    host = url.host or ""
    if not _looks_numeric(host):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address) and str(address) != host:
        return None
    return address


# --- the address policy -------------------------------------------------------------------------------


def address_refusal(address: IPAddress) -> str | None:
    """Why the proxy must not connect to ``address`` on a client's say-so, or None when it is public.

    ``ipaddress``'s ``is_global`` is the base; on its own it would let through multicast (ff02::1 counts as
    global), the IPv6 forms that carry an IPv4 address (::ffff:127.0.0.1 is "global" for the IPv4-compatible
    and NAT64 forms), and it says nothing of metadata services. Those are checked explicitly.
    """
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = address_refusal(embedded)
            return f"{reason} (in an IPv6 form)" if reason else None
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


def is_metadata_address(address: IPAddress) -> bool:
    """Whether ``address`` is a cloud metadata service's, in any spelling (IPv4-mapped included)."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return embedded in METADATA_ADDRESSES
    return address in METADATA_ADDRESSES


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, IPv4-compatible, 6to4 or NAT64."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class AllowEntry:
    """One ``CANDELA_TARGET_HOSTS`` entry: a host (or ``*.domain``), any port unless one is given."""

    host: str
    port: int | None = None
    wildcard: bool = False

    def matches(self, host: str, port: int) -> bool:
        """Whether a target at ``host`` (normalised) and ``port`` is this entry's."""
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host == self.host or host.endswith("." + self.host)
        return host == self.host


@dataclass(frozen=True)
class AllowList:
    """The operator's ``CANDELA_TARGET_HOSTS`` and ``CANDELA_TARGET_HOSTS_ONLY``."""

    entries: tuple[AllowEntry, ...] = ()
    only: bool = False
    """True: custom targets go only to the listed hosts, public or not (none when the list is empty)."""

    @classmethod
    def parse(cls, text: str, only: bool = False) -> AllowList:
        """Entries separated by commas: ``host``, ``host:port``, ``*.domain[:port]``, ``[v6]:port``."""
        return cls(tuple(_allow_entry(item.strip()) for item in text.split(",") if item.strip()), only)

    def permits(self, host: str, port: int) -> bool:
        """Whether the operator listed this host (and port)."""
        normal = _normal_host(host)
        return any(entry.matches(normal, port) for entry in self.entries)


def _allow_entry(item: str) -> AllowEntry:
    """Parses one allow-list entry; raises ValueError naming it when malformed."""
    if item.count(":") > 1 and not item.startswith("["):
        # A bare IPv6 address ("::1"): without brackets it has no port.
        try:
            return AllowEntry(str(ipaddress.IPv6Address(item)))
        except ValueError:
            pass
    wildcard = item.startswith("*.")
    try:
        url: URL | None = URL(f"http://{item[2:] if wildcard else item}")
    except ValueError:
        url = None
    if url is None or not url.raw_host or url.raw_path not in {"", "/"} or url.query_string or url.raw_user:
        raise ValueError(f"CANDELA_TARGET_HOSTS entry {item!r} is not host, host:port, *.domain or [v6]:port")
    return AllowEntry(_normal_host(url.raw_host), url.explicit_port, wildcard)


def _normal_host(host: str) -> str:
    """Lower case, no trailing dot, IP addresses in their canonical spelling."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _checked(host: str, port: int, addresses: Iterable[str], allow: AllowList) -> None:
    """Raises TargetRefused unless every address of ``host`` may be reached."""
    listed = allow.permits(host, port)
    for text in addresses:
        address = ipaddress.ip_address(text)
        reason = address_refusal(address)
        metadata = is_metadata_address(address)
        if reason is None or (listed and not metadata):
            continue
        detail = f"{host}:{port} -> {text} ({reason})"
        hint = "" if metadata else f"; {_ALLOW_HINT}"
        if _normal_host(host) == _normal_host(text):
            raise TargetRefused(host, f"it is {reason}{hint}", detail)
        raise TargetRefused(host, f"it resolves to a non-public address{hint}", detail)


class PolicyResolver(AbstractResolver):
    """A resolver that answers only addresses the policy lets the proxy reach, for the targets' connector.

    It raises :class:`TargetRefused` instead of answering when the operator's list does not permit the host
    or any address of the answer is refused; the connector then never connects, and its DNS cache only ever
    holds checked answers.
    """

    def __init__(self, allow: AllowList, inner: AbstractResolver | None = None) -> None:
        self.allow = allow
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The checked answer for ``host``; raises TargetRefused (an OSError) or the lookup's own error."""
        self.check_listed(host, port)
        answer = await self._inner.resolve(host, port, family)
        _checked(host, port, (result["host"] for result in answer), self.allow)
        return answer

    def check_listed(self, host: str, port: int) -> None:
        """In "only the listed hosts" mode, refuses a host the operator did not list."""
        if self.allow.only and not self.allow.permits(host, port):
            raise TargetRefused(host, "custom targets go only to the hosts this gateway's operator listed")

    def check_literal(self, address: IPAddress, host: str, port: int) -> None:
        """Checks a host that is an IP address (aiohttp connects to those without asking the resolver)."""
        self.check_listed(host, port)
        _checked(host, port, [str(address)], self.allow)

    async def close(self) -> None:
        """Closes the resolver it asks."""
        await self._inner.close()


class TargetSession:
    """The HTTP client for client-named targets, apart from the one for the operator's providers.

    Its connector resolves through :class:`PolicyResolver`, so it connects only to addresses that were
    checked; IP-literal hosts (which aiohttp never resolves) are checked here before each request. It never
    follows redirects: a 3xx goes back to the client, it does not take the gateway somewhere else.
    """

    def __init__(self, resolver: PolicyResolver, connect_timeout_s: float, read_timeout_s: float) -> None:
        self.resolver = resolver
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60, resolver=resolver),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s),
            auto_decompress=True,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def admit(self, target_url: str) -> None:
        """Checks a target at admission; raises TargetRefused. A name that does not resolve passes: the
        attempt then fails to connect like any unreachable provider (and a fallback may answer)."""
        url = URL(target_url)
        host, port = url.raw_host or "", url.port or 0
        address = _ip_literal(url)
        if address is not None:
            self.resolver.check_literal(address, host, port)
            return
        try:
            await self.resolver.resolve(host, port, socket.AF_UNSPEC)
        except TargetRefused:
            raise
        except OSError as err:
            logger.info("target %s does not resolve at admission: %s", provider_name(target_url), err)

    async def request(self, method: str, url: str | URL, **kwargs: Any) -> aiohttp.ClientResponse:
        """Sends one request to a target (checked again where it connects); raises TargetRefused."""
        parsed = URL(url)
        host, port = parsed.raw_host or "", parsed.port or 0
        address = _ip_literal(parsed)
        if address is not None:
            self.resolver.check_literal(address, host, port)
        elif _looks_numeric(host):
            # aiohttp would take it for an address and skip the resolver; parse_target_url refuses these first.
            raise TargetRefused(host, "it is not a canonical IP address")
        try:
            return await self._session.request(method, parsed, allow_redirects=False, **kwargs)
        except aiohttp.ClientConnectorError as err:
            if isinstance(err.os_error, TargetRefused):
                raise err.os_error from None
            raise

    async def close(self) -> None:
        """Closes its connections and the resolver."""
        await self._session.close()
        await self.resolver.close()
