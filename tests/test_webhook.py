"""Unit tests of lnproxy.webhook: the registry (``webhook.set`` answers
for refused, malformed and private URLs), and the summon timing (coalescing,
reset on login, retries, reconnect backoff) driven by a Clock and a fake
HTTP client.  The guard's own checks are tested in tests.test_ssrf."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import coincurve
from coincurve.ecdsa import cdata_to_der, deserialize_compact
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import keys
from lnproxy.hub import HubError, Limits
from lnproxy.ssrf import WebhookRefused
from lnproxy.store import EventRow, Store
from lnproxy.testing import static_resolver
from lnproxy.webhook import Notifier

NODE_A = keys.public_key(b"\x01" * 32).hex()
NODE_B = keys.public_key(b"\x02" * 32).hex()
PEER_1 = keys.public_key(b"\x03" * 32).hex()
PEER_2 = keys.public_key(b"\x04" * 32).hex()
SERVER_SECRET = b"\x42" * 32
SERVER_ID = keys.public_key(SERVER_SECRET)
PUBLIC_IP = "93.184.216.34"


class FakeResponse:
    """Enough of an IResponse for the notifier."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.delivered: list[Any] = []

    def deliverBody(self, protocol: Any) -> None:
        self.delivered.append(protocol)


@dataclass
class Request:
    """One request the fake client received."""

    url: str
    body: bytes
    headers: dict[bytes, list[bytes]]
    kwargs: dict[str, Any]
    at: float
    d: defer.Deferred[Any] = field(default_factory=defer.Deferred)

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class FakeHttp:
    """A treq-like client: records requests; honours ``timeout`` and
    ``reactor`` as treq does (cancel the request when it expires)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.requests: list[Request] = []
        #: Called with each request; may answer it at once.
        self.auto: Callable[[Request], None] | None = None

    def request(self, method: str, url: str, **kw: Any) -> defer.Deferred[Any]:
        assert method == "POST"
        req = Request(url, kw["data"], kw["headers"], kw, self.clock.seconds())
        self.requests.append(req)
        timer = kw["reactor"].callLater(kw["timeout"], req.d.cancel)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        req.d.addBoth(done)
        if self.auto is not None:
            self.auto(req)
        return req.d


class FakeNode:
    def __init__(self) -> None:
        self.pending = 0


class FakeHub:
    """What the notifier uses of the hub."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.limits = Limits()
        self.nodes: dict[str, FakeNode] = {}
        self.on_event_stored: list[Any] = []
        self.on_login: list[Any] = []
        self.online_nodes: set[str] = set()

    def online(self, node_id: str) -> bool:
        return node_id in self.online_nodes


def answer(code: int) -> Callable[[Request], None]:
    """An auto-responder answering every request with ``code``."""
    return lambda req: req.d.callback(FakeResponse(code))


class NotifierCase(SynchronousTestCase):
    """A notifier over a real store, a fake hub, a Clock and a fake client."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = Store.open(self.mktemp(), synchronous="NORMAL")
        self.addCleanup(self.store.close)
        self.hub = FakeHub(self.store)
        self.http = FakeHttp(self.clock)
        self.counts: list[str] = []
        self.seq: dict[str, int] = {}

    def make(self, **kw: Any) -> Notifier:
        kw.setdefault("resolver", static_resolver({"hooks.example": [PUBLIC_IP]}))
        kw.setdefault("window", 60.0)
        n = Notifier(self.hub, self.clock, SERVER_SECRET, self.http, **kw)  # type: ignore[arg-type]
        n.attach()
        n.on_count.append(self.counts.append)
        n.startService()
        self.addCleanup(self._stop, n)
        return n

    def _stop(self, n: Notifier) -> None:
        if n.running:
            self.successResultOf(n.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def hook(self, n: Notifier, node: str = NODE_A, url: str | None = None) -> str:
        url = url or f"https://hooks.example/{node[:8]}/{len(n.list(node))}"
        return self.successResultOf(n.add(node, url))

    def event(
        self,
        node: str = NODE_A,
        summon: bool = True,
        kind: str = "message",
        peer: str = PEER_1,
        online: bool = False,
    ) -> EventRow:
        """Simulate the hub committing one event of ``node``."""
        seq = self.seq[node] = self.seq.get(node, 0) + 1
        self.hub.nodes.setdefault(node, FakeNode()).pending += 1
        if kind == "closed":
            params = {
                "seq": seq,
                "conn": "c",
                "peer": peer,
                "reason": "peer closed",
                "reconnect": summon,
            }
        else:
            params = {
                "seq": seq,
                "conn": "c",
                "peer": peer,
                "type": 128,
                "msg": "0080aa",
            }
        row = EventRow(
            node, seq, kind, summon, self.clock.seconds(), json.dumps(params)
        )
        for fn in self.hub.on_event_stored:
            fn(row, online)
        return row

    def login(self, node: str = NODE_A) -> None:
        for fn in self.hub.on_login:
            fn(node)


class RegistryTests(NotifierCase):
    """webhook.set / list / remove through the notifier."""

    def refusal(self, n: Notifier, url: str, node: str = NODE_A) -> HubError:
        return self.failureResultOf(n.add(node, url), HubError).value

    def test_literals_refused(self) -> None:
        """Loopback, private and link-local literals are code 8, saying why."""
        n = self.make()
        e = self.refusal(n, "https://127.0.0.1/x")
        self.assertEqual(
            (e.code, e.message),
            (8, "webhook URL refused: 127.0.0.1 is a loopback address"),
        )
        self.assertEqual(
            self.refusal(n, "https://10.0.0.1/x").message,
            "webhook URL refused: 10.0.0.1 is a private address",
        )
        self.assertEqual(
            self.refusal(n, "https://169.254.169.254/latest").message,
            "webhook URL refused: 169.254.169.254 is a link-local address",
        )
        self.assertEqual(self.refusal(n, "https://[::1]/x").code, 8)
        self.assertEqual(self.refusal(n, "http://8.8.8.8/x").code, 8)
        self.assertEqual(n.list(NODE_A), [])
        self.assertEqual(self.counts.count("webhook_refused"), 5)

    def test_hostname_resolving_private(self) -> None:
        """A name that resolves to a private address (even one of several)
        is refused and the message names the address."""
        n = self.make(
            resolver=static_resolver(
                {
                    "evil.example": ["10.1.2.3"],
                    "mixed.example": [PUBLIC_IP, "127.0.0.1"],
                }
            )
        )
        e = self.refusal(n, "https://evil.example/hook")
        self.assertEqual(
            (e.code, e.message),
            (
                8,
                "webhook URL refused: evil.example resolves to 10.1.2.3, a private address",
            ),
        )
        e = self.refusal(n, "https://mixed.example/hook")
        self.assertIn("127.0.0.1, a loopback address", e.message)

    def test_unresolvable(self) -> None:
        """A name that does not resolve is code 8."""
        n = self.make()
        e = self.refusal(n, "https://nowhere.example/x")
        self.assertEqual(e.code, 8)
        self.assertIn("cannot resolve nowhere.example", e.message)

    def test_public_accepted_and_listed(self) -> None:
        """A public https URL is stored; list shows it; remove removes it;
        the same URL twice answers the same id."""
        n = self.make()
        url = "https://hooks.example/wake?token=abc"
        wid = self.successResultOf(n.add(NODE_A, url))
        self.assertEqual(self.successResultOf(n.add(NODE_A, url)), wid)
        self.assertEqual(n.list(NODE_A), [{"id": wid, "url": url}])
        self.assertEqual(n.list(NODE_B), [])
        self.assertFalse(n.remove(NODE_B, wid))
        self.assertTrue(n.remove(NODE_A, wid))
        self.assertFalse(n.remove(NODE_A, wid))
        self.assertEqual(n.list(NODE_A), [])

    def test_same_url_set_twice_at_once(self) -> None:
        """Two webhook.set of one URL whose resolutions overlap store it
        once and both answer its id (each used to store its own copy)."""
        answers: list[defer.Deferred[list[str]]] = []

        def slow(host: str, port: int) -> defer.Deferred[list[str]]:
            d: defer.Deferred[list[str]] = defer.Deferred()
            answers.append(d)
            return d

        n = self.make(resolver=slow)
        url = "https://hooks.example/wake"
        first, second = n.add(NODE_A, url), n.add(NODE_A, url)
        for d in answers:
            d.callback([PUBLIC_IP])
        wid = self.successResultOf(first)
        self.assertEqual(self.successResultOf(second), wid)
        self.assertEqual(n.list(NODE_A), [{"id": wid, "url": url}])

    def test_limit(self) -> None:
        """The 11th webhook of a node is code 7; another node is unaffected."""
        n = self.make()
        for i in range(10):
            self.successResultOf(n.add(NODE_A, f"https://hooks.example/{i}"))
        e = self.refusal(n, "https://hooks.example/10")
        self.assertEqual((e.code, e.message), (7, "node has 10 webhooks (the limit)"))
        self.successResultOf(n.add(NODE_B, "https://hooks.example/10"))

    def test_allow_private(self) -> None:
        """With allow_private, http and loopback are accepted."""
        n = self.make(allow_private=True)
        self.successResultOf(n.add(NODE_A, "http://127.0.0.1:8080/x"))
        self.successResultOf(n.add(NODE_A, "https://10.0.0.1/x"))
        self.assertEqual(len(n.list(NODE_A)), 2)


def verify(req: Request) -> bool:
    """Check a call's signature with coincurve, independently of lnproxy.keys."""
    ts = req.headers[b"X-Lnproxy-Timestamp"][0]
    sig = bytes.fromhex(req.headers[b"X-Lnproxy-Signature"][0].decode())
    digest = hashlib.sha256(ts + b"." + req.body).digest()
    der = cdata_to_der(deserialize_compact(sig))
    return bool(coincurve.PublicKey(SERVER_ID).verify(der, digest, hasher=None))


class SummonTests(NotifierCase):
    """When calls go out, and what they carry."""

    def test_first_call_signed(self) -> None:
        """A summon while offline is called at once, signed, with the five
        fields and no message content."""
        n = self.make()
        self.hook(n)
        self.http.auto = answer(200)
        self.clock.advance(100)
        row = self.event()
        self.assertEqual(self.http.requests, [])  # not inside the commit
        self.clock.advance(0)
        (req,) = self.http.requests
        self.assertEqual(req.at, 100)
        self.assertEqual(
            req.json(),
            {
                "node_id": NODE_A,
                "reason": "message",
                "pending": 1,
                "seq": row.seq,
                "at": 100,
            },
        )
        self.assertNotIn(b"0080aa", req.body)
        self.assertEqual(req.headers[b"Content-Type"], [b"application/json"])
        self.assertEqual(req.headers[b"X-Lnproxy-Timestamp"], [b"100"])
        self.assertTrue(verify(req))
        self.assertEqual(req.kwargs["allow_redirects"], False)
        self.assertEqual(req.kwargs["timeout"], 5.0)
        self.assertEqual(self.counts, ["webhook_sent"])

    def test_every_webhook_called(self) -> None:
        """All webhooks of the node get the call."""
        n = self.make()
        self.hook(n)
        self.hook(n)
        self.event()
        self.clock.advance(0)
        self.assertEqual(
            {r.url for r in self.http.requests}, {h["url"] for h in n.list(NODE_A)}
        )
        self.assertEqual(len(self.http.requests), 2)

    def test_not_called(self) -> None:
        """No call for a queue-class event, for an online node, or for a
        node without webhooks."""
        n = self.make()
        self.hook(n)
        self.event(summon=False)
        self.event(online=True)
        self.event(node=NODE_B)
        self.clock.advance(120)
        self.assertEqual(self.http.requests, [])

    def test_coalescing(self) -> None:
        """Later summons in the window become one call at its end with the
        newest seq and pending."""
        n = self.make()
        self.hook(n)
        self.http.auto = answer(200)
        self.event()
        self.clock.advance(0)
        self.clock.advance(10)
        self.event()
        self.clock.advance(10)
        self.event(summon=False)
        newest = self.event()
        self.clock.advance(39.9)
        self.assertEqual(len(self.http.requests), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.http.requests), 2)
        second = self.http.requests[1]
        self.assertEqual(second.at, 60)
        self.assertEqual(second.json()["seq"], newest.seq)
        self.assertEqual(second.json()["pending"], 4)
        self.assertEqual(second.json()["at"], 20)
        self.clock.advance(600)
        self.assertEqual(len(self.http.requests), 2)

    def test_coalesced_call_dropped_when_online(self) -> None:
        """A coalesced call does not go out when the node is online by then."""
        n = self.make()
        self.hook(n)
        self.http.auto = answer(200)
        self.event()
        self.clock.advance(5)
        self.event()
        self.hub.online_nodes.add(NODE_A)
        self.clock.advance(60)
        self.assertEqual(len(self.http.requests), 1)

    def test_login_resets_window(self) -> None:
        """After a login the next summon is called at once again."""
        n = self.make()
        self.hook(n)
        self.http.auto = answer(200)
        self.event()
        self.clock.advance(0)
        self.clock.advance(5)
        self.event()  # coalesced, due at 60
        self.login()
        self.clock.advance(5)
        self.event()
        self.clock.advance(0)
        self.assertEqual([r.at for r in self.http.requests], [0, 10])
        self.clock.advance(100)
        self.assertEqual([r.at for r in self.http.requests], [0, 10])

    def test_windows_are_per_node(self) -> None:
        """One node's window does not hold back another node's call."""
        n = self.make()
        self.hook(n, NODE_A)
        self.hook(n, NODE_B)
        self.http.auto = answer(200)
        self.event(NODE_A)
        self.clock.advance(0)
        self.clock.advance(1)
        self.event(NODE_B)
        self.clock.advance(0)
        self.assertEqual(
            [(r.json()["node_id"], r.at) for r in self.http.requests],
            [(NODE_A, 0), (NODE_B, 1)],
        )

    def test_hanging_webhook_delays_nobody(self) -> None:
        """A request that never answers does not hold back another node's
        call, nor the same node's next window."""
        n = self.make()
        self.hook(n, NODE_A)
        self.hook(n, NODE_B)
        self.event(NODE_A)  # never answered (until its timeout)
        self.clock.advance(0)
        self.http.auto = answer(200)
        self.event(NODE_B)
        self.clock.advance(0)
        self.assertEqual(
            [r.json()["node_id"] for r in self.http.requests], [NODE_A, NODE_B]
        )
        self.assertTrue(self.http.requests[1].d.called)
        self.assertFalse(self.http.requests[0].d.called)


class RetryTests(NotifierCase):
    """Retries: when, how often, and when not."""

    def test_retries_after_5xx(self) -> None:
        """500s are retried about 2, 5, 10 and 20 s after the first attempt,
        then the call is given up and counted."""
        n = self.make()
        self.hook(n)
        self.http.auto = answer(500)
        self.event()
        self.clock.pump([0] + [1] * 60)
        self.assertEqual([r.at for r in self.http.requests], [0, 2, 5, 10, 20])
        self.assertEqual(self.counts, ["webhook_retried"] * 4 + ["webhook_failed"])
        # every attempt is signed afresh
        self.assertEqual(
            [r.headers[b"X-Lnproxy-Timestamp"][0] for r in self.http.requests],
            [b"0", b"2", b"5", b"10", b"20"],
        )
        self.assertTrue(all(verify(r) for r in self.http.requests))

    def test_success_after_retry(self) -> None:
        """A 503 then a 204 is one retry and one success."""
        n = self.make()
        self.hook(n)
        codes = [503, 204]
        self.http.auto = lambda req: req.d.callback(FakeResponse(codes.pop(0)))
        self.event()
        self.clock.pump([0] + [1] * 40)
        self.assertEqual([r.at for r in self.http.requests], [0, 2])
        self.assertEqual(self.counts, ["webhook_retried", "webhook_sent"])

    def test_timeouts_retried_within_budget(self) -> None:
        """Requests that time out are cancelled and retried; no attempt
        starts more than 30 s after the first."""
        n = self.make(timeout=5.0)
        self.hook(n)
        self.event()
        self.clock.pump([0] + [0.5] * 200)
        starts = [r.at for r in self.http.requests]
        self.assertEqual(starts, [0, 7, 15, 25])
        self.assertTrue(all(r.d.called for r in self.http.requests))
        self.assertEqual(self.counts, ["webhook_retried"] * 3 + ["webhook_failed"])

    def test_connection_errors_retried(self) -> None:
        """A refused connection is retried."""
        n = self.make()
        self.hook(n)
        self.http.auto = lambda req: req.d.errback(ConnectionRefusedError())
        self.event()
        self.clock.pump([0] + [1] * 40)
        self.assertEqual(len(self.http.requests), 5)

    def test_4xx_and_3xx_not_retried(self) -> None:
        """A 404 or a 302 is final: one attempt, counted failed."""
        for code in (404, 302):
            self.http.requests.clear()
            self.counts.clear()
            n = self.make()
            self.hook(n, url=f"https://hooks.example/{code}")
            self.http.auto = answer(code)
            self.login()
            self.event()
            self.clock.pump([0] + [1] * 40)
            self.assertEqual(len(self.http.requests), 1, code)
            self.assertEqual(self.counts, ["webhook_failed"], code)
            self.successResultOf(n.stopService())
            n.remove(NODE_A, n.list(NODE_A)[0]["id"])

    def test_refused_at_connect_not_retried(self) -> None:
        """A connect-time refusal (rebinding) is counted refused, not retried."""
        n = self.make()
        self.hook(n)
        self.http.auto = lambda req: req.d.errback(WebhookRefused("rebound"))
        self.event()
        self.clock.pump([0] + [1] * 40)
        self.assertEqual(len(self.http.requests), 1)
        self.assertEqual(self.counts, ["webhook_refused"])

    def test_login_stops_retries(self) -> None:
        """Once the node logs in, pending retries are dropped."""
        n = self.make()
        self.hook(n)
        self.http.auto = answer(500)
        self.event()
        self.clock.advance(0)
        self.login()
        self.hub.online_nodes.add(NODE_A)
        self.clock.pump([1] * 40)
        self.assertEqual(len(self.http.requests), 1)

    def test_stop_cancels_everything(self) -> None:
        """Stopping cancels scheduled calls, retries and requests in flight
        and leaves no delayed call behind."""
        n = self.make()
        self.hook(n, NODE_A)
        self.hook(n, NODE_B)
        self.event(NODE_A)
        self.clock.advance(0)
        self.event(NODE_A)  # coalesced: scheduled for the window's end
        self.event(NODE_B)
        self.successResultOf(n.stopService())
        self.assertTrue(self.http.requests[0].d.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.event(NODE_A)  # after stop: ignored
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StopTests(NotifierCase):
    """Stopping leaves nothing running."""

    def test_stop_cancels_request_after_login(self) -> None:
        """A request still in flight when its node logged in is cancelled
        at stop too."""
        n = self.make()
        self.hook(n)
        self.event()
        self.clock.advance(0)
        self.login()
        self.assertFalse(self.http.requests[0].d.called)
        self.successResultOf(n.stopService())
        self.assertTrue(self.http.requests[0].d.called)
        self.assertEqual(n.in_flight, 0)


class ReconnectBackoffTests(NotifierCase):
    """Reconnect summons of a flapping peer are backed off per peer."""

    def test_flapping_peer(self) -> None:
        """Reconnect summons for one peer go out at 0, then not before
        60 s, then 120 s later, ...; the window alone would allow more."""
        n = self.make(window=1.0, reconnect_backoff=60.0, reconnect_backoff_cap=3600.0)
        self.hook(n)
        self.http.auto = answer(200)
        for _ in range(40):  # a drop every 10 s for 400 s
            self.event(kind="closed", peer=PEER_1)
            self.clock.advance(0)
            self.clock.advance(10)
        self.assertEqual([r.at for r in self.http.requests], [0, 60, 180])
        self.assertEqual(
            {r.json()["reason"] for r in self.http.requests}, {"reconnect"}
        )
        self.assertEqual(self.counts.count("webhook_suppressed"), 37)

    def test_other_peer_and_messages_not_held(self) -> None:
        """Another peer's reconnect and summon messages are not held back by
        one peer's backoff."""
        n = self.make(window=1.0, reconnect_backoff=60.0)
        self.hook(n)
        self.http.auto = answer(200)
        self.event(kind="closed", peer=PEER_1)
        self.clock.advance(0)
        self.clock.advance(5)
        self.event(kind="closed", peer=PEER_1)  # held back
        self.event(kind="closed", peer=PEER_2)
        self.clock.advance(0)
        self.clock.advance(5)
        self.event(kind="message")
        self.clock.advance(0)
        self.assertEqual(
            [(r.at, r.json()["reason"]) for r in self.http.requests],
            [(0, "reconnect"), (5, "reconnect"), (10, "message")],
        )

    def test_quiet_peer_starts_afresh(self) -> None:
        """After a quiet period as long as the cap, the backoff restarts."""
        n = self.make(window=1.0, reconnect_backoff=60.0, reconnect_backoff_cap=300.0)
        self.hook(n)
        self.http.auto = answer(200)
        for t in (0, 60, 180):
            self.clock.advance(t - self.clock.seconds())
            self.event(kind="closed")
            self.clock.advance(0)
        self.clock.advance(200)  # at 380: 200 s after the last, delay is 240
        self.event(kind="closed")
        self.clock.advance(400)  # at 780: quiet for 400 >= cap
        self.event(kind="closed")
        self.clock.advance(0)
        self.clock.advance(30)
        self.event(kind="closed")  # within the fresh 60 s: held back
        self.clock.advance(0)
        self.assertEqual([r.at for r in self.http.requests], [0, 60, 180, 780])

    def test_closed_without_reconnect_is_not_summon(self) -> None:
        """A closed event with reconnect false wakes nobody."""
        n = self.make()
        self.hook(n)
        self.event(kind="closed", summon=False)
        self.clock.advance(10)
        self.assertEqual(self.http.requests, [])


class SummonHookTests(NotifierCase):
    """on_summon reports the start of a wake-up (for summon-to-login)."""

    def test_on_summon_once_per_offline_period(self) -> None:
        """It fires with the first summon's time, once until the next login."""
        n = self.make(window=10.0)
        seen: list[tuple[str, float]] = []
        n.on_summon.append(lambda node, at: seen.append((node, at)))
        self.hook(n)
        self.http.auto = answer(200)
        self.clock.advance(3)
        self.event()
        self.clock.advance(5)
        self.event()
        self.clock.advance(10)
        self.assertEqual(seen, [(NODE_A, 3)])
        self.login()
        self.event()
        self.clock.advance(0)
        self.assertEqual(seen, [(NODE_A, 3), (NODE_A, 18)])
