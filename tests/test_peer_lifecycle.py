"""The one connection lifecycle (:mod:`lnproxy.lifecycle`) and how the peer
protocol and the hub move it: the transition table, the persisted names,
and the paths through it of real connections on a fake clock."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lnproxy import noise
from lnproxy.hub import HubError
from lnproxy.lifecycle import (
    PERSISTED_STATES,
    TRANSITIONS,
    ConnState,
    InvalidTransition,
    Lifecycle,
    from_wire_name,
)

from .test_hub_unit import NODE, NODE_SECRET, PEER, HubCase


class TableTests(SynchronousTestCase):
    """The table itself."""

    def test_every_move_not_in_the_table_raises(self) -> None:
        """Each of the 81 (from, to) pairs either is in the table and
        succeeds, telling ``on_change``, or raises InvalidTransition and
        leaves the state alone."""
        for old in ConnState:
            for new in ConnState:
                seen: list[tuple[ConnState, ConnState]] = []
                life = Lifecycle(old, lambda a, b, seen=seen: seen.append((a, b)))
                if new in TRANSITIONS[old]:
                    life.advance(new)
                    self.assertEqual((life.state, seen), (new, [(old, new)]))
                else:
                    with self.assertRaises(InvalidTransition):
                        life.advance(new)
                    self.assertEqual((life.state, seen), (old, []))

    def test_terminal_states(self) -> None:
        """Only ``acknowledged`` and ``abandoned`` lead nowhere, and every
        state is reachable from ``connecting``."""
        self.assertEqual(
            {s for s in ConnState if not TRANSITIONS[s]},
            {ConnState.ACKNOWLEDGED, ConnState.ABANDONED},
        )
        reached = {ConnState.CONNECTING}
        todo = [ConnState.CONNECTING]
        while todo:
            for nxt in TRANSITIONS[todo.pop()] - reached:
                reached.add(nxt)
                todo.append(nxt)
        self.assertEqual(reached, set(ConnState))

    def test_persisted_names(self) -> None:
        """The store sees only handshake, open and closed, and each maps
        back to its state."""
        self.assertEqual(PERSISTED_STATES, ("handshake", "open", "closed"))
        for name in PERSISTED_STATES:
            self.assertEqual(from_wire_name(name).wire_name, name)
        self.assertEqual(ConnState.CLOSING.wire_name, "open")
        with self.assertRaises(ValueError):
            from_wire_name("closing")


class PathTests(HubCase):
    """Real connections through the hub."""

    def test_happy_path(self) -> None:
        """connect -> act1 sent -> handshake -> open -> closing -> closed ->
        acknowledged, one state shared by the protocol and the hub."""
        self.make_hub()
        conn_id, link, init = self.start_connect()
        conn = self.hub.connections[conn_id]
        self.assertIs(conn.life, link.proto.life)
        self.assertIs(conn.state, ConnState.HANDSHAKE)
        self.finish(conn_id, link, init)
        self.assertIs(conn.state, ConnState.OPEN)
        self.hub.disconnect(NODE, conn_id)
        self.assertIs(conn.state, ConnState.CLOSING)
        link.lose()
        self.assertIs(conn.state, ConnState.CLOSED)
        self.clock.advance(0)
        self.hub.ack(NODE, self.hub.newest_seq(NODE))
        self.assertIs(conn.state, ConnState.ACKNOWLEDGED)
        self.assertNotIn(conn_id, self.hub.connections)
        self.assertEqual(self.hub._handshakes, 0)

    def test_failed_handshake_is_abandoned(self) -> None:
        """A malformed act 2: act1 sent -> aborting -> abandoned, no event,
        the handshake slot freed."""
        self.make_hub()
        d = self.hub.connect(
            NODE,
            PEER.hex(),
            "127.0.0.1",
            9735,
            noise.Initiator(NODE_SECRET, PEER).act1(),
            False,
        )
        link = self.links[-1]
        life = link.proto.life
        link.proto.dataReceived(b"\x01" * noise.ACT2_SIZE)
        self.assertIs(life.state, ConnState.ABORTING)
        self.assertEqual(self.failureResultOf(d, HubError).value.code, 5)
        link.lose()
        self.assertIs(life.state, ConnState.ABANDONED)
        self.assertEqual((self.hub.connections, self.hub._handshakes), ({}, 0))
        self.clock.advance(0)
        self.assertEqual(self.events(), [])

    def test_finish_while_closing_is_code_6(self) -> None:
        """``finish`` on a connection closing in its handshake (the client
        disconnected it, or its handshake timed out, and TCP is not gone
        yet) answers code 6.  It used to reach the peer protocol, which
        raised a ValueError the API could only answer as an internal
        error."""
        self.make_hub(handshake_timeout=10)
        for how in ("disconnect", "timeout"):
            conn_id, link, init = self.start_connect()
            if how == "disconnect":
                self.hub.disconnect(NODE, conn_id)
            else:
                self.clock.advance(10)
            self.assertIs(link.proto.state, ConnState.CLOSING)
            act3, tk = init.act3()
            with self.assertRaises(HubError) as cm:
                self.hub.finish(NODE, conn_id, act3, tk.sk, tk.rk, tk.ck)
            self.assertEqual(cm.exception.code, 6, how)
            self.assertEqual(link.take(), b"", "no act 3 written")
            link.lose()
        self.assertEqual(self.hub._handshakes, 0)

    def test_stop_records_closed_before_tcp_goes(self) -> None:
        """On stop an open connection goes closing -> closed at once (its
        event committed), and TCP going away afterwards changes nothing."""
        self.make_hub()
        conn_id, link = self.open()
        conn = self.hub.connections[conn_id]
        d = self.hub.stopService()
        self.assertIs(conn.state, ConnState.CLOSED)
        self.assertEqual(self.closed_reasons(), ["proxy stopped"])
        link.lose()
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertIs(conn.state, ConnState.CLOSED)
        self.assertEqual(self.closed_reasons(), ["proxy stopped"])
