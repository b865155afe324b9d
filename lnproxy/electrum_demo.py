"""``lnproxy-demo --electrum``: the wake-up flow with Electrum's own code.

Electrum runs on asyncio under the Python that has it (Debian's
``/usr/bin/python3`` with ``python3-electrum``), so each Electrum node is a
child process (:mod:`lnproxy.electrum_node`) driven from here over its
stdin/stdout.  This module holds that driver (:class:`ElectrumNode`, also
used by tests/test_electrum.py and bench/electrum.py) and the demo:

1. an Electrum peer listens on plain TCP; the proxy and a webhook receiver
   start;
2. the Electrum client (:mod:`lnproxy.electrum`) logs in, opens the peer
   through the proxy (split handshake), exchanges ``init``, registers its
   webhook, and goes away (its process exits);
3. the peer sends ``open_channel``; the proxy stores it and calls the
   webhook, whose signature the receiver checks;
4. the receiver starts the Electrum client again, which logs in, resumes the
   connection the proxy kept, gets ``open_channel`` from its inbox and
   answers ``accept_channel``; the peer goes on to ``funding_created``, the
   client answers ``funding_signed``: both sides checked each other's
   commitment signature and hold the channel.

Exit status 0 only if every step happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.web import server

__all__ = [
    "electrum_env",
    "ELECTRUM_PYTHON",
    "ElectrumNode",
    "NodeFailed",
    "electrum_available",
    "run_electrum_demo",
]

#: The Python that has Electrum (``LNPROXY_ELECTRUM_PYTHON`` overrides).
ELECTRUM_PYTHON = os.environ.get("LNPROXY_ELECTRUM_PYTHON", "/usr/bin/python3")
#: The ``lnproxy`` package the Electrum children import.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

INSTALL_HINT = (
    "Electrum is not available: this needs Electrum 4.3 and aiohttp under "
    f"{ELECTRUM_PYTHON}.  On Debian 12: "
    "apt-get install --no-install-recommends python3-electrum "
    "(or set LNPROXY_ELECTRUM_PYTHON to a Python that can import electrum)."
)

#: Lightning message types, for the narration.
NAMES = {
    16: "init", 18: "ping", 19: "pong", 32: "open_channel", 33: "accept_channel",
    34: "funding_created", 35: "funding_signed", 263: "query_channel_range",
    264: "reply_channel_range", 7: "peer_storage", 9: "peer_storage_retrieval",
}  # fmt: skip


def electrum_available(python: str = ELECTRUM_PYTHON) -> str | None:
    """``None`` when ``python`` can import electrum and aiohttp, else why not."""
    import subprocess

    if not os.path.exists(python):
        return f"{python} does not exist"
    try:
        r = subprocess.run(
            [python, "-c", "import electrum.lnpeer, aiohttp"],
            capture_output=True,
            timeout=60,
            cwd=tempfile.gettempdir(),
            # The same clean environment the nodes get: a PYTHONPATH or
            # PYTHONHOME of this process (a virtualenv's, trial's workers')
            # would make the other Python load foreign extension modules.
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{python} cannot run: {e}"
    if r.returncode != 0:
        last = r.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return f"{python} cannot import electrum ({' '.join(last)})"
    return None


def resume_args(url: str) -> tuple[str, ...]:
    """The arguments of an Electrum client (``role`` ``"client"``) that logs
    in to the proxy at ``url`` and resumes every connection it kept: the
    process a webhook's receiver starts."""
    return ("--proxy", url, "--command", '{"cmd": "resume"}')


def electrum_env(work_dir: str) -> dict[str, str]:
    """The environment of a child run by Electrum's Python in ``work_dir``.

    Only this lnproxy package is on its path (a link in ``work_dir``): the
    directory that holds lnproxy may be a virtualenv's site-packages, whose
    other packages must not shadow those of Electrum's Python; and nothing
    of this process's environment (a PYTHONPATH, PYTHONHOME, the node key of
    a caller) leaks in.
    """
    path_dir = os.path.join(work_dir, ".lnproxy-path")
    link = os.path.join(path_dir, "lnproxy")
    if not os.path.islink(link):
        os.makedirs(path_dir, exist_ok=True)
        os.symlink(PACKAGE_DIR, link)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": path_dir,
        "HOME": work_dir,
        "TMPDIR": work_dir,
    }


class NodeFailed(Exception):
    """An Electrum node did not do what was expected in time."""


class ElectrumNode(ProcessProtocol):
    """An :mod:`lnproxy.electrum_node` child: JSON commands in, events out.

    :ivar events: every event so far (dicts with ``event`` and ``t``).
    :ivar stderr: the child's stderr (Electrum's log).
    """

    def __init__(self, reactor: Any, name: str) -> None:
        self.reactor = reactor
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._buf = b""
        self._waiters: list[
            tuple[Callable[[dict[str, Any]], bool], defer.Deferred[Any]]
        ] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.on_event: Callable[[dict[str, Any]], None] | None = None

    @classmethod
    def spawn(
        cls,
        reactor: Any,
        name: str,
        role: str,
        *args: str,
        key: bytes | None = None,
        user_dir: str,
        python: str = ELECTRUM_PYTHON,
    ) -> ElectrumNode:
        """Start ``python -m lnproxy.electrum_node ROLE ARGS``."""
        node = cls(reactor, name)
        env = electrum_env(user_dir)
        argv = [
            python,
            "-m",
            "lnproxy.electrum_node",
            role,
            "--user-dir",
            user_dir,
            *args,
        ]
        if key is None:
            reactor.spawnProcess(node, python, argv, env=env, path=user_dir)
            return node
        # The key goes through a pipe the child reads once (its fd 3), not
        # the environment: /proc/PID/environ keeps an environment variable
        # for the child's whole life, and every process it starts inherits
        # it.
        argv += ["--key-fd", "3"]
        process = reactor.spawnProcess(
            node,
            python,
            argv,
            env=env,
            path=user_dir,
            childFDs={0: "w", 1: "r", 2: "r", 3: "w"},
        )
        process.writeToChild(3, key.hex().encode())
        process.closeChildFD(3)
        return node

    def outReceived(self, data: bytes) -> None:
        """Parse JSON lines; wake waiters."""
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)
            keep = []
            for match, d in self._waiters:
                if not d.called and match(event):
                    d.callback(event)
                elif not d.called:
                    keep.append((match, d))
            self._waiters = keep

    def errReceived(self, data: bytes) -> None:
        """Keep Electrum's log (bounded)."""
        self.stderr = (self.stderr + data)[-200_000:]

    def processEnded(self, reason: Failure) -> None:
        """Fail every waiter; fire :attr:`ended` with the exit code."""
        code = getattr(reason.value, "exitCode", None)
        for _, d in self._waiters:
            if not d.called:
                d.errback(NodeFailed(f"{self.name} exited (status {code})"))
        self._waiters = []
        self.ended.callback(code)

    def send(self, cmd: str, **fields: Any) -> None:
        """Write one command."""
        line = json.dumps({"cmd": cmd, **fields}).encode() + b"\n"
        if not self.ended.called:
            self.transport.write(line)  # type: ignore[union-attr]

    def wait(
        self, event: str, timeout: float = 20.0, **match: Any
    ) -> defer.Deferred[dict[str, Any]]:
        """Fires with the first event named ``event`` whose fields equal
        ``match`` (already seen or future); fails after ``timeout``."""

        def matches(e: dict[str, Any]) -> bool:
            return e.get("event") == event and all(
                e.get(k) == v for k, v in match.items()
            )

        for e in self.events:
            if matches(e):
                return defer.succeed(e)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.append((matches, d))
        if self.ended.called:
            self._waiters.remove((matches, d))
            return defer.fail(NodeFailed(f"{self.name} has exited"))

        def timed_out(result: Any, t: float) -> Any:
            raise NodeFailed(
                f"{self.name}: no {event} {match or ''} within {t:g} s; "
                f"last events {self.events[-5:]}; log tail "
                f"{self.stderr[-1500:].decode(errors='replace')}"
            )

        return d.addTimeout(timeout, self.reactor, onTimeoutCancel=timed_out)

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Events so far named ``event`` with fields equal to ``match``."""
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    @defer.inlineCallbacks
    def stop(self, timeout: float = 5.0) -> Any:
        """Ask it to exit; kill it if it does not within ``timeout``."""
        if self.ended.called:
            return (yield self.ended)
        self.send("exit")
        try:
            self.transport.closeStdin()  # type: ignore[union-attr]
        except Exception:
            pass
        waiting: defer.Deferred[int | None] = defer.Deferred()

        def ended(code: Any) -> Any:
            if not waiting.called:
                waiting.callback(code)
            return code

        self.ended.addBoth(ended)
        call = self.reactor.callLater(timeout, self.kill)
        result = yield waiting
        if call.active():
            call.cancel()
        return result

    def kill(self) -> None:
        """SIGKILL (no-op once ended)."""
        if not self.ended.called:
            try:
                self.transport.signalProcess(signal.SIGKILL)  # type: ignore[union-attr]
            except error.ProcessExitedAlready:
                pass


@defer.inlineCallbacks
def run_electrum_demo(
    reactor: Any, out: Any, step_timeout: float = 25.0, narrator: Any = None
) -> Any:
    """The wake-up flow with Electrum on both sides, narrated to ``out``.

    :return: a Deferred firing with the figures (``wake_to_accept``: seconds
        from the peer's ``open_channel`` to its receipt of
        ``accept_channel``), or failing with ``DemoFailed``.
    """
    from lnproxy import keys
    from lnproxy.demo import (
        DemoFailed,
        WebhookReceiver,
        _bounded,
        _clean_up,
        _Narrator,
        _start_proxy,
        _wait_until,
    )

    n = narrator or _Narrator(out)
    cleanups: list[Callable[[], Any]] = []
    work = tempfile.mkdtemp(prefix="lnproxy-electrum-demo-")
    cleanups.append(lambda: shutil.rmtree(work, ignore_errors=True))

    def bounded(d: defer.Deferred[Any], what: str) -> defer.Deferred[Any]:
        step = n.current

        def failed(f: Failure) -> Any:
            if f.check(NodeFailed):
                raise DemoFailed(step, f"{what}: {f.value}")
            return f

        return _bounded(d, reactor, step_timeout, step, what).addErrback(failed)

    def node(
        name: str, role: str, *args: str, key: bytes | None = None
    ) -> ElectrumNode:
        user_dir = os.path.join(work, name)
        os.makedirs(user_dir, exist_ok=True)
        proc = ElectrumNode.spawn(
            reactor, name, role, *args, key=key, user_dir=user_dir
        )
        cleanups.append(proc.stop)
        return proc

    try:
        n.step("Start an Electrum peer (plain TCP), the proxy and a webhook receiver")
        missing = electrum_available()
        if missing is not None:
            raise DemoFailed(n.current, f"{missing}\n{INSTALL_HINT}")
        peer = node("peer", "peer")
        ready = yield bounded(peer.wait("ready"), "the Electrum peer starting")
        peer_id, peer_port = ready["node_id"], ready["port"]
        n.say(f"peer      Electrum lnpeer.Peer {peer_id} at 127.0.0.1:{peer_port}")
        proxy, proxy_port = _start_proxy(reactor, os.path.join(work, "proxy"), cleanups)
        server_id = proxy.server_id
        url = f"ws://127.0.0.1:{proxy_port}/"
        n.say(f"proxy     {url}  server_id {server_id.hex()}")
        receiver = WebhookReceiver(server_id)
        site = server.Site(receiver)
        site.log = lambda request: None  # type: ignore[method-assign]
        hook_port = reactor.listenTCP(0, site, interface="127.0.0.1")
        cleanups.append(hook_port.stopListening)
        hook_url = f"http://127.0.0.1:{hook_port.getHost().port}/wake"
        n.say(f"webhook   {hook_url}")
        n.ok("all three are listening on 127.0.0.1")

        n.step("The Electrum client logs in and opens the peer through the proxy")
        secret = os.urandom(32)
        node_id = keys.public_key(secret).hex()
        client = node("client-1", "client", "--proxy", url, key=secret)
        yield bounded(client.wait("ready"), "the client starting")
        client.send(
            "connect", via="proxy", host="127.0.0.1", port=peer_port, node_id=peer_id,
            persist=True,
        )  # fmt: skip
        yield bounded(client.wait("logged_in"), "the login")
        n.say(f"client: logged in as {node_id} (signature by Electrum's ecc)")
        shake = yield bounded(
            peer.wait("handshake"), "the peer's side of the handshake"
        )
        if shake["peer"] != node_id:
            raise DemoFailed(n.current, "the peer authenticated another node id")
        n.say("client: act 1 -> connect, act 2 checked, act 3 + sk/rk/ck -> finish")
        n.say("peer: BOLT 8 handshake done (Electrum's LNResponderTransport)")
        yield bounded(client.wait("initialized"), "the client's init exchange")
        yield bounded(peer.wait("initialized"), "the peer's init exchange")
        n.ok("init exchanged both ways; the proxy owns the encrypted connection")

        n.step("The client registers its webhook and goes away")
        client.send("webhook", url=hook_url)
        yield bounded(client.wait("webhook"), "webhook.set")
        yield bounded(client.stop(), "the client exiting")
        yield bounded(
            _wait_until(reactor, lambda: not proxy.hub.online(node_id)),
            "the proxy noticing",
        )
        n.ok("the client process has exited; the proxy keeps the peer connection")

        n.step("The peer opens a channel while the client is away")
        hook_call = receiver.wait_call()
        peer.send("open_channel", sat=250_000)
        sent = yield bounded(peer.wait("sent", type=32), "open_channel")
        n.say("peer: open_channel sent (Electrum's channel_establishment_flow)")
        n.say("      Electrum waits 20 s for accept_channel")
        call = yield bounded(hook_call, "the webhook call")
        if not call["valid"]:
            raise DemoFailed(n.current, "the webhook signature does not verify")
        body = call["body"]
        if body.get("node_id") != node_id or body.get("reason") != "message":
            raise DemoFailed(n.current, f"unexpected webhook body {body}")
        n.say(f"receiver: {json.dumps(body, sort_keys=True)}")
        n.ok("stored in the inbox; webhook signed by server_id, verified")

        n.step("The webhook's receiver starts the Electrum client; it resumes")
        woken = node("client-2", "client", *resume_args(url), key=secret)
        login = yield bounded(woken.wait("logged_in"), "the second login")
        n.say(f"client: logged in; {login['pending']} events pending")
        yield bounded(woken.wait("resumed"), "resuming the connection")
        n.say(
            "client: resumed the connection the proxy kept (peer's init from connections)"
        )
        yield bounded(woken.wait("recv", type=32), "open_channel from the inbox")
        n.say("client: open_channel from the inbox -> Electrum's on_open_channel")
        accepted = yield bounded(
            peer.wait("recv", type=33), "accept_channel at the peer"
        )
        wake = accepted["t"] - sent["t"]
        n.ok(f"accept_channel reached the peer {wake:.2f} s after its open_channel")

        n.step("The channel opening completes, signatures checked on both sides")
        yield bounded(woken.wait("recv", type=34), "funding_created at the client")
        yield bounded(peer.wait("recv", type=35), "funding_signed at the peer")
        theirs = yield bounded(peer.wait("channel"), "the peer's channel")
        ours = yield bounded(woken.wait("channel"), "the client's channel")
        if theirs["channel_id"] != ours["channel_id"]:
            raise DemoFailed(n.current, "the two sides hold different channels")
        n.say(
            f"channel {ours['channel_id']}, {ours['capacity']} sat, state {ours['state']}"
        )
        n.ok("funding_created and funding_signed verified by Electrum on both sides")
    finally:
        yield _clean_up(cleanups)
    out.write(f"\nAll {len(n.done)} steps happened.\n")
    return {"wake_to_accept": wake}
