"""Tests for lnproxy.lease: the writer lease bookkeeping, on task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lnproxy.lease import WRITING_METHODS, LeaseBook, LeaseHeld

NODE = "02" + "aa" * 32
OTHER_NODE = "03" + "bb" * 32


class LeaseBookTests(SynchronousTestCase):
    """Acquire, refuse, force, release and end-with-session."""

    def setUp(self) -> None:
        """A book on a fake clock at t=100."""
        self.clock = Clock()
        self.clock.advance(100)
        self.book: LeaseBook[str] = LeaseBook(self.clock)

    def test_no_lease_everyone_writes(self) -> None:
        """Without a lease every session may write (as without leases)."""
        self.assertIsNone(self.book.holder(NODE))
        self.assertTrue(self.book.may_write(NODE, "phone"))
        self.assertTrue(self.book.may_write(NODE, "laptop"))
        self.book.check_write(NODE, "phone")
        self.assertEqual(len(self.book), 0)

    def test_acquire_refuses_others(self) -> None:
        """The holder writes; another session of the node does not."""
        self.assertIsNone(self.book.acquire(NODE, "phone").former)
        self.assertEqual(self.book.holder(NODE), "phone")
        self.assertTrue(self.book.may_write(NODE, "phone"))
        self.assertFalse(self.book.may_write(NODE, "laptop"))
        self.assertRaises(LeaseHeld, self.book.check_write, NODE, "laptop")

    def test_nodes_are_independent(self) -> None:
        """One node's lease does not touch another node's sessions."""
        self.book.acquire(NODE, "phone")
        self.assertTrue(self.book.may_write(OTHER_NODE, "laptop"))
        self.book.acquire(OTHER_NODE, "laptop")
        self.assertEqual(len(self.book), 2)

    def test_acquire_held_refused(self) -> None:
        """Acquire while another holds it: LeaseHeld, nothing changes."""
        self.book.acquire(NODE, "phone")
        self.assertRaises(LeaseHeld, self.book.acquire, NODE, "laptop")
        self.assertEqual(self.book.holder(NODE), "phone")

    def test_acquire_again(self) -> None:
        """The holder acquiring again keeps the lease and its date."""
        self.book.acquire(NODE, "phone")
        self.clock.advance(5)
        self.assertIsNone(self.book.acquire(NODE, "phone", force=True).former)
        self.assertEqual(self.book.held_for(NODE), 5)

    def test_force_moves(self) -> None:
        """force moves the lease and names the former holder."""
        self.book.acquire(NODE, "phone")
        self.clock.advance(3)
        result = self.book.acquire(NODE, "laptop", force=True)
        self.assertEqual(result.former, "phone")
        self.assertEqual(self.book.holder(NODE), "laptop")
        self.assertFalse(self.book.may_write(NODE, "phone"))
        lease = self.book.lease(NODE)
        assert lease is not None
        self.assertEqual(lease.since, 103)

    def test_force_without_holder(self) -> None:
        """force with nobody holding it is a plain acquire."""
        self.assertIsNone(self.book.acquire(NODE, "phone", force=True).former)
        self.assertEqual(self.book.holder(NODE), "phone")

    def test_release(self) -> None:
        """release by the holder frees the node for everyone."""
        self.book.acquire(NODE, "phone")
        self.assertTrue(self.book.release(NODE, "phone"))
        self.assertIsNone(self.book.holder(NODE))
        self.assertTrue(self.book.may_write(NODE, "laptop"))
        self.assertIsNone(self.book.held_for(NODE))

    def test_release_by_non_holder(self) -> None:
        """release by another session (e.g. after losing it) changes nothing."""
        self.book.acquire(NODE, "phone")
        self.book.acquire(NODE, "laptop", force=True)
        self.assertFalse(self.book.release(NODE, "phone"))
        self.assertEqual(self.book.holder(NODE), "laptop")
        self.assertFalse(self.book.release(OTHER_NODE, "phone"))

    def test_session_end(self) -> None:
        """The lease ends with its session; another session's end does not."""
        self.book.acquire(NODE, "phone")
        self.assertFalse(self.book.session_ended(NODE, "laptop"))
        self.assertEqual(self.book.holder(NODE), "phone")
        self.assertTrue(self.book.session_ended(NODE, "phone"))
        self.assertIsNone(self.book.holder(NODE))
        self.assertEqual(len(self.book), 0)

    def test_held_for(self) -> None:
        """held_for follows the injected clock."""
        self.book.acquire(NODE, "phone")
        self.clock.advance(42.5)
        self.assertEqual(self.book.held_for(NODE), 42.5)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_writing_methods(self) -> None:
        """The methods the lease guards are the contract's four."""
        self.assertEqual(WRITING_METHODS, {"connect", "finish", "send", "disconnect"})
