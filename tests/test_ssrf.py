"""Unit tests of lnproxy.ssrf, the SSRF guard of webhook calls: address
classification, the form of a URL, and the connect-time guard against DNS
rebinding (a MemoryReactorClock, no sockets)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from lnproxy.ssrf import (
    BadWebhookURL,
    GuardedEndpointFactory,
    MalformedURL,
    WebhookRefused,
    address_problem,
    check_addresses,
    check_url,
)
from lnproxy.testing import static_resolver

PUBLIC_IP = "93.184.216.34"


class AddressTests(SynchronousTestCase):
    """address_problem names what is wrong with an address."""

    def test_refused_kinds(self) -> None:
        """Loopback, private, link-local, multicast, reserved, unspecified,
        shared and IPv4-embedding IPv6 addresses are refused, each named."""
        cases = {
            "127.0.0.1": "loopback",
            "::1": "loopback",
            "10.1.2.3": "private",
            "172.16.0.1": "private",
            "192.168.1.1": "private",
            "fd00::1": "private",
            "169.254.169.254": "link-local",
            "fe80::1": "link-local",
            "224.0.0.1": "multicast",
            "ff02::1": "multicast",
            "0.0.0.0": "unspecified",
            "::": "unspecified",
            "100.64.0.1": "not globally routable",
            "::ffff:127.0.0.1": "loopback",
            "2002:7f00:1::": "loopback",
            "64:ff9b::a00:1": "private",
            "nonsense": "not an IP address",
        }
        got = {a: address_problem(a) for a in cases}
        self.assertEqual(got, cases)

    def test_reserved(self) -> None:
        """240.0.0.0/4 is refused (Python files it under private and
        reserved; either name is a refusal)."""
        self.assertIn(address_problem("240.0.0.1"), ("private", "reserved"))

    def test_public_allowed(self) -> None:
        """Globally routable unicast addresses pass."""
        for a in ("8.8.8.8", PUBLIC_IP, "2606:4700:4700::1111", "::ffff:8.8.8.8"):
            self.assertIsNone(address_problem(a), a)

    @settings(max_examples=200, deadline=None)
    @given(
        st.ip_addresses(v=4, network="10.0.0.0/8")
        | st.ip_addresses(v=6, network="fe80::/10")
    )
    def test_private_ranges(self, ip: Any) -> None:
        """Every address of a private or link-local range is refused."""
        self.assertIsNotNone(address_problem(str(ip)))


class CheckUrlTests(SynchronousTestCase):
    """check_url: the form of a URL, before any resolution."""

    def refused(self, url: str, allow_private: bool = False) -> BadWebhookURL:
        """The error check_url raises for ``url``."""
        with self.assertRaises(BadWebhookURL) as cm:
            check_url(url, allow_private)
        return cm.exception

    def test_https_only(self) -> None:
        """http is code 8 without the flag and allowed with it."""
        e = self.refused("http://hooks.example/x")
        self.assertIsInstance(e, WebhookRefused)
        self.assertEqual(
            (e.code, str(e)), (8, "webhook URL refused: plain http; use https")
        )
        self.assertEqual(check_url("http://hooks.example/x", True).port, 80)
        self.assertEqual(check_url("https://hooks.example/x", False).port, 443)

    def test_other_schemes(self) -> None:
        """Schemes other than http(s) are code 8 even with the flag."""
        for url in ("ftp://hooks.example/", "file:///etc/passwd", "gopher://x/"):
            self.assertEqual(self.refused(url, True).code, 8)

    def test_malformed(self) -> None:
        """No host, a bad port, spaces or an overlong URL are -32602."""
        for url in (
            "https:///x",
            "https://h:99999/",
            "https://h /x",
            "https://h/" + "a" * 3000,
        ):
            e = self.refused(url)
            self.assertIsInstance(e, MalformedURL)
            self.assertEqual(e.code, -32602, url)

    def test_user_info(self) -> None:
        """Credentials in the URL are refused (code 8)."""
        self.assertEqual(self.refused("https://u:p@hooks.example/").code, 8)

    def test_ipv6_literal(self) -> None:
        """An IPv6 literal's host comes without brackets."""
        t = check_url("https://[2606:4700::1111]:8443/x", False)
        self.assertEqual((t.host, t.port), ("2606:4700::1111", 8443))


class GuardTests(SynchronousTestCase):
    """The connect-time guard (DNS rebinding)."""

    def endpoint(self, resolver: Any, url: bytes, allow_private: bool = False) -> Any:
        self.reactor = MemoryReactorClock()
        f = GuardedEndpointFactory(self.reactor, resolver, allow_private)
        return f.endpointForURI(URI.fromBytes(url))

    def test_rebinding_refused(self) -> None:
        """A name that now resolves to loopback is refused at connect time
        and no TCP connection is attempted."""
        ep = self.endpoint(
            static_resolver({"hooks.example": ["127.0.0.1"]}),
            b"https://hooks.example/x",
        )
        f = self.failureResultOf(ep.connect(object()), WebhookRefused)
        self.assertEqual(
            str(f.value),
            "webhook URL refused: hooks.example resolves to 127.0.0.1, a loopback address",
        )
        self.assertEqual(self.reactor.tcpClients, [])

    def test_connects_to_checked_address(self) -> None:
        """A public name is connected by its checked IP (not re-resolved),
        on the URL's port, wrapped in TLS for https."""
        ep = self.endpoint(
            static_resolver({"hooks.example": [PUBLIC_IP]}),
            b"https://hooks.example:8443/x",
        )
        ep.connect(Factory.forProtocol(Protocol))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, port, factory = self.reactor.tcpClients[0][:3]
        self.assertEqual((host, port), (PUBLIC_IP, 8443))
        # The endpoint's wrapper holds the TLS factory.
        self.assertEqual(type(factory._wrappedFactory).__name__, "TLSMemoryBIOFactory")

    def test_http_refused_without_flag(self) -> None:
        """The guard itself refuses plain http unless private is allowed."""
        resolver = static_resolver({})
        self.assertRaises(WebhookRefused, self.endpoint, resolver, b"http://8.8.8.8/")
        ep = self.endpoint(resolver, b"http://127.0.0.1:9/", allow_private=True)
        ep.connect(Factory.forProtocol(Protocol))
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 9))


class CheckAddressesTests(SynchronousTestCase):
    """check_addresses: every address a name resolves to must be public."""

    def test_all_or_nothing(self) -> None:
        """One private address among public ones refuses the name, naming
        that address; no address at all is refused too."""
        check_addresses("hooks.example", [PUBLIC_IP, "2606:4700:4700::1111"])
        with self.assertRaises(WebhookRefused) as cm:
            check_addresses("mixed.example", [PUBLIC_IP, "10.0.0.7"])
        self.assertEqual(
            str(cm.exception),
            "webhook URL refused: mixed.example resolves to 10.0.0.7, "
            "a private address",
        )
        with self.assertRaises(WebhookRefused) as cm:
            check_addresses("empty.example", [])
        self.assertEqual(
            str(cm.exception), "webhook URL refused: empty.example has no address"
        )

    def test_codes(self) -> None:
        """A refusal carries code 8, a malformed URL -32602 (the codes of
        lnproxy.protocol), so the notifier answers them without mapping."""
        self.assertEqual(WebhookRefused("x").code, 8)
        self.assertEqual(MalformedURL("x").code, -32602)
