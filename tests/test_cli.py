"""``lnproxy-client`` as a user runs it, against a proxy.

Most commands run in-process: :func:`lnproxy.client.cli.build_parser` and
:func:`lnproxy.client.cli.run` on the test's reactor, with stdout, stderr
and ``LNPROXY_*`` variables swapped for the call, and ``SystemExit`` taken
as the exit status, exactly what :func:`lnproxy.client.cli.main` does
around them.  Two runs are real subprocesses (``sys.executable -m
lnproxy.client.cli``): a keygen, and a command against ``twistd -n
lnproxy`` started in a child process (:func:`lnproxy.testing.spawn_twistd`);
so the console entry point, real exit codes and real output streams stay
covered.  A local peer runs in the test's reactor.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

from lnproxy import keys, wire
from lnproxy.client.cli import build_parser, run
from lnproxy.testing import spawn_twistd

from .test_client_support import ClientTestCase, free_port

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = [
    "keygen",
    "connect",
    "send",
    "disconnect",
    "connections",
    "listen",
    "webhook",
]


def _exit_status(e: SystemExit) -> int:
    """The status ``sys.exit`` would give for ``e``."""
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else 1


class CliTestCase(ClientTestCase):
    """Runs the CLI (in-process, or as a subprocess); optionally a twistd
    child."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LNPROXY_")}
        self.env["PYTHONPATH"] = REPO_ROOT

    @defer.inlineCallbacks
    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> Any:
        """Run ``lnproxy-client ARGS`` in-process; fires with (stdout,
        stderr, status).  One at a time: it swaps process-wide state."""
        out, err = io.StringIO(), io.StringIO()
        saved_env = dict(os.environ)
        saved_streams = sys.stdout, sys.stderr
        for name in [k for k in os.environ if k.startswith("LNPROXY_")]:
            del os.environ[name]
        os.environ.update(env or {})
        sys.stdout, sys.stderr = out, err
        try:
            try:
                parsed = build_parser().parse_args(list(args))
                yield run(reactor, parsed, out)
                code = 0
            except SystemExit as e:
                code = _exit_status(e)
        finally:
            sys.stdout, sys.stderr = saved_streams
            os.environ.clear()
            os.environ.update(saved_env)
        return out.getvalue(), err.getvalue(), code

    def cli_subprocess(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> defer.Deferred[Any]:
        """Run ``python -m lnproxy.client.cli ARGS`` in a child process;
        fires with (stdout, stderr, status)."""
        argv = ["-m", "lnproxy.client.cli", *args]
        d = getProcessOutputAndValue(
            sys.executable, argv, env=dict(self.env, **(env or {})), path=self.workdir
        )
        return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))

    @defer.inlineCallbacks
    def twistd(self, *extra: str) -> Any:
        """Start ``twistd -n lnproxy`` on a free port; returns its URL."""
        port = free_port()
        data_dir = os.path.join(self.workdir, "proxy-data")
        child = spawn_twistd(
            reactor, port, data_dir, *extra, cwd=self.workdir, env=self.env
        )
        self.addCleanup(child.stop)
        try:
            yield child.wait_started().addTimeout(20, reactor)
        except RuntimeError:
            pass  # it ended: the assertion shows its output
        self.assertIn("lnproxy started", child.text, child.text)
        self.child = child
        return f"ws://127.0.0.1:{port}/"

    @defer.inlineCallbacks
    def keygen(self, name: str = "node.key") -> Any:
        """Make a key file with the CLI; returns (path, node id hex)."""
        path = os.path.join(self.workdir, name)
        out, err, code = yield self.cli("keygen", "--key", path)
        self.assertEqual(code, 0, err)
        return path, out.strip()


class OfflineTests(CliTestCase):
    """What the CLI does without a proxy, or with a broken setup."""

    @defer.inlineCallbacks
    def test_help_on_every_command(self) -> Any:
        """--help works on the program and on every command (exit 0)."""
        out, _, code = yield self.cli("--help")
        self.assertEqual(code, 0)
        for name in COMMANDS:
            self.assertIn(name, out)
        argvs = [[name, "--help"] for name in COMMANDS]
        argvs += [["webhook", action, "--help"] for action in ("set", "list", "remove")]
        results = []
        for argv in argvs:
            results.append((yield self.cli(*argv)))
        for (out, err, code), name in zip(
            results, COMMANDS + ["set", "list", "remove"], strict=True
        ):
            self.assertEqual(code, 0, err)
            self.assertIn("usage: lnproxy-client", out)
            self.assertIn(name, out)

    @defer.inlineCallbacks
    def test_keygen(self) -> Any:
        """keygen writes a 64-hex-character key with mode 0600 and prints its
        node id; a second keygen refuses to overwrite it (exit 1).  The first
        is a real subprocess (the ``-m`` entry point, its streams and exit
        status)."""
        path = os.path.join(self.workdir, "node.key")
        out, err, code = yield self.cli_subprocess("keygen", "--key", path)
        self.assertEqual((code, err), (0, ""))
        node_id = out.strip()
        with open(path) as f:
            secret = bytes.fromhex(f.read().strip())
        self.assertEqual(keys.public_key(secret).hex(), node_id)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        out, err, code = yield self.cli("keygen", "--key", path)
        self.assertEqual((out, code), ("", 1))
        self.assertEqual(
            err, f"lnproxy-client: key file {path} already exists; not overwriting it\n"
        )
        with open(path) as f:
            self.assertEqual(bytes.fromhex(f.read().strip()), secret)

    @defer.inlineCallbacks
    def test_setup_errors(self) -> Any:
        """Clear one-line messages and exit 1 for a missing key option, a
        missing or malformed key file, a missing URL, and an unreachable
        proxy; exit 2 for a usage error."""
        path, _ = yield self.keygen()
        bad = os.path.join(self.workdir, "bad.key")
        with open(bad, "w") as f:
            f.write("not a key\n")
        url = f"ws://127.0.0.1:{free_port()}/"
        cases = [
            (["connections", "--proxy", url], "no key file: use --key FILE or set LNPROXY_KEY"),
            (["connections", "--proxy", url, "--key", "missing.key"],
             "key file missing.key does not exist (create one with keygen)"),
            (["connections", "--proxy", url, "--key", bad],
             f"key file {bad} does not hold a node key (64 hex characters)"),
            (["connections", "--key", path], "no proxy URL: use --proxy URL or set LNPROXY_URL"),
            (["connections", "--key", path, "--proxy", url],
             f"cannot reach the proxy at {url}: "),
        ]  # fmt: skip
        results = []
        for argv, _ in cases:
            results.append((yield self.cli(*argv)))
        for (out, err, code), (argv, message) in zip(results, cases, strict=True):
            self.assertEqual(code, 1, (argv, err))
            self.assertEqual(out, "")
            self.assertTrue(err.startswith(f"lnproxy-client: {message}"), (argv, err))
            self.assertEqual(err.count("\n"), 1, err)
        _, err, code = yield self.cli("send", "--key", path, "conn", "zz")
        self.assertEqual(code, 2)
        self.assertIn("'zz' is not hex", err)


class ProxyCommandTests(CliTestCase):
    """Every command against a running proxy (``twistd -n lnproxy``, or
    in-process)."""

    @defer.inlineCallbacks
    def test_connect_send_connections_listen_webhook(self) -> Any:
        """connect prints a conn id that later invocations use (the proxy
        owns the connection); send reaches the peer; connections prints
        JSON lines; listen prints events as JSON lines and acknowledges
        them, so a second listen prints only newer ones; errors print the
        code and message and exit 1; webhooks can be set, listed and
        removed; environment variables replace the options."""
        url = yield self.twistd("--webhook-allow-private")
        path, node_id = yield self.keygen()
        env = {"LNPROXY_URL": url, "LNPROXY_KEY": path}
        peer, port = self.local_peer()
        opened = peer.wait_open()
        out, err, code = yield self.cli(
            "connect", f"{peer.node_id.hex()}@127.0.0.1:{port}", "--persist", env=env
        )
        self.assertEqual(code, 0, err)
        conn = out.strip()
        self.assertRegex(conn, r"^[0-9a-f]+$")
        p = yield opened
        self.assertEqual(p.remote_node_id.hex(), node_id)

        # A real subprocess against the twistd child.
        out, err, code = yield self.cli_subprocess("connections", env=env)
        self.assertEqual(code, 0, err)
        rows = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(len(rows), 1)
        self.assertEqual(
            (rows[0]["conn"], rows[0]["peer"], rows[0]["state"], rows[0]["persist"]),
            (conn, peer.node_id.hex(), "open", True),
        )
        self.assertEqual(rows[0]["their_init"], wire.Init(features=b"").encode().hex())

        got = peer.wait_message(lambda m: m[:2] == b"\x00\x84")
        out, err, code = yield self.cli("send", conn, "0084abcd", env=env)
        self.assertEqual((out, code), (f"sent 4 bytes (type 132) on {conn}\n", 0), err)
        self.assertEqual((yield got), bytes.fromhex("0084abcd"))

        out, err, code = yield self.cli("send", "ffffffffffffffff", "0084", env=env)
        self.assertEqual((out, code), ("", 1))
        self.assertEqual(err, "lnproxy-client: error 3: unknown connection\n")

        # Two events wait: the peer's init (1) and an htlc (2).
        p.send(bytes.fromhex("0080aa"))
        out, err, code = yield self.cli("listen", "--count", "2", env=env)
        self.assertEqual(code, 0, err)
        events = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(
            [(e["event"], e["seq"], e["type"]) for e in events],
            [("message", 1, 16), ("message", 2, 128)],
        )
        self.assertEqual(events[1]["msg"], "0080aa")
        self.assertEqual(events[1]["conn"], conn)
        self.assertTrue(events[1]["summon"])
        p.send(bytes.fromhex("0080bb"))
        out, err, code = yield self.cli("listen", "--count", "1", env=env)
        self.assertEqual(code, 0, err)
        self.assertEqual([json.loads(line)["seq"] for line in out.splitlines()], [3])
        with open(path + ".state") as f:
            self.assertEqual(json.load(f)["last_seq"], 3)

        out, err, code = yield self.cli(
            "webhook", "set", "http://127.0.0.1:9/wake", env=env
        )
        self.assertEqual(code, 0, err)
        hook = out.strip()
        out, err, code = yield self.cli("webhook", "list", env=env)
        self.assertEqual(
            [json.loads(line) for line in out.splitlines()],
            [{"id": hook, "url": "http://127.0.0.1:9/wake"}],
        )
        out, err, code = yield self.cli("webhook", "remove", hook, env=env)
        self.assertEqual((out, code), (f"removed {hook}\n", 0), err)
        out, err, code = yield self.cli("webhook", "remove", hook, env=env)
        self.assertEqual((err, code), ("lnproxy-client: error 3: unknown webhook\n", 1))

        out, err, code = yield self.cli(
            "disconnect", conn, "--proxy", url, "--key", path
        )
        self.assertEqual((out, code), (f"disconnected {conn}\n", 0), err)
        out, err, code = yield self.cli("send", conn, "0084", env=env)
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("lnproxy-client: error 6: "), err)

    @defer.inlineCallbacks
    def test_refused_login(self) -> Any:
        """A login the proxy refuses (here: the node already has its one
        allowed session) prints the code and message and exits 1."""
        self.start_proxy("--max-sessions-per-node", "1")
        url = self.proxy_url
        path, _ = yield self.keygen()
        with open(path) as f:
            secret = bytes.fromhex(f.read().strip())
        holder = self.make_client(secret=secret, url=url)
        yield holder.when_logged_in(fail_fast=True)
        out, err, code = yield self.cli("connections", "--proxy", url, "--key", path)
        self.assertEqual((out, code), ("", 1))
        self.assertTrue(
            err.startswith("lnproxy-client: login refused by the proxy: error 7: "), err
        )
        self.assertEqual(err.count("\n"), 1)
