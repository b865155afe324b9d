"""Waking offline clients: signed webhooks (docs/protocol.md, "Waking an
offline client (webhooks)").

:class:`Notifier` is the proxy's webhook registry (``webhook.set`` /
``webhook.list`` / ``webhook.remove``) and the part that calls those webhooks.
It observes the hub: when a summon-class event is committed while no session
of its node is logged in, it POSTs a small signed JSON body to every webhook
of the node.  The body never carries message content, only
``{"node_id", "reason", "pending", "seq", "at"}``.

Timing, per node:

- the first call goes out at once (``first_delay``, 0 by default: the next
  reactor turn, after the whole batch of the turn is committed);
- then at most one call per ``window`` seconds: later summons in the window
  are coalesced into one call at the window's end, carrying the newest seq
  and pending count, and only if the node is still offline;
- a login of the node resets the window and cancels pending retries.

Each call to one webhook is retried on timeouts, connection errors and 5xx
after 2, 3, 5 and 10 more seconds (about 2, 5, 10 and 20 s after the first
attempt when failures are fast), never later than ``retry_budget`` (30 s)
after the first attempt; a 4xx or 3xx is final (redirects are never
followed).  Every request has its own timeout and runs asynchronously, so a
slow receiver delays nobody else.

Reconnect summons (a ``closed`` event with ``reconnect: true``) are also
rate limited per (node, peer): a peer that keeps dropping would otherwise
wake the phone over and over.  The first reconnect summon for a peer always
goes out; after it, further reconnect summons for that peer are dropped
(not sent; the events themselves are kept and delivered at the next login)
until ``reconnect_backoff`` seconds have passed; each summon that does go
out doubles that delay, up to ``reconnect_backoff_cap``.  A peer that has
been quiet for ``reconnect_backoff_cap`` seconds starts afresh.

Every URL passes the SSRF guard of :mod:`lnproxy.ssrf`: its form and the
addresses its host resolves to are checked at ``webhook.set``, and again at
every connection by the HTTP client :func:`~lnproxy.ssrf.build_http_client`
builds.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from lnproxy import keys
from lnproxy.hub import Hub, HubError
from lnproxy.protocol import LIMIT_EXCEEDED, NOT_ALLOWED, PROTOCOL_VERSION
from lnproxy.ssrf import (
    BadWebhookURL,
    Resolver,
    WebhookRefused,
    check_addresses,
    check_url,
    resolve,
)
from lnproxy.store import EventRow, WebhookRow

__all__ = ["Notifier", "RETRY_DELAYS"]

#: Seconds between the attempts of one webhook call (after a failure).
RETRY_DELAYS: tuple[float, ...] = (2.0, 3.0, 5.0, 10.0)
#: Bytes of a response body we read (and throw away) before closing.
MAX_RESPONSE_BYTES = 64 * 1024
#: Seconds a name resolution at ``webhook.set`` may take.
RESOLVE_TIMEOUT = 10.0
#: The ``User-Agent`` of every call: the protocol and its major version.
_USER_AGENT = PROTOCOL_VERSION.encode("ascii")


class _Discard(Protocol):
    """Reads a response body up to a bound and throws it away.

    The body is read (not left in the socket) so that the connection can go
    back to the pool; a body that is too large or too slow is cut off.
    """

    def __init__(
        self, clock: IReactorTime, limit: int, timeout: float, live: set[_Discard]
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._timeout = timeout
        self._seen = 0
        self._timer: IDelayedCall | None = None
        self._live = live

    def connectionMade(self) -> None:
        self._live.add(self)
        self._timer = self._clock.callLater(self._timeout, self.stop)

    def dataReceived(self, data: bytes) -> None:
        self._seen += len(data)
        if self._seen > self._limit:
            self.stop()

    def stop(self) -> None:
        """Stop reading (closes the connection)."""
        self._cancel()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._cancel()
        self._live.discard(self)


@dataclass
class _Wake:
    """Summon state of one node (from its last login on)."""

    last_call: float | None = None
    timer: IDelayedCall | None = None
    seq: int = 0
    at: float = 0.0
    reason: str = "message"
    #: The first summon since the node was last online (for metrics).
    first_at: float | None = None
    calls: list[_Call] = field(default_factory=list)


@dataclass
class _Backoff:
    """Reconnect-summon backoff of one (node, peer)."""

    delay: float
    next_at: float
    last: float


class _Call:
    """One webhook call (first attempt plus retries) to one URL."""

    # Logged under the notifier's name: operators see one source.
    _log = Logger(namespace="lnproxy.webhook.Notifier")

    def __init__(
        self, notifier: Notifier, node_id: str, hook: WebhookRow, body: bytes
    ) -> None:
        self.notifier = notifier
        self.node_id = node_id
        self.hook = hook
        self.body = body
        self.attempt = 0
        self.started = notifier.clock.seconds()
        self.request: defer.Deferred[Any] | None = None
        self.retry_timer: IDelayedCall | None = None
        self.done = False

    def start(self) -> None:
        """Send the (next) attempt."""
        self.retry_timer = None
        n = self.notifier
        if self.done:
            return
        if n.hub.online(self.node_id) and self.attempt > 0:
            # The node came back while we were retrying: nothing to wake.
            self.finish()
            return
        self.attempt += 1
        now = n.clock.seconds()
        timestamp = int(now)
        signature = keys.sign_digest(
            n.secret, keys.webhook_digest(timestamp, self.body)
        )
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [_USER_AGENT],
            b"X-Lnproxy-Timestamp": [str(timestamp).encode("ascii")],
            b"X-Lnproxy-Signature": [signature.hex().encode("ascii")],
        }
        try:
            d = n.http.request(
                "POST",
                self.hook.url,
                data=self.body,
                headers=headers,
                timeout=n.timeout,
                allow_redirects=False,
                unbuffered=True,
                reactor=n.clock,
            )
        except Exception:
            d = defer.fail()
        self.request = d
        n.request_sent(d)
        d.addCallbacks(self._response, self._failure, callbackArgs=(now,))
        d.addErrback(self._bug)
        d.addBoth(self._settled)

    def _settled(self, _: Any) -> None:
        d, self.request = self.request, None
        if d is not None:
            self.notifier.request_settled(d)

    def _response(self, response: Any, sent_at: float) -> None:
        n = self.notifier
        n.report_latency(n.clock.seconds() - sent_at)
        code = int(response.code)
        n.discard_body(response)
        if 200 <= code < 300:
            n.report("webhook_sent")
            self._log.info(
                "webhook {webhook} of node {node} answered {status}",
                webhook=self.hook.webhook_id,
                node=self.node_id,
                status=code,
            )
            self.finish()
        elif 300 <= code < 500:
            # 4xx: the receiver says no; 3xx: redirects are never followed.
            why = "redirects are not followed" if code < 400 else "not retried"
            self._give_up(f"HTTP {code} ({why})")
        else:
            self._retry(f"HTTP {code}")

    def _failure(self, f: Failure) -> None:
        if self.done:
            return
        if f.check(WebhookRefused):
            self.notifier.report("webhook_refused")
            self._log.warn(
                "webhook {webhook} of node {node} refused at connect time: {why}",
                webhook=self.hook.webhook_id,
                node=self.node_id,
                why=f.getErrorMessage(),
            )
            self.finish()
            return
        if f.check(defer.CancelledError):
            why = "timed out"
        else:
            why = f.getErrorMessage() or f.type.__name__  # type: ignore[union-attr]
        self._retry(why)

    def _bug(self, f: Failure) -> None:
        self._log.failure("webhook call failed unexpectedly", failure=f)

    def _retry(self, why: str) -> None:
        n = self.notifier
        if self.done:
            return
        if self.attempt <= len(n.retry_delays):
            delay = n.retry_delays[self.attempt - 1]
            now = n.clock.seconds()
            if now + delay - self.started <= n.retry_budget:
                n.report("webhook_retried")
                self._log.info(
                    "webhook {webhook} of node {node} failed ({why}); "
                    "retrying in {delay} s",
                    webhook=self.hook.webhook_id,
                    node=self.node_id,
                    why=why,
                    delay=delay,
                )
                self.retry_timer = n.clock.callLater(delay, self.start)
                return
        self._give_up(why)

    def _give_up(self, why: str) -> None:
        n = self.notifier
        n.report("webhook_failed")
        self._log.warn(
            "webhook {webhook} of node {node} failed after {attempts} attempt(s): {why}",
            webhook=self.hook.webhook_id,
            node=self.node_id,
            attempts=self.attempt,
            why=why,
        )
        self.finish()

    def finish(self) -> None:
        """No more attempts."""
        self.done = True
        if self.retry_timer is not None and self.retry_timer.active():
            self.retry_timer.cancel()
        self.retry_timer = None

    def cancel(self) -> None:
        """Stop retrying and abandon the request in flight (shutdown)."""
        self.finish()
        if self.request is not None:
            self.request.cancel()


class Notifier(service.Service):
    """The webhook registry and the summon logic (see the module docstring).

    Build it before the hub starts: :meth:`attach` registers its observers,
    and the hub's startup recovery already produces summons.

    :param hub: the hub (its store holds the webhooks, its limits the cap).
    :param clock: the reactor's time interface.
    :param secret: the server's secret key (signs every call).
    :param http: a treq ``HTTPClient`` (see :func:`build_http_client`), or a
        fake with the same ``request(method, url, **kwargs)``.
    :param resolver: name resolution for the check at ``webhook.set``.
    :param allow_private: ``--webhook-allow-private``.
    :param window: ``--webhook-window``: seconds between calls for one node.
    :param timeout: seconds one request may take.
    :param first_delay: seconds from the first summon to its call.
    :param retry_delays: seconds between attempts after a failure.
    :param retry_budget: no attempt starts later than this after the first.
    :param reconnect_backoff: first per-peer pause of reconnect summons.
    :param reconnect_backoff_cap: the longest such pause.
    :param pool: a connection pool to close when the service stops.
    """

    _log = Logger()

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        secret: bytes,
        http: Any,
        resolver: Resolver,
        allow_private: bool = False,
        window: float = 60.0,
        timeout: float = 5.0,
        first_delay: float = 0.0,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        retry_budget: float = 30.0,
        reconnect_backoff: float = 60.0,
        reconnect_backoff_cap: float = 3600.0,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        self.hub = hub
        self.store = hub.store
        self.clock = clock
        self.secret = secret
        self.http = http
        self.resolver = resolver
        self.allow_private = allow_private
        self.window = window
        self.timeout = timeout
        self.first_delay = first_delay
        self.retry_delays = tuple(retry_delays)
        self.retry_budget = retry_budget
        self.reconnect_backoff = reconnect_backoff
        self.reconnect_backoff_cap = reconnect_backoff_cap
        self.pool = pool
        #: Requests currently waiting for an answer (a gauge).
        self.in_flight = 0
        #: Called as ``fn(name)``: webhook_sent, webhook_failed,
        #: webhook_retried, webhook_refused, webhook_suppressed.
        self.on_count: list[Callable[[str], None]] = []
        #: Called as ``fn(seconds)`` with the time to each response.
        self.on_latency: list[Callable[[float], None]] = []
        #: Called as ``fn(node_id, first_summon_at)`` when a node's webhooks
        #: are called for the first time since it was last online.
        self.on_summon: list[Callable[[str, float], None]] = []
        self._wakes: dict[str, _Wake] = {}
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        self._stopped = False
        self._pruner: LoopingCall | None = None
        self._bodies: set[_Discard] = set()
        self._requests: set[defer.Deferred[Any]] = set()

    def attach(self) -> None:
        """Observe the hub (stored events and logins)."""
        self.hub.on_event_stored.append(self.event_stored)
        self.hub.on_login.append(self.logged_in)

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        """Start pruning idle per-node and per-peer state."""
        super().startService()
        self._stopped = False
        self._pruner = LoopingCall(self._prune)
        self._pruner.clock = self.clock
        self._pruner.start(max(self.window, 60.0), now=False)
        self._wake_backlog()

    def _wake_backlog(self) -> None:
        """Wake nodes whose summon-class events wait from before this start.

        A clean stop records ``proxy stopped`` reconnect summons that nobody
        could be woken for at the time; a crash may have cut a wake-up short.
        Nodes already scheduled (by the hub's crash recovery) are left alone.
        """
        for row in self.store.newest_summons():
            if row.node_id not in self._wakes and not self.hub.online(row.node_id):
                self.event_stored(row, online=False)

    def stopService(self) -> defer.Deferred[None]:
        """Cancel timers and requests; close the connection pool."""
        super().stopService()
        self._stopped = True
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        for wake in self._wakes.values():
            if wake.timer is not None and wake.timer.active():
                wake.timer.cancel()
            wake.timer = None
            for call in wake.calls:
                call.cancel()
        self._wakes.clear()
        # Requests of calls no longer tracked by a node (it logged in).
        for d in list(self._requests):
            d.cancel()
        for body in list(self._bodies):
            body.stop()
        if self.pool is not None:
            return self.pool.closeCachedConnections()
        return defer.succeed(None)

    def _prune(self) -> None:
        now = self.clock.seconds()
        for node_id, wake in list(self._wakes.items()):
            wake.calls = [c for c in wake.calls if not c.done]
            idle = wake.last_call is None or now - wake.last_call >= self.window
            if wake.timer is None and not wake.calls and idle:
                del self._wakes[node_id]
        cap = self.reconnect_backoff_cap
        for key, b in list(self._backoff.items()):
            if now - b.last >= cap:
                del self._backoff[key]

    # -- WebhookRegistry ---------------------------------------------------------

    def add(self, node_id: str, url: str) -> defer.Deferred[str]:
        """``webhook.set``: check the URL, resolve and check its host, store it.

        Setting a URL the node already has answers its existing id.

        :return: a Deferred firing with the webhook id, or failing with
            :class:`HubError` (code 7 beyond the limit, code 8 refused,
            -32602 malformed).
        """
        try:
            target = check_url(url, self.allow_private)
        except BadWebhookURL as e:
            if isinstance(e, WebhookRefused):
                self.report("webhook_refused")
            return defer.fail(HubError(e.code, str(e)))
        existing = self._existing(node_id, url)
        if existing is not None:
            return defer.succeed(existing)
        try:
            self._check_limit(node_id)
        except HubError as e:
            return defer.fail(e)
        if self.allow_private:
            stored: defer.Deferred[str] = defer.succeed(None).addCallback(
                lambda _: self._store(node_id, url)
            )
            return stored
        d = resolve(self.resolver, target.host, target.port)
        d.addTimeout(RESOLVE_TIMEOUT, self.clock)

        def resolved(addresses: list[str]) -> str | defer.Deferred[str]:
            try:
                check_addresses(target.host, addresses)
            except WebhookRefused as e:
                self.report("webhook_refused")
                raise HubError(NOT_ALLOWED, str(e)) from None
            # Another webhook.set of the same URL may have stored it while
            # this one resolved: answer its id rather than store it twice.
            existing = self._existing(node_id, url)
            if existing is not None:
                return existing
            self._check_limit(node_id)
            return self._store(node_id, url)

        def unresolved(f: Failure) -> Failure:
            if f.check(HubError):
                return f
            self.report("webhook_refused")
            raise HubError(
                NOT_ALLOWED,
                f"webhook URL refused: cannot resolve {target.host} "
                f"({f.getErrorMessage() or f.type.__name__})",  # type: ignore[union-attr]
            )

        return d.addCallbacks(resolved, unresolved)

    def _existing(self, node_id: str, url: str) -> str | None:
        """The id of the node's webhook with ``url``, if it has one."""
        for row in self.store.webhooks(node_id):
            if row.url == url:
                return row.webhook_id
        return None

    def _check_limit(self, node_id: str) -> None:
        limit = self.hub.limits.webhooks_per_node
        if self.store.webhook_count(node_id) >= limit:
            raise HubError(LIMIT_EXCEEDED, f"node has {limit} webhooks (the limit)")

    def _store(self, node_id: str, url: str) -> str | defer.Deferred[str]:
        webhook_id = secrets.token_hex(8)
        # With PostgreSQL the store answers a Deferred that fires once the
        # row is committed (lnproxy.scaleout.ReactorStore): the reply waits.
        add: Callable[[WebhookRow], Any] = self.store.add_webhook
        committed = add(WebhookRow(node_id, webhook_id, url, self.clock.seconds()))
        self._log.info(
            "node {node} set webhook {webhook}", node=node_id, webhook=webhook_id
        )
        if isinstance(committed, defer.Deferred):
            return committed.addCallback(lambda _: webhook_id)
        return webhook_id

    def list(self, node_id: str) -> list[dict[str, str]]:
        """``webhook.list``: ``[{"id", "url"}]`` of the node, oldest first."""
        return [
            {"id": row.webhook_id, "url": row.url}
            for row in self.store.webhooks(node_id)
        ]

    def remove(self, node_id: str, webhook_id: str) -> bool:
        """``webhook.remove``: False when the node has no such webhook."""
        removed = self.store.remove_webhook(node_id, webhook_id)
        if removed:
            wake = self._wakes.get(node_id)
            for call in wake.calls if wake else ():
                if call.hook.webhook_id == webhook_id:
                    call.finish()
        return removed

    # -- hub observers -------------------------------------------------------------

    def event_stored(self, row: EventRow, online: bool) -> None:
        """A committed event: schedule a wake-up if it needs one."""
        if not row.summon or online or self._stopped:
            return
        now = self.clock.seconds()
        reason = "message"
        if row.kind == "closed":
            reason = "reconnect"
            try:
                peer = str(json.loads(row.params).get("peer", ""))
            except (ValueError, AttributeError):
                peer = ""
            if not self._reconnect_allowed(row.node_id, peer, now):
                self.report("webhook_suppressed")
                self._log.info(
                    "reconnect summon of node {node} for peer {peer} held back "
                    "(peer keeps dropping)",
                    node=row.node_id,
                    peer=peer,
                )
                return
        wake = self._wakes.get(row.node_id)
        if wake is None:
            wake = self._wakes[row.node_id] = _Wake()
        if wake.first_at is None:
            wake.first_at = row.at
        wake.seq, wake.at, wake.reason = row.seq, row.at, reason
        if wake.timer is not None:
            return  # coalesced into the call already scheduled
        due = now + self.first_delay
        if wake.last_call is not None:
            due = max(due, wake.last_call + self.window)
        wake.timer = self.clock.callLater(due - now, self._fire, row.node_id)

    def logged_in(self, node_id: str) -> None:
        """A session of the node logged in: reset its window, stop retries."""
        wake = self._wakes.pop(node_id, None)
        if wake is None:
            return
        if wake.timer is not None and wake.timer.active():
            wake.timer.cancel()
        for call in wake.calls:
            call.finish()

    def _reconnect_allowed(self, node_id: str, peer: str, now: float) -> bool:
        key = (node_id, peer)
        b = self._backoff.get(key)
        if b is None or now - b.last >= self.reconnect_backoff_cap:
            base = self.reconnect_backoff
            self._backoff[key] = _Backoff(delay=base, next_at=now + base, last=now)
            return True
        b.last = now
        if now < b.next_at:
            return False
        b.delay = min(self.reconnect_backoff_cap, b.delay * 2)
        b.next_at = now + b.delay
        return True

    def _fire(self, node_id: str) -> None:
        wake = self._wakes.get(node_id)
        if wake is None:
            return
        wake.timer = None
        if self._stopped or self.hub.online(node_id):
            return
        hooks = self.store.webhooks(node_id)
        if not hooks:
            return
        now = self.clock.seconds()
        if wake.last_call is None and wake.first_at is not None:
            for fn in self.on_summon:
                fn(node_id, wake.first_at)
        wake.last_call = now
        # A newer call supersedes the retries of older ones.
        for call in wake.calls:
            call.finish()
        body = json.dumps(
            {
                "node_id": node_id,
                "reason": wake.reason,
                "pending": self._pending(node_id),
                "seq": wake.seq,
                "at": wake.at,
            },
            separators=(",", ":"),
        ).encode("utf-8")
        wake.calls = [_Call(self, node_id, hook, body) for hook in hooks]
        self._log.info(
            "waking node {node} ({reason}, seq {seq}): {n} webhook(s)",
            node=node_id,
            reason=wake.reason,
            seq=wake.seq,
            n=len(hooks),
        )
        for call in wake.calls:
            call.start()

    def _pending(self, node_id: str) -> int:
        node = self.hub.nodes.get(node_id)
        if node is not None:
            return node.pending
        return self.store.pending_count(node_id)

    # -- what a call reports ----------------------------------------------------

    def report(self, name: str) -> None:
        """Tell the ``on_count`` observers about one outcome
        (``webhook_sent``, ``webhook_failed``, ...)."""
        for fn in self.on_count:
            fn(name)

    def report_latency(self, seconds: float) -> None:
        """Tell the ``on_latency`` observers how long a response took."""
        for fn in self.on_latency:
            fn(seconds)

    def request_sent(self, d: defer.Deferred[Any]) -> None:
        """A request is in flight (cancelled if the service stops first)."""
        self.in_flight += 1
        self._requests.add(d)

    def request_settled(self, d: defer.Deferred[Any]) -> None:
        """A request sent with :meth:`request_sent` has its outcome."""
        self.in_flight -= 1
        self._requests.discard(d)

    def discard_body(self, response: Any) -> None:
        """Read a response's body, up to a bound, and throw it away (so that
        its connection can go back to the pool)."""
        try:
            response.deliverBody(
                _Discard(self.clock, MAX_RESPONSE_BYTES, self.timeout, self._bodies)
            )
        except Exception:
            pass
