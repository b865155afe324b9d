"""Hot restart mechanics: hand open TCP sockets to a new process.

Self-contained process-level mechanics, wired into ``twistd lnproxy`` by the
integration (docs/protocol.md, "Restarting without dropping peers (hot
restart)"; docs/operations.md, "Upgrading without dropping peers"):

- :mod:`.detach`: take a Twisted TCP transport or listening port off the
  reactor without closing or shutting down its socket, and adopt one.
- :mod:`.session`: one handover's two ends (freeze/rollback/commit on the
  old side; match/adopt/close on the new side).
- :mod:`.manifest`: the bytes that cross with the sockets.
- :mod:`.channel`: ``--takeover`` through a Unix socket in the data dir.
- :mod:`.systemd`: sd_notify, the file descriptor store, ``LISTEN_FDS``.
"""

from .channel import (
    NothingToTakeOver,
    Outcome,
    Takeover,
    TakeoverFailed,
    TakeoverListener,
    request_takeover,
)
from .detach import HandedOver
from .session import Adopted, Frozen, Handover, Received

__all__ = [
    "Adopted",
    "Frozen",
    "HandedOver",
    "Handover",
    "NothingToTakeOver",
    "Outcome",
    "Received",
    "Takeover",
    "TakeoverFailed",
    "TakeoverListener",
    "request_takeover",
]
