"""The throwaway PostgreSQL of :mod:`lnproxy.testing_postgres` works: it
starts, serves one database per test, and leaves nothing behind."""

from __future__ import annotations

import os

from twisted.trial import unittest

from lnproxy.testing_postgres import PostgresUnavailable, TemporaryPostgres, find_bindir


class TemporaryPostgresTests(unittest.TestCase):
    """A private cluster on 127.0.0.1 (or the external one CI names)."""

    def setUp(self) -> None:
        if find_bindir() is None and not os.environ.get("LNPROXY_TEST_POSTGRES"):
            raise unittest.SkipTest("no PostgreSQL server binaries on this machine")

    def test_databases_are_separate_and_dropped(self) -> None:
        """Two databases of one server do not share tables; a dropped one
        is gone; stop() deletes the cluster's directory."""
        import psycopg

        pg = TemporaryPostgres()
        self.addCleanup(pg.stop)
        first, second = pg.create_database(), pg.create_database()
        self.assertNotEqual(first, second)
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
        with psycopg.connect(second, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
            ).fetchone()
        self.assertEqual(rows, (0,))
        pg.drop_database(first)
        self.assertRaises(psycopg.OperationalError, psycopg.connect, first)
        directory = pg._dir
        pg.stop()
        if directory is not None:
            self.assertFalse(os.path.exists(directory))

    def test_missing_binaries_are_a_clear_error(self) -> None:
        """With no server binaries, start() names the package to install."""
        pg = TemporaryPostgres()
        pg.url = None
        pg._external = False
        self.patch(
            __import__("lnproxy.testing_postgres", fromlist=["x"]),
            "find_bindir",
            lambda: None,
        )
        err = self.assertRaises(PostgresUnavailable, pg.start)
        self.assertIn("postgresql", str(err))
