"""One throwaway PostgreSQL cluster shared by the tests of a run.

:func:`shared_postgres` starts it on first use (about two seconds) and stops
it when the interpreter exits; each test asks it for its own database
(:meth:`~lnproxy.testing_postgres.TemporaryPostgres.create_database`), so
tests never see each other's rows. Without PostgreSQL server binaries the
tests are skipped, except under CI (``CI=true``), where a missing server is
a failure: CI must not pass by skipping the PostgreSQL half.
"""

from __future__ import annotations

import atexit
import os

from twisted.trial.unittest import SkipTest

from lnproxy.testing_postgres import (
    ENV_URL,
    PostgresUnavailable,
    TemporaryPostgres,
    find_bindir,
)

__all__ = ["shared_postgres", "new_database"]

_shared: TemporaryPostgres | None = None


def _in_ci() -> bool:
    """Whether this run is CI, where PostgreSQL tests must not be skipped."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shared_postgres() -> TemporaryPostgres:
    """The run's PostgreSQL server, started on first use.

    :raises SkipTest: without server binaries (outside CI).
    :raises PostgresUnavailable: without them under CI, or if it fails.
    """
    global _shared
    if _shared is not None:
        return _shared
    if find_bindir() is None and not os.environ.get(ENV_URL):
        if _in_ci():
            raise PostgresUnavailable(
                "CI=true but no PostgreSQL server binaries: install Debian's "
                "'postgresql' (.ci/run does) or set " + ENV_URL
            )
        raise SkipTest("no PostgreSQL server binaries on this machine")
    pg = TemporaryPostgres()
    pg.start()
    atexit.register(pg.stop)
    _shared = pg
    return pg


def new_database() -> str:
    """A fresh, empty database on the shared server; its URL."""
    return shared_postgres().create_database()
