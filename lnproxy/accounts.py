"""Server side of accounts: the slow hash of ``auth`` and the login limiter.

docs/protocol.md, "Several devices of one node", "The account".  The proxy
never sees a password: a client sends ``auth``, 32 bytes derived from the
password with Argon2id.  The proxy keeps only a slow, salted hash of it
(scrypt, its own random salt per account), so that a copy of the database
does not let anyone call ``account.login`` as the user.

``account.login`` answers a wrong user and a wrong ``auth`` the same way
(code 2), and costs the same for both: :func:`verify_auth` with no stored
hash still runs one scrypt, against a dummy record.  Failed attempts are
counted per user name by :class:`LoginLimiter`; after ``max_failures``
within ``window`` seconds, the name answers code 7 until the oldest of those
failures is older than ``window``.

Pure apart from CPU time: no I/O, the clock is injected.  scrypt releases
the GIL, so the API runs :func:`hash_auth` and :func:`verify_auth` in a
thread.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict, deque
from typing import Final

from twisted.internet.interfaces import IReactorTime

__all__ = [
    "SCRYPT_LOG2_N",
    "SCRYPT_R",
    "SCRYPT_P",
    "hash_auth",
    "verify_auth",
    "prepare",
    "prepared",
    "LoginLimiter",
]

#: scrypt cost: N = 2**14, r = 8, p = 1 (16 MiB, tens of milliseconds).
SCRYPT_LOG2_N: Final = 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SALT_LENGTH: Final = 16
_HASH_LENGTH: Final = 32
_SCHEME: Final = "scrypt"


def _scrypt(auth: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        auth,
        salt=salt,
        n=1 << log2_n,
        r=r,
        p=p,
        maxmem=(1 << log2_n) * r * 128 * 2 + (1 << 20),
        dklen=_HASH_LENGTH,
    )


def hash_auth(
    auth: bytes, salt: bytes | None = None, log2_n: int = SCRYPT_LOG2_N
) -> str:
    """The stored form of ``auth``: ``scrypt$log2n$r$p$salt$hash`` (hex).

    ``salt`` is 16 fresh random bytes unless given (tests give one).  The
    parameters are part of the record, so they can be raised later without
    breaking existing accounts.
    """
    if salt is None:
        salt = os.urandom(_SALT_LENGTH)
    digest = _scrypt(auth, salt, log2_n, SCRYPT_R, SCRYPT_P)
    return "$".join(
        (_SCHEME, str(log2_n), str(SCRYPT_R), str(SCRYPT_P), salt.hex(), digest.hex())
    )


_dummy: str | None = None


def _dummy_record() -> str:
    """A record no ``auth`` matches, with the default cost (made once, by
    :func:`prepare` with the process's first hash of any kind, so that the
    first unknown user does not pay for it alone)."""
    global _dummy
    if _dummy is None:
        _dummy = hash_auth(os.urandom(32))
    return _dummy


def prepared() -> bool:
    """Whether :func:`prepare` has run in this process."""
    return _dummy is not None


def prepare() -> None:
    """Make the dummy record :func:`verify_auth` uses for unknown users
    (one scrypt; run it off the reactor thread)."""
    _dummy_record()


def _parse(record: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = record.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        return None
    if not (1 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16 and digest):
        return None
    return log2_n, r, p, salt, digest


def verify_auth(record: str | None, auth: bytes) -> bool:
    """Whether ``auth`` matches a stored ``record`` (constant-time compare).

    With no record (an unknown user), or one that cannot be parsed, it
    hashes ``auth`` against a dummy record all the same and returns False,
    so that the answer takes as long as for a known user.
    """
    parsed = _parse(record) if record is not None else None
    if parsed is None:
        parsed = _parse(_dummy_record())
        assert parsed is not None
        log2_n, r, p, salt, digest = parsed
        hmac.compare_digest(_scrypt(auth, salt, log2_n, r, p), digest)
        return False
    log2_n, r, p, salt, digest = parsed
    return hmac.compare_digest(_scrypt(auth, salt, log2_n, r, p), digest)


class LoginLimiter:
    """Counts failed ``account.login`` attempts per user name.

    Unknown names are counted exactly like known ones, so that the answers
    (2, then 7) do not tell whether a name exists.

    :param clock: the time source (``task.Clock`` in tests).
    :param max_failures: failures within ``window`` after which the name
        is blocked.
    :param window: seconds a failure counts.
    :param max_names: names tracked at once; beyond it the name whose last
        failure is oldest is forgotten (memory stays bounded when someone
        tries many names).
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_failures: int = 5,
        window: float = 300.0,
        max_names: int = 10000,
    ) -> None:
        if max_failures < 1 or window <= 0 or max_names < 1:
            raise ValueError("max_failures, window and max_names must be positive")
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.max_names = max_names
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many names have failures on record."""
        return len(self._failures)

    def _recent(self, user: str) -> deque[float] | None:
        times = self._failures.get(user)
        if times is None:
            return None
        horizon = self._clock.seconds() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[user]
            return None
        return times

    def blocked(self, user: str) -> bool:
        """Whether ``user`` has failed ``max_failures`` times within the
        window (answer code 7 without checking the attempt)."""
        times = self._recent(user)
        return times is not None and len(times) >= self.max_failures

    def retry_after(self, user: str) -> float:
        """Seconds until ``user`` is no longer blocked (0 when it is not)."""
        times = self._recent(user)
        if times is None or len(times) < self.max_failures:
            return 0.0
        return max(0.0, times[-self.max_failures] + self.window - self._clock.seconds())

    def failed(self, user: str) -> None:
        """Record a failed attempt for ``user``."""
        times = self._recent(user)
        if times is None:
            times = deque(maxlen=self.max_failures)
            self._failures[user] = times
        times.append(self._clock.seconds())
        self._failures.move_to_end(user)
        while len(self._failures) > self.max_names:
            self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        """A successful login clears the name's failures."""
        self._failures.pop(user, None)
