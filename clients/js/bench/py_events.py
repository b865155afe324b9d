"""The Python side of bench/events.mjs: the reference client receiving events.

Logs in to the proxy with ``lnproxy.client.Client``, opens the peer given on
the command line, prints ``{"ready": true}`` once the peer's init has been
handled, then counts ``message`` events of the benchmark type and prints
``{"done": <count>, "first_at": <t>, "last_at": <t>}`` (monotonic seconds)
when ``count`` arrived (each handled and acknowledged as the client does).

    python clients/js/bench/py_events.py URL PEER COUNT
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

sys.path.insert(
    0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
)

from twisted.internet import defer, task  # noqa: E402

from lnproxy.client import Client  # noqa: E402
from lnproxy.client.session import Event  # noqa: E402

BENCH_TYPE = 0x8001


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


@defer.inlineCallbacks
def main(_reactor: Any, url: str, peer: str, count: int) -> Any:
    """Run one measurement."""
    got = 0
    first = last = 0.0
    done: defer.Deferred[None] = defer.Deferred()
    ready: defer.Deferred[None] = defer.Deferred()

    def on_event(event: Event) -> None:
        nonlocal got, first, last
        if event.type == 16 and not ready.called:
            ready.callback(None)
        if event.type != BENCH_TYPE:
            return
        got += 1
        now = time.monotonic()
        if got == 1:
            first = now
        last = now
        if got == count and not done.called:
            done.callback(None)

    client = Client(_reactor, url, os.urandom(32), on_event=on_event)
    client.startService()
    yield client.when_logged_in()
    link = yield client.open_peer(peer)
    yield ready
    emit({"ready": True})
    yield done
    # Let the last acks go out before we leave.
    yield task.deferLater(_reactor, 0.2, lambda: None)
    emit({"done": got, "first_at": first, "last_at": last, "now": time.monotonic()})
    yield link.disconnect()
    yield client.stopService()


if __name__ == "__main__":
    task.react(main, [sys.argv[1], sys.argv[2], int(sys.argv[3])])
