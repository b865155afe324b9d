"""Tests for :mod:`lnproxy.noise`: the BOLT 8 spec vectors and properties.

Every vector of ``tests/vectors/bolt8_vectors.json`` (the BOLT 8 appendix plus the
derived transport cases) becomes one test method, attached to its class by a
loop at import time, so a failure names the vector that failed.

Reference frames for the decryptor vectors are built here with a bare
``ChaCha20Poly1305`` and the spec's rotated keys, not with
:class:`lnproxy.noise.Encryptor`, so the decryptor is not checked against the
code it is meant to mirror.
"""

from __future__ import annotations

import json
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import coincurve
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import noise
from lnproxy.noise import (
    ACT1_SIZE,
    ACT3_SIZE,
    HEADER_SIZE,
    MAC_SIZE,
    BadActTagError,
    BadBodyTagError,
    BadLengthTagError,
    BadPublicKeyError,
    BadStaticKeyCiphertextError,
    BadVersionError,
    Bolt8Error,
    Decryptor,
    Encryptor,
    HandshakeError,
    Initiator,
    MessageTooLargeError,
    Responder,
    ShortActError,
    Transport,
    TransportError,
    TransportKeys,
    hkdf2,
)

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "bolt8_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

MESSAGE = VECTORS["message"]
#: The message test is the initiator's sending side; the responder receives
#: with rk = the initiator's sk, both starting from the final chaining key.
MSG_SK = bytes.fromhex(MESSAGE["sk"])
MSG_CK = bytes.fromhex(MESSAGE["ck"])
MSG_PLAINTEXT = bytes.fromhex(MESSAGE["plaintext_hex"])
MSG_OUTPUTS: dict[int, bytes] = {
    o["index"]: bytes.fromhex(o["hex"]) for o in MESSAGE["outputs"]
}
#: The index whose wire bytes the derived "incomplete" cases are prefixes of.
FIRST_FRAME = MSG_OUTPUTS[0]

#: The curve order: a 32-byte secret must be in [1, N).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: Handshake error label suffix (without the ``ACTn_`` prefix) -> exact class.
HANDSHAKE_ERRORS: dict[str, type[HandshakeError]] = {
    "READ_FAILED": ShortActError,
    "BAD_VERSION": BadVersionError,
    "BAD_PUBKEY": BadPublicKeyError,
    "BAD_TAG": BadActTagError,
    "BAD_CIPHERTEXT": BadStaticKeyCiphertextError,
}

#: Transport error label -> exact class.
TRANSPORT_ERRORS: dict[str, type[TransportError]] = {
    "LENGTH_BAD_TAG": BadLengthTagError,
    "BODY_BAD_TAG": BadBodyTagError,
}


def _method_name(prefix: str, label: str) -> str:
    """A valid, readable test method name from a vector's label."""
    slug = re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")
    return f"test_{prefix}_{slug}"


def _attach(cls: type, name: str, func: Callable[..., None], doc: str) -> None:
    """Attach a generated test method, refusing to overwrite one silently."""
    if hasattr(cls, name):
        raise RuntimeError(f"duplicate generated test name {name}")
    func.__name__ = name
    func.__qualname__ = f"{cls.__name__}.{name}"
    func.__doc__ = doc
    setattr(cls, name, func)


def _spec_nonce(n: int) -> bytes:
    """The 96-bit nonce of the spec: 4 zero bytes then a little-endian u64."""
    return b"\x00" * 4 + struct.pack("<Q", n)


def _spec_send_keys() -> list[bytes]:
    """The sending key of the message test for message ranges 0-499,
    500-999 and 1000-1499, taken from the vector file's rotations."""
    keys = [MSG_SK]
    for rot in MESSAGE["rotations"]:
        keys.append(bytes.fromhex(rot["k_out"]))
    return keys


def _reference_frames(count: int) -> list[bytes]:
    """The first ``count`` wire frames of the message test.

    Built with a bare AEAD and the spec's rotated keys, independently of
    :class:`Encryptor`.
    """
    keys = _spec_send_keys()
    frames = []
    for index in range(count):
        aead = ChaCha20Poly1305(keys[index // 500])
        n = 2 * (index % 500)
        length = struct.pack(">H", len(MSG_PLAINTEXT))
        frames.append(
            aead.encrypt(_spec_nonce(n), length, None)
            + aead.encrypt(_spec_nonce(n + 1), MSG_PLAINTEXT, None)
        )
    return frames


def _pair(ck: bytes = MSG_CK, key: bytes = MSG_SK) -> tuple[Encryptor, Decryptor]:
    """A matching sender and receiver (one direction of a connection)."""
    return Encryptor(key, ck), Decryptor(key, ck)


def _advance(enc: Encryptor, dec: Decryptor, nonces: int) -> None:
    """Move a pair forward by ``nonces`` (an even number) with filler."""
    for _ in range(nonces // 2):
        if dec.feed(enc.encrypt(b"\x00\x10")) != [b"\x00\x10"]:
            raise AssertionError("filler message did not round-trip")


def _pubkey(secret: bytes) -> bytes:
    return coincurve.PrivateKey(secret).public_key.format()


# ---------------------------------------------------------------------------
# Handshake vectors
# ---------------------------------------------------------------------------


class HandshakeVectorTests(SynchronousTestCase):
    """One test per handshake vector of BOLT 8 appendix A (methods are
    generated below from the vector file)."""

    def run_vector(self, vector: dict[str, Any]) -> None:
        """Play the acts of ``vector`` against the side under test."""
        e_priv = bytes.fromhex(vector["e_priv"])
        ls_priv = bytes.fromhex(vector["ls_priv"])
        expected = vector["expected"]
        side: Initiator | Responder
        if vector["role"] == "initiator":
            side = Initiator(ls_priv, bytes.fromhex(vector["rs_pub"]), e_priv)
        else:
            side = Responder(ls_priv, e_priv)
        keys: TransportKeys | None = None
        for act in vector["acts"]:
            data = bytes.fromhex(act["hex"])
            self.assertEqual(len(data), act["length"])
            failing = (
                expected["outcome"] == "error" and act["act"] == expected["failing_act"]
            )
            if failing:
                self.assertEqual(act["direction"], "receive")
                self.assertEqual(data.hex(), expected["rejected_input_hex"])
                self.check_rejected(side, act["act"], data, expected)
                return
            keys = self.play_act(side, act["act"], act["direction"], data)
        self.assertEqual(expected["outcome"], "success")
        assert keys is not None
        self.assertEqual(keys.sk.hex(), expected["sk"])
        self.assertEqual(keys.rk.hex(), expected["rk"])
        self.assertEqual(keys.ck.hex(), expected["ck"])
        if isinstance(side, Initiator):
            self.assertEqual(keys.remote_static.hex(), vector["rs_pub"])
        else:
            # The initiator of the spec vectors has ls_priv = 0x11...11.
            self.assertEqual(keys.remote_static, _pubkey(b"\x11" * 32))

    def play_act(
        self, side: Initiator | Responder, act_no: int, direction: str, data: bytes
    ) -> TransportKeys | None:
        """Make or take one act and check produced bytes exactly."""
        if isinstance(side, Initiator):
            if (act_no, direction) == (1, "send"):
                self.assertEqual(side.act1().hex(), data.hex())
            elif (act_no, direction) == (2, "receive"):
                side.read_act2(data)
            elif (act_no, direction) == (3, "send"):
                act3, keys = side.act3()
                self.assertEqual(act3.hex(), data.hex())
                return keys
            else:
                self.fail(f"unexpected initiator act {act_no} {direction}")
        else:
            if (act_no, direction) == (1, "receive"):
                side.read_act1(data)
            elif (act_no, direction) == (2, "send"):
                self.assertEqual(side.act2().hex(), data.hex())
            elif (act_no, direction) == (3, "receive"):
                return side.read_act3(data)
            else:
                self.fail(f"unexpected responder act {act_no} {direction}")
        return None

    def check_rejected(
        self,
        side: Initiator | Responder,
        act_no: int,
        data: bytes,
        expected: dict[str, Any],
    ) -> None:
        """The act must fail with the exact class and code of the vector, and
        the handshake must not be able to go on afterwards."""
        label = expected["error_code"]
        cls = HANDSHAKE_ERRORS[label.split("_", 1)[1]]
        readers: dict[tuple[type, int], Callable[[bytes], object]] = {}
        if isinstance(side, Initiator):
            readers[(Initiator, 2)] = side.read_act2
        else:
            readers[(Responder, 1)] = side.read_act1
            readers[(Responder, 3)] = side.read_act3
        exc = self.assertRaises(cls, readers[(type(side), act_no)], data)
        # BadStaticKeyCiphertextError subclasses BadActTagError: insist on the
        # exact class so ACT3_BAD_TAG and ACT3_BAD_CIPHERTEXT stay distinct.
        self.assertIs(type(exc), cls)
        self.assertEqual(exc.code, label)
        self.assertEqual(exc.act, act_no)
        # A rejected act 1 or 2 must not let the caller produce the next act.
        if isinstance(side, Initiator):
            self.assertRaises(RuntimeError, side.act3)
        elif act_no == 1:
            self.assertRaises(RuntimeError, side.act2)


def _make_handshake_test(vector: dict[str, Any]) -> Callable[..., None]:
    def test(self: HandshakeVectorTests) -> None:
        self.run_vector(vector)

    return test


for _vector in VECTORS["handshake"]:
    _outcome = _vector["expected"]
    _attach(
        HandshakeVectorTests,
        _method_name("vector", _vector["name"]),
        _make_handshake_test(_vector),
        f"BOLT 8 vector {_vector['name']!r}: "
        + (
            "acts byte-exact and sk/rk/ck as the spec prints them."
            if _outcome["outcome"] == "success"
            else f"rejected with {_outcome['error_code']} and the handshake stops."
        ),
    )


class HandshakeTests(SynchronousTestCase):
    """Handshake behaviour beyond the spec vectors."""

    def test_act1_for_another_node_is_rejected(self) -> None:
        """A responder whose key is not the one act 1 was made for rejects it
        with ACT1_BAD_TAG (the MAC binds act 1 to the responder's id)."""
        initiator = Initiator(b"\x01" * 32, _pubkey(b"\x02" * 32))
        responder = Responder(b"\x03" * 32)
        exc = self.assertRaises(BadActTagError, responder.read_act1, initiator.act1())
        self.assertEqual(exc.code, "ACT1_BAD_TAG")

    def test_out_of_order_calls(self) -> None:
        """Calling an act before its predecessor raises RuntimeError instead of
        producing bytes from an incomplete state."""
        initiator = Initiator(b"\x01" * 32, _pubkey(b"\x02" * 32))
        self.assertRaises(RuntimeError, initiator.act3)
        self.assertRaises(RuntimeError, initiator.read_act2, b"\x00" * ACT1_SIZE)
        responder = Responder(b"\x02" * 32)
        self.assertRaises(RuntimeError, responder.act2)
        self.assertRaises(RuntimeError, responder.read_act3, b"\x00" * ACT3_SIZE)

    @settings(max_examples=40, deadline=None)
    @given(
        initiator_secret=st.integers(1, SECP256K1_N - 1),
        responder_secret=st.integers(1, SECP256K1_N - 1),
        messages=st.lists(st.binary(max_size=300), max_size=8),
    )
    def test_random_handshake(
        self, initiator_secret: int, responder_secret: int, messages: list[bytes]
    ) -> None:
        """A full handshake between random keys gives mirrored keys (initiator
        sk == responder rk and so on), each side learns the other's id, and a
        Transport built from the bare keys works both ways."""
        ls_i = initiator_secret.to_bytes(32, "big")
        ls_r = responder_secret.to_bytes(32, "big")
        initiator = Initiator(ls_i, _pubkey(ls_r))
        responder = Responder(ls_r)
        responder.read_act1(initiator.act1())
        initiator.read_act2(responder.act2())
        act3, keys_i = initiator.act3()
        keys_r = responder.read_act3(act3)
        self.assertEqual(keys_i.sk, keys_r.rk)
        self.assertEqual(keys_i.rk, keys_r.sk)
        self.assertEqual(keys_i.ck, keys_r.ck)
        self.assertNotEqual(keys_i.sk, keys_i.rk)
        self.assertEqual(keys_i.remote_static, _pubkey(ls_r))
        self.assertEqual(keys_r.remote_static, _pubkey(ls_i))
        t_i = Transport(keys_i.sk, keys_i.rk, keys_i.ck)
        t_r = Transport(keys_r.sk, keys_r.rk, keys_r.ck)
        for msg in messages:
            self.assertEqual(t_r.feed(t_i.encrypt(msg)), [msg])
            self.assertEqual(t_i.feed(t_r.encrypt(msg[::-1])), [msg[::-1]])


# ---------------------------------------------------------------------------
# Message vectors
# ---------------------------------------------------------------------------


class MessageVectorTests(SynchronousTestCase):
    """The spec's message test (indices 0, 1, 500, 501, 1000, 1001), for
    both directions, and its key rotations (methods generated below)."""

    def check_encrypt(self, index: int) -> None:
        """Encrypting 'hello' ``index + 1`` times gives the vector's bytes."""
        enc = Encryptor(MSG_SK, MSG_CK)
        frame = b""
        for _ in range(index + 1):
            frame = enc.encrypt(MSG_PLAINTEXT)
        self.assertEqual(frame.hex(), MSG_OUTPUTS[index].hex())

    def check_decrypt(self, index: int) -> None:
        """After the reference frames before it, the vector's frame decodes
        to 'hello' and nothing stays buffered."""
        dec = Decryptor(MSG_SK, MSG_CK)
        for frame in _reference_frames(index):
            self.assertEqual(dec.feed(frame), [MSG_PLAINTEXT])
        self.assertEqual(dec.feed(MSG_OUTPUTS[index]), [MSG_PLAINTEXT])
        self.assertEqual(dec.buffered, 0)
        self.assertFalse(dec.awaiting_body)

    def check_rotation(self, position: int, rotation: dict[str, Any]) -> None:
        """hkdf2(ck, k) gives the vector's next ck and k, rotations chain, and
        an Encryptor really uses k' from message ``after + 1`` on."""
        ck_in, k_in = bytes.fromhex(rotation["ck_in"]), bytes.fromhex(rotation["k_in"])
        ck_out, k_out = hkdf2(ck_in, k_in)
        self.assertEqual(ck_out.hex(), rotation["ck_out"])
        self.assertEqual(k_out.hex(), rotation["k_out"])
        if position == 0:
            self.assertEqual(rotation["ck_in"], MESSAGE["ck"])
            self.assertEqual(rotation["k_in"], MESSAGE["sk"])
        else:
            previous = MESSAGE["rotations"][position - 1]
            self.assertEqual(rotation["ck_in"], previous["ck_out"])
            self.assertEqual(rotation["k_in"], previous["k_out"])
        enc = Encryptor(MSG_SK, MSG_CK)
        for _ in range(rotation["after_message_index"] + 1):
            enc.encrypt(MSG_PLAINTEXT)
        self.assertEqual(enc.nonce, 0)
        frame = enc.encrypt(MSG_PLAINTEXT)
        aead = ChaCha20Poly1305(k_out)
        self.assertEqual(
            aead.decrypt(_spec_nonce(0), frame[:HEADER_SIZE], None),
            struct.pack(">H", len(MSG_PLAINTEXT)),
        )
        self.assertEqual(
            aead.decrypt(_spec_nonce(1), frame[HEADER_SIZE:], None), MSG_PLAINTEXT
        )

    def test_message_parts(self) -> None:
        """The separately printed length and body ciphertexts of messages 0
        and 1 are the two halves of the first two frames."""
        parts = MESSAGE["parts"]
        self.assertEqual(
            bytes.fromhex(parts[0]["ciphertext"] + parts[1]["ciphertext"]),
            MSG_OUTPUTS[0],
        )
        self.assertEqual(
            bytes.fromhex(parts[2]["ciphertext"] + parts[3]["ciphertext"]),
            MSG_OUTPUTS[1],
        )

    def test_hkdf2_matches_cryptography(self) -> None:
        """hkdf2 equals cryptography's RFC 5869 HKDF (SHA256, empty info, 64
        bytes split 32/32), including on the empty input used for sk/rk."""
        rng = random.Random(8)
        for ikm in (b"", rng.randbytes(32), rng.randbytes(33)):
            salt = rng.randbytes(32)
            okm = HKDF(hashes.SHA256(), 64, salt=salt, info=b"").derive(ikm)
            self.assertEqual(hkdf2(salt, ikm), (okm[:32], okm[32:]))


def _make_encrypt_test(index: int) -> Callable[..., None]:
    def test(self: MessageVectorTests) -> None:
        self.check_encrypt(index)

    return test


def _make_decrypt_test(index: int) -> Callable[..., None]:
    def test(self: MessageVectorTests) -> None:
        self.check_decrypt(index)

    return test


def _make_rotation_test(position: int, rotation: dict[str, Any]) -> Callable[..., None]:
    def test(self: MessageVectorTests) -> None:
        self.check_rotation(position, rotation)

    return test


for _index in sorted(MSG_OUTPUTS):
    _attach(
        MessageVectorTests,
        f"test_encrypt_message_{_index:04d}",
        _make_encrypt_test(_index),
        f"The Encryptor's frame number {_index} equals the spec's bytes.",
    )
    _attach(
        MessageVectorTests,
        f"test_decrypt_message_{_index:04d}",
        _make_decrypt_test(_index),
        f"The Decryptor decodes the spec's frame number {_index} to 'hello'.",
    )

for _position, _rotation in enumerate(MESSAGE["rotations"]):
    _attach(
        MessageVectorTests,
        f"test_rotation_after_message_{_rotation['after_message_index']:04d}",
        _make_rotation_test(_position, _rotation),
        f"Key rotation after message {_rotation['after_message_index']}: hkdf2 "
        "gives the spec's ck'/k', and the Encryptor switches to k'.",
    )


# ---------------------------------------------------------------------------
# Derived transport cases and sender limits
# ---------------------------------------------------------------------------


class DerivedCaseTests(SynchronousTestCase):
    """The derived decryptor cases and sender limits (generated below)."""

    def check_case(self, case: dict[str, Any]) -> None:
        """Feed the case's bytes to a fresh receiver and compare outcomes."""
        data = bytes.fromhex(case["input_hex"])
        dec = Decryptor(MSG_SK, MSG_CK)
        kind = case["expected"]
        if kind == "error":
            cls = TRANSPORT_ERRORS[case["error_code"]]
            exc = self.assertRaises(cls, dec.feed, data)
            self.assertEqual(exc.code, case["error_code"])
            self.assertEqual(dec.buffered, 0)
        elif kind == "error_after_messages":
            # In one read the error wins: feed() raises for the whole chunk.
            exc = self.assertRaises(
                TRANSPORT_ERRORS[case["error_code"]],
                Decryptor(MSG_SK, MSG_CK).feed,
                data,
            )
            self.assertEqual(exc.code, case["error_code"])
            # Delivered a byte at a time, the good messages come out first.
            got: list[bytes] = []
            failure: TransportError | None = None
            for i in range(len(data)):
                try:
                    got.extend(dec.feed(data[i : i + 1]))
                except TransportError as e:
                    failure = e
                    break
            self.assertEqual(got, [MSG_PLAINTEXT] * case["messages_before_error"])
            assert failure is not None
            self.assertIs(type(failure), TRANSPORT_ERRORS[case["error_code"]])
        elif kind == "incomplete":
            self.assertTrue(FIRST_FRAME.startswith(data))
            self.assertEqual(dec.feed(data), [])
            # Once the header is authenticated it is consumed: ``buffered``
            # then counts only the body bytes held.
            header_read = len(data) >= HEADER_SIZE
            self.assertEqual(dec.awaiting_body, header_read)
            self.assertEqual(
                dec.buffered, len(data) - HEADER_SIZE if header_read else len(data)
            )
            # The rest of the frame completes it: nothing was lost.
            self.assertEqual(dec.feed(FIRST_FRAME[len(data) :]), [MSG_PLAINTEXT])
        elif kind == "messages":
            self.assertEqual(
                dec.feed(data), [bytes.fromhex(m) for m in case["messages"]]
            )
            self.assertEqual(dec.buffered, 0)
        else:
            self.fail(f"unknown expectation {kind!r}")

    def check_limit(self, case: dict[str, Any]) -> None:
        """Encrypt a message of the case's length and check the outcome."""
        enc, dec = _pair()
        msg = bytes(range(256)) * (case["length"] // 256) + b"\x5a" * (
            case["length"] % 256
        )
        self.assertEqual(len(msg), case["length"])
        if case["expected"] == "ok":
            frame = enc.encrypt(msg)
            self.assertEqual(len(frame), case["wire_length"])
            self.assertEqual(dec.feed(frame), [msg])
        else:
            exc = self.assertRaises(MessageTooLargeError, enc.encrypt, msg)
            self.assertEqual(exc.code, case["error_code"])
            self.assertIsInstance(exc, ValueError)
            # The refused message used no nonce: the next frame is frame 0.
            self.assertEqual(enc.encrypt(MSG_PLAINTEXT), FIRST_FRAME)


def _make_case_test(case: dict[str, Any]) -> Callable[..., None]:
    def test(self: DerivedCaseTests) -> None:
        self.check_case(case)

    return test


def _make_limit_test(case: dict[str, Any]) -> Callable[..., None]:
    def test(self: DerivedCaseTests) -> None:
        self.check_limit(case)

    return test


for _case in VECTORS["derived_message_cases"]["cases"]:
    _attach(
        DerivedCaseTests,
        _method_name("case", _case["name"]),
        _make_case_test(_case),
        f"Derived case {_case['name']!r}: expected {_case['expected']}"
        + (f" ({_case['error_code']})." if "error_code" in _case else "."),
    )

for _case in VECTORS["derived_message_cases"]["sender_limits"]:
    _attach(
        DerivedCaseTests,
        _method_name("limit", _case["name"]),
        _make_limit_test(_case),
        f"Sender limit {_case['name']!r}: expected {_case['expected']}.",
    )


# ---------------------------------------------------------------------------
# Decryptor state and key hygiene
# ---------------------------------------------------------------------------


class DecryptorStateTests(SynchronousTestCase):
    """The incremental decoder's buffering and failure state."""

    def test_refuses_input_after_error(self) -> None:
        """After a bad frame the decoder raises TransportError for any further
        input, even a frame that would have been valid, and holds no bytes."""
        dec = Decryptor(MSG_SK, MSG_CK)
        tampered = bytes([FIRST_FRAME[0] ^ 1]) + FIRST_FRAME[1:]
        self.assertRaises(BadLengthTagError, dec.feed, tampered)
        exc = self.assertRaises(TransportError, dec.feed, FIRST_FRAME)
        self.assertIs(type(exc), TransportError)
        self.assertRaises(TransportError, dec.feed, b"")
        self.assertEqual(dec.buffered, 0)

    def test_refuses_input_after_body_error(self) -> None:
        """A bad body MAC also poisons the decoder for good."""
        dec = Decryptor(MSG_SK, MSG_CK)
        tampered = FIRST_FRAME[:-1] + bytes([FIRST_FRAME[-1] ^ 0x80])
        self.assertRaises(BadBodyTagError, dec.feed, tampered)
        self.assertRaises(TransportError, dec.feed, MSG_OUTPUTS[1])

    def test_17_byte_header_buffers_silently(self) -> None:
        """17 of the 18 header bytes give no message and no error; the 18th
        makes the decoder wait for a body; the body completes the message."""
        dec = Decryptor(MSG_SK, MSG_CK)
        self.assertEqual(dec.feed(FIRST_FRAME[:17]), [])
        self.assertEqual(dec.buffered, 17)
        self.assertFalse(dec.awaiting_body)
        self.assertEqual(dec.feed(FIRST_FRAME[17:18]), [])
        self.assertTrue(dec.awaiting_body)
        self.assertEqual(dec.feed(FIRST_FRAME[18:]), [MSG_PLAINTEXT])
        self.assertFalse(dec.awaiting_body)
        self.assertEqual(dec.buffered, 0)

    def test_empty_feed(self) -> None:
        """Feeding no bytes returns no messages and changes nothing."""
        dec = Decryptor(MSG_SK, MSG_CK)
        self.assertEqual(dec.feed(b""), [])
        self.assertEqual(dec.feed(FIRST_FRAME), [MSG_PLAINTEXT])

    @settings(max_examples=60, deadline=None)
    @given(
        filler=st.sampled_from([0, 2, 990, 996]),
        sizes=st.lists(st.integers(0, 2000), max_size=40),
        seed=st.integers(0, 2**32 - 1),
        data=st.data(),
    )
    def test_any_split_decodes(
        self, filler: int, sizes: list[int], seed: int, data: st.DataObject
    ) -> None:
        """A stream of random messages cut at arbitrary points decodes to the
        same messages in order, also across a key rotation (pairs started
        after 990 or 996 nonces)."""
        enc, dec = _pair()
        _advance(enc, dec, filler)
        rng = random.Random(seed)
        messages = [rng.randbytes(size) for size in sizes]
        stream = b"".join(enc.encrypt(m) for m in messages)
        cuts = sorted(
            data.draw(st.lists(st.integers(0, len(stream)), max_size=30), "cuts")
        )
        got: list[bytes] = []
        start = 0
        for cut in [*cuts, len(stream)]:
            got.extend(dec.feed(stream[start:cut]))
            start = cut
        self.assertEqual(got, messages)
        self.assertEqual(dec.buffered, 0)
        self.assertFalse(dec.awaiting_body)
        self.assertEqual(dec.nonce, enc.nonce)

    @settings(max_examples=200, deadline=None)
    @given(
        filler=st.sampled_from([0, 2, 998]),
        size=st.integers(0, 2000),
        seed=st.integers(0, 2**32 - 1),
        data=st.data(),
    )
    def test_any_bit_flip_is_rejected(
        self, filler: int, size: int, seed: int, data: st.DataObject
    ) -> None:
        """Flipping any one bit of an encrypted frame gives BadLengthTagError
        (in the 18 header bytes) or BadBodyTagError (after), never a
        plaintext."""
        enc, dec = _pair()
        _advance(enc, dec, filler)
        frame = bytearray(enc.encrypt(random.Random(seed).randbytes(size)))
        self.assertEqual(len(frame), HEADER_SIZE + size + MAC_SIZE)
        index = data.draw(st.integers(0, len(frame) - 1), "index")
        bit = data.draw(st.integers(0, 7), "bit")
        frame[index] ^= 1 << bit
        expected = BadLengthTagError if index < HEADER_SIZE else BadBodyTagError
        exc = self.assertRaises(expected, dec.feed, bytes(frame))
        self.assertEqual(exc.code, expected.code)


class KeyHygieneTests(SynchronousTestCase):
    """Keys must never reach a log line through repr or str."""

    SK = bytes(range(0x40, 0x60))
    RK = bytes(range(0x60, 0x80))
    CK = bytes(range(0xA0, 0xC0))

    def assert_no_key(self, text: str) -> None:
        """``text`` shows none of the keys, in hex or as a bytes literal."""
        for key in (self.SK, self.RK, self.CK):
            self.assertNotIn(key.hex(), text.lower())
            self.assertNotIn(repr(key), text)
            self.assertNotIn(key.hex()[:16], text.lower())

    def test_transport_keys_repr(self) -> None:
        """TransportKeys' repr and str show no key, but do show the peer id."""
        remote = _pubkey(b"\x07" * 32)
        keys = TransportKeys(self.SK, self.RK, self.CK, remote)
        self.assert_no_key(repr(keys))
        self.assert_no_key(str(keys))
        self.assertIn("TransportKeys", repr(keys))

    def test_transport_repr(self) -> None:
        """Transport's repr, and its two directions', show no key, also
        after a key rotation."""
        transport = Transport(self.SK, self.RK, self.CK)
        for _ in range(501):
            transport.encrypt(b"")
        for obj in (transport, transport.encryptor, transport.decryptor):
            self.assert_no_key(repr(obj))
            self.assert_no_key(str(obj))

    def test_transport_keys_size_checked(self) -> None:
        """A key of the wrong length is refused when the keys are built."""
        self.assertRaises(ValueError, TransportKeys, self.SK[:31], self.RK, self.CK)
        self.assertRaises(ValueError, Transport, self.SK, self.RK, self.CK + b"\x00")

    def test_error_codes_are_stable(self) -> None:
        """The base and transport error classes carry their documented
        labels, so logs and tests can match on .code."""
        self.assertEqual(Bolt8Error("x").code, "BOLT8_ERROR")
        self.assertEqual(BadLengthTagError("x").code, "LENGTH_BAD_TAG")
        self.assertEqual(BadBodyTagError("x").code, "BODY_BAD_TAG")
        self.assertEqual(BadActTagError("x", 2).code, "ACT2_BAD_TAG")


class FailureKeepsEarlierMessagesTests(SynchronousTestCase):
    """A bad frame must not take the good frames before it down with it."""

    def test_messages_before_bad_frame_are_attached(self) -> None:
        """Two valid frames and a tampered one in one feed: the error carries
        the two messages that authenticated, in order."""
        enc = noise.Encryptor(bytes(32), bytes(range(32)))
        dec = noise.Decryptor(bytes(32), bytes(range(32)))
        good = enc.encrypt(b"\x00\x11one") + enc.encrypt(b"\x00\x11two")
        bad = bytearray(enc.encrypt(b"three"))
        bad[0] ^= 1
        with self.assertRaises(noise.BadLengthTagError) as ctx:
            dec.feed(good + bytes(bad))
        self.assertEqual(ctx.exception.messages, [b"\x00\x11one", b"\x00\x11two"])

    def test_rejected_act_leaves_handshake_failed(self) -> None:
        """After a rejected act 2 the initiator refuses to go on."""
        init = noise.Initiator(bytes([1] * 32), bytes.fromhex(
            "028d7500dd4c12685d1f568b4c2b5048e8534b873319f3a8daa612b469132ec7f7"))
        init.act1()
        with self.assertRaises(noise.BadVersionError):
            init.read_act2(b"\x01" + bytes(49))
        with self.assertRaises(RuntimeError):
            init.read_act2(b"\x00" + bytes(49))
        with self.assertRaises(RuntimeError):
            init.act3()
