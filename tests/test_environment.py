"""Checks that the installed crypto libraries actually work.

pyln-proto 26.6.9 (our interop peer, a test dependency) depends on
``coincurve-cp314-fix``, a fork that installs into the same ``coincurve/``
package directory as the real ``coincurve`` and overwrites its files
(including the compiled libsecp256k1 binding) without pip noticing: both
distributions stay listed and ``pip check`` is happy.  If the two builds ever
disagree, every BOLT 8 handshake and every signature would be computed by
whichever copy won.  These tests fail loudly on a broken install instead of
letting it pass silently: the expected values come from a small pure-Python
secp256k1 implementation here and from the BOLT 8 spec, not from coincurve.
"""

from __future__ import annotations

import hashlib

import coincurve
import cryptography
from coincurve.ecdsa import (
    cdata_to_der,
    der_to_cdata,
    deserialize_compact,
    serialize_compact,
)
from twisted.trial.unittest import SynchronousTestCase

# secp256k1 domain parameters (SEC 2, section 2.4.1).
P = 2**256 - 2**32 - 977
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
G = (
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
)

Point = tuple[int, int] | None


def _add(a: Point, b: Point) -> Point:
    """Affine point addition on secp256k1 (None is the point at infinity)."""
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P == 0:
        return None
    if a == b:
        slope = 3 * a[0] * a[0] * pow(2 * a[1], -1, P) % P
    else:
        slope = (b[1] - a[1]) * pow(b[0] - a[0], -1, P) % P
    x = (slope * slope - a[0] - b[0]) % P
    return x, (slope * (a[0] - x) - a[1]) % P


def _multiply(k: int, point: Point) -> Point:
    """Double-and-add scalar multiplication (slow, clear, independent)."""
    result: Point = None
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def _compress(point: Point) -> bytes:
    assert point is not None
    return bytes([2 + (point[1] & 1)]) + point[0].to_bytes(32, "big")


class CoincurveTests(SynchronousTestCase):
    """coincurve (whichever build is installed) computes correct results."""

    A = 0x1111111111111111111111111111111111111111111111111111111111111111
    B = 0x2222222222222222222222222222222222222222222222222222222222222222

    def test_public_key_matches_pure_python(self) -> None:
        """PrivateKey -> public key equals a pure-Python k*G, compressed and
        uncompressed."""
        for k in (1, 2, self.A, N - 1):
            expected = _multiply(k, G)
            assert expected is not None
            public = coincurve.PrivateKey(k.to_bytes(32, "big")).public_key
            self.assertEqual(public.format(), _compress(expected))
            self.assertEqual(
                public.format(compressed=False),
                b"\x04"
                + expected[0].to_bytes(32, "big")
                + expected[1].to_bytes(32, "big"),
            )

    def test_ecdh_is_sha256_of_shared_point(self) -> None:
        """PrivateKey.ecdh is SHA256 of the compressed shared point (BOLT 8's
        ECDH), computed three ways: PublicKey.multiply, pure Python, and the
        BOLT 8 act 3 vector (ss for ls=0x11.., re=0x22.. pubkey)."""
        a = coincurve.PrivateKey(self.A.to_bytes(32, "big"))
        b_pub = coincurve.PrivateKey(self.B.to_bytes(32, "big")).public_key
        via_multiply = hashlib.sha256(
            b_pub.multiply(self.A.to_bytes(32, "big")).format()
        ).digest()
        via_python = hashlib.sha256(
            _compress(_multiply(self.A * self.B % N, G))
        ).digest()
        ecdh = a.ecdh(b_pub.format())
        self.assertEqual(ecdh, via_multiply)
        self.assertEqual(ecdh, via_python)
        self.assertEqual(
            ecdh.hex(),
            "b36b6d195982c5be874d6d542dc268234379e1ae4ff1709402135b7de5cf0766",
        )

    def test_sign_verify_round_trip(self) -> None:
        """A signature verifies for its message and key only, and the
        compact (r || s) helpers lnproxy.keys uses round-trip it, low-S."""
        key = coincurve.PrivateKey(self.A.to_bytes(32, "big"))
        digest = hashlib.sha256(b"lnproxy environment check").digest()
        der = key.sign(digest, hasher=None)
        self.assertTrue(key.public_key.verify(der, digest, hasher=None))
        other = hashlib.sha256(b"another message").digest()
        self.assertFalse(key.public_key.verify(der, other, hasher=None))
        stranger = coincurve.PrivateKey(self.B.to_bytes(32, "big")).public_key
        self.assertFalse(stranger.verify(der, digest, hasher=None))
        compact = serialize_compact(der_to_cdata(der))
        self.assertEqual(len(compact), 64)
        self.assertLessEqual(int.from_bytes(compact[32:], "big"), N // 2)
        self.assertEqual(cdata_to_der(deserialize_compact(compact)), der)
        # The signature is a valid ECDSA signature by pure-Python arithmetic:
        # R = (z/s)G + (r/s)Q has x == r.
        r = int.from_bytes(compact[:32], "big")
        s = int.from_bytes(compact[32:], "big")
        z = int.from_bytes(digest, "big")
        w = pow(s, -1, N)
        point = _add(
            _multiply(z * w % N, G), _multiply(r * w % N, _multiply(self.A, G))
        )
        assert point is not None
        self.assertEqual(point[0] % N, r)

    def test_invalid_points_are_rejected(self) -> None:
        """coincurve.PublicKey refuses an x with no point on the curve, an x
        beyond the field, a bad prefix and an uncompressed point off the
        curve."""
        x = 1
        # Find an x for which x^3 + 7 is not a square mod p: no such point.
        while pow((x**3 + 7) % P, (P - 1) // 2, P) != P - 1:
            x += 1
        bad = [
            b"\x02" + x.to_bytes(32, "big"),
            b"\x03" + x.to_bytes(32, "big"),
            b"\x02" + P.to_bytes(32, "big"),
            b"\x05" + G[0].to_bytes(32, "big"),
            b"\x04" + G[0].to_bytes(32, "big") + (G[1] + 1).to_bytes(32, "big"),
        ]
        for data in bad:
            self.assertRaises(ValueError, coincurve.PublicKey, data)
        # And the valid neighbour of the last one is accepted.
        good = b"\x04" + G[0].to_bytes(32, "big") + G[1].to_bytes(32, "big")
        self.assertEqual(coincurve.PublicKey(good).format(), _compress(G))


class CryptographyTests(SynchronousTestCase):
    """The ``cryptography`` package is recent enough."""

    def test_version_at_least_42(self) -> None:
        """setup.cfg requires cryptography >= 42 (ChaCha20Poly1305 speed and
        API); an older install would only show up as a slow proxy."""
        major = int(cryptography.__version__.split(".")[0])
        self.assertGreaterEqual(major, 42)
