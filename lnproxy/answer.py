"""What the proxy answers by itself, as one pure function.

The policy (:mod:`lnproxy.policy`) decides *whether* a message type is the
proxy's to handle; :func:`answer` decides *what* to do with one such
message: the reply to send back to the peer (if any) and what to count.
It never touches a connection, a clock or a store: the hub calls it and
sends the reply (hub -> answer -> peer), so the rules of
docs/protocol.md, "What the proxy does by itself" are testable on bytes
alone, and a later answer that needs per-connection facts (pong matching,
peer storage) gets them through :class:`AnswerContext`.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lnproxy import wire

__all__ = [
    "ANSWERED_TYPES",
    "Answer",
    "AnswerContext",
    "CONSUMED",
    "answer",
]

#: Types the proxy knows how to answer or consume by itself.
ANSWERED_TYPES: Final = frozenset(
    {
        wire.PING,
        wire.PONG,
        wire.QUERY_SHORT_CHANNEL_IDS,
        wire.QUERY_CHANNEL_RANGE,
        wire.GOSSIP_TIMESTAMP_FILTER,
    }
)


@dataclass(frozen=True, slots=True)
class AnswerContext:
    """What :func:`answer` may know of the connection a message came on.

    :ivar ping_outstanding: the proxy's keepalive ping has not been answered
        yet (for pong matching; unused by today's rules).
    """

    ping_outstanding: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """The proxy's decision about one handled message.

    :ivar reply: the whole message to send back to the peer, or None.
    :ivar pong: the reply is a pong (counted as ``pong_sent`` once sent).
    """

    reply: bytes | None = None
    pong: bool = False


#: The decision for a message that is consumed without a reply.
CONSUMED: Final = Answer()
_NO_CONTEXT: Final = AnswerContext()


def answer(msg_type: int, msg: bytes, context: AnswerContext = _NO_CONTEXT) -> Answer:
    """Decide what the proxy does with a message it handles by itself.

    - ``ping``: a pong of ``num_pong_bytes`` zeros, or nothing when
      ``num_pong_bytes >= 65532`` (BOLT 1);
    - ``query_short_channel_ids``: ``reply_short_channel_ids_end`` with
      ``full_information = 0`` (the proxy keeps no gossip);
    - ``query_channel_range``: one empty, complete ``reply_channel_range``;
    - ``pong`` and ``gossip_timestamp_filter`` (and anything else): consumed.

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
    if msg_type == wire.QUERY_SHORT_CHANNEL_IDS:
        q = wire.QueryShortChannelIds.decode(msg)
        return Answer(wire.reply_to_query_short_channel_ids(q).encode())
    if msg_type == wire.QUERY_CHANNEL_RANGE:
        r = wire.QueryChannelRange.decode(msg)
        return Answer(wire.reply_to_query_channel_range(r).encode())
    return CONSUMED
