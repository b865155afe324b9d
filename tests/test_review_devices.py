"""account.* over the wire: one client's flood of account requests stays
that client's problem (the per-session share of the scrypt queue)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from lnproxy.protocol import LIMIT_EXCEEDED, LOGIN_FAILED

from .harness import ProxyTestCase, RpcFailed


class SessionShareTests(ProxyTestCase):
    """A real proxy (127.0.0.1, SQLite, the reactor's thread pool)."""

    @defer.inlineCallbacks
    def test_flood_answers_the_flooder(self) -> Any:
        """Ten account.login sent at once by one session: beyond its share
        (2) they answer 7 at once; another session's attempt is checked
        (code 2), not turned away."""
        self.start_proxy()
        flooder = yield self.ws()
        yield flooder.hello
        other = yield self.ws()
        yield other.hello
        devices = self.proxy.factory.devices
        share = devices.max_per_session
        calls = [
            flooder.call("account.login", {"user": f"u{i}", "auth": "00" * 32})
            for i in range(10)
        ]
        results = yield defer.DeferredList(calls, consumeErrors=True)
        codes = [
            f.value.code if not ok and f.check(RpcFailed) else repr(f)
            for ok, f in results
        ]
        self.assertEqual(codes.count(LIMIT_EXCEEDED), 10 - share, codes)
        self.assertEqual(codes.count(LOGIN_FAILED), share, codes)
        yield self.expect_error(
            other.call("account.login", {"user": "u0", "auth": "00" * 32}),
            LOGIN_FAILED,
        )
