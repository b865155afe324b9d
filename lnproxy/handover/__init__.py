"""Hot restart mechanics: hand open TCP sockets to a new process.

Self-contained process-level mechanics, to be wired into ``twistd lnproxy``
(docs/protocol.md, "Restarting without dropping peers (hot restart)";
docs/operations.md, "Upgrading without dropping peers"):

- :mod:`.detach`: take a Twisted TCP transport or listening port off the
  reactor without closing or shutting down its socket, and adopt one.
- :mod:`.session`: one handover's two ends (freeze/rollback/commit on the
  old side; match/adopt/close on the new side).
- :mod:`.manifest`: the bytes that cross with the sockets.
- :mod:`.channel`: ``--takeover`` through a Unix socket in the data dir.
- :mod:`.systemd`: sd_notify, the file descriptor store, ``LISTEN_FDS``.

How a service uses it.  Old side, ``--takeover`` (the running process)::

    def collect() -> Handover:           # on the reactor thread, one turn
        pause own timers, stop accepting work
        return Handover(
            [(conn.transport, conn.snapshot_bytes()) for conn in open_conns],
            [(port, "tcp:9736:interface=127.0.0.1") for port in listeners],
            process_state_bytes,
        )

    def on_outcome(outcome: Outcome) -> None:
        if outcome.committed:            # sockets released (no shutdown)
            reactor.stop()               # exit 0
        else:                            # sockets thawed already
            resume own timers            # outcome.reason says why

    TakeoverListener(reactor, data_dir + "/takeover.sock", collect,
                     on_outcome, timeout=5.0).start()

Each released connection's protocol gets ``connectionLost`` with a
:class:`HandedOver` reason (``notify=False``: nothing at all): it must not
record a close.  New side, before the reactor runs::

    try:
        takeover = request_takeover(data_dir + "/takeover.sock")
    except NothingToTakeOver:
        start normally
    protocols = [build(c.blob) for c in takeover.received.connections]
    # (on failure: takeover.abort(reason); exit non-zero)
    takeover.confirm()                   # TakeoverFailed: exit non-zero
    adopted = takeover.received.adopt(reactor, protocols, factories)

``adopted.transports[i]`` is None for a connection that died meanwhile.
Under systemd, the old side on SIGTERM::

    frozen = Frozen(collect(), reactor.seconds())
    systemd.store(systemd.Notifier(), frozen)   # rollback() if it raises
    frozen.commit()

and the new side: :func:`.systemd.capture_listen_fds` before anything
imports ``twisted.internet.endpoints``, then
``received = systemd.restore(listen_fds)`` (None: fresh start), adopt as
above, ``Notifier.remove`` for ``PEER``, ``LISTENER`` and ``STATE``, and
``Notifier.ready()``.
"""

from .channel import (
    NothingToTakeOver,
    Outcome,
    Takeover,
    TakeoverFailed,
    TakeoverListener,
    TakeoverRefused,
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
    "TakeoverRefused",
    "request_takeover",
]
