"""The wheel ships every package of the source tree.

``setup.cfg`` lists the packages by name (``twisted/plugins`` must not be a
package, so ``find_packages`` would not do); a package added to the tree
but not to the list installs nowhere, and the installed proxy fails to
import it while the tests, run from the source tree, still pass.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


class PackageListTests(SynchronousTestCase):
    """setup.cfg's ``packages`` match the tree."""

    def test_every_package_is_listed(self) -> None:
        """Each folder of lnproxy/ with an ``__init__.py`` is a listed
        package, and each listed lnproxy package exists."""
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        listed = {
            name.strip()
            for name in config["options"]["packages"].split()
            if name.strip().startswith("lnproxy")
        }
        found = {
            ".".join(init.parent.relative_to(ROOT).parts)
            for init in (ROOT / "lnproxy").rglob("__init__.py")
        }
        self.assertEqual(found, listed)

    def test_sql_files_are_package_data(self) -> None:
        """Every schema file lies under a package-data glob of setup.cfg."""
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        globs = [
            (package, pattern.strip())
            for package, patterns in config["options.package_data"].items()
            for pattern in patterns.replace(",", " ").split()
        ]
        for sql in (ROOT / "lnproxy").rglob("*.sql"):
            covered = any(
                sql.match(str(ROOT / package.replace(".", "/") / pattern))
                for package, pattern in globs
            )
            self.assertTrue(covered, str(sql.relative_to(ROOT)))


class ImportCostTests(SynchronousTestCase):
    """A proxy on the embedded SQLite store loads no PostgreSQL code."""

    def test_sqlite_proxy_does_not_import_psycopg(self) -> None:
        """Importing the twistd plugin's modules (tap, service, hub) loads
        neither psycopg nor the PostgreSQL store: ~11 MiB and 55 ms of
        import a SQLite deployment never uses."""
        probe = (
            "import sys, lnproxy.tap, lnproxy.service, lnproxy.hub; "
            "print(sorted(m for m in sys.modules if m.startswith('psycopg') "
            "or m in ('lnproxy.store.postgres', 'lnproxy.scaleout')))"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        self.assertEqual(out.stdout.strip(), "[]")
