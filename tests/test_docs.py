"""The documentation the code points at exists.

Docstrings and comments in ``lnproxy/`` cite the contract as
``docs/protocol.md, "Section"``; each cited section must be a heading of
``docs/protocol.md``, so that a reader who follows the pointer finds it.
The repository must also be self-contained: nothing in the package, the
tests or the benchmarks may point at a file outside it.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"
#: ``docs/protocol.md, "Section"`` (a pointer may wrap after the comma).
POINTER = re.compile(r'docs/protocol\.md,\s*(?:#\s*)?"([^"]+)"')


def _headings(markdown: str) -> set[str]:
    return {
        line.lstrip("#").strip().strip("`")
        for line in markdown.splitlines()
        if line.startswith("#")
    }


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


class ProtocolPointerTests(SynchronousTestCase):
    """Every pointer into docs/protocol.md names one of its headings."""

    def test_pointers_name_headings(self) -> None:
        """Each ``docs/protocol.md, "X"`` in lnproxy/ names a heading X."""
        headings = _headings(PROTOCOL_DOC.read_text(encoding="utf-8"))
        cited: dict[str, list[str]] = {}
        for path in _sources("lnproxy"):
            text = path.read_text(encoding="utf-8")
            for m in POINTER.finditer(text):
                # A pointer in a comment may wrap: drop the comment marks.
                section = " ".join(re.sub(r"#:?", " ", m.group(1)).split())
                cited.setdefault(section, []).append(str(path.relative_to(ROOT)))
        self.assertTrue(cited, "no pointers found: the pattern is wrong")
        missing = {s: where for s, where in cited.items() if s not in headings}
        self.assertEqual(missing, {})

    def test_headings_found(self) -> None:
        """The heading reader sees the contract's main sections."""
        headings = _headings(PROTOCOL_DOC.read_text(encoding="utf-8"))
        for section in ("Transport", "Events", "Error codes", "Running the server"):
            self.assertIn(section, headings)


#: What a file outside the repository is cited as (built, not written out,
#: so that this module does not cite it itself).
OUTSIDE = ("../" + "shared", "PROTOCOL" + ".md")


class SelfContainedTests(SynchronousTestCase):
    """Nothing reads or cites a file outside the repository."""

    def test_no_pointer_outside(self) -> None:
        """No source names the shared folder beside the repository or the
        contract file kept there."""
        offenders = []
        for path in _sources("lnproxy", "tests", "bench"):
            text = path.read_text(encoding="utf-8")
            if any(name in text for name in OUTSIDE):
                offenders.append(str(path.relative_to(ROOT)))
        self.assertEqual(offenders, [])

    def test_vectors_are_in_the_repository(self) -> None:
        """The BOLT vectors the tests read are kept in tests/vectors."""
        for name in ("bolt8_vectors.json", "bolt1_vectors.json"):
            self.assertTrue((ROOT / "tests" / "vectors" / name).is_file(), name)
