"""Electrum's channel opening through lnproxy, against the same pair direct.

Run as ``python bench/electrum.py [--rounds N] [--wakes N]`` from a checkout
(needs Electrum under ``/usr/bin/python3``: Debian's ``python3-electrum``;
``LNPROXY_ELECTRUM_PYTHON`` overrides).  In one run it starts ``twistd -n
lnproxy`` (a child process), an Electrum peer on plain TCP and two Electrum
clients (:mod:`lnproxy.electrum_node`): one reaches the peer through the
proxy (:mod:`lnproxy.electrum`), the other connects directly.  Then:

* **open-channel round trip**: each client runs Electrum's channel opening
  ``--rounds`` times, alternating; the time is the client's ``open_channel``
  to its receipt of ``funding_signed`` (both commitment signatures made and
  checked by Electrum), taken in the client's process.  Printed: median and
  p90 per path and the ratio direct/proxy (1.0 = as fast as direct).
* **wake-up**: ``--wakes`` times, a fresh client opens the peer through the
  proxy with a webhook and exits; the peer sends ``open_channel``; when the
  webhook arrives a new client process starts, logs in, resumes the
  connection and answers ``accept_channel`` from its inbox.  Printed: the
  peer's ``open_channel`` to its receipt of ``accept_channel`` (Electrum
  gives up after 20 s), with the webhook's and the login's share.

Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.web import server

try:
    import lnproxy  # noqa: F401
except ImportError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lnproxy.demo import WebhookReceiver
from lnproxy.electrum_demo import ElectrumNode, electrum_available, resume_args
from lnproxy.testing import free_port, spawn_twistd


def sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    """Wait on the reactor."""
    return task.deferLater(reactor, seconds, lambda: None)


def p90(values: list[float]) -> float:
    """The 90th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


@defer.inlineCallbacks
def run(reactor: Any, rounds: int, wakes: int) -> Any:
    """The whole bench; prints as it goes."""
    work = tempfile.mkdtemp(prefix="lnproxy-bench-electrum-")
    nodes: list[ElectrumNode] = []

    def node(
        name: str, role: str, *args: str, key: bytes | None = None
    ) -> ElectrumNode:
        user_dir = os.path.join(work, name)
        os.makedirs(user_dir, exist_ok=True)
        n = ElectrumNode.spawn(reactor, name, role, *args, key=key, user_dir=user_dir)
        nodes.append(n)
        return n

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNPROXY_")}
    proxy = spawn_twistd(
        reactor,
        port,
        os.path.join(work, "proxy"),
        "--webhook-allow-private",
        cwd=work,
        env=env,
    )
    try:
        try:
            yield proxy.wait_started().addTimeout(30, reactor)
        except Exception as e:
            raise SystemExit(f"twistd did not start ({e}):\n{proxy.text}") from None
        match = re.search(r"server_id ([0-9a-f]{66})", proxy.text)
        if match is None:
            raise SystemExit(f"twistd logged no server_id:\n{proxy.text}")
        server_id = bytes.fromhex(match.group(1))
        url = f"ws://127.0.0.1:{port}/"

        peer = node("peer", "peer")
        ready = yield peer.wait("ready", 60)
        peer_id, peer_port = ready["node_id"], ready["port"]
        via_proxy = node("client-proxy", "client", "--proxy", url)
        direct = node("client-direct", "client")
        for c, via in ((via_proxy, "proxy"), (direct, "direct")):
            yield c.wait("ready", 60)
            c.send(
                "connect", via=via, host="127.0.0.1", port=peer_port, node_id=peer_id
            )
            yield c.wait("initialized", 30)

        print(f"open-channel round trip, {rounds} rounds per path (alternating)")
        times: dict[str, list[float]] = {"proxy": [], "direct": []}
        for i in range(rounds):
            for c, via in ((via_proxy, "proxy"), (direct, "direct")):
                start = len(c.events)
                c.send("open_channel", sat=200_000)
                for _ in range(3000):
                    if len(c.find("opened")) > i or c.find("error"):
                        break
                    yield sleep(reactor, 0.01)
                if len(c.find("opened")) <= i:
                    raise SystemExit(
                        f"{via}: the channel opening failed: {c.events[-3:]}"
                    )
                new = c.events[start:]
                sent = next(e for e in new if e["event"] == "sent" and e["type"] == 32)
                got = next(e for e in new if e["event"] == "recv" and e["type"] == 35)
                times[via].append(got["t"] - sent["t"])
        for via in ("direct", "proxy"):
            ms = [t * 1000 for t in times[via]]
            print(
                f"  {via:6s}  median {statistics.median(ms):7.2f} ms   "
                f"p90 {p90(ms):7.2f} ms   min {min(ms):7.2f} ms"
            )
        ratio = statistics.median(times["direct"]) / statistics.median(times["proxy"])
        print(f"  ratio direct/proxy (median): {ratio:.2f}x  (target >= 0.5x)")

        receiver = WebhookReceiver(server_id)
        site = server.Site(receiver)
        site.log = lambda request: None  # type: ignore[method-assign]
        hook = reactor.listenTCP(0, site, interface="127.0.0.1")
        hook_url = f"http://127.0.0.1:{hook.getHost().port}/wake"
        print(f"\nwake-up flow, {wakes} runs (a new client process per wake-up)")
        wake_times: list[float] = []
        try:
            for i in range(wakes):
                key = os.urandom(32)
                first = node(f"sleeper-{i}", "client", "--proxy", url, key=key)
                yield first.wait("ready", 60)
                first.send(
                    "connect", via="proxy", host="127.0.0.1", port=peer_port,
                    node_id=peer_id, persist=True,
                )  # fmt: skip
                yield first.wait("initialized", 30)
                first.send("webhook", url=hook_url)
                yield first.wait("webhook", 30)
                yield first.stop()
                yield sleep(reactor, 0.5)
                woken: list[ElectrumNode] = []
                called: list[float] = []

                def wake(
                    call: Any,
                    key: bytes = key,
                    i: int = i,
                    called: list[float] = called,
                    woken: list[ElectrumNode] = woken,
                ) -> Any:
                    called.append(reactor.seconds())
                    woken.append(
                        node(f"woken-{i}", "client", *resume_args(url), key=key)
                    )
                    return call

                d = receiver.wait_call().addCallback(wake)
                mark = len(peer.events)
                peer.send("open_channel", sat=200_000)
                yield d.addTimeout(20, reactor)
                login = yield woken[0].wait("logged_in", 30)
                new = peer.events[mark:]
                sent = next(e for e in new if e["event"] == "sent" and e["type"] == 32)
                while not [e for e in peer.events[mark:] if e.get("type") == 33]:
                    yield sleep(reactor, 0.01)
                got = next(
                    e
                    for e in peer.events[mark:]
                    if e["event"] == "recv" and e["type"] == 33
                )
                wake_times.append(got["t"] - sent["t"])
                print(
                    f"  run {i + 1}: accept_channel after {got['t'] - sent['t']:.2f} s "
                    f"(webhook at {called[0] - sent['t']:.2f} s, "
                    f"client logged in at {login['t'] - sent['t']:.2f} s)"
                )
                yield peer.wait("channel", 20)
                yield woken[0].stop()
        finally:
            yield hook.stopListening()
        print(
            f"  median {statistics.median(wake_times):.2f} s, max {max(wake_times):.2f} s "
            "(Electrum's budget 20 s; target < 5 s)"
        )
    finally:
        for n in nodes:
            yield n.stop()
        yield proxy.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Parse options; run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--wakes", type=int, default=3)
    args = parser.parse_args()
    missing = electrum_available()
    if missing:
        raise SystemExit(f"bench/electrum.py: {missing}; install python3-electrum")
    task.react(lambda reactor: run(reactor, args.rounds, args.wakes))


if __name__ == "__main__":
    main()
