"""The message policy: the default table of docs/protocol.md for all 65,536
types, operator overrides, and override parsing."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lnproxy import wire
from lnproxy.answer import ANSWERED_TYPES, CONSUMED, answer
from lnproxy.policy import (
    HANDLED_TYPES,
    MessageClass,
    Policy,
    PolicyError,
    parse_override,
)

H, D, Q, S = (
    MessageClass.HANDLE,
    MessageClass.DROP,
    MessageClass.QUEUE,
    MessageClass.SUMMON,
)


def contract_class(t: int) -> MessageClass:
    """The default class of type ``t``, written from docs/protocol.md's table
    (independently of lnproxy.policy)."""
    if t in (18, 19, 261, 263, 265, 7):
        return H
    if t in (256, 257, 258, 262, 264):
        return D
    if t in (16, 1, 9):
        return Q
    if t in (2, 17, 259, 513) or 32 <= t <= 255:
        return S
    # Every other type is unknown to the table: odd queue, even summon.
    return Q if t % 2 else S


class DefaultPolicyTests(SynchronousTestCase):
    """The default table."""

    def test_every_type_matches_the_contract(self) -> None:
        """All 65,536 types have the class docs/protocol.md gives them ("The policy")."""
        policy = Policy()
        self.assertEqual(len(policy.table), 65536)
        wrong = [t for t in range(65536) if policy.classify(t) is not contract_class(t)]
        self.assertEqual(wrong, [])

    def test_spot_checks(self) -> None:
        """A few rows of the table, spelled out."""
        policy = Policy()
        cases = {
            18: H,
            19: H,
            261: H,
            263: H,
            265: H,
            256: D,
            257: D,
            258: D,
            262: D,
            264: D,
            16: Q,
            1: Q,
            3: Q,
            5: Q,
            33: S,
            32769: Q,
            65535: Q,
            2: S,
            17: S,
            32: S,
            128: S,
            255: S,
            259: S,
            513: S,
            7: H,
            9: Q,
            0: S,
            4: S,
            260: S,
            512: S,
            32768: S,
            65534: S,
        }
        self.assertEqual({t: policy.classify(t) for t in cases}, cases)

    def test_handled_types(self) -> None:
        """The proxy can handle exactly peer_storage, ping, pong, the two
        gossip queries and the timestamp filter."""
        self.assertEqual(HANDLED_TYPES, frozenset({7, 18, 19, 261, 263, 265}))

    def test_gossip_table(self) -> None:
        """The table of a connection whose client asked for gossip differs
        from the default in exactly 256, 257, 258, 262 and 264, which are
        queue class there."""
        policy = Policy()
        self.assertEqual(len(policy.gossip_table), 65536)
        changed = {
            t for t in range(65536) if policy.gossip_table[t] is not policy.table[t]
        }
        self.assertEqual(changed, {256, 257, 258, 262, 264})
        self.assertEqual({policy.gossip_table[t] for t in changed}, {Q})


class OverrideTests(SynchronousTestCase):
    """Operator overrides."""

    def test_overrides_change_only_their_types(self) -> None:
        """Overrides replace the class of their types and nothing else."""
        policy = Policy({128: Q, 256: S, 18: Q, 19: D, 130: D})
        changed = {
            t for t in range(65536) if policy.classify(t) is not contract_class(t)
        }
        self.assertEqual(changed, {128, 256, 18, 19, 130})
        self.assertEqual(
            [policy.classify(t) for t in (128, 256, 18, 19, 130)], [Q, S, Q, D, D]
        )

    def test_overrides_win_over_asked_gossip(self) -> None:
        """An override naming a gossip type keeps its class on a connection
        whose client asked for gossip; the other gossip types are queued."""
        policy = Policy({256: D, 264: S, 258: S})
        self.assertEqual(
            [policy.gossip_table[t] for t in (256, 257, 258, 262, 264)],
            [D, Q, S, Q, S],
        )
        self.assertEqual(policy.table[257], D)

    def test_handle_only_for_handled_types(self) -> None:
        """``handle`` may be set on a handled type (back to its default) but
        not on a type the proxy cannot answer."""
        self.assertIs(Policy({263: H}).classify(263), H)
        with self.assertRaises(PolicyError) as cm:
            Policy({128: H})
        self.assertEqual(str(cm.exception), "the proxy cannot handle type 128")

    def test_from_strings(self) -> None:
        """``Policy.from_strings`` applies parsed ``--policy`` values."""
        policy = Policy.from_strings(["32=queue", "259=drop"])
        self.assertEqual((policy.classify(32), policy.classify(259)), (Q, D))
        self.assertEqual(policy.overrides, {32: Q, 259: D})


class ParseOverrideTests(SynchronousTestCase):
    """``parse_override`` (the ``--policy`` argument)."""

    def test_valid(self) -> None:
        """TYPE=CLASS, class case-insensitive, blanks around parts ignored,
        types 0 and 65535 allowed."""
        self.assertEqual(parse_override("32=queue"), (32, Q))
        self.assertEqual(parse_override("259=SUMMON"), (259, S))
        self.assertEqual(parse_override(" 0 = drop "), (0, D))
        self.assertEqual(parse_override("65535=summon"), (65535, S))
        self.assertEqual(parse_override("19=handle"), (19, H))

    def test_invalid(self) -> None:
        """Each malformed override raises PolicyError naming what is wrong."""
        cases = {
            "32": "is not TYPE=CLASS",
            "queue": "is not TYPE=CLASS",
            "x=queue": "type 'x' is not an integer",
            "0x20=queue": "type '0x20' is not an integer",
            "1.5=queue": "type '1.5' is not an integer",
            "=queue": "type '' is not an integer",
            "70000=queue": "type 70000 is outside 0-65535",
            "65536=drop": "type 65536 is outside 0-65535",
            "-1=drop": "type -1 is outside 0-65535",
            "32=wake": "unknown class 'wake' (one of handle, drop, queue, summon)",
            "32=": "unknown class ''",
            "128=handle": (
                "the proxy cannot handle type 128 by itself "
                "(it handles 7, 18, 19, 261, 263, 265)"
            ),
        }
        for text, message in cases.items():
            with self.assertRaises(PolicyError) as cm:
                parse_override(text)
            self.assertIn(message, str(cm.exception), text)
            self.assertIn(repr(text), str(cm.exception))


class AnswerTests(SynchronousTestCase):
    """lnproxy.answer.answer: what the proxy replies, from bytes alone."""

    def test_every_handled_type_has_an_answer(self) -> None:
        """The policy's ``handle`` types are exactly the ones answer()
        knows."""
        self.assertEqual(HANDLED_TYPES, ANSWERED_TYPES)

    def test_ping(self) -> None:
        """A ping gets a pong of num_pong_bytes zeros; one asking 65532 or
        more gets nothing (BOLT 1)."""
        a = answer(wire.PING, wire.Ping(3, b"xy").encode())
        self.assertEqual((a.reply, a.pong), (wire.Pong(bytes(3)).encode(), True))
        self.assertIs(answer(wire.PING, wire.Ping(65532).encode()), CONSUMED)

    def test_gossip_queries(self) -> None:
        """Both gossip queries get the proxy's "no gossip here" replies for
        the same chain (and range)."""
        chain = bytes(range(32))
        q = wire.QueryShortChannelIds(chain, b"\x00")
        a = answer(wire.QUERY_SHORT_CHANNEL_IDS, q.encode())
        self.assertEqual(a.reply, wire.ReplyShortChannelIdsEnd(chain, 0).encode())
        self.assertFalse(a.pong)
        r = wire.QueryChannelRange(chain, 100, 50)
        a = answer(wire.QUERY_CHANNEL_RANGE, r.encode())
        self.assertEqual(
            a.reply, wire.ReplyChannelRange(chain, 100, 50, 1, b"\x00").encode()
        )

    def test_consumed(self) -> None:
        """A pong and a gossip_timestamp_filter are consumed silently."""
        self.assertIs(answer(wire.PONG, wire.Pong(b"").encode()), CONSUMED)
        f = wire.GossipTimestampFilter(bytes(32), 0, 0xFFFFFFFF)
        self.assertIs(answer(wire.GOSSIP_TIMESTAMP_FILTER, f.encode()), CONSUMED)

    def test_malformed_raises_wire_error(self) -> None:
        """A truncated ping or query raises WireError (the hub logs it and
        answers nothing)."""
        for t in (wire.PING, wire.QUERY_SHORT_CHANNEL_IDS, wire.QUERY_CHANNEL_RANGE):
            with self.assertRaises(wire.WireError):
                answer(t, t.to_bytes(2, "big") + b"\x00")
