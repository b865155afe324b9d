"""Logging: the JSON-lines observer for twistd's ``--logger``, and a whole
end-to-end run whose every log event is checked for key material."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import (
    ILogObserver,
    Logger,
    eventAsJSON,
    formatEvent,
    globalLogPublisher,
)
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import keys, noise, wire
from lnproxy.logs import event_as_json_line, json_file_observer, json_stdout

from .harness import RpcFailed
from .test_webhook_e2e import SUMMON_MSG, WebhookCase, until


class JsonLinesTests(SynchronousTestCase):
    """The JSON-lines observer."""

    def test_one_json_object_per_line(self) -> None:
        """Each event is one line of JSON with its fields, a plain level
        name and the formatted text."""
        out = io.StringIO()
        log = Logger(namespace="lnproxy.test", observer=json_file_observer(out))
        log.info(
            "peer connection {conn} closed: {reason}", conn="c1", reason="peer closed"
        )
        log.warn("second {n}", n=2)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(first["conn"], "c1")
        self.assertEqual(first["reason"], "peer closed")
        self.assertEqual(first["log_level"], "info")
        self.assertEqual(first["log_namespace"], "lnproxy.test")
        self.assertEqual(first["log_text"], "peer connection c1 closed: peer closed")
        self.assertNotIn("log_logger", first)
        self.assertEqual((second["log_level"], second["n"]), ("warn", 2))

    def test_failure_has_traceback(self) -> None:
        """A logged failure carries its traceback as text."""
        out = io.StringIO()
        log = Logger(namespace="t", observer=json_file_observer(out))
        try:
            raise ZeroDivisionError("it broke")
        except ZeroDivisionError:
            log.failure("it broke")
        event = json.loads(out.getvalue())
        self.assertIn("ZeroDivisionError", event["log_traceback"])
        self.assertEqual(event["log_level"], "critical")

    def test_twistd_logger_option(self) -> None:
        """``twistd --logger lnproxy.logs.json_stdout`` resolves to the
        factory, which builds an ILogObserver."""
        options = ServerOptions()
        options.parseOptions(["--nodaemon", "--logger", "lnproxy.logs.json_stdout"])
        self.assertIs(options["logger"], json_stdout)
        self.assertTrue(ILogObserver.providedBy(json_stdout()))

    def test_unformattable_event(self) -> None:
        """A broken format string still gives a line."""
        line = event_as_json_line({"log_format": "{missing", "log_time": 1.0})
        event = json.loads(line)
        self.assertEqual(
            (event["log_time"], event["log_format_unparsed"]), (1.0, "{missing")
        )


class NoKeyMaterialTests(WebhookCase):
    """No log event of a whole run carries a key, an act or a signature."""

    @defer.inlineCallbacks
    def test_no_key_material_in_logs(self) -> Any:
        """Login, a split handshake through the proxy, messages both ways,
        a bad login, a webhook, a disconnect and a stop: no event, raw or
        formatted, contains the node secret, sk/rk/ck, any act, a login
        signature or the server secret."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        rx = self.receiver()
        svc = self.start("--webhook-allow-private")
        secrets: dict[str, bytes] = {"server secret": svc.store.server_secret}

        # Login (keep the signature).
        node_secret = os.urandom(32)
        secrets["node secret"] = node_secret
        client = yield self.ws()
        hello = yield client.hello
        digest = keys.login_digest(
            bytes.fromhex(hello["server_id"]), bytes.fromhex(hello["challenge"])
        )
        signature = keys.sign_digest(node_secret, digest)
        secrets["login signature"] = signature
        client.node_secret = node_secret
        yield client.call(
            "login",
            node_id=keys.public_key(node_secret).hex(),
            signature=signature.hex(),
        )
        yield client.call("webhook.set", url=self.url("/ok"))

        # The split handshake, by hand, to know every act and key.
        peer, port = self.local_peer()
        opened = peer.wait_open()
        init = noise.Initiator(node_secret, peer.node_id)
        act1 = init.act1()
        r = yield client.call(
            "connect",
            peer=f"{peer.node_id.hex()}@127.0.0.1:{port}",
            act1=act1.hex(),
            persist=True,
        )
        act2 = bytes.fromhex(r["act2"])
        init.read_act2(act2)
        act3, tk = init.act3()
        secrets.update(act1=act1, act2=act2, act3=act3, sk=tk.sk, rk=tk.rk, ck=tk.ck)
        yield client.call(
            "finish",
            conn=r["conn"],
            act3=act3.hex(),
            sk=tk.sk.hex(),
            rk=tk.rk.hex(),
            ck=tk.ck.hex(),
        )
        p = yield opened
        yield client.call(
            "send", conn=r["conn"], msg=wire.Init(features=b"").encode().hex()
        )
        got = peer.wait_message(lambda m: m[:2] == b"\x00\x85")
        yield client.call("send", conn=r["conn"], msg="0085cafe")
        yield got
        p.send(SUMMON_MSG)
        yield client.wait_event(lambda e: e["params"].get("type") == 0x80)

        # A bad login on another WebSocket.
        bad = yield self.ws()
        bad_hello = yield bad.hello
        wrong = keys.sign_digest(os.urandom(32), bytes.fromhex(bad_hello["challenge"]))
        secrets["bad login signature"] = wrong
        yield self.assertFailure(
            bad.call(
                "login",
                node_id=keys.public_key(node_secret).hex(),
                signature=wrong.hex(),
            ),
            RpcFailed,
        )
        yield bad.closed

        # Offline: a summon and a peer drop (reconnect) wake the node.
        yield self.go_offline(client)
        p.send(SUMMON_MSG)
        yield until(lambda: len(rx.calls) == 1)
        yield until(lambda: "webhook_sent" in self.outcomes)
        yield svc.stopService()

        # The run did log, with structured fields: the check is not vacuous.
        formats = [e.get("log_format") or "" for e in events]
        self.assertTrue(any("login failed" in f for f in formats))
        self.assertTrue(any("webhook {webhook}" in f for f in formats))
        self.assertTrue(
            any(
                "closed" in f and "conn" in e
                for f, e in zip(formats, events, strict=True)
            )
        )

        needles = {}
        for name, value in secrets.items():
            needles[name] = [value.hex(), value.hex().upper(), repr(value)[2:-1]]
        for event in events:
            texts = [formatEvent(event), eventAsJSON(event), repr(event)]
            for text in texts:
                for name, forms in needles.items():
                    for form in forms:
                        self.assertNotIn(
                            form,
                            text,
                            f"{name} found in log event {event.get('log_format')!r}",
                        )
