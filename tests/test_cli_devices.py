"""``lnproxy-client account ...`` and ``vault ...``, run in-process against
a real proxy (build_parser + run on the test's reactor, streams swapped)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from typing import Any

from twisted.internet import defer, reactor

from lnproxy import keys
from lnproxy.client import cli_devices
from lnproxy.client.cli import build_parser, run
from lnproxy.client.keyfile import read_key_file

from .test_client_support import ClientTestCase
from .test_service_devices import CapturedLogs

PASSWORD = "correct horse battery staple"


class CliDevicesTests(ClientTestCase):
    """The account and vault commands."""

    def setUp(self) -> None:
        """A work dir, a node key file, captured logs."""
        super().setUp()
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.secret = os.urandom(32)
        self.key = os.path.join(self.workdir, "node.key")
        with open(self.key, "w") as f:
            f.write(self.secret.hex() + "\n")
        os.chmod(self.key, 0o600)
        self.logs = CapturedLogs()
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)

    def password_fd(self, text: str) -> str:
        """A pipe holding ``text``; returns its read end's number."""
        r, w = os.pipe()
        os.write(w, text.encode())
        os.close(w)
        self.addCleanup(os.close, r)
        return str(r)

    @defer.inlineCallbacks
    def cli(self, *args: str) -> Any:
        """Run ``lnproxy-client --proxy URL ARGS``; (stdout, stderr, status)."""
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            parsed = build_parser().parse_args(["--proxy", self.proxy_url, *args])
            yield run(reactor, parsed, out)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.stdout, sys.stderr = saved
        return out.getvalue(), err.getvalue(), code

    @defer.inlineCallbacks
    def test_account_set_restore_remove(self) -> Any:
        """set (password from an fd), restore on a device without the key
        (mode 0600, same secret, never over an existing file), remove."""
        self.start_proxy()
        out, err, code = yield self.cli(
            "account",
            "set",
            "--key",
            self.key,
            "--user",
            "alice",
            "--password-fd",
            self.password_fd(PASSWORD + "\n"),
        )
        self.assertEqual((code, err), (0, ""), err)
        self.assertEqual(out, "account set for user alice\n")

        restored = os.path.join(self.workdir, "restored.key")
        out, err, code = yield self.cli(
            "account",
            "restore",
            "--user",
            "alice",
            "--key",
            restored,
            "--password-fd",
            self.password_fd(PASSWORD),
        )
        self.assertEqual((code, err), (0, ""), err)
        self.assertEqual(out, keys.public_key(self.secret).hex() + "\n")
        self.assertEqual(read_key_file(restored), self.secret)
        self.assertEqual(stat.S_IMODE(os.stat(restored).st_mode), 0o600)

        out, err, code = yield self.cli(
            "account",
            "restore",
            "--user",
            "alice",
            "--key",
            restored,
            "--password-fd",
            self.password_fd(PASSWORD),
        )
        self.assertEqual(code, 1)
        self.assertIn("already exists", err)

        out, err, code = yield self.cli("account", "remove", "--key", self.key)
        self.assertEqual((code, out), (0, "account removed\n"), err)
        other = os.path.join(self.workdir, "other.key")
        out, err, code = yield self.cli(
            "account",
            "restore",
            "--user",
            "alice",
            "--key",
            other,
            "--password-fd",
            self.password_fd(PASSWORD),
        )
        self.assertEqual(code, 1)
        self.assertIn("wrong user name or password", err)
        self.assertFalse(os.path.exists(other))
        self.assertNotIn(PASSWORD, "\n".join(self.logs.lines))

    @defer.inlineCallbacks
    def test_password_prompts(self) -> Any:
        """Without --password-fd the password is asked twice; two different
        entries, or one shorter than 12 characters, are refused."""
        self.start_proxy()
        answers: list[str] = []
        prompts: list[str] = []

        def fake_getpass(prompt: str = "") -> str:
            prompts.append(prompt)
            return answers.pop(0)

        self.patch(cli_devices.getpass, "getpass", fake_getpass)
        answers[:] = [PASSWORD, PASSWORD + "x"]
        out, err, code = yield self.cli(
            "account", "set", "--key", self.key, "--user", "alice"
        )
        self.assertEqual(code, 1)
        self.assertIn("the two passwords differ", err)
        answers[:] = ["short", "short"]
        out, err, code = yield self.cli(
            "account", "set", "--key", self.key, "--user", "alice"
        )
        self.assertEqual(code, 1)
        self.assertIn("at least 12 characters", err)
        answers[:] = [PASSWORD, PASSWORD]
        out, err, code = yield self.cli(
            "account", "set", "--key", self.key, "--user", "alice"
        )
        self.assertEqual((code, out), (0, "account set for user alice\n"), err)
        self.assertEqual(prompts[-2:], ["Password: ", "Password again: "])
        self.assertNotIn(PASSWORD, out + err)

    @defer.inlineCallbacks
    def test_vault_commands(self) -> Any:
        """put, get, list, a conflicting put (exit 1 naming the current
        version), remove."""
        self.start_proxy()
        base = ("--key", self.key)
        out, err, code = yield self.cli(
            "vault", "put", "notes", "c0ffee", "--version", "0", *base
        )
        self.assertEqual((code, out), (0, "1\n"), err)
        out, err, code = yield self.cli("vault", "get", "notes", *base)
        self.assertEqual(json.loads(out), {"version": 1, "blob": "c0ffee"})
        out, err, code = yield self.cli("vault", "list", *base)
        self.assertEqual(
            [json.loads(line) for line in out.splitlines()],
            [{"name": "notes", "version": 1, "size": 3}],
        )
        out, err, code = yield self.cli(
            "vault", "put", "notes", "00", "--version", "0", *base
        )
        self.assertEqual(code, 1)
        self.assertIn("version conflict: the current version of notes is 1", err)
        out, err, code = yield self.cli(
            "vault", "remove", "notes", "--version", "1", *base
        )
        self.assertEqual((code, out), (0, "removed notes\n"), err)
        out, err, code = yield self.cli("vault", "get", "notes", *base)
        self.assertEqual(json.loads(out), {"version": 0, "blob": None})

    @defer.inlineCallbacks
    def test_listen_with_lease(self) -> Any:
        """``listen --lease`` holds the writer lease while it runs: another
        session of the node is refused connect (code 11) until it exits."""
        self.start_proxy()
        peer, port = self.local_peer()
        other = yield self.logged_in(self.secret)
        opened = peer.wait_open()
        yield other.open_peer(peer, port)
        p = yield opened
        state = os.path.join(self.workdir, "listen.state")
        running = self.cli(
            "listen", "--lease", "--count", "2", "--key", self.key, "--state", state
        )
        node = keys.public_key(self.secret).hex()
        devices = self.proxy.factory.devices
        yield self.wait_for(
            lambda: devices.leases.holder(node) is not None, what="the lease"
        )
        try:
            yield other.call(
                "connect", peer=f"{peer.node_id.hex()}@127.0.0.1:{port}", act1="00" * 50
            )
        except Exception as e:
            self.assertEqual(getattr(e, "code", None), 11)
        else:
            self.fail("connect was not refused")
        p.send(bytes.fromhex("0080") + b"\x02" * 40)
        out, err, code = yield running
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out.splitlines()), 2)
        yield self.wait_for(
            lambda: devices.leases.holder(node) is None, what="the lease to end"
        )
