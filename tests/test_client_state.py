"""The client's state file and key file, without a network."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import keys
from lnproxy.client import state as state_module
from lnproxy.client.keyfile import (
    KeyFileError,
    generate_key_file,
    is_private,
    read_key_file,
)
from lnproxy.client.state import (
    ClientState,
    FileState,
    MemoryState,
    StateError,
    atomic_write,
)

hexes = st.binary(min_size=33, max_size=33).map(bytes.hex)
states = st.builds(
    ClientState,
    node_id=st.none() | hexes,
    server_id=st.none() | hexes,
    last_seq=st.integers(min_value=0, max_value=2**53),
    rehandshake=st.dictionaries(
        hexes,
        st.fixed_dictionaries(
            {
                "address": st.text(min_size=1, max_size=30),
                "features": st.binary(max_size=4).map(bytes.hex),
            }
        ),
        max_size=3,
    ),
)


class FileStateTests(SynchronousTestCase):
    """FileState: round trip, permissions, atomicity, refusal of bad files."""

    # Each example fsyncs a file and its directory: a small budget.
    @settings(max_examples=15, deadline=None)
    @given(states)
    def test_round_trip(self, s: ClientState) -> None:
        """Whatever is saved is loaded back equal."""
        path = os.path.join(self.mktemp())
        FileState(path).save(s)
        self.assertEqual(FileState(path).load(), s)

    def test_missing_file_is_empty_state(self) -> None:
        """No file yet: an empty state (seq 0, nothing to re-handshake)."""
        self.assertEqual(FileState(self.mktemp()).load(), ClientState())

    def test_mode_and_no_leftovers(self) -> None:
        """The file is 0600 and the temporary file is gone after a save."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "state.json")
        FileState(path).save(ClientState(last_seq=3))
        FileState(path).save(ClientState(last_seq=4))
        self.assertEqual(os.listdir(directory), ["state.json"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(json.load(f)["last_seq"], 4)

    def test_crash_during_write_keeps_old_state(self) -> None:
        """If the process dies between writing the temporary file and the
        rename, the old state is intact and no temporary file is left."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "state.json")
        FileState(path).save(ClientState(last_seq=7))

        def dying_replace(src: str, dst: str) -> None:
            raise KeyboardInterrupt("killed")

        self.patch(state_module.os, "replace", dying_replace)
        with self.assertRaises(KeyboardInterrupt):
            FileState(path).save(ClientState(last_seq=8))
        self.assertEqual(os.listdir(directory), ["state.json"])
        self.assertEqual(FileState(path).load().last_seq, 7)

    def test_fsyncs_file_and_directory(self) -> None:
        """atomic_write fsyncs the new file and its directory."""
        synced: list[Any] = []
        real = os.fsync

        def spy(fd: int) -> None:
            synced.append(os.fstat(fd).st_mode)
            real(fd)

        self.patch(state_module.os, "fsync", spy)
        path = self.mktemp()
        atomic_write(path, b"x")
        self.assertEqual([stat.S_ISREG(m) for m in synced], [True, False])
        self.assertTrue(stat.S_ISDIR(synced[1]))

    def test_malformed_files_refused(self) -> None:
        """Garbage, another version, a negative or non-integer seq, a bad
        rehandshake table: StateError naming the file."""
        bad = [
            b"not json",
            b'{"version": 2, "last_seq": 0}',
            b'{"version": 1, "last_seq": -1}',
            b'{"version": 1, "last_seq": true}',
            b'{"version": 1, "last_seq": 1, "node_id": 5}',
            b'{"version": 1, "last_seq": 1, "rehandshake": {"x": {"features": ""}}}',
        ]
        for raw in bad:
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(raw)
            with self.assertRaises(StateError) as cm:
                FileState(path).load()
            self.assertIn(path, str(cm.exception))

    def test_memory_state(self) -> None:
        """MemoryState returns what was saved last."""
        m = MemoryState()
        self.assertEqual(m.load(), ClientState())
        m.save(ClientState(last_seq=5))
        self.assertEqual(m.load().last_seq, 5)


class KeyFileTests(SynchronousTestCase):
    """Node key files."""

    def test_generate_and_read(self) -> None:
        """A generated key file is private (0600, created so), holds 64 hex
        characters, and reads back to the secret of the printed node id."""
        path = self.mktemp()
        node_id = generate_key_file(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(is_private(path))
        secret = read_key_file(path)
        self.assertEqual(keys.public_key(secret), node_id)
        with open(path) as f:
            self.assertEqual(f.read(), secret.hex() + "\n")

    def test_never_overwrites(self) -> None:
        """generate_key_file refuses an existing path and leaves it alone."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("keep me")
        with self.assertRaises(KeyFileError) as cm:
            generate_key_file(path)
        self.assertEqual(
            str(cm.exception), f"key file {path} already exists; not overwriting it"
        )
        with open(path) as f:
            self.assertEqual(f.read(), "keep me")

    def test_bad_key_files(self) -> None:
        """Missing, a directory, wrong length, not hex, zero (not a valid
        secp256k1 secret): KeyFileError with a one-line reason."""
        d = self.mktemp()
        os.makedirs(d)
        cases = {"short": "abcd", "nothex": "zz" * 32, "zero": "00" * 32}
        for name, text in cases.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        for name in cases:
            path = os.path.join(d, name)
            with self.assertRaises(KeyFileError) as cm:
                read_key_file(path)
            self.assertEqual(
                str(cm.exception),
                f"key file {path} does not hold a node key (64 hex characters)",
            )
        with self.assertRaises(KeyFileError) as cm:
            read_key_file(os.path.join(d, "missing"))
        self.assertIn("does not exist", str(cm.exception))
        with self.assertRaises(KeyFileError) as cm:
            read_key_file(d)
        self.assertIn("is a directory", str(cm.exception))

    def test_group_readable_is_not_private(self) -> None:
        """is_private is False once group or others may read the file."""
        path = self.mktemp()
        generate_key_file(path)
        os.chmod(path, 0o640)
        self.assertFalse(is_private(path))
