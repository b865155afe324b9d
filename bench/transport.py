"""Throughput of the BOLT 8 transport cipher: lnproxy.noise, pyln-proto, floor.

Run as ``python bench/transport.py`` (pin it to one core for stable figures,
e.g. ``taskset -c 1 python bench/transport.py``).  For 32- and 1024-byte
messages it prints messages per second for:

* ``lnproxy``: :class:`lnproxy.noise.Encryptor.encrypt`, and
  :class:`lnproxy.noise.Decryptor.feed` fed one whole frame per call and a
  realistic batch of 64 concatenated frames per call (one TCP read);
* ``pyln``: pyln-proto's ``LightningConnection.send_message`` /
  ``read_message`` through an in-memory fake connection, exactly as it runs
  per message (it builds a new ``ChaCha20Poly1305`` for every call);
* ``floor``: two bare ``ChaCha20Poly1305.encrypt`` / ``decrypt`` calls per
  message on one prebuilt object with precomputed nonces and ciphertexts,
  i.e. what is left once all framing and bookkeeping cost nothing.

Every run crosses key rotations (50,000 messages = 100 rotations) except the
floor, which has none.  Each figure is the best of several repetitions
(``time.perf_counter``).  The whole run stays well under 60 s.
"""

from __future__ import annotations

import platform
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

try:
    import lnproxy.noise as noise
except ImportError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import lnproxy.noise as noise

try:
    from pyln.proto import wire as pyln_wire
except ImportError:
    pyln_wire = None

MESSAGES = 50_000
REPEATS = 7
BATCH = 64
SIZES = (32, 1024)
#: Stop repeating once the run has taken this long (the run must stay < 60 s).
BUDGET_SECONDS = 45.0

KEY = bytes(range(32))
CK = bytes(range(32, 64))

_started = time.perf_counter()


def best_rate(run: Callable[[], Any], setup: Callable[[], Any] | None = None) -> float:
    """Messages per second of the fastest of :data:`REPEATS` runs.

    ``setup`` (untimed) builds fresh state for each run and its result is
    passed to ``run``.
    """
    best = float("inf")
    for i in range(REPEATS):
        if i >= 2 and time.perf_counter() - _started > BUDGET_SECONDS:
            break
        state = setup() if setup is not None else None
        t0 = time.perf_counter()
        if state is None:
            run()
        else:
            run(state)
        best = min(best, time.perf_counter() - t0)
    return MESSAGES / best


def frames_for(size: int) -> list[bytes]:
    """:data:`MESSAGES` wire frames of ``size``-byte messages, from nonce 0."""
    enc = noise.Encryptor(KEY, CK)
    msg = bytes(size)
    return [enc.encrypt(msg) for _ in range(MESSAGES)]


# -- lnproxy ---------------------------------------------------------------


def lnproxy_encrypt(size: int) -> float:
    """lnproxy's Encryptor: one call per message, one frame returned."""
    msg = bytes(size)

    def run(enc: noise.Encryptor) -> None:
        encrypt = enc.encrypt
        for _ in range(MESSAGES):
            encrypt(msg)

    return best_rate(run, lambda: noise.Encryptor(KEY, CK))


def lnproxy_decrypt(size: int, batch: int) -> float:
    """lnproxy's Decryptor fed ``batch`` concatenated frames per call."""
    frames = frames_for(size)
    chunks = [b"".join(frames[i : i + batch]) for i in range(0, MESSAGES, batch)]

    def run(dec: noise.Decryptor) -> None:
        feed = dec.feed
        got = 0
        for chunk in chunks:
            got += len(feed(chunk))
        if got != MESSAGES:
            raise AssertionError(f"decoded {got} of {MESSAGES}")

    return best_rate(run, lambda: noise.Decryptor(KEY, CK))


# -- pyln-proto --------------------------------------------------------------


class SinkConnection:
    """Stands in for pyln's socket when sending: accepts and drops bytes."""

    def send(self, data: bytes) -> int:
        return len(data)


class ReplayConnection:
    """Stands in for pyln's socket when reading: serves a prepared stream."""

    def __init__(self, stream: bytes) -> None:
        self.stream = stream
        self.pos = 0

    def recv(self, size: int) -> bytes:
        data = self.stream[self.pos : self.pos + size]
        self.pos += len(data)
        return data


def pyln_connection(conn: object) -> Any:
    """A pyln LightningConnection put straight into transport state with
    the benchmark keys (its handshake is not what is measured)."""
    assert pyln_wire is not None
    lconn = pyln_wire.LightningConnection(
        conn,
        pyln_wire.PrivateKey(b"\x02" * 32).public_key(),
        pyln_wire.PrivateKey(b"\x01" * 32),
        is_initiator=True,
    )
    lconn.sk = lconn.rk = KEY
    lconn.sck = lconn.rck = CK
    lconn.sn = lconn.rn = 0
    return lconn


def pyln_encrypt(size: int) -> float:
    """pyln's send_message per message (two AEAD objects built per call)."""
    msg = bytes(size)

    def run(lconn: Any) -> None:
        send = lconn.send_message
        for _ in range(MESSAGES):
            send(msg)

    return best_rate(run, lambda: pyln_connection(SinkConnection()))


def pyln_decrypt(size: int) -> float:
    """pyln's read_message per message from an in-memory stream."""
    stream = b"".join(frames_for(size))

    def run(lconn: Any) -> None:
        read = lconn.read_message
        for _ in range(MESSAGES):
            read()
        if lconn.connection.pos != len(stream):
            raise AssertionError("pyln did not consume the whole stream")

    return best_rate(run, lambda: pyln_connection(ReplayConnection(stream)))


def check_pyln_agrees(size: int) -> None:
    """pyln must produce our exact bytes (so both sides do the same work)."""

    class Capture(SinkConnection):
        def __init__(self) -> None:
            self.out: list[bytes] = []

        def send(self, data: bytes) -> int:
            self.out.append(data)
            return len(data)

    capture = Capture()
    lconn = pyln_connection(capture)
    for _ in range(501):  # across one rotation
        lconn.send_message(bytes(size))
    if b"".join(capture.out) != b"".join(frames_for(size)[:501]):
        raise SystemExit("pyln-proto and lnproxy.noise disagree: benchmark void")


# -- floor -------------------------------------------------------------------


def floor_encrypt(size: int) -> float:
    """Two bare AEAD encryptions per message, nothing else."""
    aead = ChaCha20Poly1305(KEY)
    nonces = [b"\x00" * 4 + struct.pack("<Q", n) for n in range(2 * MESSAGES)]
    header = struct.pack(">H", size)
    msg = bytes(size)

    def run() -> None:
        enc = aead.encrypt
        for i in range(0, 2 * MESSAGES, 2):
            enc(nonces[i], header, None)
            enc(nonces[i + 1], msg, None)

    return best_rate(run)


def floor_decrypt(size: int) -> float:
    """Two bare AEAD decryptions per message of prepared ciphertexts."""
    aead = ChaCha20Poly1305(KEY)
    nonces = [b"\x00" * 4 + struct.pack("<Q", n) for n in range(2 * MESSAGES)]
    header = struct.pack(">H", size)
    msg = bytes(size)
    pieces = []
    for i in range(0, 2 * MESSAGES, 2):
        pieces.append(aead.encrypt(nonces[i], header, None))
        pieces.append(aead.encrypt(nonces[i + 1], msg, None))

    def run() -> None:
        dec = aead.decrypt
        for i in range(0, 2 * MESSAGES, 2):
            dec(nonces[i], pieces[i], None)
            dec(nonces[i + 1], pieces[i + 1], None)

    return best_rate(run)


def floor_decrypt_sliced(size: int) -> float:
    """The floor plus what any streaming receiver must also do with this
    AEAD API: slice the header and body ciphertexts out of a receive buffer
    (``memoryview`` input is slower than a bytes copy in cryptography 50)."""
    aead = ChaCha20Poly1305(KEY)
    nonces = [b"\x00" * 4 + struct.pack("<Q", n) for n in range(2 * MESSAGES)]
    header = struct.pack(">H", size)
    msg = bytes(size)
    stream = b"".join(
        aead.encrypt(nonces[i], header, None) + aead.encrypt(nonces[i + 1], msg, None)
        for i in range(0, 2 * MESSAGES, 2)
    )
    body = size + noise.MAC_SIZE
    head = noise.HEADER_SIZE

    def run() -> None:
        dec = aead.decrypt
        pos = 0
        for i in range(0, 2 * MESSAGES, 2):
            dec(nonces[i], stream[pos : pos + head], None)
            pos += head
            dec(nonces[i + 1], stream[pos : pos + body], None)
            pos += body

    return best_rate(run)


# -- report ------------------------------------------------------------------


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:6.2f}x" if b else "     -"


def main() -> int:
    """Print the table and the target check; return the exit status."""
    version = tuple(int(p) for p in cryptography.__version__.split(".")[:2])
    print(
        f"cryptography {cryptography.__version__}, Python {platform.python_version()}"
    )
    if version < (42,):
        print("refusing to run: cryptography >= 42 is required", file=sys.stderr)
        return 2
    if pyln_wire is None:
        print("pyln-proto is not installed: its column is skipped")
    else:
        from importlib.metadata import version as dist_version

        print(f"pyln-proto {dist_version('pyln-proto')}")
        for size in SIZES:
            check_pyln_agrees(size)
    print(f"{MESSAGES} messages per run, best of {REPEATS}; figures in messages/s")
    print()
    header = (
        f"{'size':>5}  {'operation':<24}{'lnproxy':>10}{'pyln':>10}{'floor':>10}"
        f"{'ln/pyln':>10}{'ln/floor':>10}"
    )
    print(header)
    print("-" * len(header))
    misses: list[str] = []
    for size in SIZES:
        p_enc = pyln_encrypt(size) if pyln_wire is not None else None
        p_dec = pyln_decrypt(size) if pyln_wire is not None else None
        f_enc = floor_encrypt(size)
        f_dec = floor_decrypt(size)
        rows = [
            ("encrypt", lnproxy_encrypt(size), p_enc, f_enc),
            ("decrypt, 1 frame/feed", lnproxy_decrypt(size, 1), p_dec, f_dec),
            (
                f"decrypt, {BATCH} frames/feed",
                lnproxy_decrypt(size, BATCH),
                p_dec,
                f_dec,
            ),
        ]
        for name, ours, pyln, floor in rows:
            print(
                f"{size:>5}  {name:<24}{ours:>10,.0f}"
                + (f"{pyln:>10,.0f}" if pyln else f"{'-':>10}")
                + f"{floor:>10,.0f}{ratio(ours, pyln):>10}{ratio(ours, floor):>10}"
            )
            if pyln and ours < 2 * pyln:
                misses.append(f"{size} B {name}: {ours / pyln:.3f}x pyln < 2x")
            if ours < 0.8 * floor:
                misses.append(f"{size} B {name}: {ours / floor:.3f}x floor < 0.8x")
        sliced = floor_decrypt_sliced(size)
        print(
            f"{size:>5}  {'(info) floor + slicing':<24}{'':>10}{'':>10}{sliced:>10,.0f}"
            f"{'':>10}{ratio(rows[1][1], sliced):>10}  (1 frame/feed)"
        )
    print()
    print("targets: >= 2x pyln-proto and >= 0.8x the floor")
    for miss in misses:
        print(f"  MISSED {miss}")
    if not misses:
        print("  all met")
    print(f"elapsed {time.perf_counter() - _started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
