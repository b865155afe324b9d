"""``lnproxy-client account ...`` and ``lnproxy-client vault ...``.

docs/client.md, "6. Several devices".  The commands of :mod:`lnproxy.client.cli`
that deal with accounts and the vault:

- ``account set --user NAME``: make (or replace) the node's account; the
  password is asked twice (or read from ``--password-fd N``).
- ``account restore --user NAME --key FILE``: on a device without the key,
  fetch it from the account and write the key file (mode 0600, never over
  an existing file).
- ``account remove``: delete the node's account.
- ``vault get NAME``, ``vault put NAME HEX --version N``, ``vault list``,
  ``vault remove NAME --version N``: the raw vault (blobs in hex).

The password is never echoed, logged, written or passed on a command line.
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from twisted.internet import defer, threads

from lnproxy.client import account
from lnproxy.client.errors import LimitExceeded, LoginFailed, ProxyError
from lnproxy.client.keyfile import KeyFileError, write_key_file
from lnproxy.client.restore import AccountRestoreError, restore_account
from lnproxy.protocol import VERSION_CONFLICT

__all__ = [
    "MIN_PASSWORD",
    "CommandError",
    "add_commands",
    "account_restore",
    "read_password",
    "run_account",
    "run_vault",
]

#: Shortest password ``account set`` accepts: the password alone protects
#: the node key against whoever holds the proxy's database.
MIN_PASSWORD = 12
#: Most bytes read from --password-fd.
_MAX_PASSWORD_BYTES = 4096


class CommandError(Exception):
    """A one-line message for stderr; the CLI exits with status 1."""


def _fd(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file descriptor") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a file descriptor is not negative")
    return value


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a version is 0 or more")
    return value


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``account`` and ``vault`` commands to the CLI's subparsers."""
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument(
        "--user", metavar="NAME", required=True, help="the account's user name"
    )
    password.add_argument(
        "--password-fd",
        metavar="N",
        type=_fd,
        default=None,
        help="read the password from file descriptor N (to its end; one final "
        "newline is dropped) instead of asking on the terminal",
    )

    p = sub.add_parser(
        "account",
        parents=[common],
        help="the node's account (set --user NAME | restore --user NAME | remove)",
        description="An account keeps the node key on the proxy, encrypted with "
        "a key derived from a password the proxy never sees, so that another "
        "device can restore it.",
    )
    asub = p.add_subparsers(dest="account_command", metavar="ACTION", required=True)
    asub.add_parser(
        "set",
        parents=[common, password],
        help="create or replace the node's account",
        description="Log in with --key, derive auth and enc from the password "
        "(asked twice), and store auth and the encrypted node key as the "
        "node's account under --user.",
    )
    asub.add_parser(
        "restore",
        parents=[common, password],
        help="write the node key file from an account",
        description="Fetch the account --user from the proxy (no key needed), "
        "open it with the password, and write the node key to --key (mode "
        "0600; an existing file is never overwritten).  Prints the node id.",
    )
    asub.add_parser(
        "remove",
        parents=[common],
        help="delete the node's account",
        description="Delete the node's account on the proxy.",
    )

    p = sub.add_parser(
        "vault",
        parents=[common],
        help="the node's vault (get NAME | put NAME HEX | list | remove NAME)",
        description="Small opaque blobs the node's devices share; every write "
        "names the version it replaces.",
    )
    vsub = p.add_subparsers(dest="vault_command", metavar="ACTION", required=True)
    v = vsub.add_parser(
        "get",
        parents=[common],
        help="print {version, blob} of an entry as JSON",
        description="Print the entry NAME as one JSON line {version, blob}.",
    )
    v.add_argument("name", metavar="NAME")
    v = vsub.add_parser(
        "put",
        parents=[common],
        help="write an entry; prints its new version",
        description="Write HEX as entry NAME, replacing --version (0 for a new "
        "name).  Prints the new version.  Another version answers "
        "'version conflict' with the current one and exit status 1.",
    )
    v.add_argument("name", metavar="NAME")
    v.add_argument("blob", metavar="HEX", help="the content, hex")
    v.add_argument(
        "--version",
        metavar="N",
        type=_version,
        required=True,
        help="the version this write replaces (0 for a new name)",
    )
    vsub.add_parser(
        "list",
        parents=[common],
        help="print entries as JSON lines",
        description="Print each entry as one JSON line {name, version, size}.",
    )
    v = vsub.add_parser(
        "remove",
        parents=[common],
        help="remove an entry",
        description="Remove entry NAME if its version is --version.",
    )
    v.add_argument("name", metavar="NAME")
    v.add_argument("--version", metavar="N", type=_version, required=True)


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def read_password(args: argparse.Namespace, confirm: bool) -> str:
    """The password from ``--password-fd`` or the terminal (twice when
    ``confirm``).

    :raise CommandError: empty, unreadable, or the two entries differ.
    """
    fd = getattr(args, "password_fd", None)
    if fd is not None:
        chunks = []
        size = 0
        try:
            while size <= _MAX_PASSWORD_BYTES:
                chunk = os.read(fd, 1024)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as e:
            raise CommandError(
                f"cannot read the password from fd {fd}: {e.strerror}"
            ) from None
        if size > _MAX_PASSWORD_BYTES:
            raise CommandError(f"the password from fd {fd} is too long")
        try:
            password = _strip_newline(b"".join(chunks).decode("utf-8"))
        except UnicodeDecodeError:
            raise CommandError(f"the password from fd {fd} is not UTF-8") from None
    else:
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password again: ") != password:
            raise CommandError("the two passwords differ")
    if not password:
        raise CommandError("the password is empty")
    return password


def _derive(reactor: Any, password: str, server_id: bytes, user: str) -> Any:
    return threads.deferToThreadPool(
        reactor, reactor.getThreadPool(), account.derive, password, server_id, user
    )


@defer.inlineCallbacks
def account_set(
    reactor: Any, client: Any, secret: bytes, args: argparse.Namespace
) -> Any:
    """``account set``: needs a logged-in :class:`Client` of the node."""
    user = args.user
    try:
        account.check_user(user)
    except account.AccountError as e:
        raise CommandError(str(e)) from None
    password = read_password(args, confirm=True)
    if len(password) < MIN_PASSWORD:
        raise CommandError(
            f"the password must have at least {MIN_PASSWORD} characters: it alone "
            "protects the node key against whoever holds the proxy's database"
        )
    server_id = client.server_id
    keys = yield _derive(reactor, password, server_id, user)
    del password
    blob = account.seal_node_key(keys.enc, user, secret)
    yield client.call(
        "account.set", {"user": user, "auth": keys.auth.hex(), "blob": blob.hex()}
    )
    return f"account set for user {user}"


@defer.inlineCallbacks
def account_restore(
    reactor: Any, url: str, args: argparse.Namespace, key_path: str, **options: Any
) -> Any:
    """``account restore``: fetch the node key, write the key file; returns
    the node id's hex."""
    user = args.user
    if os.path.lexists(key_path):
        raise CommandError(f"key file {key_path} already exists; not overwriting it")
    password = read_password(args, confirm=False)
    try:
        restored = yield restore_account(
            reactor,
            url,
            user,
            password,
            derive=lambda p, s, u: _derive(reactor, p, s, u),
            **options,
        )
    except LoginFailed:
        raise CommandError("wrong user name or password") from None
    except LimitExceeded:
        raise CommandError(
            "too many failed attempts for this user name; retry later"
        ) from None
    except AccountRestoreError as e:
        raise CommandError(str(e)) from None
    finally:
        del password
    try:
        node_id = write_key_file(key_path, restored.node_secret)
    except KeyFileError as e:
        raise CommandError(str(e)) from None
    return node_id.hex()


@defer.inlineCallbacks
def run_vault(client: Any, args: argparse.Namespace) -> Any:
    """``vault ...``: returns the lines to print (JSON objects or text)."""
    action = args.vault_command
    try:
        if action == "get":
            result = yield client.call("vault.get", {"name": args.name})
            return [result]
        if action == "list":
            result = yield client.call("vault.list", {})
            return list(result.get("entries", []))
        if action == "put":
            result = yield client.call(
                "vault.put",
                {"name": args.name, "blob": args.blob, "version": args.version},
            )
            return [str(result["version"])]
        yield client.call("vault.remove", {"name": args.name, "version": args.version})
        return [f"removed {args.name}"]
    except ProxyError as e:
        if e.code == VERSION_CONFLICT and isinstance(e.data, dict):
            raise CommandError(
                f"version conflict: the current version of {args.name} is "
                f"{e.data.get('version')}"
            ) from None
        raise


@defer.inlineCallbacks
def run_account(
    reactor: Any, client: Any, secret: bytes, args: argparse.Namespace
) -> Any:
    """``account set`` or ``account remove`` on a logged-in client."""
    if args.account_command == "set":
        line = yield account_set(reactor, client, secret, args)
        return line
    yield client.call("account.remove", {})
    return "account removed"
