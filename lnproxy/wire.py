"""BOLT 1 Lightning messages: BigSize, TLV streams, feature bits and the few
messages the proxy reads or writes by itself.

Everything here is a pure function or an immutable value: no Twisted, no I/O,
no clock. A "message" is the whole decrypted Lightning message as BOLT 8
delivers it: a 2-byte big-endian type followed by the payload.

Decoding rules shared by every decoder in this module:

- Bad input raises a :class:`WireError` subclass and nothing else (never
  ``IndexError`` or ``struct.error``), so a caller can catch one type and close
  the connection as BOLT 1 asks.
- A message may carry an *extension* after its known fields. Where the
  message defines a TLV stream there (``init``, ``query_short_channel_ids``,
  ``query_channel_range``, ``reply_channel_range``) the remaining bytes are
  that stream and are validated by BOLT 1's TLV rules. Everywhere else the
  trailing bytes are ignored, as BOLT 1 allows ("MAY ignore the extension"),
  so that newer peers can add fields without breaking us.
- Encoders raise :class:`InvalidFieldError` when a field does not fit its wire
  type (a 31-byte chain hash, a u16 overflow, a message longer than 65535
  bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NoReturn

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class WireError(ValueError):
    """Base class of every error raised for malformed wire data."""


class TruncatedError(WireError):
    """The input ended before a field it announces (unexpected EOF)."""


class NonCanonicalError(WireError):
    """A variable-length integer (BigSize, TLV type/length, truncated int) was
    not minimally encoded."""


class TLVOrderError(WireError):
    """TLV record types were not strictly increasing (includes duplicates)."""


class UnknownEvenTLVError(WireError):
    """A TLV stream held an even record type the caller does not know.

    :ivar tlv_type: the offending record type.
    """

    def __init__(self, tlv_type: int) -> None:
        """:param tlv_type: the unknown even record type."""
        super().__init__(f"unknown even TLV type {tlv_type}")
        self.tlv_type = tlv_type


class InvalidFieldError(WireError):
    """A field has a value its type does not allow: a bad point, a value too
    long for a truncated integer, a wrong message type, a length that does not
    fit the record's known encoding, or an encoder input out of range."""


# ---------------------------------------------------------------------------
# Message types (BOLT 1, 2, 7, 4 onion messages)
# ---------------------------------------------------------------------------

#: Largest Lightning message BOLT 8 can carry, type included.
MAX_MESSAGE_SIZE = 65535

# Setup and control (0-31).
WARNING = 1
STFU = 2
PEER_STORAGE = 7
PEER_STORAGE_RETRIEVAL = 9
INIT = 16
ERROR = 17
PING = 18
PONG = 19

# Channel establishment and close (32-127).
OPEN_CHANNEL = 32
ACCEPT_CHANNEL = 33
FUNDING_CREATED = 34
FUNDING_SIGNED = 35
CHANNEL_READY = 36
SHUTDOWN = 38
CLOSING_SIGNED = 39
CLOSING_COMPLETE = 40
CLOSING_SIG = 41
OPEN_CHANNEL2 = 64
ACCEPT_CHANNEL2 = 65
TX_ADD_INPUT = 66
TX_ADD_OUTPUT = 67
TX_REMOVE_INPUT = 68
TX_REMOVE_OUTPUT = 69
TX_COMPLETE = 70
TX_SIGNATURES = 71
TX_INIT_RBF = 72
TX_ACK_RBF = 73
TX_ABORT = 74
SPLICE_LOCKED = 77
SPLICE_INIT = 80
SPLICE_ACK = 81
START_BATCH = 127

# Commitment (128-255).
UPDATE_ADD_HTLC = 128
UPDATE_FULFILL_HTLC = 130
UPDATE_FAIL_HTLC = 131
COMMITMENT_SIGNED = 132
REVOKE_AND_ACK = 133
UPDATE_FEE = 134
UPDATE_FAIL_MALFORMED_HTLC = 135
CHANNEL_REESTABLISH = 136

# Routing gossip (256-511).
CHANNEL_ANNOUNCEMENT = 256
NODE_ANNOUNCEMENT = 257
CHANNEL_UPDATE = 258
ANNOUNCEMENT_SIGNATURES = 259
QUERY_SHORT_CHANNEL_IDS = 261
REPLY_SHORT_CHANNEL_IDS_END = 262
QUERY_CHANNEL_RANGE = 263
REPLY_CHANNEL_RANGE = 264
GOSSIP_TIMESTAMP_FILTER = 265

# Onion messages (BOLT 4).
ONION_MESSAGE = 513

#: Spec name of every message type this module knows, by type number. Each
#: name is also the lower-case form of the module constant holding the type.
MESSAGE_NAMES: dict[int, str] = {
    WARNING: "warning",
    STFU: "stfu",
    PEER_STORAGE: "peer_storage",
    PEER_STORAGE_RETRIEVAL: "peer_storage_retrieval",
    INIT: "init",
    ERROR: "error",
    PING: "ping",
    PONG: "pong",
    OPEN_CHANNEL: "open_channel",
    ACCEPT_CHANNEL: "accept_channel",
    FUNDING_CREATED: "funding_created",
    FUNDING_SIGNED: "funding_signed",
    CHANNEL_READY: "channel_ready",
    SHUTDOWN: "shutdown",
    CLOSING_SIGNED: "closing_signed",
    CLOSING_COMPLETE: "closing_complete",
    CLOSING_SIG: "closing_sig",
    OPEN_CHANNEL2: "open_channel2",
    ACCEPT_CHANNEL2: "accept_channel2",
    TX_ADD_INPUT: "tx_add_input",
    TX_ADD_OUTPUT: "tx_add_output",
    TX_REMOVE_INPUT: "tx_remove_input",
    TX_REMOVE_OUTPUT: "tx_remove_output",
    TX_COMPLETE: "tx_complete",
    TX_SIGNATURES: "tx_signatures",
    TX_INIT_RBF: "tx_init_rbf",
    TX_ACK_RBF: "tx_ack_rbf",
    TX_ABORT: "tx_abort",
    SPLICE_LOCKED: "splice_locked",
    SPLICE_INIT: "splice_init",
    SPLICE_ACK: "splice_ack",
    START_BATCH: "start_batch",
    UPDATE_ADD_HTLC: "update_add_htlc",
    UPDATE_FULFILL_HTLC: "update_fulfill_htlc",
    UPDATE_FAIL_HTLC: "update_fail_htlc",
    COMMITMENT_SIGNED: "commitment_signed",
    REVOKE_AND_ACK: "revoke_and_ack",
    UPDATE_FEE: "update_fee",
    UPDATE_FAIL_MALFORMED_HTLC: "update_fail_malformed_htlc",
    CHANNEL_REESTABLISH: "channel_reestablish",
    CHANNEL_ANNOUNCEMENT: "channel_announcement",
    NODE_ANNOUNCEMENT: "node_announcement",
    CHANNEL_UPDATE: "channel_update",
    ANNOUNCEMENT_SIGNATURES: "announcement_signatures",
    QUERY_SHORT_CHANNEL_IDS: "query_short_channel_ids",
    REPLY_SHORT_CHANNEL_IDS_END: "reply_short_channel_ids_end",
    QUERY_CHANNEL_RANGE: "query_channel_range",
    REPLY_CHANNEL_RANGE: "reply_channel_range",
    GOSSIP_TIMESTAMP_FILTER: "gossip_timestamp_filter",
    ONION_MESSAGE: "onion_message",
}


def message_type(msg: bytes) -> int:
    """Return the type of a Lightning message.

    This runs for every message the proxy relays, hence two index operations
    rather than a slice and ``int.from_bytes``.

    :param msg: the whole message, type included.
    :raises TruncatedError: if ``msg`` is shorter than 2 bytes.
    """
    if len(msg) < 2:
        raise TruncatedError("message shorter than its 2-byte type")
    return (msg[0] << 8) | msg[1]


# ---------------------------------------------------------------------------
# Fundamental types
# ---------------------------------------------------------------------------

_U16 = struct.Struct(">H")
_TYPE_U16 = struct.Struct(">HH")
_PING_HEAD = struct.Struct(">HHH")
_TYPE_U32_U32 = struct.Struct(">HII")

_MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF

# secp256k1 field prime; p % 4 == 3, so a square root is one pow().
_SECP256K1_P = 2**256 - 2**32 - 977


def encode_bigsize(n: int) -> bytes:
    """Encode ``n`` as a minimal BigSize (BOLT 1 Appendix A).

    :param n: an integer in ``0 .. 2**64 - 1``.
    :raises InvalidFieldError: if ``n`` is out of range.
    """
    if n < 0xFD:
        if n < 0:
            raise InvalidFieldError(f"BigSize cannot encode {n}")
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "big")
    if n <= 0xFFFF_FFFF:
        return b"\xfe" + n.to_bytes(4, "big")
    if n <= _MAX_U64:
        return b"\xff" + n.to_bytes(8, "big")
    raise InvalidFieldError(f"BigSize cannot encode {n}")


def decode_bigsize(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode one BigSize starting at ``offset``.

    :param data: the buffer to read from.
    :param offset: where the BigSize starts.
    :returns: ``(value, offset just past the BigSize)``.
    :raises TruncatedError: if ``data`` ends inside the BigSize (or before it).
    :raises NonCanonicalError: if the value could have used fewer bytes.
    """
    if offset < 0:
        raise ValueError("offset must not be negative")
    if offset >= len(data):
        raise TruncatedError("EOF before BigSize")
    first = data[offset]
    if first < 0xFD:
        return first, offset + 1
    if first == 0xFD:
        size, minimum = 2, 0xFD
    elif first == 0xFE:
        size, minimum = 4, 0x1_0000
    else:
        size, minimum = 8, 0x1_0000_0000
    start = offset + 1
    end = start + size
    if end > len(data):
        raise TruncatedError("unexpected EOF inside BigSize")
    value = int.from_bytes(data[start:end], "big")
    if value < minimum:
        raise NonCanonicalError("decoded BigSize is not canonical")
    return value, end


def encode_truncated(value: int, size: int) -> bytes:
    """Encode ``value`` as a truncated unsigned integer (tu16/tu32/tu64): big
    endian with every leading zero byte omitted, so 0 is the empty string.

    :param value: the integer, ``0 .. 2**(8*size) - 1``.
    :param size: the width of the untruncated type in bytes (2, 4 or 8).
    :raises InvalidFieldError: if ``value`` does not fit.
    """
    if value < 0 or value >> (8 * size):
        raise InvalidFieldError(f"{value} does not fit in tu{8 * size}")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_truncated(data: bytes, size: int) -> int:
    """Decode a truncated unsigned integer that fills all of ``data``.

    :param data: the whole encoded value (a TLV record's value, typically).
    :param size: the width of the untruncated type in bytes (2, 4 or 8).
    :raises InvalidFieldError: if ``data`` is longer than ``size``.
    :raises NonCanonicalError: if ``data`` has a leading zero byte.
    """
    if len(data) > size:
        raise InvalidFieldError(f"tu{8 * size} value is {len(data)} bytes long")
    if data and data[0] == 0:
        raise NonCanonicalError(f"tu{8 * size} value has a leading zero")
    return int.from_bytes(data, "big")


def encode_tu16(value: int) -> bytes:
    """Encode a ``tu16``. :param value: ``0 .. 2**16 - 1``."""
    return encode_truncated(value, 2)


def decode_tu16(data: bytes) -> int:
    """Decode a ``tu16`` filling ``data``. :param data: the encoded value."""
    return decode_truncated(data, 2)


def encode_tu32(value: int) -> bytes:
    """Encode a ``tu32``. :param value: ``0 .. 2**32 - 1``."""
    return encode_truncated(value, 4)


def decode_tu32(data: bytes) -> int:
    """Decode a ``tu32`` filling ``data``. :param data: the encoded value."""
    return decode_truncated(data, 4)


def encode_tu64(value: int) -> bytes:
    """Encode a ``tu64``. :param value: ``0 .. 2**64 - 1``."""
    return encode_truncated(value, 8)


def decode_tu64(data: bytes) -> int:
    """Decode a ``tu64`` filling ``data``. :param data: the encoded value."""
    return decode_truncated(data, 8)


_SIGNED_SIZES = (1, 2, 4, 8)


def encode_signed(value: int, size: int) -> bytes:
    """Encode an ``s8``/``s16``/``s32``/``s64``: big-endian two's complement
    (BOLT 1 Appendix D).

    :param value: the integer.
    :param size: 1, 2, 4 or 8 bytes.
    :raises InvalidFieldError: if ``value`` does not fit in ``size`` bytes.
    """
    if size not in _SIGNED_SIZES:
        raise ValueError(f"no signed integer type is {size} bytes wide")
    try:
        return value.to_bytes(size, "big", signed=True)
    except OverflowError:
        raise InvalidFieldError(f"{value} does not fit in s{8 * size}") from None


def decode_signed(data: bytes) -> int:
    """Decode an ``s8``/``s16``/``s32``/``s64`` whose width is ``len(data)``.

    :param data: 1, 2, 4 or 8 bytes.
    :raises InvalidFieldError: for any other length.
    """
    if len(data) not in _SIGNED_SIZES:
        raise InvalidFieldError(f"no signed integer type is {len(data)} bytes wide")
    return int.from_bytes(data, "big", signed=True)


def decode_point(data: bytes) -> bytes:
    """Check that ``data`` is a BOLT 1 ``point``: a 33-byte SEC 1 compressed
    secp256k1 public key that lies on the curve.

    Pure Python (one modular square root) so that this module has no native
    dependency; the tests compare it with coincurve.

    :param data: exactly the 33 bytes of the point.
    :returns: ``data`` as ``bytes``.
    :raises InvalidFieldError: if the length, prefix or x coordinate is bad.
    """
    if len(data) != 33:
        raise InvalidFieldError(f"a point is 33 bytes, not {len(data)}")
    if data[0] not in (2, 3):
        raise InvalidFieldError(f"bad point prefix 0x{data[0]:02x}")
    x = int.from_bytes(data[1:], "big")
    if x >= _SECP256K1_P:
        raise InvalidFieldError("point x coordinate is not a field element")
    y2 = (pow(x, 3, _SECP256K1_P) + 7) % _SECP256K1_P
    y = pow(y2, (_SECP256K1_P + 1) // 4, _SECP256K1_P)
    if y * y % _SECP256K1_P != y2:
        raise InvalidFieldError("point is not on secp256k1")
    return bytes(data)


# ---------------------------------------------------------------------------
# TLV streams
# ---------------------------------------------------------------------------


def decode_tlv_stream(data: bytes, known: Container[int] = ()) -> dict[int, bytes]:
    """Split a TLV stream into its records, enforcing BOLT 1's stream rules.

    The whole of ``data`` is the stream. Types and lengths must be minimal
    BigSizes, types strictly increasing (so no duplicates), and every length
    must fit in what remains. An even type not in ``known`` fails the stream,
    as BOLT 1 requires.

    The result holds the raw value of every record of a ``known`` type **and
    of every unknown odd type**. BOLT 1 says a reader ignores unknown odd
    records; we keep them anyway so that a caller can re-encode the stream
    unchanged (signatures cover the extension bytes). A caller that wants
    BOLT 1's "discard" simply skips keys not in ``known``. Interpreting the
    values of known types (exact lengths, minimal truncated integers) is the
    caller's job.

    :param data: the TLV stream bytes.
    :param known: the record types the caller understands.
    :returns: ``{type: value}`` in stream (ascending) order.
    :raises TruncatedError: if a type, length or value is cut short.
    :raises NonCanonicalError: if a type or length is not minimally encoded.
    :raises TLVOrderError: if types are not strictly increasing.
    :raises UnknownEvenTLVError: on an even type not in ``known``.
    """
    records: dict[int, bytes] = {}
    offset = 0
    end = len(data)
    previous = -1
    while offset < end:
        tlv_type, offset = decode_bigsize(data, offset)
        if tlv_type <= previous:
            raise TLVOrderError(f"TLV type {tlv_type} follows type {previous}")
        length, offset = decode_bigsize(data, offset)
        if length > end - offset:
            raise TruncatedError(
                f"TLV type {tlv_type} claims {length} bytes, {end - offset} remain"
            )
        if not tlv_type & 1 and tlv_type not in known:
            raise UnknownEvenTLVError(tlv_type)
        records[tlv_type] = bytes(data[offset : offset + length])
        offset += length
        previous = tlv_type
    return records


def encode_tlv_stream(records: Mapping[int, bytes]) -> bytes:
    """Encode records as a canonical TLV stream, sorted by type.

    :param records: ``{type: value}``; types ``0 .. 2**64 - 1``.
    :raises InvalidFieldError: if a type is out of range.
    """
    parts: list[bytes] = []
    for tlv_type in sorted(records):
        value = records[tlv_type]
        parts.append(encode_bigsize(tlv_type))
        parts.append(encode_bigsize(len(value)))
        parts.append(bytes(value))
    return b"".join(parts)


# ---------------------------------------------------------------------------
# Feature bits (BOLT 9)
# ---------------------------------------------------------------------------

#: Well-known BOLT 9 feature names, by bit (both bits of each pair).
FEATURE_NAMES: dict[int, str] = {}
for _base, _name in (
    (0, "option_data_loss_protect"),
    (4, "option_upfront_shutdown_script"),
    (6, "gossip_queries"),
    (8, "var_onion_optin"),
    (10, "gossip_queries_ex"),
    (12, "option_static_remotekey"),
    (14, "payment_secret"),
    (16, "basic_mpp"),
    (18, "option_support_large_channel"),
    (22, "option_anchors"),
    (24, "option_route_blinding"),
    (26, "option_shutdown_anysegwit"),
    (28, "option_dual_fund"),
    (34, "option_quiesce"),
    (38, "option_onion_messages"),
    (42, "option_provide_storage"),
    (44, "option_channel_type"),
    (46, "option_scid_alias"),
    (48, "option_payment_metadata"),
    (50, "option_zeroconf"),
    (60, "option_simple_close"),
    (62, "option_splice"),
):
    FEATURE_NAMES[_base] = _name
    FEATURE_NAMES[_base + 1] = _name
del _base, _name

#: Highest bit a feature field can hold: its length prefix is a u16.
MAX_FEATURE_BIT = 8 * 0xFFFF - 1


def _check_bit(bit: int) -> None:
    if not 0 <= bit <= MAX_FEATURE_BIT:
        raise ValueError(f"feature bit {bit} out of range")


class Features:
    """An immutable BOLT 9 feature bit set.

    Built from the wire form: a big-endian bitfield in which bit 0 is the
    least significant bit of the *last* byte. Even bits mean "required", odd
    bits "supported"; bits are assigned in pairs.
    """

    __slots__ = ("_value",)
    _value: int

    def __init__(self, bitfield: bytes = b"") -> None:
        """:param bitfield: the feature field as sent in ``init``."""
        object.__setattr__(self, "_value", int.from_bytes(bitfield, "big"))

    @classmethod
    def _from_int(cls, value: int) -> Features:
        features = cls.__new__(cls)
        object.__setattr__(features, "_value", value)
        return features

    @classmethod
    def from_bits(cls, *bits: int) -> Features:
        """Build a feature set with exactly ``bits`` set.

        :param bits: bit numbers, 0 being the least significant.
        """
        return cls._from_int(0).with_bits(*bits)

    @classmethod
    def combine(cls, a: Features | bytes, b: Features | bytes) -> Features:
        """The logical OR of two feature fields, which BOLT 1 says a receiver
        of ``init`` must apply to ``globalfeatures`` and ``features``.

        :param a: a feature set or raw bitfield.
        :param b: a feature set or raw bitfield.
        """
        fa = a if isinstance(a, Features) else cls(a)
        fb = b if isinstance(b, Features) else cls(b)
        return cls._from_int(fa._value | fb._value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Features is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Features is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Features):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash(("Features", self._value))

    def __repr__(self) -> str:
        labels = [
            f"{bit}:{FEATURE_NAMES[bit]}" if bit in FEATURE_NAMES else str(bit)
            for bit in sorted(self.bits())
        ]
        return f"Features([{', '.join(labels)}])"

    def has(self, bit: int) -> bool:
        """Whether exactly this bit is set.

        :param bit: a bit number.
        """
        return bit >= 0 and bool(self._value >> bit & 1)

    def supports(self, bit: int) -> bool:
        """Whether the feature whose pair holds ``bit`` is offered at all,
        i.e. its even (required) or its odd (optional) bit is set.

        :param bit: either bit of the pair.
        """
        if bit < 0:
            return False
        return bool(self._value >> (bit & ~1) & 3)

    def with_bits(self, *bits: int) -> Features:
        """A copy with ``bits`` also set.

        :param bits: bit numbers to set.
        :raises ValueError: for a negative bit or one past ``MAX_FEATURE_BIT``.
        """
        value = self._value
        for bit in bits:
            _check_bit(bit)
            value |= 1 << bit
        return Features._from_int(value)

    def to_bytes(self) -> bytes:
        """The minimal wire form: no leading zero bytes (empty if no bit)."""
        return self._value.to_bytes((self._value.bit_length() + 7) // 8, "big")

    def bits(self) -> frozenset[int]:
        """The numbers of all set bits."""
        found = []
        value = self._value
        while value:
            lowest = value & -value
            found.append(lowest.bit_length() - 1)
            value ^= lowest
        return frozenset(found)

    def unknown_required(self, known: Container[int]) -> set[int]:
        """The even (required) bits set here that the caller does not know.

        BOLT 1 says a node receiving a non-empty result must fail the
        connection. A feature counts as known when either bit of its pair is
        in ``known``, so :data:`FEATURE_NAMES` can be passed directly.

        :param known: bit numbers the caller implements.
        """
        return {
            bit
            for bit in self.bits()
            if not bit & 1 and bit not in known and bit + 1 not in known
        }


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


def _check_type(msg: bytes, expected: int, min_len: int) -> None:
    """Raise unless ``msg`` has at least ``min_len`` bytes and the right type."""
    if len(msg) < 2:
        raise TruncatedError("message shorter than its 2-byte type")
    got = (msg[0] << 8) | msg[1]
    if got != expected:
        raise InvalidFieldError(f"expected message type {expected}, got {got}")
    if len(msg) < min_len:
        raise TruncatedError(
            f"{MESSAGE_NAMES[expected]} needs {min_len} bytes, got {len(msg)}"
        )


def _check_uint(value: int, bits: int, name: str) -> None:
    if not 0 <= value < 1 << bits:
        raise InvalidFieldError(f"{name}={value!r} does not fit in u{bits}")


def _check_size(data: bytes, size: int, name: str) -> None:
    if len(data) != size:
        raise InvalidFieldError(f"{name} must be {size} bytes, not {len(data)}")


def _u16_prefixed(data: bytes, name: str) -> bytes:
    if len(data) > 0xFFFF:
        raise InvalidFieldError(f"{name} is {len(data)} bytes, more than a u16")
    return _U16.pack(len(data)) + data


def _finish(msg: bytes) -> bytes:
    if len(msg) > MAX_MESSAGE_SIZE:
        raise InvalidFieldError(
            f"message of {len(msg)} bytes exceeds {MAX_MESSAGE_SIZE}"
        )
    return msg


def _take(msg: bytes, start: int, length: int, name: str) -> bytes:
    end = start + length
    if end > len(msg):
        raise TruncatedError(f"{name} needs {length} bytes, {len(msg) - start} left")
    return bytes(msg[start:end])


_INIT_NETWORKS = 1
_INIT_REMOTE_ADDR = 3
_INIT_KNOWN = frozenset({_INIT_NETWORKS, _INIT_REMOTE_ADDR})


@dataclass(frozen=True, slots=True)
class Init:
    """``init`` (16): the features a peer offers, plus its ``init_tlvs``.

    The TLV stream after ``features`` follows BOLT 1: ``networks`` (1) is a
    list of 32-byte chain hashes, ``remote_addr`` (3) is kept raw, and every
    unknown odd record is kept in ``extra_tlvs`` so that re-encoding gives
    the same bytes. An unknown even record fails decoding.

    :ivar features: the ``features`` bitfield, raw.
    :ivar globalfeatures: the legacy ``globalfeatures`` bitfield, raw.
    :ivar networks: chain hashes from TLV 1, or ``None`` when absent
        (``()`` means present but empty).
    :ivar remote_addr: the raw TLV 3 address descriptor, or ``None``.
    :ivar extra_tlvs: other records by type (any type except 1 and 3).
    """

    features: bytes
    globalfeatures: bytes = b""
    networks: tuple[bytes, ...] | None = None
    remote_addr: bytes | None = None
    extra_tlvs: Mapping[int, bytes] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        """Freeze the containers and reject records that have their own field."""
        if self.networks is not None and not isinstance(self.networks, tuple):
            object.__setattr__(self, "networks", tuple(self.networks))
        clash = _INIT_KNOWN.intersection(self.extra_tlvs)
        if clash:
            raise InvalidFieldError(
                f"extra_tlvs must not hold types {sorted(clash)}: "
                "use networks / remote_addr"
            )
        object.__setattr__(
            self, "extra_tlvs", MappingProxyType(dict(sorted(self.extra_tlvs.items())))
        )

    @property
    def combined_features(self) -> Features:
        """``globalfeatures`` OR ``features``, as BOLT 1 tells receivers."""
        return Features.combine(self.globalfeatures, self.features)

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if a field does not fit.
        """
        records = dict(self.extra_tlvs)
        if self.networks is not None:
            for chain in self.networks:
                _check_size(chain, 32, "networks chain hash")
            records[_INIT_NETWORKS] = b"".join(self.networks)
        if self.remote_addr is not None:
            records[_INIT_REMOTE_ADDR] = self.remote_addr
        return _finish(
            _U16.pack(INIT)
            + _u16_prefixed(self.globalfeatures, "globalfeatures")
            + _u16_prefixed(self.features, "features")
            + encode_tlv_stream(records)
        )

    @classmethod
    def decode(cls, msg: bytes) -> Init:
        """Parse a whole ``init`` message (type included).

        :raises WireError: on a wrong type, truncation or a bad TLV stream.
        """
        _check_type(msg, INIT, 4)
        (gflen,) = _U16.unpack_from(msg, 2)
        globalfeatures = _take(msg, 4, gflen, "globalfeatures")
        offset = 4 + gflen
        if offset + 2 > len(msg):
            raise TruncatedError("init ends before flen")
        (flen,) = _U16.unpack_from(msg, offset)
        features = _take(msg, offset + 2, flen, "features")
        records = decode_tlv_stream(msg[offset + 2 + flen :], _INIT_KNOWN)
        networks: tuple[bytes, ...] | None = None
        raw_networks = records.pop(_INIT_NETWORKS, None)
        if raw_networks is not None:
            if len(raw_networks) % 32:
                raise InvalidFieldError(
                    f"networks is {len(raw_networks)} bytes, not a multiple of 32"
                )
            networks = tuple(
                raw_networks[i : i + 32] for i in range(0, len(raw_networks), 32)
            )
        remote_addr = records.pop(_INIT_REMOTE_ADDR, None)
        return cls(features, globalfeatures, networks, remote_addr, records)


#: A ping asking for this many pong bytes or more must not be answered.
NO_PONG_THRESHOLD = 65532


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping`` (18). Trailing bytes after ``ignored`` are ignored.

    :ivar num_pong_bytes: how many ``ignored`` bytes the pong must carry.
    :ivar ignored: padding; senders should make it zeros.
    """

    num_pong_bytes: int
    ignored: bytes = b""

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if a field does not fit.
        """
        _check_uint(self.num_pong_bytes, 16, "num_pong_bytes")
        if len(self.ignored) > MAX_MESSAGE_SIZE - 6:
            raise InvalidFieldError(f"ping with {len(self.ignored)} ignored bytes")
        return _PING_HEAD.pack(PING, self.num_pong_bytes, len(self.ignored)) + bytes(
            self.ignored
        )

    @classmethod
    def decode(cls, msg: bytes) -> Ping:
        """Parse a whole ``ping`` message (type included).

        On the proxy's hot path: one struct unpack and one slice.

        :raises WireError: on a wrong type or truncation.
        """
        if len(msg) < 6:
            raise TruncatedError("ping shorter than its fixed fields")
        msg_type, num_pong_bytes, byteslen = _PING_HEAD.unpack_from(msg)
        if msg_type != PING:
            raise InvalidFieldError(f"expected message type {PING}, got {msg_type}")
        end = 6 + byteslen
        if end > len(msg):
            raise TruncatedError(f"ping announces {byteslen} ignored bytes")
        return cls(num_pong_bytes, bytes(msg[6:end]))


@dataclass(frozen=True, slots=True)
class Pong:
    """``pong`` (19). Trailing bytes after ``ignored`` are ignored.

    :ivar ignored: padding whose length answers the ping's ``num_pong_bytes``.
    """

    ignored: bytes = b""

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if the message would exceed 65535 bytes.
        """
        if len(self.ignored) > MAX_MESSAGE_SIZE - 4:
            raise InvalidFieldError(f"pong with {len(self.ignored)} ignored bytes")
        return _TYPE_U16.pack(PONG, len(self.ignored)) + bytes(self.ignored)

    @classmethod
    def decode(cls, msg: bytes) -> Pong:
        """Parse a whole ``pong`` message (type included).

        :raises WireError: on a wrong type or truncation.
        """
        _check_type(msg, PONG, 4)
        (byteslen,) = _U16.unpack_from(msg, 2)
        return cls(_take(msg, 4, byteslen, "pong ignored"))


def pong_for(ping: Ping) -> Pong | None:
    """The pong BOLT 1 requires in answer to ``ping``.

    :param ping: the received ping.
    :returns: a pong of ``num_pong_bytes`` zero bytes, or ``None`` when
        ``num_pong_bytes >= 65532`` (BOLT 1: such a ping must be ignored, since
        the pong would not fit in 65535 bytes).
    """
    if ping.num_pong_bytes >= NO_PONG_THRESHOLD:
        return None
    return Pong(bytes(ping.num_pong_bytes))


#: The largest blob BOLT 1 peer storage carries (65535 - 2 type - 2 length).
MAX_PEER_STORAGE_BLOB = 65531


@dataclass(frozen=True, slots=True)
class PeerStorage:
    """``peer_storage`` (7) or ``peer_storage_retrieval`` (9): one blob.

    Both messages are ``type, u16 length, blob``; trailing bytes are
    ignored.

    :ivar blob: the stored bytes (opaque, encrypted by their owner).
    :ivar retrieval: True for ``peer_storage_retrieval`` (9).
    """

    blob: bytes
    retrieval: bool = False

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if the blob exceeds 65531 bytes.
        """
        if len(self.blob) > MAX_PEER_STORAGE_BLOB:
            raise InvalidFieldError(
                f"peer storage blob of {len(self.blob)} bytes exceeds "
                f"{MAX_PEER_STORAGE_BLOB}"
            )
        msg_type = PEER_STORAGE_RETRIEVAL if self.retrieval else PEER_STORAGE
        return _U16.pack(msg_type) + _u16_prefixed(bytes(self.blob), "blob")

    @classmethod
    def decode(cls, msg: bytes) -> PeerStorage:
        """Parse a whole ``peer_storage`` or ``peer_storage_retrieval``.

        The blob's size is not checked here (a caller decides what to do
        with one over :data:`MAX_PEER_STORAGE_BLOB`).

        :raises WireError: on another type or truncation.
        """
        if len(msg) >= 2 and (msg[0] << 8) | msg[1] == PEER_STORAGE_RETRIEVAL:
            _check_type(msg, PEER_STORAGE_RETRIEVAL, 4)
            retrieval = True
        else:
            _check_type(msg, PEER_STORAGE, 4)
            retrieval = False
        (length,) = _U16.unpack_from(msg, 2)
        return cls(_take(msg, 4, length, "blob"), retrieval)


def _encode_channel_text(msg_type: int, channel_id: bytes, data: bytes) -> bytes:
    _check_size(channel_id, 32, "channel_id")
    return _finish(_U16.pack(msg_type) + channel_id + _u16_prefixed(data, "data"))


def _decode_channel_text(msg: bytes, msg_type: int) -> tuple[bytes, bytes]:
    _check_type(msg, msg_type, 36)
    (length,) = _U16.unpack_from(msg, 34)
    return bytes(msg[2:34]), _take(msg, 36, length, "data")


@dataclass(frozen=True, slots=True)
class Error:
    """``error`` (17). Trailing bytes after ``data`` are ignored.

    :ivar channel_id: the failed channel, or 32 zero bytes for all channels.
    :ivar data: free-form diagnostic bytes (not necessarily printable).
    """

    channel_id: bytes
    data: bytes

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if a field does not fit.
        """
        return _encode_channel_text(ERROR, self.channel_id, self.data)

    @classmethod
    def decode(cls, msg: bytes) -> Error:
        """Parse a whole ``error`` message (type included).

        :raises WireError: on a wrong type or truncation.
        """
        return cls(*_decode_channel_text(msg, ERROR))


@dataclass(frozen=True, slots=True)
class WarningMessage:
    """``warning`` (1); named so as not to shadow the ``Warning`` builtin.
    Trailing bytes after ``data`` are ignored.

    :ivar channel_id: the channel concerned, or 32 zero bytes for none.
    :ivar data: free-form diagnostic bytes (not necessarily printable).
    """

    channel_id: bytes
    data: bytes

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if a field does not fit.
        """
        return _encode_channel_text(WARNING, self.channel_id, self.data)

    @classmethod
    def decode(cls, msg: bytes) -> WarningMessage:
        """Parse a whole ``warning`` message (type included).

        :raises WireError: on a wrong type or truncation.
        """
        return cls(*_decode_channel_text(msg, WARNING))


# Known records of the gossip query TLV streams (BOLT 7). We keep the streams
# raw, but BOLT 1 still obliges us to reject a stream whose known records do
# not have their known shape.


def _check_query_flags(records: dict[int, bytes]) -> None:
    # query_short_channel_ids 1 = query_flags: encoding_type byte + flags.
    if 1 in records and not records[1]:
        raise InvalidFieldError("query_flags record is empty")


def _check_query_option(records: dict[int, bytes]) -> None:
    # query_channel_range 1 = query_option: one bigsize filling the record.
    if 1 in records:
        value = records[1]
        _, end = decode_bigsize(value)
        if end != len(value):
            raise InvalidFieldError("query_option holds more than one bigsize")


def _check_reply_range_tlvs(records: dict[int, bytes]) -> None:
    # reply_channel_range 1 = timestamps_tlv: encoding_type byte + data;
    # 3 = checksums_tlv: pairs of u32 checksums, 8 bytes per channel.
    if 1 in records and not records[1]:
        raise InvalidFieldError("timestamps_tlv record is empty")
    if 3 in records and len(records[3]) % 8:
        raise InvalidFieldError("checksums_tlv is not a multiple of 8 bytes")


def _decode_query_tlvs(
    data: bytes, known: frozenset[int], check: Callable[[dict[int, bytes]], None]
) -> bytes:
    check(decode_tlv_stream(data, known))
    return bytes(data)


_ODD_ONE = frozenset({1})
_ODD_ONE_THREE = frozenset({1, 3})


@dataclass(frozen=True, slots=True)
class QueryShortChannelIds:
    """``query_short_channel_ids`` (261).

    :ivar chain_hash: the chain queried.
    :ivar encoded_short_ids: the encoding type byte and the ids, raw.
    :ivar tlvs: the ``query_short_channel_ids_tlvs`` stream, raw; validated by
        BOLT 1's rules on decoding (known type 1 = ``query_flags``).
    """

    chain_hash: bytes
    encoded_short_ids: bytes
    tlvs: bytes = b""

    def encode(self) -> bytes:
        """The whole message, type included (``tlvs`` written as given).

        :raises InvalidFieldError: if a field does not fit.
        """
        _check_size(self.chain_hash, 32, "chain_hash")
        return _finish(
            _U16.pack(QUERY_SHORT_CHANNEL_IDS)
            + self.chain_hash
            + _u16_prefixed(self.encoded_short_ids, "encoded_short_ids")
            + self.tlvs
        )

    @classmethod
    def decode(cls, msg: bytes) -> QueryShortChannelIds:
        """Parse a whole message (type included); the rest after the ids is
        the TLV stream.

        :raises WireError: on a wrong type, truncation or a bad TLV stream.
        """
        _check_type(msg, QUERY_SHORT_CHANNEL_IDS, 36)
        (length,) = _U16.unpack_from(msg, 34)
        ids = _take(msg, 36, length, "encoded_short_ids")
        tlvs = _decode_query_tlvs(msg[36 + length :], _ODD_ONE, _check_query_flags)
        return cls(bytes(msg[2:34]), ids, tlvs)


@dataclass(frozen=True, slots=True)
class ReplyShortChannelIdsEnd:
    """``reply_short_channel_ids_end`` (262). Trailing bytes are ignored.

    :ivar chain_hash: the chain of the query answered.
    :ivar full_information: 0 when the sender lacks up-to-date gossip.
    """

    chain_hash: bytes
    full_information: int

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if a field does not fit.
        """
        _check_size(self.chain_hash, 32, "chain_hash")
        _check_uint(self.full_information, 8, "full_information")
        return (
            _U16.pack(REPLY_SHORT_CHANNEL_IDS_END)
            + self.chain_hash
            + bytes((self.full_information,))
        )

    @classmethod
    def decode(cls, msg: bytes) -> ReplyShortChannelIdsEnd:
        """Parse a whole message (type included).

        :raises WireError: on a wrong type or truncation.
        """
        _check_type(msg, REPLY_SHORT_CHANNEL_IDS_END, 35)
        return cls(bytes(msg[2:34]), msg[34])


@dataclass(frozen=True, slots=True)
class QueryChannelRange:
    """``query_channel_range`` (263).

    :ivar chain_hash: the chain queried.
    :ivar first_blocknum: first block of the range.
    :ivar number_of_blocks: length of the range in blocks.
    :ivar tlvs: the ``query_channel_range_tlvs`` stream, raw; validated by
        BOLT 1's rules on decoding (known type 1 = ``query_option``).
    """

    chain_hash: bytes
    first_blocknum: int
    number_of_blocks: int
    tlvs: bytes = b""

    def query_option_flags(self) -> int:
        """The ``query_option`` bitfield (bit 0 timestamps, bit 1 checksums),
        0 when absent.

        :raises WireError: if ``tlvs`` is not a valid stream.
        """
        records = decode_tlv_stream(self.tlvs, _ODD_ONE)
        _check_query_option(records)
        return decode_bigsize(records[1])[0] if 1 in records else 0

    def encode(self) -> bytes:
        """The whole message, type included (``tlvs`` written as given).

        :raises InvalidFieldError: if a field does not fit.
        """
        _check_size(self.chain_hash, 32, "chain_hash")
        _check_uint(self.first_blocknum, 32, "first_blocknum")
        _check_uint(self.number_of_blocks, 32, "number_of_blocks")
        return _finish(
            _U16.pack(QUERY_CHANNEL_RANGE)
            + self.chain_hash
            + struct.pack(">II", self.first_blocknum, self.number_of_blocks)
            + self.tlvs
        )

    @classmethod
    def decode(cls, msg: bytes) -> QueryChannelRange:
        """Parse a whole message (type included); the rest after
        ``number_of_blocks`` is the TLV stream.

        :raises WireError: on a wrong type, truncation or a bad TLV stream.
        """
        _check_type(msg, QUERY_CHANNEL_RANGE, 42)
        first, count = struct.unpack_from(">II", msg, 34)
        tlvs = _decode_query_tlvs(msg[42:], _ODD_ONE, _check_query_option)
        return cls(bytes(msg[2:34]), first, count, tlvs)


@dataclass(frozen=True, slots=True)
class ReplyChannelRange:
    """``reply_channel_range`` (264).

    :ivar chain_hash: the chain of the query answered.
    :ivar first_blocknum: first block this reply covers.
    :ivar number_of_blocks: blocks this reply covers.
    :ivar sync_complete: 1 on the final reply of a query.
    :ivar encoded_short_ids: the encoding type byte and the ids, raw.
    :ivar tlvs: the ``reply_channel_range_tlvs`` stream, raw; validated by
        BOLT 1's rules on decoding (known types 1 timestamps, 3 checksums).
    """

    chain_hash: bytes
    first_blocknum: int
    number_of_blocks: int
    sync_complete: int
    encoded_short_ids: bytes
    tlvs: bytes = b""

    def encode(self) -> bytes:
        """The whole message, type included (``tlvs`` written as given).

        :raises InvalidFieldError: if a field does not fit.
        """
        _check_size(self.chain_hash, 32, "chain_hash")
        _check_uint(self.first_blocknum, 32, "first_blocknum")
        _check_uint(self.number_of_blocks, 32, "number_of_blocks")
        _check_uint(self.sync_complete, 8, "sync_complete")
        return _finish(
            _U16.pack(REPLY_CHANNEL_RANGE)
            + self.chain_hash
            + struct.pack(
                ">IIB", self.first_blocknum, self.number_of_blocks, self.sync_complete
            )
            + _u16_prefixed(self.encoded_short_ids, "encoded_short_ids")
            + self.tlvs
        )

    @classmethod
    def decode(cls, msg: bytes) -> ReplyChannelRange:
        """Parse a whole message (type included); the rest after the ids is
        the TLV stream.

        :raises WireError: on a wrong type, truncation or a bad TLV stream.
        """
        _check_type(msg, REPLY_CHANNEL_RANGE, 45)
        first, count, complete, length = struct.unpack_from(">IIBH", msg, 34)
        ids = _take(msg, 45, length, "encoded_short_ids")
        tlvs = _decode_query_tlvs(
            msg[45 + length :], _ODD_ONE_THREE, _check_reply_range_tlvs
        )
        return cls(bytes(msg[2:34]), first, count, complete, ids, tlvs)


@dataclass(frozen=True, slots=True)
class GossipTimestampFilter:
    """``gossip_timestamp_filter`` (265). Trailing bytes are ignored.

    :ivar chain_hash: the chain concerned.
    :ivar first_timestamp: start of the wanted gossip window.
    :ivar timestamp_range: width of the window in seconds.
    """

    chain_hash: bytes
    first_timestamp: int
    timestamp_range: int

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if a field does not fit.
        """
        _check_size(self.chain_hash, 32, "chain_hash")
        _check_uint(self.first_timestamp, 32, "first_timestamp")
        _check_uint(self.timestamp_range, 32, "timestamp_range")
        return (
            _U16.pack(GOSSIP_TIMESTAMP_FILTER)
            + self.chain_hash
            + struct.pack(">II", self.first_timestamp, self.timestamp_range)
        )

    @classmethod
    def decode(cls, msg: bytes) -> GossipTimestampFilter:
        """Parse a whole message (type included).

        :raises WireError: on a wrong type or truncation.
        """
        _check_type(msg, GOSSIP_TIMESTAMP_FILTER, 42)
        first, width = struct.unpack_from(">II", msg, 34)
        return cls(bytes(msg[2:34]), first, width)


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """Any message this module does not parse: its type and raw payload.

    :ivar type: the message type.
    :ivar payload: everything after the type.
    """

    type: int
    payload: bytes

    def encode(self) -> bytes:
        """The whole message, type included.

        :raises InvalidFieldError: if the type or size does not fit.
        """
        _check_uint(self.type, 16, "type")
        return _finish(_U16.pack(self.type) + self.payload)

    @classmethod
    def decode(cls, msg: bytes) -> UnknownMessage:
        """Split any message into type and payload.

        :raises TruncatedError: if ``msg`` is shorter than 2 bytes.
        """
        return cls(message_type(msg), bytes(msg[2:]))


#: Every value :func:`decode_message` can return.
Message = (
    Init
    | Ping
    | Pong
    | Error
    | WarningMessage
    | QueryShortChannelIds
    | ReplyShortChannelIdsEnd
    | QueryChannelRange
    | ReplyChannelRange
    | GossipTimestampFilter
    | PeerStorage
    | UnknownMessage
)

_DECODERS: dict[int, Callable[[bytes], Message]] = {
    INIT: Init.decode,
    PING: Ping.decode,
    PONG: Pong.decode,
    ERROR: Error.decode,
    WARNING: WarningMessage.decode,
    QUERY_SHORT_CHANNEL_IDS: QueryShortChannelIds.decode,
    REPLY_SHORT_CHANNEL_IDS_END: ReplyShortChannelIdsEnd.decode,
    QUERY_CHANNEL_RANGE: QueryChannelRange.decode,
    REPLY_CHANNEL_RANGE: ReplyChannelRange.decode,
    GOSSIP_TIMESTAMP_FILTER: GossipTimestampFilter.decode,
    PEER_STORAGE: PeerStorage.decode,
    PEER_STORAGE_RETRIEVAL: PeerStorage.decode,
}


def decode_message(msg: bytes) -> Message:
    """Parse a whole message into its dataclass, or :class:`UnknownMessage`
    for a type this module does not model (whatever its parity: deciding
    what an unknown even type means is the caller's policy).

    :param msg: the whole message, type included.
    :raises WireError: if a modelled message is malformed.
    """
    decoder = _DECODERS.get(message_type(msg))
    if decoder is None:
        return UnknownMessage.decode(msg)
    return decoder(msg)


# ---------------------------------------------------------------------------
# What the proxy answers by itself (docs/protocol.md, "What the proxy does by itself")
# ---------------------------------------------------------------------------


def reply_to_query_short_channel_ids(
    query: QueryShortChannelIds,
) -> ReplyShortChannelIdsEnd:
    """The proxy's answer to ``query_short_channel_ids``.

    The proxy keeps no gossip, so it sends no announcements and ends the
    query at once with ``full_information = 0`` ("I do not maintain
    up-to-date channel information for this chain"), which tells the peer to
    ask someone else.

    :param query: the received query.
    """
    return ReplyShortChannelIdsEnd(query.chain_hash, 0)


def reply_to_query_channel_range(query: QueryChannelRange) -> ReplyChannelRange:
    """The proxy's answer to ``query_channel_range``: one empty reply covering
    exactly the range asked, marked ``sync_complete``.

    ``encoded_short_ids`` is ``b"\\x00"``: encoding type 0 (uncompressed)
    followed by no ids. Any ``query_option`` is ignored, which BOLT 7 allows
    (the extra data is a MAY), and there are no ids to annotate anyway.

    :param query: the received query.
    """
    return ReplyChannelRange(
        query.chain_hash,
        query.first_blocknum,
        query.number_of_blocks,
        1,
        b"\x00",
    )
