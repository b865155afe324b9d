"""What a client must remember between runs, and how it is written safely.

The client delivers each event to the application once.  To know which
events it has already handled after a crash, it records the highest handled
``seq`` *before* it acknowledges, in a small JSON file written atomically
(temporary file, ``fsync``, ``rename``, ``fsync`` of the directory).  The
same write records the persistent peers that still need a new handshake, so
a crash between handling a ``closed`` event and re-handshaking loses
nothing.

Seqs are per node *and per proxy*: the file remembers the proxy's
``server_id``, and a different one (another proxy, or a proxy whose data dir
was lost) resets the counter instead of silently skipping new events.

An application that keeps its own database can implement
:class:`StateStore` there, and commit the seq in the same transaction as
the effects of its event callback: that closes the last crash window
(callback done, seq not yet written), which no separate file can close.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from typing import Protocol as TypingProtocol

__all__ = [
    "STATE_VERSION",
    "ClientState",
    "StateError",
    "StateStore",
    "FileState",
    "MemoryState",
    "SavedState",
    "StateChange",
    "atomic_write",
]

STATE_VERSION = 1


class StateError(Exception):
    """The state file is unreadable, malformed, or belongs to another node."""


@dataclass(frozen=True)
class ClientState:
    """The client's durable state (immutable; change it with :meth:`evolve`).

    :ivar node_id: hex node id the state belongs to (None until first saved).
    :ivar server_id: hex ``server_id`` of the proxy the seqs come from.
    :ivar last_seq: highest event seq handled by the application.
    :ivar rehandshake: persistent peers waiting for a new handshake:
        peer node id (hex) -> ``{"address": "host:port", "features": hex}``.
    """

    node_id: str | None = None
    server_id: str | None = None
    last_seq: int = 0
    rehandshake: dict[str, dict[str, str]] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> ClientState:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in a state file."""
        return {
            "version": STATE_VERSION,
            "node_id": self.node_id,
            "server_id": self.server_id,
            "last_seq": self.last_seq,
            "rehandshake": self.rehandshake,
        }

    @classmethod
    def from_json(cls, obj: Any) -> ClientState:
        """Parse what :meth:`to_json` wrote.

        :raise StateError: on anything unexpected.
        """
        if not isinstance(obj, dict) or obj.get("version") != STATE_VERSION:
            raise StateError(f"not a version {STATE_VERSION} client state")
        last = obj.get("last_seq")
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise StateError("last_seq must be a non-negative integer")
        node_id, server_id = obj.get("node_id"), obj.get("server_id")
        for name, value in (("node_id", node_id), ("server_id", server_id)):
            if value is not None and not isinstance(value, str):
                raise StateError(f"{name} must be a string")
        rh = obj.get("rehandshake", {})
        if not isinstance(rh, dict) or not all(
            isinstance(k, str)
            and isinstance(v, dict)
            and isinstance(v.get("address"), str)
            and isinstance(v.get("features", ""), str)
            for k, v in rh.items()
        ):
            raise StateError("rehandshake must map node ids to {address, features}")
        return cls(
            node_id,
            server_id,
            last,
            {
                k: {"address": v["address"], "features": v.get("features", "")}
                for k, v in rh.items()
            },
        )


class StateStore(TypingProtocol):
    """Where a client keeps its :class:`ClientState`."""

    def load(self) -> ClientState:
        """Return the stored state (an empty one when there is none)."""

    def save(self, state: ClientState) -> None:
        """Store ``state`` durably before returning; raise on failure."""


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves old or new, whole.

    Writes a temporary file in the same directory, ``fsync``s it, renames it
    over ``path`` and ``fsync``s the directory so that the rename itself is
    durable.

    :param path: the file to replace.
    :param data: its new contents.
    :param mode: permission bits of the new file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileState:
    """A :class:`StateStore` in one JSON file (see :func:`atomic_write`).

    :param path: the file; created on the first save.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"<FileState {self.path!r}>"

    def load(self) -> ClientState:
        """Read the file; a missing file is an empty state.

        :raise StateError: when the file cannot be read or parsed.
        """
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return ClientState()
        except OSError as e:
            raise StateError(f"cannot read state file {self.path}: {e.strerror}") from e
        try:
            return ClientState.from_json(json.loads(raw))
        except (ValueError, StateError) as e:
            raise StateError(f"state file {self.path} is not valid: {e}") from e

    def save(self, state: ClientState) -> None:
        """Write the file atomically and durably."""
        text = json.dumps(state.to_json(), sort_keys=True, separators=(",", ":"))
        atomic_write(self.path, text.encode("utf-8") + b"\n")


class MemoryState:
    """A :class:`StateStore` that forgets everything when the process ends.

    Replays are still recognised within one process; across restarts every
    unacknowledged event is delivered again.
    """

    def __init__(self) -> None:
        self.state = ClientState()

    def load(self) -> ClientState:
        """The state saved last."""
        return self.state

    def save(self, state: ClientState) -> None:
        """Keep ``state``."""
        self.state = state


#: A change of the state, applied to whatever the state is when it is saved.
StateChange = Callable[[ClientState], ClientState]


class SavedState:
    """A node's state as last saved, and the one way to change it.

    The parts of the client that change the state (the event pipeline, the
    re-handshakes of persistent peers, the login) share one instance, and
    each states its change as a function of the current state
    (:meth:`update`), so that two changes prepared at the same time do not
    undo each other.

    :param store: where the state is kept.
    :param node_id: our node id (hex).
    :raise StateError: when the stored state cannot be read or belongs to
        another node.
    """

    def __init__(self, store: StateStore, node_id: str) -> None:
        self.store = store
        loaded = store.load()
        if loaded.node_id is not None and loaded.node_id != node_id:
            raise StateError(
                f"the state belongs to node {loaded.node_id}, not {node_id}"
            )
        #: The state as last saved (or loaded).
        self.current: ClientState = loaded.evolve(node_id=node_id)

    def update(self, change: StateChange) -> ClientState:
        """Apply ``change`` to the current state and save the result.

        :return: the new state.
        :raise Exception: whatever the store raises; nothing changes then.
        """
        new = change(self.current)
        self.store.save(new)
        self.current = new
        return new
