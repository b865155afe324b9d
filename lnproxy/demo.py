"""``lnproxy-demo``: the whole flow on one machine, narrated.

In one process, on one reactor, it starts:

* a local Lightning peer (:class:`lnproxy.localpeer.LocalPeerFactory`);
* the proxy (:func:`lnproxy.service.build_service`, temporary data dir,
  2-second keepalive, private webhooks allowed);
* a webhook receiver (``twisted.web``) that checks each call's signature
  against the proxy's ``server_id``;
* a client (:class:`lnproxy.client.Client`) holding a fresh node key.

Then it walks through: the relayed handshake; the client going away; the
peer pinging and the proxy answering (and the proxy's own keepalive pings
answered by the peer); a summon-class message arriving; the webhook firing;
the client coming back, receiving the message from the inbox and answering;
the peer receiving the answer.  Every step is checked.  Exit status 0 means
every step happened; otherwise the failed step is named and the status is 1.

Run it with ``lnproxy-demo`` or ``python -m lnproxy.demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.web import resource, server

from lnproxy import keys, wire
from lnproxy.client import Client, Event, MethodNotFound
from lnproxy.localpeer import LocalPeerFactory, LocalPeerProtocol
from lnproxy.testing import free_port

__all__ = ["main", "run_demo", "DemoFailed", "WebhookReceiver"]

#: BOLT 2 message types the demo fakes (payloads are made up).
UPDATE_ADD_HTLC = 128
COMMITMENT_SIGNED = 132


class DemoFailed(Exception):
    """A step did not happen.

    :ivar step: the step's title.
    """

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"step '{step}' failed: {reason}")
        self.step = step


class WebhookReceiver(resource.Resource):
    """Records webhook POSTs and verifies their signatures.

    :param server_id: the proxy's id, which must have signed every call.
    """

    isLeaf = True

    def __init__(self, server_id: bytes) -> None:
        super().__init__()
        self.server_id = server_id
        self.calls: list[dict[str, Any]] = []
        self._waiters: list[defer.Deferred[dict[str, Any]]] = []

    def render_POST(self, request: Any) -> bytes:
        """Check the signature; remember the call; answer 204."""
        body = request.content.read()
        ts = request.getHeader("X-Lnproxy-Timestamp") or ""
        sig = request.getHeader("X-Lnproxy-Signature") or ""
        try:
            valid = keys.verify_digest(
                self.server_id, keys.webhook_digest(int(ts), body), bytes.fromhex(sig)
            )
        except ValueError:
            valid = False
        call = {"body": json.loads(body) if body else None, "valid": valid}
        self.calls.append(call)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(call)
        request.setResponseCode(204)
        return b""

    def wait_call(self) -> defer.Deferred[dict[str, Any]]:
        """Fires with the next call."""
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.append(d)
        return d


class _Narrator:
    """Prints numbered steps and indented details."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.number = 0
        self.current = "setup"
        self.done: list[str] = []

    def step(self, title: str) -> None:
        self.number += 1
        self.current = title
        self.out.write(f"\n[{self.number}] {title}\n")
        self.out.flush()

    def say(self, text: str) -> None:
        self.out.write(f"    {text}\n")
        self.out.flush()

    def ok(self, text: str) -> None:
        self.done.append(self.current)
        self.out.write(f"    OK: {text}\n")
        self.out.flush()


def _bounded(
    d: defer.Deferred[Any], reactor: Any, seconds: float, step: str, what: str
) -> defer.Deferred[Any]:
    def timed_out(result: Any, timeout: float) -> Any:
        raise DemoFailed(step, f"{what} did not happen within {timeout:g} s")

    return d.addTimeout(seconds, reactor, onTimeoutCancel=timed_out)


def _wait_until(
    reactor: Any, check: Callable[[], bool], interval: float = 0.05
) -> defer.Deferred[None]:
    """Poll ``check`` until it is true (cancellable)."""
    d: defer.Deferred[None] = defer.Deferred()

    def poll() -> None:
        if not d.called and check():
            d.callback(None)

    def stop(result: Any) -> Any:
        if loop.running:
            loop.stop()
        return result

    loop = task.LoopingCall(poll)
    loop.clock = reactor
    d.addBoth(stop)
    loop.start(interval, now=True)
    return d


def _start_proxy(
    reactor: Any, data_dir: str, cleanups: list[Callable[[], Any]], *extra: str
) -> tuple[Any, int]:
    """A proxy in this process on a free 127.0.0.1 port, private webhook
    URLs allowed, stopped by ``cleanups``: ``(service, port)``."""
    from lnproxy.service import build_service
    from lnproxy.tap import Options

    port = free_port()
    options = Options()
    options.parseOptions(
        [
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--data-dir", data_dir,
            "--webhook-allow-private",
            *extra,
        ]
    )  # fmt: skip
    proxy = build_service(reactor, options)
    proxy.startService()
    cleanups.append(proxy.stopService)
    return proxy, port


@defer.inlineCallbacks
def _clean_up(cleanups: list[Callable[[], Any]]) -> Any:
    """Run ``cleanups`` last first, each to its end; a failing one does not
    stop the others (the demo's own result matters more)."""
    for fn in reversed(cleanups):
        try:
            yield defer.maybeDeferred(fn)
        except Exception:
            pass


def _is(msg_type: int) -> Callable[[bytes], bool]:
    return lambda m: len(m) >= 2 and wire.message_type(m) == msg_type


@defer.inlineCallbacks
def run_demo(
    reactor: Any,
    out: Any,
    step_timeout: float = 10.0,
    narrator: _Narrator | None = None,
) -> Any:
    """Run the demo on ``reactor``, narrating to ``out``.

    :param step_timeout: seconds each step may take.
    :param narrator: the narrator to use (its ``current`` names the step in
        progress, for an overall timeout).
    :return: a Deferred firing with the list of completed steps, or failing
        with :class:`DemoFailed` naming the step that did not happen.
    """

    n = narrator or _Narrator(out)
    cleanups: list[Callable[[], Any]] = []
    data_dir = tempfile.mkdtemp(prefix="lnproxy-demo-")
    cleanups.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))

    def bounded(d: defer.Deferred[Any], what: str) -> defer.Deferred[Any]:
        return _bounded(d, reactor, step_timeout, n.current, what)

    try:
        # -- the cast ---------------------------------------------------------
        n.step("Start a local Lightning peer, the proxy, a webhook receiver")
        peer = LocalPeerFactory()
        peer_port = reactor.listenTCP(0, peer, interface="127.0.0.1")
        cleanups.append(peer_port.stopListening)
        peer_addr = f"127.0.0.1:{peer_port.getHost().port}"
        n.say(f"peer      {peer.node_id.hex()} at {peer_addr}")

        proxy, proxy_port = _start_proxy(
            reactor, data_dir, cleanups, "--keepalive", "2"
        )
        server_id = proxy.server_id
        n.say(f"proxy     ws://127.0.0.1:{proxy_port}/  server_id {server_id.hex()}")
        n.say("          (keepalive 2 s, so its own pings show up quickly)")

        receiver = WebhookReceiver(server_id)
        hook_port = reactor.listenTCP(0, server.Site(receiver), interface="127.0.0.1")
        cleanups.append(hook_port.stopListening)
        hook_url = f"http://127.0.0.1:{hook_port.getHost().port}/wake"
        n.say(f"webhook   {hook_url}")
        n.ok("all three are listening on 127.0.0.1")

        # -- the client logs in ------------------------------------------------
        n.step("The client logs in with its node key")
        received: list[Event] = []
        answered: defer.Deferred[Event] = defer.Deferred()
        client_ref: list[Client] = []

        def on_event(event: Event) -> Any:
            received.append(event)
            n.say(
                f"client got event seq {event.seq}: {event.kind}"
                + (
                    f" type {event.type} ({wire.MESSAGE_NAMES.get(event.type or -1, '?')})"
                    if event.kind == "message"
                    else f" ({event.reason})"
                )
            )
            if event.kind == "message" and event.type == UPDATE_ADD_HTLC:
                answer = wire_message(COMMITMENT_SIGNED, b"fake signature " * 4)
                n.say(
                    f"client answers with commitment_signed (type {COMMITMENT_SIGNED})"
                )
                d = client_ref[0].send(event.conn or "", answer)

                def sent(_: None) -> None:
                    if not answered.called:
                        answered.callback(event)

                # Acknowledged only once the answer is on its way.
                return d.addCallback(sent)
            return None

        secret = os.urandom(32)
        state_path = os.path.join(data_dir, "client-state.json")
        client = Client(
            reactor,
            f"ws://127.0.0.1:{proxy_port}/",
            secret,
            on_event=on_event,
            state=state_path,
            server_id=server_id,
            retry_policy=lambda attempt: 0.2,
            request_timeout=step_timeout,
        )
        client_ref.append(client)
        client.on_handshake.append(lambda step, detail: n.say(f"client: {detail}"))
        client.startService()
        cleanups.append(client.stopService)
        info = yield bounded(client.when_logged_in(fail_fast=True), "the login")
        n.say(f"node id   {info.node_id}")
        n.ok(f"logged in; server_id pinned and verified; {info.pending} events pending")

        # -- the relayed handshake --------------------------------------------
        n.step(
            "Relayed BOLT 8 handshake: act 1 -> proxy -> peer, act 2 back, act 3 + keys"
        )
        opened = peer.wait_open()
        peer_init = peer.wait_message(_is(wire.INIT))
        link = yield bounded(
            client.open_peer(f"{peer.node_id.hex()}@{peer_addr}", persist=True),
            "the handshake",
        )
        p: LocalPeerProtocol = yield bounded(opened, "the peer's side of the handshake")
        if p.remote_node_id != client.node_id:
            raise DemoFailed(n.current, "the peer authenticated another node id")
        n.say("peer: act 3 authenticated the client's node id; transport keys derived")
        yield bounded(peer_init, "the client's init reaching the peer")
        n.say("peer: received the client's init, encrypted by the proxy")
        n.ok(f"connection {link.conn} is open and owned by the proxy")

        # -- webhook ------------------------------------------------------------
        n.step("The client registers its webhook")
        webhooks = True
        try:
            webhook_id = yield bounded(client.webhook_set(hook_url), "webhook.set")
            n.ok(f"webhook {webhook_id} registered")
        except MethodNotFound:
            webhooks = False
            n.say("this proxy has no webhooks enabled; the webhook steps are skipped")
            n.ok("continuing without webhooks")

        # -- the client goes away ------------------------------------------------
        n.step("The client goes away (its WebSocket closes)")
        yield bounded(client.stopService(), "the client stopping")
        node_hex = client.node_id.hex()
        yield bounded(
            _wait_until(reactor, lambda: not proxy.hub.online(node_hex)),
            "the proxy noticing",
        )
        n.ok("no session of the node is logged in; the proxy keeps the peer connection")

        # -- pings while away ---------------------------------------------------
        n.step("The peer pings; the proxy answers for the absent client")
        pong = peer.wait_message(_is(wire.PONG))
        p.send(wire.Ping(num_pong_bytes=4, ignored=b"\x00" * 8).encode())
        n.say("peer: ping (num_pong_bytes 4)")
        got = yield bounded(pong, "a pong")
        n.ok(
            f"peer got a pong of {len(wire.Pong.decode(got).ignored)} bytes from the proxy"
        )

        n.step("The proxy's own keepalive ping; the peer answers")
        proxy_ping = peer.wait_message(_is(wire.PING))
        n.say("waiting for 2 s of silence on the connection...")
        yield bounded(proxy_ping, "a keepalive ping from the proxy")
        n.say("peer: got a ping from the proxy and answered with a pong")
        yield task.deferLater(reactor, 0.3, lambda: None)
        if p.transport is None or not p.transport.connected:  # type: ignore[attr-defined]
            raise DemoFailed(n.current, "the connection did not survive the keepalive")
        n.ok("the proxy consumed the pong; the connection stays up")

        # -- a summon-class message ------------------------------------------------
        n.step("A summon-class message arrives while the client is away")
        before = len(receiver.calls)
        hook_call = receiver.wait_call()
        htlc = wire_message(UPDATE_ADD_HTLC, b"fake htlc " * 8)
        p.send(htlc)
        n.say(
            f"peer: update_add_htlc (type {UPDATE_ADD_HTLC}, {len(htlc)} bytes, fake payload)"
        )
        yield bounded(
            _wait_until(reactor, lambda: proxy.hub.store.pending_count(node_hex) >= 1),
            "the message being stored",
        )
        n.ok(
            f"stored durably in the node's inbox ({proxy.hub.store.pending_count(node_hex)} events pending)"
        )

        if webhooks:
            n.step("The proxy wakes the client: the webhook fires")
            call = yield bounded(hook_call, "the webhook call")
            if not call["valid"]:
                raise DemoFailed(n.current, "the webhook signature does not verify")
            body = call["body"]
            n.say(f"receiver: {json.dumps(body, sort_keys=True)}")
            if body.get("node_id") != node_hex or body.get("reason") != "message":
                raise DemoFailed(n.current, f"unexpected webhook body {body}")
            n.ok(
                f"signature by server_id verified ({len(receiver.calls) - before} call)"
            )
        else:
            hook_call.cancel()

        # -- the client comes back ------------------------------------------------
        n.step("The client comes back, reads its inbox and answers")
        answer_at_peer = peer.wait_message(_is(COMMITMENT_SIGNED))
        client.startService()
        yield bounded(client.when_logged_in(), "the second login")
        event = yield bounded(answered, "the update_add_htlc event")
        if event.msg != htlc:
            raise DemoFailed(
                n.current, "the message from the inbox differs from what the peer sent"
            )
        n.ok("the message came from the inbox, byte for byte, and was answered")

        n.step("The peer receives the answer")
        answer = yield bounded(answer_at_peer, "the answer reaching the peer")
        n.say(f"peer: commitment_signed ({len(answer)} bytes) arrived")
        if any(
            e.kind == "message" and e.type in (wire.PING, wire.PONG) for e in received
        ):
            raise DemoFailed(n.current, "a ping or pong reached the client")
        yield bounded(
            _wait_until(reactor, lambda: proxy.hub.store.pending_count(node_hex) == 0),
            "every event being acknowledged",
        )
        n.ok("pings and pongs never reached the client; every event is acknowledged")
    finally:
        yield _clean_up(cleanups)
    out.write(f"\nAll {len(n.done)} steps happened.\n")
    return n.done


def wire_message(msg_type: int, payload: bytes) -> bytes:
    """A Lightning message: 2-byte type, then ``payload``."""
    return msg_type.to_bytes(2, "big") + payload


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the demo, exit 0 only if it all worked."""
    parser = argparse.ArgumentParser(
        prog="lnproxy-demo",
        description="Run a local Lightning peer, an lnproxy, a webhook receiver "
        "and a client in one process, and narrate what happens.",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up after this many seconds in all (default 30; 90 with "
        "--electrum)",
    )
    parser.add_argument(
        "--electrum",
        action="store_true",
        help="run the wake-up flow with Electrum's own Lightning code on both "
        "sides (needs python3-electrum; see docs/client.md, \"Electrum\")",
    )
    args = parser.parse_args(argv)
    if args.timeout is None:
        args.timeout = 90.0 if args.electrum else 30.0
    from twisted.internet import task as _task

    if args.electrum:
        from lnproxy.electrum_demo import INSTALL_HINT, electrum_available

        missing = electrum_available()
        if missing is not None:
            sys.stdout.write(f"lnproxy-demo --electrum: {missing}\n{INSTALL_HINT}\n")
            raise SystemExit(1)

    def go(reactor: Any) -> defer.Deferred[None]:
        narrator = _Narrator(sys.stdout)
        if args.electrum:
            from lnproxy.electrum_demo import run_electrum_demo

            d = run_electrum_demo(
                reactor, sys.stdout, min(25.0, args.timeout), narrator
            )
            d.addCallback(lambda _: None)
        else:
            d = run_demo(reactor, sys.stdout, min(10.0, args.timeout), narrator)

        def overall(result: Any, timeout: float) -> Any:
            raise DemoFailed(
                narrator.current, f"not done when the overall {timeout:g} s ran out"
            )

        d.addTimeout(args.timeout, reactor, onTimeoutCancel=overall)

        def failed(f: Any) -> None:
            if f.check(DemoFailed):
                sys.stdout.write(f"\nFAILED: {f.value}\n")
            else:
                sys.stdout.write(f"\nFAILED: {f.getErrorMessage()}\n")
            raise SystemExit(1)

        return d.addCallbacks(lambda _: None, failed)

    _task.react(go)


if __name__ == "__main__":
    main()
