"""``lnproxy-client``: use a running proxy from a shell.

Every command except ``keygen`` and ``account restore`` logs in to the proxy
with the node key, does one thing and exits; ``listen`` stays and prints events.  The proxy URL and
the key file come from ``--proxy``/``--key`` or ``LNPROXY_URL``/``LNPROXY_KEY``.

Output is for scripts: results go to stdout (a connection id, a webhook id,
or JSON lines), one-line errors to stderr with a non-zero exit status
(1 for a runtime error, 2 for a usage error).

Only :func:`main` imports the global reactor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

from lnproxy import wire
from lnproxy.client import cli_devices
from lnproxy.client.errors import ClientError, ProxyUnreachable
from lnproxy.client.events import Event
from lnproxy.client.keyfile import (
    KeyFileError,
    generate_key_file,
    is_private,
    read_key_file,
)
from lnproxy.client.session import Client
from lnproxy.client.state import StateError

__all__ = ["main", "build_parser", "run"]

PROG = "lnproxy-client"


class CliError(Exception):
    """A one-line message for stderr; the process exits with status 1."""


def _hex_arg(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every command has ``--help``)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: options may come before or after the command without the
    # subcommand's default overwriting the main parser's value.
    common.add_argument(
        "--proxy",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="proxy WebSocket URL, ws://host:port/ or wss://host:port/ (env LNPROXY_URL)",
    )
    common.add_argument(
        "--key",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="node key file, 64 hex characters (env LNPROXY_KEY)",
    )
    common.add_argument(
        "--server-id",
        metavar="HEX",
        type=_hex_arg,
        default=argparse.SUPPRESS,
        help="refuse a proxy whose server_id differs (env LNPROXY_SERVER_ID)",
    )
    common.add_argument(
        "--cafile",
        metavar="PEM",
        default=argparse.SUPPRESS,
        help="trust this CA certificate for wss:// instead of the system roots",
    )
    common.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive,
        default=argparse.SUPPRESS,
        help="give up on the proxy after this long (default 30)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Talk to an lnproxy server with a node key that never leaves "
        "this machine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "keygen",
        parents=[common],
        help="create a node key file (mode 0600) and print the node id",
        description="Create a new node key in the --key file (never overwrites) "
        "and print its node id.",
    )

    p = sub.add_parser(
        "connect",
        parents=[common],
        help="open a peer connection through the proxy; prints its conn id",
        description="Run the BOLT 8 handshake with PEER through the proxy, send "
        "our init, and print the connection id.  The connection stays with the "
        "proxy after this command exits.",
    )
    p.add_argument(
        "peer", metavar="PEER", help="node_id@host[:port] (port 9735 by default)"
    )
    p.add_argument(
        "--persist",
        action="store_true",
        help="ask the proxy to summon a client to re-handshake if it drops",
    )
    p.add_argument(
        "--features",
        metavar="HEX",
        type=_hex_arg,
        default=b"",
        help="features bitfield of our init (default: none)",
    )

    p = sub.add_parser(
        "send",
        parents=[common],
        help="send one Lightning message on a connection",
        description="Send one Lightning message (hex, 2-byte type first) on CONN.",
    )
    p.add_argument("conn", metavar="CONN", help="connection id")
    p.add_argument(
        "msg", metavar="HEX", type=_hex_arg, help="the message, type included"
    )

    p = sub.add_parser(
        "disconnect",
        parents=[common],
        help="close a connection",
        description="Close CONN (no re-handshake follows).",
    )
    p.add_argument("conn", metavar="CONN", help="connection id")

    sub.add_parser(
        "connections",
        parents=[common],
        help="list the node's connections as JSON lines",
        description="Print each connection object of the node as one JSON line.",
    )

    p = sub.add_parser(
        "listen",
        parents=[common],
        help="print events as JSON lines and acknowledge them",
        description="Print every event as one JSON line, acknowledge it, and "
        "re-handshake persistent peers that ask for it.  Runs until interrupted "
        "(or --count events).  The highest printed seq is kept in --state so "
        "that no event is printed twice.",
    )
    p.add_argument(
        "--count", metavar="N", type=_count, default=None, help="exit after N events"
    )
    p.add_argument(
        "--state",
        metavar="FILE",
        default=None,
        help="where the last handled seq is kept (default: KEYFILE.state)",
    )
    p.add_argument(
        "--lease",
        action="store_true",
        help="take the node's writer lease (without force) at every login: "
        "only the holder re-handshakes persistent peers",
    )

    p = sub.add_parser(
        "webhook",
        parents=[common],
        help="manage webhooks (set URL | list | remove ID)",
        description="Register, list or remove the URLs the proxy calls to wake "
        "this node's client.",
    )
    wsub = p.add_subparsers(dest="webhook_command", metavar="ACTION", required=True)
    w = wsub.add_parser(
        "set",
        parents=[common],
        help="register a URL; prints its id",
        description="Register URL; prints the webhook id.",
    )
    w.add_argument("url", metavar="URL")
    wsub.add_parser(
        "list",
        parents=[common],
        help="print webhooks as JSON lines",
        description="Print each webhook as one JSON line {id, url}.",
    )
    w = wsub.add_parser(
        "remove",
        parents=[common],
        help="remove a webhook by id",
        description="Remove the webhook ID.",
    )
    w.add_argument("id", metavar="ID")
    cli_devices.add_commands(sub, common)
    return parser


def _setting(args: argparse.Namespace, name: str, env: str) -> Any:
    value = getattr(args, name, None)
    if value is None:
        value = os.environ.get(env) or None
    return value


def _key_path(args: argparse.Namespace) -> str:
    path = _setting(args, "key", "LNPROXY_KEY")
    if not path:
        raise CliError("no key file: use --key FILE or set LNPROXY_KEY")
    return str(path)


def keygen(args: argparse.Namespace, out: Any) -> None:
    """``keygen``: create the key file, print the node id."""
    path = _key_path(args)
    try:
        node_id = generate_key_file(path)
    except KeyFileError as e:
        raise CliError(str(e)) from None
    out.write(node_id.hex() + "\n")


def _tls_options(args: argparse.Namespace, url: str) -> Any:
    ca = _ca_certificate(args)
    if ca is None:
        return None
    from urllib.parse import urlsplit

    from twisted.internet.ssl import optionsForClientTLS

    return optionsForClientTLS(urlsplit(url).hostname or "", trustRoot=ca)


def _tls_per_host(args: argparse.Namespace) -> Any:
    """``hostname -> TLS options`` trusting ``--cafile`` (for the client,
    which may be redirected to other hosts), or None for the system roots."""
    ca = _ca_certificate(args)
    if ca is None:
        return None
    from twisted.internet.ssl import optionsForClientTLS

    return lambda host: optionsForClientTLS(host, trustRoot=ca)


def _ca_certificate(args: argparse.Namespace) -> Any:
    cafile = getattr(args, "cafile", None)
    if not cafile:
        return None
    from twisted.internet.ssl import Certificate

    try:
        with open(cafile, "rb") as f:
            return Certificate.loadPEM(f.read())
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read CA file {cafile}: {e}") from None


def _server_id(args: argparse.Namespace) -> bytes | None:
    server_id: bytes | None = getattr(args, "server_id", None)
    if server_id is None and os.environ.get("LNPROXY_SERVER_ID"):
        try:
            server_id = bytes.fromhex(os.environ["LNPROXY_SERVER_ID"])
        except ValueError:
            raise CliError("LNPROXY_SERVER_ID is not hex") from None
    return server_id


def _make_client(
    reactor: Any,
    args: argparse.Namespace,
    on_event: Any = None,
    state: str | None = None,
) -> Client:
    url = _setting(args, "proxy", "LNPROXY_URL")
    if not url:
        raise CliError("no proxy URL: use --proxy URL or set LNPROXY_URL")
    path = _key_path(args)
    try:
        secret = read_key_file(path)
    except KeyFileError as e:
        raise CliError(str(e)) from None
    if not is_private(path):
        sys.stderr.write(
            f"{PROG}: warning: key file {path} is readable by other users\n"
        )
    server_id = _server_id(args)
    try:
        return Client(
            reactor,
            str(url),
            secret,
            on_event=on_event,
            state=state,
            server_id=server_id,
            request_timeout=getattr(args, "timeout", 30.0),
            tls_options=_tls_per_host(args),
            lease=bool(getattr(args, "lease", False)),
        )
    except (ValueError, StateError) as e:
        raise CliError(str(e)) from None


@defer.inlineCallbacks
def _login(client: Client) -> Any:
    client.startService()
    try:
        info = yield client.when_logged_in(fail_fast=True)
    except ProxyUnreachable:
        raise
    except ClientError as e:
        # LoginFailed (2), a session limit (7), a wrong server id...
        raise CliError(f"login refused by the proxy: {e}") from None
    return info


def _print_json(out: Any, obj: Any) -> None:
    out.write(json.dumps(obj, sort_keys=True) + "\n")
    out.flush()


@defer.inlineCallbacks
def _one_shot(reactor: Any, args: argparse.Namespace, out: Any) -> Any:
    client = _make_client(reactor, args)
    try:
        yield _login(client)
        cmd = args.command
        if cmd == "connect":
            link = yield client.open_peer(
                args.peer, persist=args.persist, features=args.features
            )
            out.write(link.conn + "\n")
        elif cmd == "send":
            if len(args.msg) < 2:
                raise CliError("a message needs at least its 2-byte type")
            yield client.send(args.conn, args.msg)
            out.write(
                f"sent {len(args.msg)} bytes (type {wire.message_type(args.msg)}) on {args.conn}\n"
            )
        elif cmd == "disconnect":
            yield client.disconnect(args.conn)
            out.write(f"disconnected {args.conn}\n")
        elif cmd == "connections":
            for c in (yield client.connections()):
                _print_json(out, c)
        elif cmd == "account":
            secret = read_key_file(_key_path(args))
            line = yield cli_devices.run_account(reactor, client, secret, args)
            out.write(line + "\n")
        elif cmd == "vault":
            for item in (yield cli_devices.run_vault(client, args)):
                if isinstance(item, str):
                    out.write(item + "\n")
                else:
                    _print_json(out, item)
        elif cmd == "webhook":
            action = args.webhook_command
            if action == "set":
                out.write((yield client.webhook_set(args.url)) + "\n")
            elif action == "list":
                for w in (yield client.webhook_list()):
                    _print_json(out, w)
            else:
                yield client.webhook_remove(args.id)
                out.write(f"removed {args.id}\n")
    finally:
        yield client.stopService()


@defer.inlineCallbacks
def _listen(reactor: Any, args: argparse.Namespace, out: Any) -> Any:
    done: defer.Deferred[None] = defer.Deferred()
    seen = [0]

    def on_event(event: Event) -> None:
        _print_json(out, event.as_json())
        seen[0] += 1
        if args.count is not None and seen[0] >= args.count and not done.called:
            # Let the client record and acknowledge this event first.
            reactor.callLater(0, finish)

    def finish() -> None:
        if not done.called:
            done.callback(None)

    state = args.state or _key_path(args) + ".state"
    client = _make_client(reactor, args, on_event=on_event, state=state)

    shutdown = reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
    try:
        info = yield _login(client)
        sys.stderr.write(
            f"{PROG}: listening as {info.node_id} ({info.pending} events pending)\n"
        )
        yield done
    finally:
        reactor.removeSystemEventTrigger(shutdown)
        yield client.stopService()


@defer.inlineCallbacks
def _restore(reactor: Any, args: argparse.Namespace, out: Any) -> Any:
    url = _setting(args, "proxy", "LNPROXY_URL")
    if not url:
        raise CliError("no proxy URL: use --proxy URL or set LNPROXY_URL")
    node_id = yield cli_devices.account_restore(
        reactor,
        str(url),
        args,
        _key_path(args),
        server_id=_server_id(args),
        tls_options=_tls_options(args, str(url)),
        timeout=getattr(args, "timeout", 30.0) + 30.0,
    )
    out.write(node_id + "\n")


def run(
    reactor: Any, args: argparse.Namespace, out: Any = None
) -> defer.Deferred[None]:
    """Run one parsed command on ``reactor``.

    :param reactor: the reactor.
    :param args: what :func:`build_parser` parsed.
    :param out: where results go (default stdout).
    :return: a Deferred that fails with ``SystemExit(1)`` after printing a
        one-line error to stderr.
    """
    out = out or sys.stdout

    @defer.inlineCallbacks
    def go() -> Any:
        try:
            if args.command == "keygen":
                keygen(args, out)
            elif args.command == "account" and args.account_command == "restore":
                yield _restore(reactor, args, out)
            elif args.command == "listen":
                yield _listen(reactor, args, out)
            else:
                yield _one_shot(reactor, args, out)
        except (CliError, ClientError, cli_devices.CommandError) as e:
            sys.stderr.write(f"{PROG}: {e}\n")
            raise SystemExit(1) from None

    return go()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    from twisted.internet import task

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    task.react(lambda reactor: run(reactor, args))


if __name__ == "__main__":
    main()
