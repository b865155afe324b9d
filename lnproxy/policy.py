"""What the proxy does with each Lightning message type a peer sends.

Four classes (docs/protocol.md, "What the proxy does by itself"):

``handle``
    answered (or consumed) by the proxy; never reaches the client.  What the
    answer is, :func:`lnproxy.answer.answer` decides.
``drop``
    discarded.
``queue``
    stored and delivered when a client is online; no wake-up.
``summon``
    stored, and the client is woken (webhook) when none is online.

The table is a flat list indexed by message type, so a lookup on the relay's
hot path is one index operation.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from lnproxy import wire
from lnproxy.answer import ANSWERED_TYPES, GOSSIP_REPLIES

__all__ = ["MessageClass", "Policy", "PolicyError", "HANDLED_TYPES", "parse_override"]


class MessageClass(enum.IntEnum):
    """The four policy classes."""

    HANDLE = 0
    DROP = 1
    QUEUE = 2
    SUMMON = 3


class PolicyError(ValueError):
    """An operator override that cannot be applied."""


#: Types the proxy knows how to answer or consume by itself
#: (:data:`lnproxy.answer.ANSWERED_TYPES`).  ``handle`` is refused for any
#: other type: the proxy would have nothing to do with it.
HANDLED_TYPES = ANSWERED_TYPES

_MAX_TYPE = 65535


def _default_class(msg_type: int) -> MessageClass:
    if msg_type in HANDLED_TYPES:
        return MessageClass.HANDLE
    if msg_type in (
        wire.CHANNEL_ANNOUNCEMENT,
        wire.NODE_ANNOUNCEMENT,
        wire.CHANNEL_UPDATE,
        wire.REPLY_SHORT_CHANNEL_IDS_END,
        wire.REPLY_CHANNEL_RANGE,
    ):
        return MessageClass.DROP
    if msg_type in (wire.INIT, wire.WARNING, wire.PEER_STORAGE_RETRIEVAL):
        return MessageClass.QUEUE
    if msg_type in (
        wire.STFU,
        wire.ERROR,
        wire.ANNOUNCEMENT_SIGNATURES,
        wire.ONION_MESSAGE,
    ):
        return MessageClass.SUMMON
    if 32 <= msg_type <= 255:
        # BOLT 1's channel and commitment ranges: these need signatures.
        return MessageClass.SUMMON
    # "It's OK to be odd": unknown odd types may be ignored by a node, so
    # they need no wake-up; an unknown even type must be seen by the client,
    # which has to fail the connection.
    return MessageClass.QUEUE if msg_type % 2 else MessageClass.SUMMON


def parse_override(text: str) -> tuple[int, MessageClass]:
    """Parse one ``TYPE=CLASS`` override as given to ``--policy``.

    :raise PolicyError: with a message naming what is wrong.
    """
    type_text, sep, class_text = text.partition("=")
    if not sep:
        raise PolicyError(f"policy override {text!r} is not TYPE=CLASS")
    try:
        msg_type = int(type_text.strip(), 10)
    except ValueError:
        raise PolicyError(
            f"policy override {text!r}: type {type_text!r} is not an integer"
        ) from None
    if not 0 <= msg_type <= _MAX_TYPE:
        raise PolicyError(
            f"policy override {text!r}: type {msg_type} is outside 0-{_MAX_TYPE}"
        )
    try:
        cls = MessageClass[class_text.strip().upper()]
    except KeyError:
        names = ", ".join(c.name.lower() for c in MessageClass)
        raise PolicyError(
            f"policy override {text!r}: unknown class {class_text!r} "
            f"(one of {names})"
        ) from None
    if cls is MessageClass.HANDLE and msg_type not in HANDLED_TYPES:
        known = ", ".join(str(t) for t in sorted(HANDLED_TYPES))
        raise PolicyError(
            f"policy override {text!r}: the proxy cannot handle type {msg_type} "
            f"by itself (it handles {known})"
        )
    return msg_type, cls


class Policy:
    """The message policy: the default table plus operator overrides.

    :param overrides: type -> class, applied over the default table.
    """

    def __init__(self, overrides: Mapping[int, MessageClass] | None = None) -> None:
        self.overrides = dict(overrides or {})
        table = [_default_class(t) for t in range(_MAX_TYPE + 1)]
        for msg_type, cls in self.overrides.items():
            if cls is MessageClass.HANDLE and msg_type not in HANDLED_TYPES:
                raise PolicyError(f"the proxy cannot handle type {msg_type}")
            table[msg_type] = cls
        self._table = tuple(table)
        # Gossip the client asked for (docs/protocol.md, "Gossip the client
        # asked for"): queue instead of drop, unless an override names it.
        for msg_type in GOSSIP_REPLIES:
            if msg_type not in self.overrides:
                table[msg_type] = MessageClass.QUEUE
        self._gossip_table = tuple(table)

    @classmethod
    def from_strings(cls, overrides: Iterable[str]) -> Policy:
        """Build a policy from ``--policy`` arguments."""
        return cls(dict(parse_override(o) for o in overrides))

    def classify(self, msg_type: int) -> MessageClass:
        """The class of a message type (0-65535)."""
        return self._table[msg_type]

    @property
    def table(self) -> tuple[MessageClass, ...]:
        """The whole table, indexed by type (for the relay's hot loop)."""
        return self._table

    @property
    def gossip_table(self) -> tuple[MessageClass, ...]:
        """The table of a connection whose client asked for gossip: as
        :attr:`table`, but 256, 257, 258, 262 and 264 are queue class unless
        an operator override names them."""
        return self._gossip_table
