"""``twistd lnproxy`` options (lnproxy.tap.Options) and the plugin."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import tap
from lnproxy.policy import MessageClass

#: Every option with its default, as parsed (numbers converted).
DEFAULTS: dict[str, Any] = {
    "listen": ["tcp:9736:interface=127.0.0.1"],
    "data-dir": "./lnproxy-data",
    "handshake-timeout": 30.0,
    "keepalive": 60.0,
    "webhook-window": 60.0,
    "webhook-timeout": 5.0,
    "webhook-allow-private": 0,
    "metrics": None,
    "max-connections-per-node": 200,
    "max-sessions-per-node": 8,
    "max-events-per-node": 10000,
    "max-handshakes-per-node": 16,
    "max-handshakes": 1024,
    "login-timeout": 30.0,
    "max-vault-entries-per-node": 64,
    "max-requests-per-second": 5000.0,
    "database": "sqlite",
    "public-url": None,
    "lease-timeout": 15.0,
    "server-key": None,
    "policy": {},
    "takeover": 0,
    "takeover-timeout": 5.0,
    "systemd-fd-store": 0,
}


def parse(*argv: str) -> tap.Options:
    """Parse a command line the way twistd does."""
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    """Parsing, compared as whole dicts."""

    def test_defaults(self) -> None:
        """No arguments gives exactly the documented defaults."""
        self.assertEqual(dict(parse()), DEFAULTS)

    def test_everything_given(self) -> None:
        """Every option parsed, repeatable ones accumulated, numbers
        converted, later policy overrides replacing earlier ones."""
        options = parse(
            "--listen",
            "tcp:1234:interface=127.0.0.1",
            "--listen",
            "tcp:1235:interface=::1",
            "--data-dir",
            "/var/lib/lnproxy",
            "--handshake-timeout",
            "2.5",
            "--keepalive",
            "15",
            "--webhook-window",
            "30",
            "--webhook-timeout",
            "3",
            "--webhook-allow-private",
            "--metrics",
            "tcp:9100:interface=127.0.0.1",
            "--max-connections-per-node",
            "3",
            "--max-sessions-per-node",
            "2",
            "--max-events-per-node",
            "50",
            "--max-handshakes-per-node",
            "4",
            "--max-handshakes",
            "9",
            "--login-timeout",
            "10",
            "--max-vault-entries-per-node",
            "5",
            "--max-requests-per-second",
            "0",
            "--database",
            "postgresql://lnproxy@db.internal/lnproxy",
            "--public-url",
            "wss://p1.example.com/",
            "--lease-timeout",
            "3",
            "--server-key",
            "/etc/lnproxy/server.key",
            "--policy",
            "32=queue",
            "--policy",
            "259=summon",
            "--policy",
            "32=drop",
            "--takeover",
            "--takeover-timeout",
            "2",
            "--systemd-fd-store",
        )
        self.assertEqual(
            dict(options),
            {
                "listen": ["tcp:1234:interface=127.0.0.1", "tcp:1235:interface=::1"],
                "data-dir": "/var/lib/lnproxy",
                "handshake-timeout": 2.5,
                "keepalive": 15.0,
                "webhook-window": 30.0,
                "webhook-timeout": 3.0,
                "webhook-allow-private": 1,
                "metrics": "tcp:9100:interface=127.0.0.1",
                "max-connections-per-node": 3,
                "max-sessions-per-node": 2,
                "max-events-per-node": 50,
                "max-handshakes-per-node": 4,
                "max-handshakes": 9,
                "login-timeout": 10.0,
                "max-vault-entries-per-node": 5,
                "max-requests-per-second": 0.0,
                "database": "postgresql://lnproxy@db.internal/lnproxy",
                "public-url": "wss://p1.example.com/",
                "lease-timeout": 3.0,
                "server-key": "/etc/lnproxy/server.key",
                "policy": {32: MessageClass.DROP, 259: MessageClass.SUMMON},
                "takeover": 1,
                "takeover-timeout": 2.0,
                "systemd-fd-store": 1,
            },
        )

    def test_fresh_options_do_not_share_lists(self) -> None:
        """Two Options objects do not share their repeatable values."""
        parse("--listen", "tcp:1", "--policy", "32=queue")
        self.assertEqual(dict(parse()), DEFAULTS)


class BadOptionsTests(SynchronousTestCase):
    """Bad values stop twistd with a UsageError that says why."""

    def assertUsage(self, message: str, *argv: str) -> None:
        """Parsing ``argv`` raises UsageError containing ``message``."""
        with self.assertRaises(usage.UsageError) as cm:
            parse(*argv)
        self.assertIn(message, str(cm.exception))

    def test_bad_policy(self) -> None:
        """Unknown class, type out of range, non-integer type, missing
        ``=``, and ``handle`` on a type the proxy cannot handle."""
        self.assertUsage(
            "unknown class 'wake' (one of handle, drop, queue, summon)",
            "--policy",
            "32=wake",
        )
        self.assertUsage("type 70000 is outside 0-65535", "--policy", "70000=queue")
        self.assertUsage("type -5 is outside 0-65535", "--policy", "-5=queue")
        self.assertUsage("type 'ping' is not an integer", "--policy", "ping=queue")
        self.assertUsage("is not TYPE=CLASS", "--policy", "32")
        self.assertUsage(
            "the proxy cannot handle type 128 by itself", "--policy", "128=handle"
        )

    def test_bad_seconds(self) -> None:
        """Timeouts must be positive numbers."""
        for name in (
            "handshake-timeout",
            "keepalive",
            "webhook-window",
            "login-timeout",
        ):
            self.assertUsage(
                f"--{name} must be a number of seconds, not 'abc'", f"--{name}", "abc"
            )
            self.assertUsage(f"--{name} must be greater than 0", f"--{name}", "0")
            self.assertUsage(f"--{name} must be greater than 0", f"--{name}", "-1")
            self.assertUsage(f"--{name} must be greater than 0", f"--{name}", "nan")

    def test_bad_counts(self) -> None:
        """Caps must be whole numbers of at least 1."""
        for name in (
            "max-connections-per-node",
            "max-sessions-per-node",
            "max-events-per-node",
            "max-handshakes-per-node",
            "max-handshakes",
            "max-vault-entries-per-node",
        ):
            self.assertUsage(
                f"--{name} must be a whole number, not '1.5'", f"--{name}", "1.5"
            )
            self.assertUsage(
                f"--{name} must be a whole number, not 'many'", f"--{name}", "many"
            )
            self.assertUsage(f"--{name} must be at least 1", f"--{name}", "0")
            self.assertUsage(f"--{name} must be at least 1", f"--{name}", "-3")

    def test_bad_request_rate(self) -> None:
        """The request rate is 0 (no limit) or a finite positive number."""
        name = "--max-requests-per-second"
        self.assertUsage(f"{name} must be a number, not 'fast'", name, "fast")
        for bad in ("-1", "nan", "inf"):
            self.assertUsage(f"{name} must be 0 (no limit) or a positive", name, bad)

    def test_bad_scale_out_options(self) -> None:
        """A database that is neither sqlite nor PostgreSQL (its password
        never echoed), PostgreSQL without --public-url, a public URL that
        is not ws(s), and a non-positive lease timeout are refused."""
        self.assertUsage("'mysql'", "--database", "mysql://u:secret@h/db")
        with self.assertRaises(usage.UsageError) as cm:
            parse("--database", "mysql://u:secret@h/db")
        self.assertNotIn("secret", str(cm.exception))
        self.assertUsage(
            "--public-url is required", "--database", "postgresql://h/db"
        )
        self.assertUsage(
            "ws:// or wss://",
            "--database",
            "postgresql://h/db",
            "--public-url",
            "http://h/",
        )
        self.assertUsage("--lease-timeout must be greater than 0", "--lease-timeout", "0")

    def test_unknown_option(self) -> None:
        """An unknown option is refused."""
        self.assertUsage("no-such-option", "--no-such-option", "1")


class PluginTests(SynchronousTestCase):
    """The twistd plugin from the source tree."""

    def test_plugin_found(self) -> None:
        """``twistd lnproxy`` finds a ServiceMaker whose options are
        lnproxy.tap.Options and whose module is lnproxy.tap."""
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "lnproxy"]
        self.assertEqual(len(makers), 1)
        self.assertIs(makers[0].options, tap.Options)
        self.assertIs(makers[0].makeService, tap.makeService)
