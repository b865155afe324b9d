"""Tests for :mod:`lnproxy.wire`.

Every vector of BOLT 1's appendices (BigSize, TLV, message extension, signed
integers), taken from ``tests/vectors/bolt1_vectors.json``, runs as its own test
method. Hypothesis then checks round trips of every codec and dataclass, and
that malformed input only ever raises :class:`lnproxy.wire.WireError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import wire
from lnproxy.wire import (
    FEATURE_NAMES,
    MAX_FEATURE_BIT,
    MESSAGE_NAMES,
    NO_PONG_THRESHOLD,
    Error,
    Features,
    GossipTimestampFilter,
    Init,
    InvalidFieldError,
    NonCanonicalError,
    Ping,
    Pong,
    QueryChannelRange,
    QueryShortChannelIds,
    ReplyChannelRange,
    ReplyShortChannelIdsEnd,
    TLVOrderError,
    TruncatedError,
    UnknownEvenTLVError,
    UnknownMessage,
    WarningMessage,
    WireError,
    decode_bigsize,
    decode_message,
    decode_point,
    decode_signed,
    decode_tlv_stream,
    decode_tu32,
    decode_tu64,
    encode_bigsize,
    encode_signed,
    encode_tlv_stream,
    encode_tu64,
    message_type,
    pong_for,
    reply_to_query_channel_range,
    reply_to_query_short_channel_ids,
)

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "bolt1_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())

# Hypothesis budget: enough examples to find edge cases, small enough that the
# whole module stays within a few seconds.
FAST = settings(max_examples=150, deadline=None)

CHAIN = bytes.fromhex(
    "6fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000"
)


# ---------------------------------------------------------------------------
# The n1 / n2 namespaces of BOLT 1 Appendix B, built on wire's helpers.
# They live here, not in wire.py: they exist only for the test vectors.
# ---------------------------------------------------------------------------

N1_KNOWN = frozenset({1, 2, 3, 254})
N2_KNOWN = frozenset({0, 11})


def _exact(value: bytes, size: int, what: str) -> bytes:
    """Enforce BOLT 1's "length must equal the known encoding" rule."""
    if len(value) != size:
        raise InvalidFieldError(f"{what} must be {size} bytes, not {len(value)}")
    return value


def _u(value: bytes) -> int:
    return int.from_bytes(value, "big")


def decode_n1(stream: bytes) -> dict[str, dict[str, str]]:
    """Decode an ``n1`` stream into ``{tlv name: {field: text}}``, the text
    being formatted as the spec's vector notes write it."""
    fields: dict[str, dict[str, str]] = {}
    for tlv_type, value in decode_tlv_stream(stream, N1_KNOWN).items():
        if tlv_type == 1:
            fields["tlv1"] = {"amount_msat": str(decode_tu64(value))}
        elif tlv_type == 2:
            scid = _u(_exact(value, 8, "tlv2"))
            block, tx, out = scid >> 40, (scid >> 16) & 0xFFFFFF, scid & 0xFFFF
            fields["tlv2"] = {"scid": f"{block}x{tx}x{out}"}
        elif tlv_type == 3:
            value = _exact(value, 33 + 8 + 8, "tlv3")
            fields["tlv3"] = {
                "node_id": decode_point(value[:33]).hex(),
                "amount_msat_1": str(_u(value[33:41])),
                "amount_msat_2": str(_u(value[41:49])),
            }
        elif tlv_type == 254:
            fields["tlv4"] = {"cltv_delta": str(_u(_exact(value, 2, "tlv4")))}
        # Unknown odd records are ignored, as BOLT 1 says.
    return fields


def decode_n2(stream: bytes) -> dict[str, dict[str, str]]:
    """Decode an ``n2`` stream, like :func:`decode_n1`."""
    fields: dict[str, dict[str, str]] = {}
    for tlv_type, value in decode_tlv_stream(stream, N2_KNOWN).items():
        if tlv_type == 0:
            fields["tlv1"] = {"amount_msat": str(decode_tu64(value))}
        elif tlv_type == 11:
            fields["tlv2"] = {"cltv_expiry": str(decode_tu32(value))}
    return fields


NAMESPACES: dict[str, Callable[[bytes], dict[str, dict[str, str]]]] = {
    "n1": decode_n1,
    "n2": decode_n2,
}

# The vectors give a reason in words; these are the error classes they imply.
# Order matters: "not minimally encoded length" is about canonicity, not
# truncation.
_REASONS: list[tuple[str, type[WireError]]] = [
    ("not minimal", NonCanonicalError),
    ("truncated", TruncatedError),
    ("missing", TruncatedError),
    ("unknown even", UnknownEvenTLVError),
    ("unknown _even_", UnknownEvenTLVError),
    ("encoding length", InvalidFieldError),
    ("not a valid point", InvalidFieldError),
    ("ordering", TLVOrderError),
    ("duplicate", TLVOrderError),
]


def expected_error(note: str) -> type[WireError]:
    """The error class a vector's reason text calls for."""
    lowered = note.lower()
    for words, error in _REASONS:
        if words in lowered:
            return error
    raise AssertionError(f"no expected error known for vector note {note!r}")


def expected_values(note: str) -> dict[str, dict[str, str]]:
    """Parse a ``decode_ok_n1`` note such as
    "`tlv3` `node_id`=02.. `amount_msat_1`=1 `amount_msat_2`=2"."""
    tlv_name = re.match(r"`(\w+)`", note)
    assert tlv_name is not None, note
    return {tlv_name.group(1): dict(re.findall(r"`(\w+)`=(\S+)", note))}


def _slug(text: str) -> str:
    return re.sub(r"\W+", "_", text.lower()).strip("_")[:40]


def _attach(
    cls: type[SynchronousTestCase],
    name: str,
    doc: str,
    body: Callable[[SynchronousTestCase], None],
) -> None:
    """Add one generated test method (one per vector) with its docstring."""

    def test(self: SynchronousTestCase) -> None:
        body(self)

    test.__doc__ = doc
    test.__name__ = name
    assert not hasattr(cls, name), name
    setattr(cls, name, test)


# ---------------------------------------------------------------------------
# BOLT 1 Appendix A: BigSize
# ---------------------------------------------------------------------------


class BigSizeVectorTests(SynchronousTestCase):
    """BOLT 1 Appendix A vectors; one generated method per vector."""


def _bigsize_decode(vector: dict[str, Any]) -> Callable[[SynchronousTestCase], None]:
    data = bytes.fromhex(vector["bytes"])
    if "exp_error" in vector:
        error = (
            NonCanonicalError if "canonical" in vector["exp_error"] else TruncatedError
        )

        def fails(self: SynchronousTestCase) -> None:
            self.assertRaises(error, decode_bigsize, data)

        return fails

    def decodes(self: SynchronousTestCase) -> None:
        self.assertEqual(decode_bigsize(data), (vector["value"], len(data)))

    return decodes


def _bigsize_encode(vector: dict[str, Any]) -> Callable[[SynchronousTestCase], None]:
    def encodes(self: SynchronousTestCase) -> None:
        self.assertEqual(encode_bigsize(vector["value"]).hex(), vector["bytes"])

    return encodes


for _i, _v in enumerate(VECTORS["bigsize"]["decode"]):
    _attach(
        BigSizeVectorTests,
        f"test_decode_{_i:02d}_{_slug(_v['name'])}",
        f"Decoding BigSize {_v['bytes'] or '(empty)'} ({_v['name']}) gives "
        + (
            f"an error ({_v['exp_error']})."
            if "exp_error" in _v
            else f"{_v['value']} and consumes every byte."
        ),
        _bigsize_decode(_v),
    )
for _i, _v in enumerate(VECTORS["bigsize"]["encode"]):
    _attach(
        BigSizeVectorTests,
        f"test_encode_{_i:02d}_{_slug(_v['name'])}",
        f"Encoding {_v['value']} ({_v['name']}) gives {_v['bytes']}.",
        _bigsize_encode(_v),
    )


class BigSizeTests(SynchronousTestCase):
    """Properties of encode_bigsize / decode_bigsize beyond the vectors."""

    @FAST
    @given(st.integers(0, 2**64 - 1))
    def test_round_trip(self, value: int) -> None:
        """Every u64 encodes minimally (1/3/5/9 bytes) and decodes back."""
        encoded = encode_bigsize(value)
        expected_len = (
            1 if value < 0xFD else 3 if value < 2**16 else 5 if value < 2**32 else 9
        )
        self.assertEqual(len(encoded), expected_len)
        self.assertEqual(decode_bigsize(encoded), (value, expected_len))

    @FAST
    @given(st.binary(max_size=4), st.integers(0, 2**64 - 1), st.binary(max_size=4))
    def test_offset(self, before: bytes, value: int, after: bytes) -> None:
        """Decoding at an offset reads only the BigSize and returns the
        offset just past it."""
        encoded = encode_bigsize(value)
        data = before + encoded + after
        self.assertEqual(
            decode_bigsize(data, len(before)), (value, len(before) + len(encoded))
        )

    def test_out_of_range(self) -> None:
        """Negative values and values above 2**64-1 cannot be encoded."""
        self.assertRaises(InvalidFieldError, encode_bigsize, -1)
        self.assertRaises(InvalidFieldError, encode_bigsize, 2**64)

    def test_offset_past_end(self) -> None:
        """An offset at or past the end of the buffer is an EOF."""
        self.assertRaises(TruncatedError, decode_bigsize, b"\x01", 1)
        self.assertRaises(TruncatedError, decode_bigsize, b"\x01", 5)

    def test_negative_offset(self) -> None:
        """A negative offset is a caller bug, not a wire error."""
        exc = self.assertRaises(ValueError, decode_bigsize, b"\x01", -1)
        self.assertNotIsInstance(exc, WireError)

    @FAST
    @given(st.integers(0, 2**64 - 1))
    def test_matches_pyln(self, value: int) -> None:
        """Our encoding agrees with pyln-proto's independent BigSize writer."""
        try:
            from io import BytesIO

            from pyln.proto.message.fundamental_types import BigSizeType
        except ImportError:  # pragma: no cover - pyln-proto is a test extra
            raise self.skipTest("pyln-proto not installed") from None
        out = BytesIO()
        BigSizeType.write(out, value)
        self.assertEqual(encode_bigsize(value), out.getvalue())


# ---------------------------------------------------------------------------
# BOLT 1 Appendix B: TLV
# ---------------------------------------------------------------------------


class TLVVectorTests(SynchronousTestCase):
    """BOLT 1 Appendix B vectors; one generated method per vector."""


def _fails_in(
    namespaces: list[str], stream: bytes, error: type[WireError]
) -> Callable[[SynchronousTestCase], None]:
    def fails(self: SynchronousTestCase) -> None:
        for namespace in namespaces:
            self.assertRaises(error, NAMESPACES[namespace], stream)

    return fails


def _ignored_in_both(stream: bytes) -> Callable[[SynchronousTestCase], None]:
    def ignored(self: SynchronousTestCase) -> None:
        for namespace in ("n1", "n2"):
            self.assertEqual(NAMESPACES[namespace](stream), {})
        # The raw decoder keeps the unknown odd record so it can be re-encoded.
        records = decode_tlv_stream(stream)
        self.assertEqual(len(records), 1 if stream else 0)
        self.assertTrue(all(tlv_type % 2 == 1 for tlv_type in records))
        self.assertEqual(encode_tlv_stream(records), stream)

    return ignored


def _decodes_n1(stream: bytes, note: str) -> Callable[[SynchronousTestCase], None]:
    expected = expected_values(note)

    def decodes(self: SynchronousTestCase) -> None:
        self.assertEqual(decode_n1(stream), expected)
        self.assertEqual(encode_tlv_stream(decode_tlv_stream(stream, N1_KNOWN)), stream)

    return decodes


_TLV_CASES: list[tuple[str, list[str], str]] = [
    # (vector list, namespaces that must reject it, kind)
    ("decode_fail_any_namespace", ["n1", "n2"], "fail"),
    ("decode_fail_either_namespace", ["n1", "n2"], "fail"),
    ("decode_fail_n1", ["n1"], "fail"),
    ("stream_fail_n1", ["n1"], "fail"),
    ("stream_fail_n2", ["n2"], "fail"),
    ("decode_ok_either_namespace_ignored", ["n1", "n2"], "ignored"),
    ("decode_ok_n1", ["n1"], "ok"),
]

for _section, _namespaces, _kind in _TLV_CASES:
    for _i, _v in enumerate(VECTORS["tlv"][_section]):
        _stream = bytes.fromhex(_v["stream_hex"])
        _shown = _v["stream_spaced"] or "(empty)"
        if _kind == "fail":
            _error = expected_error(_v["note"])
            _doc = (
                f"TLV stream {_shown} is rejected in {' and '.join(_namespaces)} "
                f"with {_error.__name__}: {_v['note']}"
            )
            _body = _fails_in(_namespaces, _stream, _error)
        elif _kind == "ignored":
            _doc = (
                f"TLV stream {_shown} decodes to nothing known in n1 and n2: "
                f"{_v['note']}"
            )
            _body = _ignored_in_both(_stream)
        else:
            _doc = f"TLV stream {_shown} decodes in n1 to {_v['note']}"
            _body = _decodes_n1(_stream, _v["note"])
        _attach(
            TLVVectorTests,
            f"test_{_section}_{_i:02d}_{_slug(_v['note'])}",
            _doc,
            _body,
        )


class TLVStreamTests(SynchronousTestCase):
    """decode_tlv_stream / encode_tlv_stream beyond the single vectors."""

    def test_appending_invalid_to_valid_fails(self) -> None:
        """BOLT 1: appending any invalid stream to a valid n1 stream fails."""
        valid = [bytes.fromhex(v["stream_hex"]) for v in VECTORS["tlv"]["decode_ok_n1"]]
        invalid = [
            bytes.fromhex(v["stream_hex"])
            for v in VECTORS["tlv"]["decode_fail_any_namespace"]
        ]
        # Only "some WireError": a valid type-254 record followed by a type-15
        # record fails on ordering before the invalid part is even read.
        for good in valid:
            for bad in invalid:
                self.assertRaises(WireError, decode_n1, good + bad)

    def test_appending_higher_valid_stream_succeeds(self) -> None:
        """BOLT 1: a valid stream followed by a higher-numbered valid stream
        decodes, with the fields of both."""
        by_type: dict[int, bytes] = {}
        for v in VECTORS["tlv"]["decode_ok_n1"]:
            stream = bytes.fromhex(v["stream_hex"])
            by_type.setdefault(decode_bigsize(stream)[0], stream)
        types = sorted(by_type)
        self.assertEqual(types, [1, 2, 3, 254])
        for i, low in enumerate(types):
            for high in types[i + 1 :]:
                decoded = decode_n1(by_type[low] + by_type[high])
                self.assertEqual(
                    decoded, {**decode_n1(by_type[low]), **decode_n1(by_type[high])}
                )

    def test_unknown_even_carries_type(self) -> None:
        """UnknownEvenTLVError says which type was refused."""
        exc = self.assertRaises(UnknownEvenTLVError, decode_tlv_stream, b"\x12\x00")
        self.assertEqual(exc.tlv_type, 0x12)

    def test_known_even_is_returned(self) -> None:
        """An even type passes when the caller knows it."""
        self.assertEqual(decode_tlv_stream(b"\x12\x01\xaa", {0x12}), {0x12: b"\xaa"})

    def test_encode_sorts(self) -> None:
        """encode_tlv_stream writes records by increasing type whatever the
        mapping's order."""
        self.assertEqual(
            encode_tlv_stream({5: b"b", 3: b"a", 253: b""}),
            bytes.fromhex("0301610501 62fd00fd00".replace(" ", "")),
        )

    def test_encode_rejects_bad_type(self) -> None:
        """A type beyond u64 cannot be encoded."""
        self.assertRaises(InvalidFieldError, encode_tlv_stream, {2**64: b""})

    @FAST
    @given(
        st.dictionaries(st.integers(0, 2**64 - 1), st.binary(max_size=40), max_size=8)
    )
    def test_round_trip(self, records: dict[int, bytes]) -> None:
        """Any set of records survives encode -> decode when all types are
        known; with no known types, only the odd ones pass."""
        encoded = encode_tlv_stream(records)
        self.assertEqual(decode_tlv_stream(encoded, set(records)), records)
        self.assertEqual(
            list(decode_tlv_stream(encoded, set(records))), sorted(records)
        )
        evens = sorted(t for t in records if t % 2 == 0)
        if evens:
            exc = self.assertRaises(UnknownEvenTLVError, decode_tlv_stream, encoded)
            self.assertEqual(exc.tlv_type, evens[0])
        else:
            self.assertEqual(decode_tlv_stream(encoded), records)

    @FAST
    @given(st.binary(max_size=120), st.frozensets(st.integers(0, 300), max_size=10))
    def test_arbitrary_bytes(self, data: bytes, known: frozenset[int]) -> None:
        """Arbitrary bytes either decode to a stream that re-encodes to the
        same bytes, or raise a WireError (never another exception)."""
        try:
            records = decode_tlv_stream(data, known)
        except WireError:
            return
        self.assertEqual(encode_tlv_stream(records), data)


class TruncatedIntTests(SynchronousTestCase):
    """tu64 / tu32 helpers and signed integers (BOLT 1 Appendix D)."""

    @FAST
    @given(st.integers(0, 2**64 - 1))
    def test_tu64_round_trip(self, value: int) -> None:
        """tu64 encodes with no leading zero byte and decodes back."""
        encoded = encode_tu64(value)
        self.assertEqual(len(encoded), (value.bit_length() + 7) // 8)
        self.assertEqual(decode_tu64(encoded), value)

    def test_zero_is_empty(self) -> None:
        """0 is the empty string."""
        self.assertEqual(encode_tu64(0), b"")
        self.assertEqual(decode_tu64(b""), 0)

    def test_limits(self) -> None:
        """Too long, non-minimal and out-of-range values are rejected."""
        self.assertRaises(InvalidFieldError, decode_tu64, b"\x01" * 9)
        self.assertRaises(InvalidFieldError, decode_tu32, b"\x01" * 5)
        self.assertRaises(NonCanonicalError, decode_tu64, b"\x00\x01")
        self.assertRaises(NonCanonicalError, decode_tu64, b"\x00")
        self.assertRaises(InvalidFieldError, encode_tu64, 2**64)
        self.assertRaises(InvalidFieldError, encode_tu64, -1)

    def test_signed_bad_sizes(self) -> None:
        """Only 1/2/4/8-byte signed integers exist; values must fit."""
        self.assertRaises(InvalidFieldError, decode_signed, b"\x00\x00\x00")
        self.assertRaises(InvalidFieldError, encode_signed, 128, 1)
        self.assertRaises(ValueError, encode_signed, 1, 3)


class SignedIntegerVectorTests(SynchronousTestCase):
    """BOLT 1 Appendix D vectors; one generated method per vector."""


def _signed(vector: dict[str, Any]) -> Callable[[SynchronousTestCase], None]:
    data = bytes.fromhex(vector["bytes"])

    def check(self: SynchronousTestCase) -> None:
        self.assertEqual(decode_signed(data), vector["value"])
        self.assertEqual(encode_signed(vector["value"], len(data)), data)
        # The vectors use the narrowest type that fits: one size smaller fails.
        if len(data) > 1:
            self.assertRaises(
                InvalidFieldError, encode_signed, vector["value"], len(data) // 2
            )

    return check


for _i, _v in enumerate(VECTORS["signed_integers"]):
    _attach(
        SignedIntegerVectorTests,
        f"test_{_i:02d}_{_slug(str(_v['value']).replace('-', 'minus_'))}",
        f"{_v['value']} is s{8 * len(_v['bytes']) // 2} {_v['bytes']} both ways.",
        _signed(_v),
    )


class PointTests(SynchronousTestCase):
    """decode_point against the vectors' key and coincurve."""

    GOOD = bytes.fromhex(
        "023da092f6980e58d2c037173180e9a465476026ee50f96695963e8efe436f54eb"
    )

    def test_valid(self) -> None:
        """The vectors' node id is a valid point."""
        self.assertEqual(decode_point(self.GOOD), self.GOOD)

    def test_invalid(self) -> None:
        """Wrong prefix, wrong length and x >= p are rejected."""
        self.assertRaises(InvalidFieldError, decode_point, b"\x04" + self.GOOD[1:])
        self.assertRaises(InvalidFieldError, decode_point, self.GOOD[:32])
        self.assertRaises(InvalidFieldError, decode_point, b"\x02" + b"\xff" * 32)

    @FAST
    @given(st.sampled_from([2, 3]), st.binary(min_size=32, max_size=32))
    def test_matches_coincurve(self, prefix: int, x: bytes) -> None:
        """decode_point accepts exactly what libsecp256k1 accepts."""
        from coincurve import PublicKey

        data = bytes((prefix,)) + x
        try:
            PublicKey(data)
        except ValueError:
            self.assertRaises(InvalidFieldError, decode_point, data)
        else:
            self.assertEqual(decode_point(data), data)


# ---------------------------------------------------------------------------
# BOLT 1 Appendix C: message extension (init)
# ---------------------------------------------------------------------------


class InitExtensionVectorTests(SynchronousTestCase):
    """BOLT 1 Appendix C vectors; one generated method per vector."""


def _init_valid(msg: bytes) -> Callable[[SynchronousTestCase], None]:
    def check(self: SynchronousTestCase) -> None:
        init = Init.decode(msg)
        self.assertEqual(init.features, b"")
        self.assertEqual(init.globalfeatures, b"")
        self.assertIsNone(init.networks)
        self.assertIsNone(init.remote_addr)
        self.assertEqual(
            dict(init.extra_tlvs), decode_tlv_stream(msg[6:])
        )  # the unknown odd records are kept...
        self.assertEqual(init.encode(), msg)  # ...so re-encoding is exact.
        self.assertEqual(decode_message(msg), init)

    return check


def _init_invalid(
    msg: bytes, error: type[WireError]
) -> Callable[[SynchronousTestCase], None]:
    def check(self: SynchronousTestCase) -> None:
        self.assertRaises(error, Init.decode, msg)
        self.assertRaises(error, decode_message, msg)

    return check


for _i, _v in enumerate(VECTORS["init_extension"]["valid"]):
    _attach(
        InitExtensionVectorTests,
        f"test_valid_{_i:02d}_{_slug(_v['note'])}",
        f"init {_v['hex']} decodes and re-encodes exactly: {_v['note']}",
        _init_valid(bytes.fromhex(_v["hex"])),
    )
for _i, _v in enumerate(VECTORS["init_extension"]["invalid"]):
    _error = expected_error(_v["note"])
    _attach(
        InitExtensionVectorTests,
        f"test_invalid_{_i:02d}_{_slug(_v['note'])}",
        f"init {_v['hex']} is rejected with {_error.__name__}: {_v['note']}",
        _init_invalid(bytes.fromhex(_v["hex"]), _error),
    )


class VectorCoverageTests(SynchronousTestCase):
    """Guards against a vector file that silently yields no tests."""

    def test_every_vector_has_a_test(self) -> None:
        """Each generated class holds exactly one method per vector, and the
        JSON has every section the task names."""
        tlv = VECTORS["tlv"]
        expected = {
            BigSizeVectorTests: len(VECTORS["bigsize"]["decode"])
            + len(VECTORS["bigsize"]["encode"]),
            TLVVectorTests: sum(len(tlv[section]) for section, _, _ in _TLV_CASES),
            InitExtensionVectorTests: len(VECTORS["init_extension"]["valid"])
            + len(VECTORS["init_extension"]["invalid"]),
            SignedIntegerVectorTests: len(VECTORS["signed_integers"]),
        }
        for cls, count in expected.items():
            methods = [name for name in vars(cls) if name.startswith("test_")]
            self.assertEqual(len(methods), count, cls.__name__)
        self.assertEqual(len(VECTORS["bigsize"]["decode"]), 18)
        self.assertEqual(len(VECTORS["bigsize"]["encode"]), 8)
        self.assertEqual(
            {section: len(tlv[section]) for section, _, _ in _TLV_CASES},
            {
                "decode_fail_any_namespace": 9,
                "decode_fail_either_namespace": 4,
                "decode_fail_n1": 20,
                "stream_fail_n1": 4,
                "stream_fail_n2": 1,
                "decode_ok_either_namespace_ignored": 7,
                "decode_ok_n1": 12,
            },
        )
        self.assertEqual(len(VECTORS["init_extension"]["valid"]), 2)
        self.assertEqual(len(VECTORS["init_extension"]["invalid"]), 3)


# ---------------------------------------------------------------------------
# Message types
# ---------------------------------------------------------------------------


class MessageTypeTests(SynchronousTestCase):
    """message_type, the type constants and MESSAGE_NAMES."""

    def test_message_type(self) -> None:
        """The type is the first two bytes, big endian."""
        self.assertEqual(message_type(b"\x01\x02"), 258)
        self.assertEqual(message_type(b"\x00\x12\x00\x00\x00\x00"), 18)

    def test_short(self) -> None:
        """Fewer than two bytes is a TruncatedError."""
        self.assertRaises(TruncatedError, message_type, b"")
        self.assertRaises(TruncatedError, message_type, b"\x00")

    def test_names_match_constants(self) -> None:
        """Each name in MESSAGE_NAMES is the lower-cased constant holding its
        type, and the constants the proxy contract names have the spec values."""
        for number, name in MESSAGE_NAMES.items():
            self.assertEqual(getattr(wire, name.upper()), number, name)
        self.assertEqual(
            (
                wire.WARNING,
                wire.STFU,
                wire.PEER_STORAGE,
                wire.PEER_STORAGE_RETRIEVAL,
                wire.INIT,
                wire.ERROR,
                wire.PING,
                wire.PONG,
            ),
            (1, 2, 7, 9, 16, 17, 18, 19),
        )
        self.assertEqual(
            (
                wire.CHANNEL_ANNOUNCEMENT,
                wire.NODE_ANNOUNCEMENT,
                wire.CHANNEL_UPDATE,
                wire.ANNOUNCEMENT_SIGNATURES,
                wire.QUERY_SHORT_CHANNEL_IDS,
                wire.REPLY_SHORT_CHANNEL_IDS_END,
                wire.QUERY_CHANNEL_RANGE,
                wire.REPLY_CHANNEL_RANGE,
                wire.GOSSIP_TIMESTAMP_FILTER,
                wire.ONION_MESSAGE,
            ),
            (256, 257, 258, 259, 261, 262, 263, 264, 265, 513),
        )
        self.assertEqual(MESSAGE_NAMES[132], "commitment_signed")
        self.assertEqual(MESSAGE_NAMES[74], "tx_abort")
        self.assertEqual(len(set(MESSAGE_NAMES.values())), len(MESSAGE_NAMES))


# ---------------------------------------------------------------------------
# Ping / pong
# ---------------------------------------------------------------------------


class PingPongTests(SynchronousTestCase):
    """BOLT 1's ping/pong rules and codecs."""

    def test_pong_for_65531(self) -> None:
        """65531 is the largest answered request: its pong is exactly 65535
        bytes of message, all padding zero."""
        pong = pong_for(Ping(65531))
        assert pong is not None
        self.assertEqual(pong.ignored, bytes(65531))
        self.assertEqual(len(pong.encode()), 65535)

    def test_no_pong_at_threshold(self) -> None:
        """num_pong_bytes of 65532 and above (up to 65535) gets no pong."""
        self.assertEqual(NO_PONG_THRESHOLD, 65532)
        for num in (65532, 65533, 65535):
            self.assertIsNone(pong_for(Ping(num)), num)

    def test_small_pong(self) -> None:
        """A ping for 0 or 3 bytes gets a pong of that many zero bytes."""
        self.assertEqual(pong_for(Ping(0)), Pong(b""))
        self.assertEqual(pong_for(Ping(3, b"xyz")), Pong(b"\x00\x00\x00"))
        self.assertEqual(
            Pong(b"\x00\x00\x00").encode(),
            bytes.fromhex("0013 0003 000000".replace(" ", "")),
        )

    def test_ping_wire_form(self) -> None:
        """Ping encodes as type, num_pong_bytes, byteslen, ignored."""
        self.assertEqual(Ping(65535, b"\x00").encode(), bytes.fromhex("0012ffff000100"))
        self.assertEqual(
            Ping.decode(bytes.fromhex("0012ffff000100")), Ping(65535, b"\x00")
        )

    def test_trailing_bytes_ignored(self) -> None:
        """Bytes after ``ignored`` are an extension BOLT 1 lets us ignore."""
        self.assertEqual(
            Ping.decode(bytes.fromhex("00120004000161ffee")), Ping(4, b"a")
        )
        self.assertEqual(Pong.decode(bytes.fromhex("0013000161ffee")), Pong(b"a"))

    def test_truncated(self) -> None:
        """A ping or pong shorter than it announces is TruncatedError."""
        self.assertRaises(TruncatedError, Ping.decode, bytes.fromhex("00120004"))
        self.assertRaises(TruncatedError, Ping.decode, bytes.fromhex("001200040002aa"))
        self.assertRaises(TruncatedError, Pong.decode, bytes.fromhex("00130002aa"))
        self.assertRaises(TruncatedError, Pong.decode, bytes.fromhex("0013"))

    def test_wrong_type(self) -> None:
        """Decoding another message type as ping or pong is refused."""
        self.assertRaises(InvalidFieldError, Ping.decode, bytes.fromhex("001300000000"))
        self.assertRaises(InvalidFieldError, Pong.decode, bytes.fromhex("00120000"))

    def test_encode_limits(self) -> None:
        """Out-of-range fields and oversized messages are refused on encode."""
        self.assertRaises(InvalidFieldError, Ping(65536).encode)
        self.assertRaises(InvalidFieldError, Ping(-1).encode)
        self.assertRaises(InvalidFieldError, Ping(0, bytes(65530)).encode)
        self.assertEqual(len(Ping(0, bytes(65529)).encode()), 65535)
        self.assertRaises(InvalidFieldError, Pong(bytes(65532)).encode)


# ---------------------------------------------------------------------------
# Dataclass round trips and decoding rules
# ---------------------------------------------------------------------------

chain_hashes = st.binary(min_size=32, max_size=32)
u32s = st.integers(0, 2**32 - 1)
short_bytes = st.binary(max_size=48)
# Odd TLV types no message here knows (1 and 3 are known in several streams).
unknown_odd_types = st.integers(2, 2**63 - 1).map(lambda n: 2 * n + 1)
unknown_records = st.dictionaries(unknown_odd_types, short_bytes, max_size=3)


@st.composite
def tlv_stream_with(
    draw: st.DrawFn, known: dict[int, st.SearchStrategy[bytes]]
) -> bytes:
    records = draw(unknown_records)
    for tlv_type, values in known.items():
        if draw(st.booleans()):
            records[tlv_type] = draw(values)
    return encode_tlv_stream(records)


qsci_tlvs = tlv_stream_with({1: st.binary(min_size=1, max_size=20)})
qcr_tlvs = tlv_stream_with({1: st.integers(0, 2**64 - 1).map(encode_bigsize)})
rcr_tlvs = tlv_stream_with(
    {
        1: st.binary(min_size=1, max_size=20),
        3: st.lists(st.binary(min_size=8, max_size=8), max_size=3).map(b"".join),
    }
)

inits = st.builds(
    Init,
    features=short_bytes,
    globalfeatures=short_bytes,
    networks=st.none() | st.lists(chain_hashes, max_size=3).map(tuple),
    remote_addr=st.none() | short_bytes,
    extra_tlvs=unknown_records,
)
messages = st.one_of(
    inits,
    st.builds(Ping, st.integers(0, 65535), short_bytes),
    st.builds(Pong, short_bytes),
    st.builds(Error, chain_hashes, short_bytes),
    st.builds(WarningMessage, chain_hashes, short_bytes),
    st.builds(QueryShortChannelIds, chain_hashes, short_bytes, qsci_tlvs),
    st.builds(ReplyShortChannelIdsEnd, chain_hashes, st.integers(0, 255)),
    st.builds(QueryChannelRange, chain_hashes, u32s, u32s, qcr_tlvs),
    st.builds(
        ReplyChannelRange,
        chain_hashes,
        u32s,
        u32s,
        st.integers(0, 255),
        short_bytes,
        rcr_tlvs,
    ),
    st.builds(GossipTimestampFilter, chain_hashes, u32s, u32s),
    st.builds(
        UnknownMessage,
        st.integers(0, 65535).filter(lambda t: t not in wire._DECODERS),
        short_bytes,
    ),
)

_MODELLED_TYPES = sorted(wire._DECODERS)


class RoundTripTests(SynchronousTestCase):
    """encode -> decode is the identity for every dataclass."""

    @settings(max_examples=400, deadline=None)
    @given(messages)
    def test_round_trip(self, message: wire.Message) -> None:
        """decode_message(m.encode()) == m, and the class's own decode agrees."""
        encoded = message.encode()
        self.assertEqual(decode_message(encoded), message)
        self.assertEqual(type(message).decode(encoded), message)
        self.assertLessEqual(len(encoded), wire.MAX_MESSAGE_SIZE)

    @FAST
    @given(messages, st.data())
    def test_truncation_and_mutation(
        self, message: wire.Message, data: st.DataObject
    ) -> None:
        """A valid message cut short or with one byte changed either decodes
        to something that re-encodes consistently, or raises a WireError."""
        encoded = message.encode()
        cut = data.draw(st.integers(0, len(encoded)))
        position = data.draw(st.integers(0, len(encoded) - 1))
        flipped = bytearray(encoded)
        flipped[position] ^= data.draw(st.integers(1, 255))
        for candidate in (encoded[:cut], bytes(flipped)):
            try:
                decoded = decode_message(candidate)
            except WireError:
                continue
            self.assertEqual(decode_message(decoded.encode()), decoded)

    @FAST
    @given(
        st.binary(max_size=150)
        | st.tuples(st.sampled_from(_MODELLED_TYPES), st.binary(max_size=150)).map(
            lambda parts: parts[0].to_bytes(2, "big") + parts[1]
        )
    )
    def test_arbitrary_bytes_raise_only_wire_errors(self, msg: bytes) -> None:
        """decode_message on any bytes returns a message that re-encodes
        consistently, or raises a WireError subclass (never IndexError,
        struct.error or the like)."""
        try:
            decoded = decode_message(msg)
        except WireError:
            return
        self.assertEqual(message_type(decoded.encode()), message_type(msg))
        self.assertEqual(decode_message(decoded.encode()), decoded)


class MessageDecodeTests(SynchronousTestCase):
    """Specific decoding rules: dispatch, extensions, TLV checks."""

    def test_unknown_message(self) -> None:
        """Unmodelled types come back as UnknownMessage, odd or even."""
        self.assertEqual(decode_message(b"\x00\x80abc"), UnknownMessage(128, b"abc"))
        self.assertEqual(decode_message(b"\x80\x01"), UnknownMessage(0x8001, b""))
        self.assertRaises(TruncatedError, decode_message, b"\x01")

    def test_trailing_bytes_ignored(self) -> None:
        """Messages without a TLV stream ignore bytes after their fields."""
        cid = bytes(range(32))
        extra = b"\x01\x02\x03"
        cases: list[wire.Message] = [
            Error(cid, b"oops"),
            WarningMessage(cid, b""),
            ReplyShortChannelIdsEnd(CHAIN, 1),
            GossipTimestampFilter(CHAIN, 1_700_000_000, 86400),
        ]
        for message in cases:
            self.assertEqual(decode_message(message.encode() + extra), message)

    def test_error_wire_form(self) -> None:
        """error is type 17, channel_id, u16 length, data."""
        msg = Error(bytes(32), b"hi").encode()
        self.assertEqual(msg, b"\x00\x11" + bytes(32) + b"\x00\x02hi")
        self.assertEqual(WarningMessage(bytes(32), b"hi").encode()[:2], b"\x00\x01")
        self.assertRaises(TruncatedError, Error.decode, msg[:-1])
        self.assertRaises(TruncatedError, Error.decode, msg[:35])
        self.assertRaises(InvalidFieldError, WarningMessage.decode, msg)

    def test_query_tlv_streams_checked(self) -> None:
        """Where a TLV stream follows, bad streams and bad known records fail."""
        base = QueryChannelRange(CHAIN, 700_000, 1000).encode()
        self.assertRaises(UnknownEvenTLVError, decode_message, base + b"\x02\x00")
        self.assertRaises(TruncatedError, decode_message, base + b"\x01")
        self.assertRaises(TLVOrderError, decode_message, base + b"\x05\x00\x03\x00")
        self.assertRaises(
            NonCanonicalError, decode_message, base + b"\x01\x03\xfd\x00\x01"
        )
        self.assertRaises(InvalidFieldError, decode_message, base + b"\x01\x02\x01\x01")
        good = decode_message(base + b"\x01\x01\x03")
        assert isinstance(good, QueryChannelRange)
        self.assertEqual(good.tlvs, b"\x01\x01\x03")
        self.assertEqual(good.query_option_flags(), 3)
        self.assertEqual(QueryChannelRange(CHAIN, 0, 1).query_option_flags(), 0)

        reply = ReplyChannelRange(CHAIN, 1, 2, 1, b"\x00").encode()
        self.assertRaises(InvalidFieldError, decode_message, reply + b"\x03\x04aaaa")
        self.assertRaises(InvalidFieldError, decode_message, reply + b"\x01\x00")
        query = QueryShortChannelIds(CHAIN, b"\x00").encode()
        self.assertRaises(InvalidFieldError, decode_message, query + b"\x01\x00")
        self.assertRaises(UnknownEvenTLVError, decode_message, query + b"\x04\x00")

    def test_short_fixed_fields(self) -> None:
        """Each gossip query message is refused when its fixed part is cut."""
        for message in (
            QueryShortChannelIds(CHAIN, b"\x00\x01\x02"),
            ReplyShortChannelIdsEnd(CHAIN, 0),
            QueryChannelRange(CHAIN, 5, 6),
            ReplyChannelRange(CHAIN, 5, 6, 1, b"\x00"),
            GossipTimestampFilter(CHAIN, 5, 6),
        ):
            encoded = message.encode()
            self.assertRaises(TruncatedError, decode_message, encoded[:-1])
            self.assertRaises(TruncatedError, decode_message, encoded[:3])

    def test_init_networks(self) -> None:
        """init TLV 1 is a list of 32-byte chain hashes; TLV 3 is kept raw."""
        init = Init(
            features=b"\x02\x00",
            networks=(CHAIN, bytes(32)),
            remote_addr=b"\x01\x7f\x00\x00\x01\x26\x07",
        )
        encoded = init.encode()
        self.assertEqual(
            encoded,
            bytes.fromhex("0010" "0000" "0002" "0200")
            + b"\x01\x40"
            + CHAIN
            + bytes(32)
            + b"\x03\x07\x01\x7f\x00\x00\x01\x26\x07",
        )
        self.assertEqual(Init.decode(encoded), init)
        # A list is accepted and frozen into a tuple.
        as_list = Init(b"", networks=[])  # type: ignore[arg-type]
        self.assertEqual(as_list.networks, ())
        self.assertEqual(Init.decode(Init(b"", networks=()).encode()).networks, ())

    def test_init_bad_networks(self) -> None:
        """A networks record not a multiple of 32 bytes is refused."""
        msg = bytes.fromhex("001000000000") + b"\x01\x1f" + bytes(31)
        self.assertRaises(InvalidFieldError, Init.decode, msg)

    def test_init_truncated(self) -> None:
        """init cut inside gflen, globalfeatures, flen or features fails."""
        msg = bytes.fromhex("0010" "0001" "01" "0002" "0200")
        for cut in range(2, len(msg)):
            self.assertRaises(TruncatedError, Init.decode, msg[:cut])
        self.assertEqual(Init.decode(msg), Init(b"\x02\x00", b"\x01"))

    def test_init_extra_tlvs(self) -> None:
        """extra_tlvs is frozen and sorted, cannot hold types 1 or 3, and the
        message stays hashable and comparable."""
        init = Init(b"", extra_tlvs={9: b"b", 5: b"a"})
        self.assertEqual(list(init.extra_tlvs), [5, 9])

        def mutate() -> None:
            init.extra_tlvs[7] = b""  # type: ignore[index]

        self.assertRaises(TypeError, mutate)
        self.assertEqual(init, Init(b"", extra_tlvs={5: b"a", 9: b"b"}))
        self.assertEqual(hash(init), hash(Init(b"", extra_tlvs={5: b"a", 9: b"b"})))
        self.assertRaises(InvalidFieldError, Init, b"", extra_tlvs={1: b""})
        self.assertRaises(InvalidFieldError, Init, b"", extra_tlvs={3: b""})

    def test_init_combined_features(self) -> None:
        """combined_features ORs globalfeatures into features (BOLT 1)."""
        init = Init(features=b"\x02\x00", globalfeatures=b"\x01")
        self.assertEqual(init.combined_features.bits(), {0, 9})

    def test_encode_validation(self) -> None:
        """Encoders refuse fields that do not fit their wire types."""
        self.assertRaises(InvalidFieldError, Error(bytes(31), b"").encode)
        self.assertRaises(InvalidFieldError, QueryChannelRange(CHAIN, 2**32, 1).encode)
        self.assertRaises(InvalidFieldError, ReplyShortChannelIdsEnd(CHAIN, 256).encode)
        self.assertRaises(
            InvalidFieldError, GossipTimestampFilter(bytes(33), 0, 0).encode
        )
        self.assertRaises(InvalidFieldError, Init(b"", networks=(b"x",)).encode)
        self.assertRaises(InvalidFieldError, UnknownMessage(65536, b"").encode)
        self.assertRaises(InvalidFieldError, Error(bytes(32), bytes(65500)).encode)
        self.assertRaises(InvalidFieldError, Init(bytes(65536)).encode)

    def test_errors_are_value_errors(self) -> None:
        """Every specific error is a WireError, which is a ValueError."""
        for error in (
            TruncatedError,
            NonCanonicalError,
            TLVOrderError,
            UnknownEvenTLVError,
            InvalidFieldError,
        ):
            self.assertTrue(issubclass(error, WireError))
        self.assertTrue(issubclass(WireError, ValueError))


# ---------------------------------------------------------------------------
# Proxy replies
# ---------------------------------------------------------------------------


class ProxyReplyTests(SynchronousTestCase):
    """The gossip answers the proxy sends without its client."""

    def test_reply_short_channel_ids(self) -> None:
        """A query for ids is ended at once, same chain, full_information 0."""
        query = QueryShortChannelIds(CHAIN, b"\x00" + bytes(8), b"\x01\x02\x00\x00")
        reply = reply_to_query_short_channel_ids(query)
        self.assertEqual(reply, ReplyShortChannelIdsEnd(CHAIN, 0))
        self.assertEqual(reply.encode(), b"\x01\x06" + CHAIN + b"\x00")

    def test_reply_channel_range(self) -> None:
        """A range query gets one empty, complete reply for the same range."""
        query = QueryChannelRange(CHAIN, 600_000, 4_000_000, b"\x01\x01\x01")
        reply = reply_to_query_channel_range(query)
        self.assertEqual(
            reply, ReplyChannelRange(CHAIN, 600_000, 4_000_000, 1, b"\x00")
        )
        self.assertEqual(
            reply.encode(),
            b"\x01\x08"
            + CHAIN
            + (600_000).to_bytes(4, "big")
            + (4_000_000).to_bytes(4, "big")
            + b"\x01\x00\x01\x00",
        )

    @FAST
    @given(chain_hashes, u32s, u32s)
    def test_replies_decode(self, chain: bytes, first: int, count: int) -> None:
        """Replies to any decoded query are valid messages themselves."""
        query = QueryChannelRange.decode(
            QueryChannelRange(chain, first, count).encode()
        )
        reply = reply_to_query_channel_range(query).encode()
        self.assertEqual(
            decode_message(reply), ReplyChannelRange(chain, first, count, 1, b"\x00")
        )


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


class FeaturesTests(SynchronousTestCase):
    """Features: BOLT 9 bit order, pairs, minimal encoding, immutability."""

    def test_bit_order(self) -> None:
        """Bit 0 is the low bit of the last byte."""
        features = Features(b"\x02\x01")
        self.assertEqual(features.bits(), {0, 9})
        self.assertTrue(features.has(9))
        self.assertFalse(features.has(8))
        self.assertFalse(features.has(-1))

    def test_supports_either_bit(self) -> None:
        """supports() is true when the even or the odd bit of a pair is set."""
        optional = Features.from_bits(15)
        required = Features.from_bits(14)
        for features in (optional, required):
            self.assertTrue(features.supports(14))
            self.assertTrue(features.supports(15))
            self.assertFalse(features.supports(16))
            self.assertFalse(features.supports(13))

    def test_minimal_bytes(self) -> None:
        """to_bytes() drops leading zero bytes; no bits is empty."""
        self.assertEqual(Features(b"\x00\x00\x82").to_bytes(), b"\x82")
        self.assertEqual(Features(b"\x00").to_bytes(), b"")
        self.assertEqual(Features().to_bytes(), b"")
        self.assertEqual(Features.from_bits(8).to_bytes(), b"\x01\x00")

    def test_with_bits_is_a_copy(self) -> None:
        """with_bits returns a new set and leaves the original alone."""
        base = Features.from_bits(1)
        more = base.with_bits(12, 44)
        self.assertEqual(base.bits(), {1})
        self.assertEqual(more.bits(), {1, 12, 44})
        self.assertRaises(ValueError, base.with_bits, -1)
        self.assertRaises(ValueError, base.with_bits, MAX_FEATURE_BIT + 1)

    def test_immutable(self) -> None:
        """Attributes cannot be set or deleted."""
        features = Features(b"\x01")
        self.assertRaises(AttributeError, setattr, features, "_value", 3)
        self.assertRaises(AttributeError, delattr, features, "_value")
        self.assertEqual(features.bits(), {0})

    def test_equality_and_hash(self) -> None:
        """Equal bit sets are equal and hash alike, whatever the padding."""
        self.assertEqual(Features(b"\x00\x01"), Features(b"\x01"))
        self.assertEqual(hash(Features(b"\x00\x01")), hash(Features(b"\x01")))
        self.assertNotEqual(Features(b"\x01"), Features(b"\x02"))
        self.assertNotEqual(Features(b"\x01"), b"\x01")

    def test_unknown_required(self) -> None:
        """Only even bits whose pair the caller does not know are reported."""
        features = Features.from_bits(14, 101, 200, 9)
        self.assertEqual(features.unknown_required(FEATURE_NAMES), {200})
        self.assertEqual(features.unknown_required({15}), {200})
        self.assertEqual(features.unknown_required(()), {14, 200})
        self.assertEqual(Features.from_bits(1, 3).unknown_required(()), set())

    def test_combine(self) -> None:
        """combine() is the OR of two fields, given as bytes or Features."""
        combined = Features.combine(b"\x01", Features(b"\x02\x00"))
        self.assertEqual(combined, Features.from_bits(0, 9))
        self.assertEqual(Features.combine(b"", b""), Features())

    def test_names(self) -> None:
        """FEATURE_NAMES has both bits of each pair under one name."""
        self.assertEqual(FEATURE_NAMES[14], "payment_secret")
        self.assertEqual(FEATURE_NAMES[50], FEATURE_NAMES[51])
        for bit, name in FEATURE_NAMES.items():
            self.assertEqual(FEATURE_NAMES[bit ^ 1], name)
        for bit in (0, 4, 6, 8, 10, 12, 16, 18, 22, 24, 26, 28, 34, 38, 44, 46, 48):
            self.assertIn(bit, FEATURE_NAMES)
        self.assertIn("9:var_onion_optin", repr(Features.from_bits(9)))

    @FAST
    @given(st.frozensets(st.integers(0, 600), max_size=20))
    def test_round_trip(self, bits: frozenset[int]) -> None:
        """from_bits -> to_bytes -> Features preserves the bits, minimally."""
        features = Features.from_bits(*bits)
        self.assertEqual(features.bits(), bits)
        encoded = features.to_bytes()
        self.assertFalse(encoded.startswith(b"\x00"))
        self.assertEqual(Features(encoded), features)
        self.assertEqual(Features(b"\x00\x00" + encoded), features)
