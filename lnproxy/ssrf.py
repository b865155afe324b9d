"""The SSRF guard of outbound webhook calls (docs/protocol.md, "Waking an
offline client (webhooks)").

A webhook URL comes from a client, so a call to it must not become a way
into the operator's network.  URLs must be ``https`` and their host must
resolve only to globally routable unicast addresses (no loopback, private,
link-local, multicast, reserved, unspecified or shared address space),
unless the operator passed ``--webhook-allow-private``, which also allows
``http``.

The check runs twice: when the URL is registered (:func:`check_url` for its
form, :func:`check_addresses` for what its host resolves to) and again at
every connection: :class:`GuardedEndpointFactory` resolves the name, checks
every address, then connects to a checked address while TLS still verifies
the original host name.  So a DNS answer that changes after registration
(rebinding) cannot point the proxy at an internal service.

:func:`build_http_client` puts it together: the treq client the notifier
(:mod:`lnproxy.webhook`) sends with.  Nothing here knows about nodes, the
hub or signing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from lnproxy.protocol import INVALID_PARAMS, NOT_ALLOWED

__all__ = [
    "BadWebhookURL",
    "MalformedURL",
    "WebhookRefused",
    "Resolver",
    "Target",
    "thread_resolver",
    "address_problem",
    "check_url",
    "check_addresses",
    "resolve",
    "GuardedEndpointFactory",
    "build_http_client",
    "MAX_URL_LENGTH",
    "MAX_ADDRESSES_TRIED",
]

#: Longest URL ``webhook.set`` accepts.
MAX_URL_LENGTH = 2048
#: Addresses of one host name we try at connect time.
MAX_ADDRESSES_TRIED = 4


class BadWebhookURL(Exception):
    """A webhook URL the guard does not accept; :attr:`code` is the protocol
    error code a ``webhook.set`` answers for it, the message says why."""

    code: ClassVar[int] = NOT_ALLOWED


class MalformedURL(BadWebhookURL):
    """Not a usable URL at all (-32602): too long, no host, a bad port..."""

    code: ClassVar[int] = INVALID_PARAMS


class WebhookRefused(BadWebhookURL):
    """A webhook target is not allowed (code 8): its scheme, user info, or
    an address it resolves to."""


class Resolver(TypingProtocol):
    """Resolves a host name: ``(host, port) -> Deferred[list of IP strings]``.

    The default is :func:`thread_resolver`; tests inject their own.
    """

    def __call__(self, host: str, port: int) -> defer.Deferred[list[str]]: ...


def thread_resolver(reactor: Any) -> Resolver:
    """A resolver running ``getaddrinfo`` in the reactor's thread pool.

    It returns every address (IPv4 and IPv6), unlike ``getHostByName``, so
    that all of them can be checked.
    """

    def lookup(host: str, port: int) -> list[str]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        out: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = str(sockaddr[0])
            if address not in out:
                out.append(address)
        return out

    def resolve(host: str, port: int) -> defer.Deferred[list[str]]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), lookup, host, port)

    return resolve


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_problem(address: str) -> str | None:
    """Why a webhook must not be sent to ``address``, or None when it may.

    IPv6 addresses that embed an IPv4 address (mapped, 6to4, NAT64) are
    judged by the embedded address as well.

    :param address: an IPv4 or IPv6 address (text).
    :return: ``"loopback"``, ``"private"``, ``"link-local"``, ... or None.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        # Mapped and NAT64 addresses reach the embedded IPv4 address: judge
        # that one (the IPv6 ranges themselves count as reserved).
        if ip.ipv4_mapped is not None:
            candidates = [ip.ipv4_mapped]
        elif ip in _NAT64:
            candidates = [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
        elif ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
    for c in candidates:
        if c.is_unspecified:
            return "unspecified"
        if c.is_loopback:
            return "loopback"
        if c.is_link_local:
            return "link-local"
        if c.is_multicast:
            return "multicast"
        if c.is_private:
            return "private"
        if c.is_reserved:
            return "reserved"
        if not c.is_global:
            return "not globally routable"
    return None


@dataclass(frozen=True)
class Target:
    """Where a webhook URL points: scheme, host (no brackets), port."""

    scheme: str
    host: str
    port: int


def check_url(url: str, allow_private: bool) -> Target:
    """Check a webhook URL's form (not its addresses).

    :param url: the URL a client asked for.
    :param allow_private: whether ``http`` is allowed.
    :return: its :class:`Target`.
    :raise MalformedURL: (-32602) for a malformed URL.
    :raise WebhookRefused: (code 8) for a refused one (scheme, user info).
    """
    if len(url) > MAX_URL_LENGTH:
        raise MalformedURL(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise MalformedURL("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        raise MalformedURL(f"url is malformed: {e}") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in ("https", "http"):
        raise WebhookRefused(f"webhook URL refused: scheme {scheme!r}; use https")
    if scheme not in allowed:
        raise WebhookRefused("webhook URL refused: plain http; use https")
    if not host:
        raise MalformedURL("url has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused(
            "webhook URL refused: user info (user:password@) is not allowed",
        )
    if port is None:
        port = 443 if scheme == "https" else 80
    if port == 0:
        raise MalformedURL("url port must be 1-65535")
    return Target(scheme, host, port)


def _refusal(host: str, address: str, problem: str) -> str:
    if host == address:
        return f"webhook URL refused: {address} is a {problem} address"
    return f"webhook URL refused: {host} resolves to {address}, a {problem} address"


def check_addresses(host: str, addresses: Sequence[str]) -> None:
    """Raise :class:`WebhookRefused` unless every address may be called.

    :param host: the URL's host (for the message).
    :param addresses: what it resolves to (an empty list is refused too).
    """
    if not addresses:
        raise WebhookRefused(f"webhook URL refused: {host} has no address")
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            raise WebhookRefused(_refusal(host, address, problem))


def resolve(resolver: Resolver, host: str, port: int) -> defer.Deferred[list[str]]:
    """The addresses of ``host``: itself for an IP literal, else the
    resolver's answer (a synchronous exception becomes a failure)."""
    if _literal(host) is not None:
        return defer.succeed([host])
    return defer.maybeDeferred(resolver, host, port)


# -- connect-time guard --------------------------------------------------------


@implementer(IStreamClientEndpoint)
class _GuardedEndpoint:
    """Resolve, check every address, connect to a checked one (TLS keeps the
    original host name for SNI and certificate checks)."""

    def __init__(self, owner: GuardedEndpointFactory, target: Target) -> None:
        self._owner = owner
        self._target = target

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        """Connect ``factory`` to a checked address of the target."""
        return defer.Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        owner, target = self._owner, self._target
        addresses = await resolve(owner.resolver, target.host, target.port)
        if not owner.allow_private:
            check_addresses(target.host, addresses)
        elif not addresses:
            raise WebhookRefused(f"webhook URL refused: {target.host} has no address")
        creator = None
        if target.scheme == "https":
            creator = owner.tls_policy.creatorForNetloc(
                target.host.encode("idna"), target.port
            )
        last: BaseException | None = None
        for address in addresses[:MAX_ADDRESSES_TRIED]:
            endpoint: Any
            if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address):
                endpoint = TCP6ClientEndpoint(
                    owner.reactor, address, target.port, timeout=owner.connect_timeout
                )
            else:
                endpoint = TCP4ClientEndpoint(
                    owner.reactor, address, target.port, timeout=owner.connect_timeout
                )
            if creator is not None:
                endpoint = wrapClientTLS(creator, endpoint)
            try:
                return await endpoint.connect(factory)
            except defer.CancelledError:
                raise
            except Exception as e:  # try the next address
                last = e
        assert last is not None
        raise last


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """An ``IAgentEndpointFactory`` that refuses non-public addresses.

    Use with ``Agent.usingEndpointFactory``.  It checks at every new
    connection, so it also protects against DNS rebinding.

    :param reactor: for TCP connections.
    :param resolver: name resolution (see :class:`Resolver`).
    :param allow_private: skip the address check (``--webhook-allow-private``).
    :param tls_policy: TLS policy for ``https`` (browser-like by default).
    :param connect_timeout: seconds for the TCP connection.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Resolver,
        allow_private: bool = False,
        tls_policy: IPolicyForHTTPS | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.allow_private = allow_private
        self.tls_policy = tls_policy or BrowserLikePolicyForHTTPS()
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        """The guarded endpoint of a request URI (``twisted.web.client.URI``)."""
        scheme = uri.scheme.decode("ascii")
        if scheme not in ("https", "http") or (
            scheme == "http" and not self.allow_private
        ):
            raise WebhookRefused(f"webhook URL refused: scheme {scheme!r}")
        host = uri.host.decode("idna")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return _GuardedEndpoint(self, Target(scheme, host, uri.port))


def build_http_client(
    reactor: Any,
    resolver: Resolver,
    allow_private: bool,
    pool: HTTPConnectionPool | None = None,
    connect_timeout: float = 10.0,
) -> HTTPClient:
    """The notifier's treq client: guarded endpoints, a pool, no cookies.

    Cookies are refused so that one receiver cannot plant a cookie that
    another node's webhook on the same domain would then send.
    """
    factory = GuardedEndpointFactory(
        reactor, resolver, allow_private, connect_timeout=connect_timeout
    )
    agent = Agent.usingEndpointFactory(reactor, factory, pool=pool)
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(agent, cookiejar=jar)  # type: ignore[arg-type]
