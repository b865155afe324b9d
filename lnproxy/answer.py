"""What the proxy answers by itself, as pure functions and values.

The policy (:mod:`lnproxy.policy`) decides *whether* a message type is the
proxy's to handle; :func:`answer` decides *what* to do with one such
message: the reply to send back to the peer (if any), whether the message
goes to the client after all (a pong to the client's ping), the peer
storage blob to keep, and what to count.  It never touches a connection, a
clock or a store: the hub calls it and carries the decision out (hub ->
answer -> peer), so the rules of docs/protocol.md, "What the proxy does by
itself" are testable on bytes alone.  What :func:`answer` needs to know of
the connection arrives in an :class:`AnswerContext`, which the hub builds
from the connection's per-connection state:

- :class:`PingLedger`, the pings sent on a connection that still wait for
  their pong (who sent each, and how many pong bytes it asked for), which
  tells whose ping a pong answers;
- :func:`asks_for_gossip`, whether a message the client sends is a gossip
  query that opens the connection to the gossip the client asked for.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from lnproxy import wire

__all__ = [
    "ANSWERED_TYPES",
    "ANSWER_BURST_BYTES",
    "ANSWER_RATE_BYTES",
    "Answer",
    "AnswerBudget",
    "AnswerContext",
    "CONSUMED",
    "GOSSIP_QUERIES",
    "GOSSIP_REPLIES",
    "MAX_WAITING_PINGS",
    "PingLedger",
    "PingOwner",
    "STOP_FIRST_TIMESTAMP",
    "answer",
    "asks_for_gossip",
]

#: Types the proxy knows how to answer or consume by itself.
ANSWERED_TYPES: Final = frozenset(
    {
        wire.PEER_STORAGE,
        wire.PING,
        wire.PONG,
        wire.QUERY_SHORT_CHANNEL_IDS,
        wire.QUERY_CHANNEL_RANGE,
        wire.GOSSIP_TIMESTAMP_FILTER,
    }
)

#: What the client sends to ask its peer for gossip (BOLT 7).
GOSSIP_QUERIES: Final = frozenset(
    {
        wire.QUERY_SHORT_CHANNEL_IDS,
        wire.QUERY_CHANNEL_RANGE,
        wire.GOSSIP_TIMESTAMP_FILTER,
    }
)

#: The peer's gossip that reaches a client that asked for gossip.
GOSSIP_REPLIES: Final = frozenset(
    {
        wire.CHANNEL_ANNOUNCEMENT,
        wire.NODE_ANNOUNCEMENT,
        wire.CHANNEL_UPDATE,
        wire.REPLY_SHORT_CHANNEL_IDS_END,
        wire.REPLY_CHANNEL_RANGE,
    }
)

#: A ``gossip_timestamp_filter`` with this ``first_timestamp`` (or with an
#: empty ``timestamp_range``) asks for no gossip at all: the "stop" filter.
STOP_FIRST_TIMESTAMP: Final = 0xFFFFFFFF

#: At most this many pings wait for their pong on one connection; sending
#: one more forgets the oldest (the peer evidently ignored it).
MAX_WAITING_PINGS: Final = 32


#: What the proxy sends back on one connection by itself is paced: a burst
#: of this many bytes, then this many bytes per second.  A 6-byte ping may
#: ask for a 65,531-byte pong; unpaced, a peer could make the proxy encrypt
#: and send ten thousand times what it sends.  A peer that pings as BOLT 1
#: expects (rarely, asking for few bytes) never comes near it.
ANSWER_BURST_BYTES: Final = 256 * 1024
ANSWER_RATE_BYTES: Final = 16 * 1024


class AnswerBudget:
    """A token bucket of answer bytes for one connection, on explicit time.

    BOLT 1 lets a node ignore pings that come too often; the proxy ignores
    whatever answer (pong, gossip query reply) would overdraw the bucket.

    :param now: the time the connection started (the bucket starts full).
    """

    __slots__ = ("_tokens", "_at", "_rate", "_burst")

    def __init__(
        self,
        now: float,
        rate: float = ANSWER_RATE_BYTES,
        burst: float = ANSWER_BURST_BYTES,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = now

    def spend(self, size: int, now: float) -> bool:
        """Take ``size`` bytes if the bucket holds them; False (nothing
        taken) when the answer must be ignored."""
        tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if size > tokens:
            self._tokens = tokens
            return False
        self._tokens = tokens - size
        return True


class PingOwner(enum.Enum):
    """Who sent a ping, so who its pong belongs to."""

    PROXY = "proxy"
    CLIENT = "client"


class PingLedger:
    """The pings sent on one connection that still wait for their pong.

    The matching rule (docs/protocol.md, "Pings and pongs"): a pong answers
    the **oldest** waiting ping whose ``num_pong_bytes`` equals the pong's
    length (BOLT 1 makes a peer answer each ping in order with exactly that
    many bytes).  Waiting pings older than the one it answers were skipped
    by the peer and are forgotten; a pong that answers no waiting ping is
    unsolicited.  Pings asking for 65532 bytes or more, and malformed ones,
    expect no pong and are not recorded.  At most :data:`MAX_WAITING_PINGS`
    wait; one more forgets the oldest.  So a peer that ignores the client's
    pings costs a bounded list, and never takes a pong meant for the
    proxy's keepalive (nor the other way round) beyond what FIFO order
    itself decides.

    :param waiting: pings already waiting, oldest first (a restored
        snapshot).
    """

    __slots__ = ("_waiting",)

    def __init__(self, waiting: Iterable[tuple[PingOwner, int]] = ()) -> None:
        # Made on the first recorded ping: every connection has a ledger and
        # most hold no waiting ping most of the time, while an empty deque
        # already costs its first block (~760 bytes; docs/performance.md,
        # "Scale").
        self._waiting: deque[tuple[PingOwner, int]] | None = None
        for owner, size in waiting:
            self._record(owner, size)

    def __len__(self) -> int:
        return 0 if self._waiting is None else len(self._waiting)

    @property
    def waiting(self) -> tuple[tuple[PingOwner, int], ...]:
        """The waiting pings as ``(owner, num_pong_bytes)``, oldest first."""
        return () if self._waiting is None else tuple(self._waiting)

    def _record(self, owner: PingOwner, size: int) -> None:
        if self._waiting is None:
            self._waiting = deque(maxlen=MAX_WAITING_PINGS)
        self._waiting.append((owner, size))

    def sent(self, owner: PingOwner, msg: bytes) -> bool:
        """A ping went out: record it if it expects a pong.

        :param msg: the whole message as sent (anything but a ping is
            ignored).
        :return: whether it was recorded.
        """
        if len(msg) < 2 or (msg[0] << 8) | msg[1] != wire.PING:
            return False
        try:
            ping = wire.Ping.decode(msg)
        except wire.WireError:
            return False  # the peer will not answer a malformed ping
        if ping.num_pong_bytes >= wire.NO_PONG_THRESHOLD:
            return False
        self._record(owner, ping.num_pong_bytes)
        return True

    def match(self, pong_bytes: int) -> PingOwner | None:
        """A pong of ``pong_bytes`` ignored bytes arrived: whose ping did it
        answer (None: unsolicited)?  The matched ping and the older ones
        are taken off the list."""
        waiting = self._waiting
        if not waiting:
            return None
        for i, (_, wanted) in enumerate(waiting):
            if wanted == pong_bytes:
                for _ in range(i):
                    waiting.popleft()
                return waiting.popleft()[0]
        return None


def asks_for_gossip(msg_type: int, msg: bytes) -> bool | None:
    """What a message the client sends says about gossip on its connection.

    :return: True for a well-formed ``query_short_channel_ids``,
        ``query_channel_range`` or ``gossip_timestamp_filter`` that asks for
        gossip; False for the *stop* filter, a ``gossip_timestamp_filter``
        whose ``first_timestamp`` is 0xFFFFFFFF or whose ``timestamp_range``
        is 0 (BOLT 7's way to receive no gossip: no timestamp fits it);
        None for anything else, a malformed query included (it changes
        nothing: the peer will not answer it).
    """
    if msg_type not in GOSSIP_QUERIES:
        return None
    try:
        if msg_type == wire.GOSSIP_TIMESTAMP_FILTER:
            f = wire.GossipTimestampFilter.decode(msg)
            return not (
                f.first_timestamp == STOP_FIRST_TIMESTAMP or f.timestamp_range == 0
            )
        if msg_type == wire.QUERY_CHANNEL_RANGE:
            wire.QueryChannelRange.decode(msg)
        else:
            wire.QueryShortChannelIds.decode(msg)
    except wire.WireError:
        return None
    return True


@dataclass(frozen=True, slots=True)
class AnswerContext:
    """What :func:`answer` may know of the connection a message came on.

    :ivar pong_owner: for a pong: whose ping it answers (the hub matched it
        with the connection's :class:`PingLedger`), None when unsolicited.
    """

    pong_owner: PingOwner | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The proxy's decision about one handled message.

    :ivar reply: the whole message to send back to the peer, or None.
    :ivar pong: the reply is a pong (counted as ``pong_sent`` once sent).
    :ivar deliver: the message goes to the client after all, as a
        queue-class ``message`` event (a pong to the client's ping).
    :ivar keep: a ``peer_storage`` blob to keep for the peer (replacing the
        one kept before), or None.
    :ivar refused: why the message was ignored (logged by the hub), or None.
    """

    reply: bytes | None = None
    pong: bool = False
    deliver: bool = False
    keep: bytes | None = None
    refused: str | None = None


#: The decision for a message that is consumed without a reply.
CONSUMED: Final = Answer()
_DELIVER: Final = Answer(deliver=True)
_NO_CONTEXT: Final = AnswerContext()


def answer(msg_type: int, msg: bytes, context: AnswerContext = _NO_CONTEXT) -> Answer:
    """Decide what the proxy does with a message it handles by itself.

    - ``ping``: a pong of ``num_pong_bytes`` zeros, or nothing when
      ``num_pong_bytes >= 65532`` (BOLT 1);
    - ``pong``: delivered to the client when it answers the client's ping
      (``context.pong_owner``), consumed otherwise (the proxy's own, or
      unsolicited);
    - ``query_short_channel_ids``: ``reply_short_channel_ids_end`` with
      ``full_information = 0`` (the proxy keeps no gossip);
    - ``query_channel_range``: one empty, complete ``reply_channel_range``;
    - ``peer_storage``: its blob is kept; one over 65531 bytes is refused;
    - ``gossip_timestamp_filter`` (and anything else): consumed.

    :param msg_type: the message's type (its first two bytes).
    :param msg: the whole message, type included.
    :param context: facts about the connection (see :class:`AnswerContext`).
    :raise wire.WireError: when the message is malformed.
    """
    if msg_type == wire.PING:
        pong = wire.pong_for(wire.Ping.decode(msg))
        if pong is None:
            return CONSUMED
        return Answer(pong.encode(), pong=True)
    if msg_type == wire.PONG:
        if context.pong_owner is PingOwner.CLIENT:
            return _DELIVER
        return CONSUMED
    if msg_type == wire.QUERY_SHORT_CHANNEL_IDS:
        q = wire.QueryShortChannelIds.decode(msg)
        return Answer(wire.reply_to_query_short_channel_ids(q).encode())
    if msg_type == wire.QUERY_CHANNEL_RANGE:
        r = wire.QueryChannelRange.decode(msg)
        return Answer(wire.reply_to_query_channel_range(r).encode())
    if msg_type == wire.PEER_STORAGE:
        blob = wire.PeerStorage.decode(msg).blob
        if len(blob) > wire.MAX_PEER_STORAGE_BLOB:
            return Answer(
                refused=f"peer_storage blob of {len(blob)} bytes exceeds "
                f"{wire.MAX_PEER_STORAGE_BLOB}"
            )
        return Answer(keep=blob)
    return CONSUMED
