"""A throwaway PostgreSQL server for tests and benchmarks.

The store's contract tests, the multi-process tests and ``bench/`` need a
real PostgreSQL, and CI has no service manager to ask for one.  This module
starts a private cluster with the server binaries of the machine
(``initdb`` and ``pg_ctl`` from Debian's ``postgresql`` package): in a
temporary directory, on a free port of 127.0.0.1, with ``trust``
authentication for loopback only, and stops and deletes it afterwards.

When the environment names a server (``LNPROXY_TEST_POSTGRES``, a
``postgresql://`` URL), that one is used instead and nothing is started.

PostgreSQL refuses to run as root; when this process is root, the cluster
runs as the ``postgres`` system user (or ``nobody``), which owns the
temporary directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Sequence

__all__ = ["ENV_URL", "PostgresUnavailable", "TemporaryPostgres", "find_bindir"]

#: An external server to use instead of starting one.
ENV_URL = "LNPROXY_TEST_POSTGRES"


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries on this machine (or they failed)."""


def find_bindir() -> str | None:
    """The directory of ``initdb``/``pg_ctl``: ``$PATH`` first, then
    Debian's versioned ``/usr/lib/postgresql/N/bin`` (newest first)."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        return os.path.dirname(initdb)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
        reverse=True,
    )
    return os.path.dirname(found[0]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> pwd.struct_passwd | None:
    """The user the cluster runs as, when this process is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no 'postgres' user to run as")


class TemporaryPostgres:
    """A private PostgreSQL cluster, or the external one named by
    ``$LNPROXY_TEST_POSTGRES``.

    :param fsync: ``False`` (the default) trades durability against power
        loss for speed, which is what tests want; benchmarks that compare
        commit costs pass ``True``.
    """

    def __init__(self, fsync: bool = False) -> None:
        self._fsync = fsync
        self._dir: str | None = None
        self._bindir: str | None = None
        self._user: pwd.struct_passwd | None = None
        self.url: str | None = os.environ.get(ENV_URL) or None
        self._external = self.url is not None
        self._options = ""

    def _cmd(self, argv: Sequence[str], timeout: float = 60.0) -> None:
        user = self._user

        def demote() -> None:  # pragma: no cover (runs in the child)
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        result = subprocess.run(
            list(argv),
            preexec_fn=demote,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self._dir,
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{os.path.basename(argv[0])} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-800:]}"
            )

    def start(self) -> str:
        """Start the cluster (unless external); return its base URL."""
        if self.url is not None:
            return self.url
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (install Debian's 'postgresql')"
            )
        self._bindir = bindir
        self._user = _run_as()
        self._dir = tempfile.mkdtemp(prefix="lnproxy-pg-")
        if self._user is not None:
            os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        data = os.path.join(self._dir, "data")
        port = _free_port()
        self._cmd(
            [
                os.path.join(bindir, "initdb"),
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} "
            f"-c unix_socket_directories={self._dir} "
            f"-c fsync={'on' if self._fsync else 'off'} "
            f"-c synchronous_commit={'on' if self._fsync else 'off'} "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._options = options
        self._cmd(
            [
                os.path.join(bindir, "pg_ctl"),
                "-D",
                data,
                "-o",
                options,
                "-l",
                os.path.join(self._dir, "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
        )
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return self.url

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database; return its URL.

        Each test gets its own database, so tests never see each other's
        rows, on a private cluster or an external one alike.
        """
        import psycopg

        base = self.start()
        name = name or "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return base.rsplit("/", 1)[0] + "/" + name

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database` (connections to
        it are ended first)."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        assert self.url is not None
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def halt(self) -> None:
        """Stop the private server at once (as a crash would), keeping its
        files; :meth:`restart` brings it back on the same port."""
        assert self._dir is not None and self._bindir is not None
        data = os.path.join(self._dir, "data")
        self._cmd(
            [os.path.join(self._bindir, "pg_ctl"), "-D", data, "-m", "immediate",
             "-w", "stop"],
            timeout=60,
        )

    def restart(self) -> None:
        """Start the server :meth:`halt` stopped, on the same port."""
        assert self._dir is not None and self._bindir is not None
        data = os.path.join(self._dir, "data")
        self._cmd(
            [os.path.join(self._bindir, "pg_ctl"), "-D", data, "-o", self._options,
             "-l", os.path.join(self._dir, "log"), "-w", "-t", "60", "start"],
            timeout=90,
        )

    def stop(self) -> None:
        """Stop the private cluster and delete its files (no-op if external)."""
        if self._external or self._dir is None:
            return
        data = os.path.join(self._dir, "data")
        try:
            assert self._bindir is not None
            self._cmd(
                [os.path.join(self._bindir, "pg_ctl"), "-D", data, "-m", "immediate",
                 "-w", "stop"],
                timeout=60,
            )
        except PostgresUnavailable:
            pass
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self.url = None
