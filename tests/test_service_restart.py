"""End-to-end restart tests on one data dir: a clean stop writes ``proxy
stopped`` closed events and keeps every unacknowledged event; an unclean
stop gets its ``proxy restarted`` closed events at the next start; a second
proxy on a data dir in use refuses to start.

A real crash (SIGKILL of a ``twistd`` process) is in test_service_twistd.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor

from lnproxy import keys
from lnproxy.service import build_service
from lnproxy.store import ConnectionRow, EventRow, Store

from .harness import ProxyTestCase, eventually, proxy_options


class RestartTests(ProxyTestCase):
    """Stopping and starting a proxy on the same data dir."""

    @defer.inlineCallbacks
    def test_clean_stop_keeps_events_and_writes_closed(self) -> Any:
        """stopService writes a ``proxy stopped`` closed event for every
        connection (open or still in handshake) with reconnect = persist,
        sends them to the online session, and closes the peers; a new proxy
        on the same data dir has the same server_id and replays exactly the
        unacknowledged events, then continues the seq."""
        first = self.start_proxy()
        server_id = first.server_id
        peer, port = self.local_peer()
        secret = os.urandom(32)
        client = yield self.logged_in(secret)
        opened = peer.wait_open()
        keep, _ = yield client.open_peer(peer, port, persist=True)
        p = yield opened
        plain, _ = yield client.open_peer(peer, port)
        r, _ = yield client.start_connect(peer, port, persist=True)
        half = r["conn"]
        yield eventually(lambda: len(client.events) == 2)  # both inits
        yield client.call("ack", seq=2)
        p.send(bytes.fromhex("0084aa"))
        yield client.wait_event(lambda e: e["params"]["seq"] == 3)

        yield first.stopService()
        yield eventually(lambda: len(client.events) == 6)
        closed = {e["params"]["conn"]: e["params"] for e in client.events[3:]}
        self.assertEqual(set(closed), {keep, plain, half})
        for conn, persist in ((keep, True), (plain, False), (half, True)):
            self.assertEqual(closed[conn]["reason"], "proxy stopped")
            self.assertIs(closed[conn]["reconnect"], persist)
        yield eventually(lambda: peer.closed_count == 3)
        # The session is closed politely ("going away") after its events.
        code, _ = yield client.closed
        self.assertEqual(code, 1001)
        expected = [e["params"] for e in client.events[2:]]

        self.start_proxy()
        self.assertEqual(self.proxy.server_id, server_id)
        again = yield self.logged_in(secret)
        self.assertEqual(again.login_result["inbox"], {"next_seq": 7, "pending": 4})
        states = {c["conn"]: c["state"] for c in again.login_result["connections"]}
        self.assertEqual(states, {keep: "closed", plain: "closed", half: "closed"})
        yield eventually(lambda: len(again.events) == 4)
        self.assertEqual([e["params"] for e in again.events], expected)
        self.assertEqual(again.events[0]["params"]["msg"], "0084aa")
        # Life goes on: the seq continues after the stored ones.
        opened = peer.wait_open()
        new, _ = yield again.open_peer(peer, port)
        yield opened
        ev = yield again.wait_event(lambda e: e["params"]["seq"] == 7)
        self.assertEqual(ev["params"]["type"], 16)
        yield again.call("ack", seq=7)
        listed = yield again.call("connections")
        self.assertEqual(
            [(c["conn"], c["state"]) for c in listed["connections"]], [(new, "open")]
        )

    @defer.inlineCallbacks
    def test_unclean_stop_gets_restarted_events(self) -> Any:
        """Connections left open or in handshake in the store (what a crash
        leaves) get a ``proxy restarted`` closed event at the next start,
        with reconnect = persist, after the events already stored; acking
        them removes the connections."""
        data_dir = self.mktemp()
        node = keys.public_key(secret := os.urandom(32)).hex()
        peer = keys.public_key(os.urandom(32)).hex()
        with Store.open(data_dir) as store:
            store.append_events(
                [
                    EventRow(
                        node,
                        1,
                        "message",
                        True,
                        100.0,
                        json.dumps(
                            {
                                "seq": 1,
                                "at": 100.0,
                                "conn": "c1",
                                "peer": peer,
                                "type": 128,
                                "msg": "0080",
                                "summon": True,
                            }
                        ),
                    )
                ]
            )
            for conn_id, state, persist in (
                ("c1", "open", True),
                ("c2", "open", False),
                ("c3", "handshake", True),
            ):
                store.put_connection(
                    ConnectionRow(
                        conn_id,
                        node,
                        peer,
                        "127.0.0.1:9735",
                        persist,
                        50.0,
                        state,
                        "001000000000" if state == "open" else None,
                        None,
                    )
                )
        self.start_proxy(data_dir=data_dir)
        client = yield self.logged_in(secret)
        self.assertEqual(client.login_result["inbox"], {"next_seq": 5, "pending": 4})
        yield eventually(lambda: len(client.events) == 4)
        self.assertEqual(client.events[0]["params"]["msg"], "0080")
        closed = [e["params"] for e in client.events[1:]]
        self.assertEqual(
            [(c["seq"], c["conn"], c["reason"], c["reconnect"]) for c in closed],
            [
                (2, "c1", "proxy restarted", True),
                (3, "c2", "proxy restarted", False),
                (4, "c3", "proxy restarted", True),
            ],
        )
        rows = self.proxy.store.events_after(node, 1, 10)
        self.assertEqual([r.summon for r in rows], [True, False, True])
        listed = yield client.call("connections")
        self.assertEqual({c["state"] for c in listed["connections"]}, {"closed"})
        yield client.call("ack", seq=4)
        self.assertEqual((yield client.call("connections")), {"connections": []})
        # A second restart finds nothing left to close.
        yield self.proxy.stopService()
        self.assertEqual((yield client.closed)[0], 1001)
        self.start_proxy(data_dir=data_dir)
        again = yield self.logged_in(secret)
        self.assertEqual(again.login_result["inbox"], {"next_seq": 5, "pending": 0})

    @defer.inlineCallbacks
    def test_second_proxy_on_same_data_dir(self) -> Any:
        """While a proxy runs, build_service on its data dir raises
        SystemExit naming the data dir and the other process; once the
        first stops, the data dir can be used again."""
        first = self.start_proxy()
        with self.assertRaises(SystemExit) as cm:
            build_service(reactor, proxy_options(self.data_dir))
        message = str(cm.exception.code)
        self.assertIn(os.path.abspath(self.data_dir), message)
        self.assertIn("another lnproxy process", message)
        self.assertIn(f"pid {os.getpid()}", message)
        self.assertIn("refusing to start", message)
        # The first proxy still works.
        client = yield self.logged_in()
        self.assertEqual(client.login_result["inbox"]["pending"], 0)
        yield first.stopService()
        self.start_proxy()
        yield self.logged_in()
