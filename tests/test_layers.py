"""The layering rule of docs/architecture.md, checked on the source.

Each module of ``lnproxy`` belongs to one layer (below, as data); a module
may import modules of its own layer and of the layers under it, never one
above.  The pure core imports no Twisted (nor zope, autobahn, treq,
automat) at all.  The client library, the test fakes and the demos stand
beside the server's stack and may use only the pure core (and, for the
demos, anything).  Imports are read with :mod:`ast` (also those inside
functions and ``if TYPE_CHECKING:`` blocks), so nothing is imported to
check them.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO_ROOT, "lnproxy")

#: The server's stack, bottom first.  ``store`` stands for the whole
#: ``lnproxy/store/`` package.
LAYERS: list[tuple[str, frozenset[str]]] = [
    (
        "pure core",
        frozenset(
            {
                "noise",
                "wire",
                "keys",
                "protocol",
                "lifecycle",
                "answer",
                "snapshot",
                "policy",
                "vault",
                "electrum",
                "__init__",  # the package itself (empty)
            }
        ),
    ),
    (
        "clocked units, the store and the socket handover",
        frozenset(
            {"lease", "accounts", "logs", "store", "handover", "leases", "scaleout"}
        ),
    ),
    ("peer connection", frozenset({"peer"})),
    ("hub and its parts", frozenset({"hub", "journal", "keepalive"})),
    ("edges", frozenset({"api", "webhook", "ssrf", "metrics", "devices"})),
    ("assembly", frozenset({"service", "tap", "hotrestart"})),
]

#: Beside the stack: each may import itself and the layers named.
BESIDE: dict[str, tuple[str, ...]] = {
    "client": ("pure core",),
    "testing": ("pure core",),
    "localpeer": ("pure core", "testing"),
    "electrum_node": ("pure core",),
    "testing_systemd": ("pure core",),
    "testing_postgres": ("pure core",),
}

#: At the top: the demos may import anything.
TOP = frozenset({"demo", "electrum_demo"})

#: Modules the pure core may not import (prefixes).
IMPURE = ("twisted", "zope", "autobahn", "treq", "automat", "prometheus_client")


def unit_of(path: str) -> str:
    """The unit a file of ``lnproxy/`` belongs to: its module name, or
    ``store`` / ``client`` for the files of those packages."""
    rel = os.path.relpath(path, PACKAGE)
    parts = rel[: -len(".py")].split(os.sep)
    return parts[0]


def unit_of_module(name: str) -> str | None:
    """The unit of an imported dotted name; None if not in lnproxy."""
    parts = name.split(".")
    if parts[0] != "lnproxy":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def source_files() -> Iterator[str]:
    """Every ``.py`` file of the package."""
    for root, _dirs, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(root, name)


def imports(path: str, located: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` of each import in ``path`` (relative imports
    resolved as if the file were at ``located``, default ``path``;
    ``from lnproxy import x`` gives ``lnproxy.x``)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    rel = os.path.relpath(located or path, REPO_ROOT)[: -len(".py")].split(os.sep)
    package = rel[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "lnproxy":
                for alias in node.names:
                    yield node.lineno, f"lnproxy.{alias.name}"
            else:
                yield node.lineno, module


def layer_index() -> dict[str, int]:
    """unit -> its layer's position in :data:`LAYERS`."""
    return {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def allowed_for(unit: str) -> frozenset[str] | None:
    """The units ``unit`` may import, or None for "anything"."""
    if unit in TOP:
        return None
    index = layer_index()
    names = dict(LAYERS)
    if unit in index:
        below = [units for _, units in LAYERS[: index[unit] + 1]]
        return frozenset().union(*below)
    if unit in BESIDE:
        extra = [names.get(n, frozenset({n})) for n in BESIDE[unit]]
        return frozenset({unit}).union(*extra)
    raise KeyError(unit)


def violations() -> list[str]:
    """Every import that breaks the rule, as a readable line."""
    index = layer_index()
    found = []
    for path in source_files():
        unit = unit_of(path)
        allowed = allowed_for(unit)
        if allowed is None:
            continue
        rel = os.path.relpath(path, REPO_ROOT)
        for line, name in imports(path):
            target = unit_of_module(name)
            if target is None or target in allowed:
                continue
            where = (
                f"layer {index[target]} ({LAYERS[index[target]][0]})"
                if target in index
                else f"{target!r}, not in the stack"
            )
            here = (
                f"layer {index[unit]} ({LAYERS[index[unit]][0]})"
                if unit in index
                else f"{unit!r}, beside the stack"
            )
            found.append(f"{rel}:{line}: {here} imports {name}, which is {where}")
    return found


class LayerRuleTests(SynchronousTestCase):
    """The import graph of ``lnproxy`` follows docs/architecture.md."""

    def test_every_module_has_a_layer(self) -> None:
        """A new module is placed in LAYERS, BESIDE or TOP (and so in the
        architecture document) before it can pass."""
        known = set(layer_index()) | set(BESIDE) | TOP
        missing = sorted({unit_of(p) for p in source_files()} - known)
        self.assertEqual(
            missing,
            [],
            f"lnproxy modules with no layer in tests/test_layers.py: {missing}; "
            "add each to LAYERS/BESIDE/TOP and to docs/architecture.md",
        )

    def test_no_import_from_above(self) -> None:
        """No module imports one of a higher layer (or, beside the stack,
        one it has no business with)."""
        found = violations()
        self.assertEqual(found, [], "layering broken:\n" + "\n".join(found))

    def test_pure_core_imports_no_twisted(self) -> None:
        """The pure core (and so the Electrum adapter) is sans-IO: no
        Twisted, zope, autobahn, treq, automat or prometheus_client."""
        pure = LAYERS[0][1]
        found = []
        for path in source_files():
            if unit_of(path) not in pure:
                continue
            for line, name in imports(path):
                if name.split(".")[0] in IMPURE:
                    found.append(f"{os.path.relpath(path, REPO_ROOT)}:{line}: {name}")
        self.assertEqual(found, [], "pure modules importing I/O:\n" + "\n".join(found))

    def test_electrum_adapter_is_pure(self) -> None:
        """lnproxy/electrum.py (run inside Electrum's asyncio) is in the pure
        core and imports no Twisted."""
        self.assertIn("electrum", LAYERS[0][1])
        names = [n for _, n in imports(os.path.join(PACKAGE, "electrum.py"))]
        self.assertEqual([n for n in names if n.startswith("twisted")], [])

    def test_checker_sees_a_violation(self) -> None:
        """The checker itself: an upward import in a pure module is
        reported with file, line and both layers."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        fake = os.path.join(path, "wire.py")
        with open(fake, "w") as f:
            f.write("import os\n\ndef f():\n    from lnproxy.hub import Hub\n")
        found = list(imports(fake))
        self.assertEqual(found, [(1, "os"), (4, "lnproxy.hub")])
        self.assertEqual(unit_of_module("lnproxy.hub"), "hub")
        allowed = allowed_for("wire")
        assert allowed is not None
        self.assertNotIn("hub", allowed)
        self.assertIn("protocol", allowed)
        self.assertIsNone(allowed_for("demo"))
        client = allowed_for("client")
        assert client is not None
        self.assertIn("noise", client)
        self.assertNotIn("hub", client)

    def test_relative_imports_resolved(self) -> None:
        """``from . import x`` inside lnproxy/client resolves to the client
        package, ``from .. import hub`` to lnproxy.hub."""
        tmp = os.path.abspath(self.mktemp())
        with open(tmp, "w") as f:
            f.write("from . import errors\nfrom .. import hub\n")
        located = os.path.join(PACKAGE, "client", "probe.py")
        got = [name for _, name in imports(tmp, located)]
        self.assertEqual(got, ["lnproxy.client", "lnproxy.hub"])
