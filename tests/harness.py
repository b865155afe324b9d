"""What only this test suite needs: :class:`ProxyTestCase` (an in-process
proxy per test, with cleanups) and :func:`eventually`.

The fakes themselves (the BOLT 8 responder peer, the JSON-RPC client with
the split handshake, ``free_port``) live in :mod:`lnproxy.testing`; they
are re-exported here under the names the tests use."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from lnproxy.service import ProxyService, build_service
from lnproxy.tap import Options
from lnproxy.testing import (
    Mode,
    ResponderFactory,
    RpcClient,
    RpcFailed,
    connect_rpc,
    free_port,
    listen_peer,
)

__all__ = [
    "ProxyTestCase",
    "RpcFailed",
    "WsClient",
    "eventually",
    "free_port",
    "proxy_options",
]

#: The old name of :class:`lnproxy.testing.RpcClient`.
WsClient = RpcClient


@defer.inlineCallbacks
def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> Any:
    """Poll ``predicate`` on the reactor until it is true.

    :raise AssertionError: when it is still false after ``timeout`` seconds.
    """
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        yield task.deferLater(reactor, interval, lambda: None)
        waited += interval


def proxy_options(data_dir: str, *extra: str) -> Options:
    """Parsed options for a proxy on a free loopback port."""
    o = Options()
    o.parseOptions(
        ["--listen", "tcp:0:interface=127.0.0.1", "--data-dir", data_dir, *extra]
    )
    return o


class ProxyTestCase(TestCase):
    """Starts a proxy (real reactor, real TCP, real SQLite) per test."""

    timeout = 60

    def start_proxy(self, *extra: str, data_dir: str | None = None) -> ProxyService:
        self.data_dir = data_dir or getattr(self, "data_dir", None) or self.mktemp()
        svc = build_service(reactor, proxy_options(self.data_dir, *extra))
        svc.startService()
        self.proxy = svc
        self.addCleanup(self._stop_proxy, svc)
        return svc

    @defer.inlineCallbacks
    def expect_error(self, d: defer.Deferred[Any], code: int) -> Any:
        """Wait for ``d`` to fail with an error reply of ``code``.

        :return: the :class:`RpcFailed` (for its message).
        """
        err = yield self.assertFailure(d, RpcFailed)
        self.assertEqual(err.code, code, f"expected code {code}, got {err}")
        return err

    def _stop_proxy(self, svc: ProxyService) -> defer.Deferred[Any] | None:
        if svc.running:
            return svc.stopService()  # type: ignore[no-any-return]
        return None

    @property
    def proxy_port(self) -> int:
        listener = self.proxy.listeners[0]
        port: IListeningPort = listener._waitingForPort.result  # type: ignore

        return port.getHost().port  # type: ignore[no-any-return]

    @defer.inlineCallbacks
    def ws(self, protocols: list[str] | None = None, port: int | None = None) -> Any:
        """A connected WebSocket client (not yet logged in).

        :param protocols: subprotocols to offer (default ``["lnproxy.v1"]``).
        :param port: the proxy's port (default: the in-process proxy's).
        """
        client = yield connect_rpc(reactor, port or self.proxy_port, protocols)
        self.addCleanup(self._close_ws, client)
        return client

    def _close_ws(self, client: RpcClient) -> defer.Deferred[Any] | None:
        if client.closed.called:
            return None
        client.dropConnection(abort=True)
        return client.closed

    @defer.inlineCallbacks
    def logged_in(self, secret: bytes | None = None, port: int | None = None) -> Any:
        """A WebSocket client logged in as ``secret`` (random by default);
        ``client.login_result`` holds the login result."""
        client = yield self.ws(port=port)
        client.login_result = yield client.login(secret or os.urandom(32))
        return client

    def local_peer(self, **kw: Any) -> tuple[ResponderFactory, int]:
        """A BOLT 8 responder peer on a free loopback port (``kw``: see
        :class:`lnproxy.testing.ResponderFactory`, e.g. ``mode=``)."""
        factory, port = listen_peer(reactor, **kw)
        self.addCleanup(self._stop_peer, factory, port)
        return factory, port.getHost().port

    def scripted_peer(
        self, act2: str = "ok", send_init: bool = True
    ) -> tuple[ResponderFactory, int]:
        """A misbehaving peer: ``act2`` is ``"close"``, ``"silent"`` or
        ``"bad_version"`` (a :class:`lnproxy.testing.Mode` value);
        ``send_init=False`` is :attr:`Mode.NO_INIT`."""
        mode = Mode(act2)
        if not send_init:
            mode = Mode.NO_INIT
        return self.local_peer(mode=mode)

    def _stop_peer(self, factory: ResponderFactory, port: Any) -> defer.Deferred[Any]:
        factory.abort_all()
        return defer.maybeDeferred(port.stopListening)
