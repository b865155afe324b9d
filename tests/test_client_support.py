"""Shared pieces of the client library tests (no tests of its own).

A real proxy (``build_service`` on the real reactor, 127.0.0.1), real
:class:`lnproxy.client.Client` instances, and a few tools to simulate
crashes and wait for things.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task

from lnproxy.client import Client, ClientState, Event, FileState
from lnproxy.service import ProxyService, build_service
from lnproxy.testing import free_port

from .harness import ProxyTestCase, proxy_options

__all__ = [
    "ClientTestCase",
    "SimulatedCrash",
    "CrashingState",
    "free_port",
    "fast_retry",
]


def fast_retry(attempt: int) -> float:
    """Retry policy for tests: 50 ms whatever the attempt."""
    return 0.05


class SimulatedCrash(Exception):
    """Raised where a test kills a client."""


class CrashingState(FileState):
    """A :class:`FileState` that kills its client at the save of one seq.

    :param when: ``"before"`` the file is written (the save never happens)
        or ``"after"`` it is written (the ack never happens).
    """

    def __init__(self, path: str, seq: int, when: str) -> None:
        super().__init__(path)
        self.crash_seq = seq
        self.when = when
        self.client: Client | None = None
        self.crashed = False

    def save(self, state: ClientState) -> None:
        """Save, with a crash before or after the write at ``crash_seq``."""
        hit = state.last_seq == self.crash_seq and not self.crashed
        if hit and self.when == "before":
            self._crash()
            raise SimulatedCrash("killed before the state write")
        super().save(state)
        if hit and self.when == "after":
            self._crash()

    def _crash(self) -> None:
        self.crashed = True
        assert self.client is not None
        self.client.abort()


class ClientTestCase(ProxyTestCase):
    """A proxy per test, plus helpers to run clients against it."""

    timeout = 30

    @property
    def proxy_url(self) -> str:
        """The proxy's WebSocket URL."""
        return f"ws://127.0.0.1:{self.proxy_port}/"

    def start_fixed_proxy(self, port: int, data_dir: str, *extra: str) -> ProxyService:
        """A proxy on a known port (so that it can be restarted on it)."""
        options = proxy_options(data_dir, *extra)
        options["listen"] = [f"tcp:{port}:interface=127.0.0.1"]
        svc = build_service(reactor, options)
        svc.startService()
        self.proxy = svc
        self.addCleanup(self._stop_proxy, svc)
        return svc

    def make_client(
        self,
        secret: bytes | None = None,
        on_event: Callable[[Event], Any] | None = None,
        state: Any = None,
        start: bool = True,
        url: str | None = None,
        **kw: Any,
    ) -> Client:
        """A client with fast retries; stopped (or aborted) at cleanup."""
        kw.setdefault("retry_policy", fast_retry)
        kw.setdefault("request_timeout", 5.0)
        client = Client(
            reactor,
            url or self.proxy_url,
            secret or os.urandom(32),
            on_event=on_event,
            state=state,
            **kw,
        )
        if isinstance(state, CrashingState):
            state.client = client
        if start:
            client.startService()
        self.addCleanup(client.stopService)
        return client

    def wait_for(
        self, check: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> defer.Deferred[None]:
        """Poll ``check`` every 10 ms; fail the test after ``timeout``."""
        d: defer.Deferred[None] = defer.Deferred()

        def poll() -> None:
            if d.called:
                return
            if check():
                d.callback(None)
            else:
                calls.append(reactor.callLater(0.01, poll))

        calls: list[Any] = []

        def cancel_timer(r: Any) -> Any:
            for c in calls:
                if c.active():
                    c.cancel()
            return r

        def timed_out(result: Any, t: float) -> Any:
            self.fail(f"timed out after {t} s waiting for {what}")

        poll()
        d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
        return d.addBoth(cancel_timer)

    def pending(self, client: Client) -> int:
        """Unacknowledged events of the client's node, as the proxy sees it."""
        self.proxy.hub.flush()
        return self.proxy.hub.store.pending_count(client.node_id.hex())

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        """A real-time pause."""
        return task.deferLater(reactor, seconds, lambda: None)
