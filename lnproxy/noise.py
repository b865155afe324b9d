"""BOLT 8 (Noise_XK_secp256k1_ChaChaPoly_SHA256), sans-IO.

Nothing here touches a socket, a reactor or a clock: every step takes bytes
and returns bytes (or raises).  The same code serves three callers:

* the client library, which runs the whole initiator handshake and then hands
  the transport keys to the proxy;
* the proxy, which never runs a handshake of its own but relays acts 1-3 and
  then builds a :class:`Transport` from the ``(sk, rk, ck)`` it was given;
* tests and demos, which run the responder side as a local Lightning peer.

The handshake is split into one method per act so that a relay can stop
between acts (the proxy sits between act 1 and act 3 for as long as the
client takes to compute act 3).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "ACT1_SIZE",
    "ACT2_SIZE",
    "ACT3_SIZE",
    "HEADER_SIZE",
    "MAC_SIZE",
    "MAX_MESSAGE_SIZE",
    "ROTATE_EVERY",
    "Bolt8Error",
    "HandshakeError",
    "ShortActError",
    "BadVersionError",
    "BadPublicKeyError",
    "BadActTagError",
    "TransportError",
    "BadLengthTagError",
    "BadBodyTagError",
    "MessageTooLargeError",
    "TransportKeys",
    "Initiator",
    "Responder",
    "Encryptor",
    "Decryptor",
    "Transport",
    "TransportSnapshot",
    "check_act_shape",
    "hkdf2",
]

PROTOCOL_NAME = b"Noise_XK_secp256k1_ChaChaPoly_SHA256"
PROLOGUE = b"lightning"
ACT1_SIZE = 50
ACT2_SIZE = 50
ACT3_SIZE = 66
MAC_SIZE = 16
HEADER_SIZE = 2 + MAC_SIZE
MAX_MESSAGE_SIZE = 65535
#: A key is rotated once it has been used for this many nonces (500 messages).
ROTATE_EVERY = 1000

_nonce = struct.Struct("<4xQ").pack
_NONCES = tuple(_nonce(n) for n in range(ROTATE_EVERY))
_u16 = struct.Struct(">H")


class Bolt8Error(Exception):
    """Base class of every BOLT 8 failure.

    :ivar code: a stable, spec-like label (``ACT2_BAD_TAG``,
        ``LENGTH_BAD_TAG``...) for logs and tests.
    """

    code = "BOLT8_ERROR"

    def __init__(self, message: str, act: int | None = None) -> None:
        super().__init__(message)
        self.act = act
        if act is not None:
            self.code = f"ACT{act}_{self.code}"


class HandshakeError(Bolt8Error):
    """An act was rejected; the connection must be closed."""


class ShortActError(HandshakeError):
    """An act was shorter than its fixed size (short read or EOF)."""

    code = "READ_FAILED"


class BadVersionError(HandshakeError):
    """An act's version byte was not 0."""

    code = "BAD_VERSION"


class BadPublicKeyError(HandshakeError):
    """An ephemeral or static key was not a valid compressed secp256k1 point."""

    code = "BAD_PUBKEY"


class BadActTagError(HandshakeError):
    """An act's Poly1305 MAC did not verify."""

    code = "BAD_TAG"


class BadStaticKeyCiphertextError(BadActTagError):
    """Act 3's encrypted static key did not authenticate."""

    code = "BAD_CIPHERTEXT"


class TransportError(Bolt8Error):
    """A transport frame was rejected; no resynchronisation is possible.

    :ivar messages: whole messages that the same :meth:`Decryptor.feed` call
        decrypted before the bad frame.  They are authentic; a host should
        deliver them before it closes the connection (a peer's ``error``
        followed by garbage in one TCP read must not be lost).
    """

    messages: list[bytes] = []


class BadLengthTagError(TransportError):
    """The encrypted 2-byte length header did not authenticate."""

    code = "LENGTH_BAD_TAG"


class BadBodyTagError(TransportError):
    """The encrypted message body did not authenticate."""

    code = "BODY_BAD_TAG"


class MessageTooLargeError(Bolt8Error, ValueError):
    """A message longer than 65535 bytes was given to :meth:`Encryptor.encrypt`."""

    code = "MESSAGE_TOO_LARGE"


def hkdf2(salt: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """RFC 5869 HKDF-SHA256 with empty info, 64 bytes split into two keys.

    Written with :mod:`hmac` directly: it runs on every key rotation and
    ``cryptography``'s HKDF object costs several times more to set up.
    """
    prk = hmac.digest(salt, ikm, "sha256")
    t1 = hmac.digest(prk, b"\x01", "sha256")
    t2 = hmac.digest(prk, t1 + b"\x02", "sha256")
    return t1, t2


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _parse_pubkey(data: bytes, act: int | None) -> coincurve.PublicKey:
    """Parse a 33-byte compressed point or raise :class:`BadPublicKeyError`."""
    if len(data) != 33 or data[0] not in (2, 3):
        raise BadPublicKeyError("not a compressed secp256k1 point", act)
    try:
        return coincurve.PublicKey(data)
    except ValueError:
        raise BadPublicKeyError("not a point on secp256k1", act) from None


def _ecdh(secret: coincurve.PrivateKey, point: bytes) -> bytes:
    # coincurve's ecdh is libsecp256k1's default: SHA256 of the compressed
    # shared point, which is exactly BOLT 8's ECDH.
    return secret.ecdh(point)


def check_act_shape(act: bytes, act_no: int) -> None:
    """Check what can be checked of act 1 or 2 without knowing its keys.

    A relay (the proxy) cannot verify the MAC of act 2, but it can refuse a
    short act, a non-zero version and an ephemeral key that is not a point.

    :raise HandshakeError: when the act is malformed.
    """
    if len(act) != ACT1_SIZE:
        raise ShortActError(f"act is {len(act)} bytes, expected {ACT1_SIZE}", act_no)
    if act[0] != 0:
        raise BadVersionError(f"unsupported handshake version {act[0]}", act_no)
    _parse_pubkey(act[1:34], act_no)


@dataclass(frozen=True)
class TransportKeys:
    """The result of a handshake: what the proxy needs to own a connection.

    ``repr`` never shows the keys, so a stray log line cannot leak them.

    :ivar sk: sending key of the side that holds these keys.
    :ivar rk: receiving key.
    :ivar ck: the final chaining key, the starting chaining key of both
        directions.
    :ivar remote_static: the peer's static public key (33 bytes).
    """

    sk: bytes = field(repr=False)
    rk: bytes = field(repr=False)
    ck: bytes = field(repr=False)
    remote_static: bytes = b""

    def __post_init__(self) -> None:
        for name in ("sk", "rk", "ck"):
            if len(getattr(self, name)) != 32:
                raise ValueError(f"{name} must be 32 bytes")


class _SymmetricState:
    """The handshake hash and chaining key shared by both roles."""

    def __init__(self, responder_static: bytes) -> None:
        self.ck = _sha256(PROTOCOL_NAME)
        self.h = _sha256(_sha256(self.ck + PROLOGUE) + responder_static)

    def mix_hash(self, data: bytes) -> None:
        self.h = _sha256(self.h + data)

    def mix_key(self, ikm: bytes) -> bytes:
        self.ck, temp_k = hkdf2(self.ck, ikm)
        return temp_k

    def encrypt(self, key: bytes, nonce: int, plaintext: bytes) -> bytes:
        c = ChaCha20Poly1305(key).encrypt(_nonce(nonce), plaintext, self.h)
        self.mix_hash(c)
        return c

    def write_ephemeral_act(
        self, e: coincurve.PrivateKey, remote: bytes
    ) -> tuple[bytes, bytes]:
        """Act 1 or act 2 from the sending side.

        :param e: our ephemeral key.
        :param remote: the key to run ECDH with (the responder's static key
            for act 1, the initiator's ephemeral key for act 2).
        :return: the 50-byte act and the temporary key it was sealed with.
        """
        e_pub = e.public_key.format()
        self.mix_hash(e_pub)
        temp_k = self.mix_key(_ecdh(e, remote))
        return b"\x00" + e_pub + self.encrypt(temp_k, 0, b""), temp_k

    def read_ephemeral_act(
        self, act: bytes, act_no: int, secret: coincurve.PrivateKey
    ) -> tuple[bytes, bytes]:
        """Act 1 or act 2 from the receiving side.

        :param secret: our key to run ECDH with (static for act 1, ephemeral
            for act 2).
        :return: the sender's ephemeral key and the temporary key.
        :raise HandshakeError: when the act is malformed or its MAC fails.
        """
        check_act_shape(act, act_no)
        re = act[1:34]
        self.mix_hash(re)
        temp_k = self.mix_key(_ecdh(secret, re))
        try:
            self.decrypt(temp_k, 0, act[34:])
        except InvalidTag:
            raise BadActTagError(f"act {act_no} MAC check failed", act_no) from None
        return re, temp_k

    def decrypt(self, key: bytes, nonce: int, ciphertext: bytes) -> bytes:
        """Decrypt with the handshake hash as associated data.

        :raise InvalidTag: on a bad MAC (the caller maps it to an act error).
        """
        p = ChaCha20Poly1305(key).decrypt(_nonce(nonce), ciphertext, self.h)
        self.mix_hash(ciphertext)
        return p


def _private_key(secret: bytes | None) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(secret if secret is not None else os.urandom(32))


class Initiator:
    """The initiator's side of the handshake: act 1, read act 2, act 3.

    :param local_secret: the node's 32-byte static secret key.
    :param remote_static: the responder's 33-byte node id.
    :param ephemeral_secret: only for test vectors; random otherwise.
    """

    def __init__(
        self,
        local_secret: bytes,
        remote_static: bytes,
        ephemeral_secret: bytes | None = None,
    ) -> None:
        self._ls = coincurve.PrivateKey(local_secret)
        self._rs = _parse_pubkey(remote_static, None).format()
        self._e = _private_key(ephemeral_secret)
        self._state = _SymmetricState(self._rs)
        self._temp_k2: bytes | None = None
        self._re: bytes | None = None
        self._step = 1

    def act1(self) -> bytes:
        """Return act 1 (50 bytes)."""
        if self._step != 1:
            raise RuntimeError("act1() called out of order")
        act1, _ = self._state.write_ephemeral_act(self._e, self._rs)
        self._step = 2
        return act1

    def read_act2(self, act2: bytes) -> None:
        """Process act 2 from the responder.

        :raise HandshakeError: when act 2 is short, of another version, carries
            a bad key or a bad MAC.
        """
        if self._step != 2:
            raise RuntimeError("read_act2() called out of order")
        self._step = -1  # stays so unless the act is accepted
        self._re, self._temp_k2 = self._state.read_ephemeral_act(act2, 2, self._e)
        self._step = 3

    def act3(self) -> tuple[bytes, TransportKeys]:
        """Return act 3 (66 bytes) and the transport keys."""
        if self._step != 3 or self._temp_k2 is None or self._re is None:
            raise RuntimeError("act3() called out of order")
        st = self._state
        c = st.encrypt(self._temp_k2, 1, self._ls.public_key.format())
        temp_k3 = st.mix_key(_ecdh(self._ls, self._re))
        t = ChaCha20Poly1305(temp_k3).encrypt(_nonce(0), b"", st.h)
        sk, rk = hkdf2(st.ck, b"")
        self._step = 4
        return b"\x00" + c + t, TransportKeys(sk, rk, st.ck, self._rs)


class Responder:
    """The responder's side of the handshake: read act 1, act 2, read act 3.

    :param local_secret: the responder's 32-byte static secret key.
    :param ephemeral_secret: only for test vectors; random otherwise.
    """

    def __init__(self, local_secret: bytes, ephemeral_secret: bytes | None = None):
        self._ls = coincurve.PrivateKey(local_secret)
        self._e = _private_key(ephemeral_secret)
        self._state = _SymmetricState(self._ls.public_key.format())
        self._re: bytes | None = None
        self._temp_k2: bytes | None = None
        self._step = 1

    def read_act1(self, act1: bytes) -> None:
        """Process act 1.

        :raise HandshakeError: when act 1 is malformed or was not made for
            this node (bad MAC).
        """
        if self._step != 1:
            raise RuntimeError("read_act1() called out of order")
        self._step = -1  # stays so unless the act is accepted
        self._re, _ = self._state.read_ephemeral_act(act1, 1, self._ls)
        self._step = 2

    def act2(self) -> bytes:
        """Return act 2 (50 bytes)."""
        if self._step != 2 or self._re is None:
            raise RuntimeError("act2() called out of order")
        act2, self._temp_k2 = self._state.write_ephemeral_act(self._e, self._re)
        self._step = 3
        return act2

    def read_act3(self, act3: bytes) -> TransportKeys:
        """Process act 3 and return the transport keys.

        ``remote_static`` of the result is the initiator's node id.

        :raise HandshakeError: when act 3 is malformed or does not
            authenticate.
        """
        if self._step != 3 or self._temp_k2 is None:
            raise RuntimeError("read_act3() called out of order")
        self._step = -1  # stays so unless the act is accepted
        if len(act3) != ACT3_SIZE:
            raise ShortActError(f"act is {len(act3)} bytes, expected {ACT3_SIZE}", 3)
        if act3[0] != 0:
            raise BadVersionError(f"unsupported handshake version {act3[0]}", 3)
        st = self._state
        try:
            rs = st.decrypt(self._temp_k2, 1, act3[1:50])
        except InvalidTag:
            raise BadStaticKeyCiphertextError(
                "act 3 static key ciphertext failed to authenticate", 3
            ) from None
        _parse_pubkey(rs, 3)
        temp_k3 = st.mix_key(_ecdh(self._e, rs))
        try:
            ChaCha20Poly1305(temp_k3).decrypt(_nonce(0), act3[50:], st.h)
        except InvalidTag:
            raise BadActTagError("act 3 MAC check failed", 3) from None
        rk, sk = hkdf2(st.ck, b"")
        self._step = 4
        return TransportKeys(sk, rk, st.ck, rs)


class _CipherState:
    """One direction of the transport: key, chaining key and nonce.

    Holds a single :class:`ChaCha20Poly1305` object and rebuilds it only on
    key rotation: building one per call halves throughput.
    """

    __slots__ = ("_ck", "_key", "_aead", "nonce")

    def __init__(self, key: bytes, ck: bytes) -> None:
        if len(key) != 32 or len(ck) != 32:
            raise ValueError("key and chaining key must be 32 bytes")
        self._ck = ck
        self._key = key
        self._aead = ChaCha20Poly1305(key)
        self.nonce = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} nonce={self.nonce}>"

    def _rotate(self) -> None:
        self._ck, self._key = hkdf2(self._ck, self._key)
        self._aead = ChaCha20Poly1305(self._key)
        self.nonce = 0


class Encryptor(_CipherState):
    """Sending direction: turns a message into one wire frame."""

    __slots__ = ()

    def encrypt(self, msg: bytes) -> bytes:
        """Return the whole frame (encrypted length + MAC, body + MAC) as one
        bytes object, so the transport writes it once.

        :raise MessageTooLargeError: when ``msg`` is longer than 65535 bytes.
        """
        size = len(msg)
        if size > MAX_MESSAGE_SIZE:
            raise MessageTooLargeError(
                f"message of {size} bytes exceeds {MAX_MESSAGE_SIZE}"
            )
        n = self.nonce
        enc = self._aead.encrypt
        frame = enc(_NONCES[n], _u16.pack(size), None) + enc(_NONCES[n + 1], msg, None)
        n += 2
        if n == ROTATE_EVERY:
            self._rotate()
        else:
            self.nonce = n
        return frame


class Decryptor(_CipherState):
    """Receiving direction: an incremental decoder.

    Feed it bytes in any chunking; it returns every whole message they
    complete.  Partial frames stay buffered.  After an error the decoder is
    unusable: BOLT 8 offers no way to resynchronise.
    """

    __slots__ = ("_buf", "_body_size", "_failed")

    def __init__(self, key: bytes, ck: bytes) -> None:
        super().__init__(key, ck)
        self._buf = b""
        #: Size of the body (MAC included) we wait for, or -1 while we wait
        #: for a length header.
        self._body_size = -1
        self._failed = False

    @property
    def awaiting_body(self) -> bool:
        """True once a length header has been read and its body is pending.

        A host uses this to bound how long a peer may hold a frame open.
        """
        return self._body_size >= 0

    @property
    def buffered(self) -> int:
        """Undecrypted bytes held: a partial header, or (once a header was
        authenticated, see :attr:`awaiting_body`) the part of its body that
        has arrived."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Take bytes from the wire, return the messages they complete.

        :raise BadLengthTagError: a length header failed to authenticate.
        :raise BadBodyTagError: a body failed to authenticate.
        """
        if self._failed:
            raise TransportError("decoder already failed")
        buf = self._buf + data if self._buf else data
        end = len(buf)
        pos = 0
        out: list[bytes] = []
        body = self._body_size
        aead = self._aead
        n = self.nonce
        try:
            while True:
                if body < 0:
                    if end - pos < HEADER_SIZE:
                        break
                    try:
                        hdr = aead.decrypt(_NONCES[n], buf[pos : pos + HEADER_SIZE], None)
                    except InvalidTag:
                        raise BadLengthTagError("length MAC check failed") from None
                    n += 1
                    pos += HEADER_SIZE
                    body = _u16.unpack(hdr)[0] + MAC_SIZE
                if end - pos < body:
                    break
                try:
                    msg = aead.decrypt(_NONCES[n], buf[pos : pos + body], None)
                except InvalidTag:
                    raise BadBodyTagError("message MAC check failed") from None
                n += 1
                pos += body
                body = -1
                out.append(msg)
                if n == ROTATE_EVERY:
                    self._rotate()
                    aead = self._aead
                    n = 0
        except TransportError as e:
            self._failed = True
            self._buf = b""
            e.messages = out
            raise
        self.nonce = n
        self._body_size = body
        self._buf = buf[pos:] if pos < end else b""
        return out


@dataclass(frozen=True, slots=True)
class TransportSnapshot:
    """The whole state of a :class:`Transport`, as a value.

    Keys are secrets: :func:`repr` shows only the nonces and the buffered
    byte count, never a key.  :mod:`lnproxy.snapshot` encodes it to bytes.

    :ivar sk: the current sending key (rotated keys included).
    :ivar sck: the sending direction's chaining key.
    :ivar snonce: the next sending nonce (0-998, always even).
    :ivar rk: the current receiving key.
    :ivar rck: the receiving direction's chaining key.
    :ivar rnonce: the next receiving nonce.
    :ivar buffered: bytes read from the wire and not yet decrypted: a
        partial length header, or the part of a body that has arrived.
    :ivar body_size: the size (MAC included) of the body being waited for
        when a length header was already decrypted, else -1.
    """

    sk: bytes = field(repr=False)
    sck: bytes = field(repr=False)
    snonce: int
    rk: bytes = field(repr=False)
    rck: bytes = field(repr=False)
    rnonce: int
    buffered: bytes = field(repr=False)
    body_size: int

    def __post_init__(self) -> None:
        for name in ("sk", "sck", "rk", "rck"):
            if len(getattr(self, name)) != 32:
                raise ValueError(f"{name} must be 32 bytes")
        for name in ("snonce", "rnonce"):
            if not 0 <= getattr(self, name) < ROTATE_EVERY:
                raise ValueError(f"{name} must be in 0-{ROTATE_EVERY - 1}")
        if not (self.body_size == -1 or MAC_SIZE <= self.body_size <= (
            MAX_MESSAGE_SIZE + MAC_SIZE
        )):
            raise ValueError(f"body size {self.body_size} is impossible")
        limit = HEADER_SIZE if self.body_size < 0 else self.body_size
        if len(self.buffered) >= limit:
            raise ValueError("buffered bytes hold a whole frame part")


class Transport:
    """Both directions of an established BOLT 8 connection.

    :param sk: sending key.
    :param rk: receiving key.
    :param ck: chaining key; both directions start from it.
    """

    __slots__ = ("encryptor", "decryptor")

    def __init__(self, sk: bytes, rk: bytes, ck: bytes) -> None:
        self.encryptor = Encryptor(sk, ck)
        self.decryptor = Decryptor(rk, ck)

    @classmethod
    def from_keys(cls, keys: TransportKeys) -> Transport:
        """Build the transport of a finished handshake."""
        return cls(keys.sk, keys.rk, keys.ck)

    def __repr__(self) -> str:
        return "<Transport>"

    def snapshot(self) -> TransportSnapshot:
        """Capture both directions (keys, chaining keys, nonces, buffered
        undecrypted bytes and a decrypted-but-unanswered length header).

        The transport goes on working; a :meth:`from_snapshot` of the value
        continues both byte streams exactly where this one stands.

        :raise TransportError: when the decoder already failed.
        """
        e, d = self.encryptor, self.decryptor
        if d._failed:
            raise TransportError("decoder already failed")
        return TransportSnapshot(
            e._key, e._ck, e.nonce, d._key, d._ck, d.nonce, d._buf, d._body_size
        )

    @classmethod
    def from_snapshot(cls, snap: TransportSnapshot) -> Transport:
        """A transport that continues exactly where ``snap`` was taken."""
        t = cls.__new__(cls)
        t.encryptor = Encryptor(snap.sk, snap.sck)
        t.encryptor.nonce = snap.snonce
        d = t.decryptor = Decryptor(snap.rk, snap.rck)
        d.nonce = snap.rnonce
        d._buf = snap.buffered
        d._body_size = snap.body_size
        return t

    def encrypt(self, msg: bytes) -> bytes:
        """See :meth:`Encryptor.encrypt`."""
        return self.encryptor.encrypt(msg)

    def feed(self, data: bytes) -> list[bytes]:
        """See :meth:`Decryptor.feed`."""
        return self.decryptor.feed(data)
