"""The demo runs as a user would start it and exits 0 only if every step
happened."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Lines the narration must contain, one per step that matters.
NARRATION = [
    "client: act 1 (50 bytes) to the proxy, which writes it to 127.0.0.1:",
    "client: act 2 from the peer, relayed by the proxy, verified",
    "client: act 3 (66 bytes) and sk, rk, ck handed to the proxy",
    "peer: act 3 authenticated the client's node id",
    "OK: no session of the node is logged in",
    "OK: peer got a pong of 4 bytes from the proxy",
    "peer: got a ping from the proxy and answered with a pong",
    "peer: update_add_htlc (type 128",
    "OK: signature by server_id verified",
    "client got event seq 2: message type 128 (update_add_htlc)",
    "client answers with commitment_signed (type 132)",
    "peer: commitment_signed",
    "All 11 steps happened.",
]


class DemoTests(TestCase):
    """``python -m lnproxy.demo`` in a subprocess."""

    timeout = 45

    @defer.inlineCallbacks
    def test_demo_exits_zero_with_narration(self) -> Any:
        """The demo exits 0 and narrates the relayed handshake, the absent
        client, pings answered by the proxy and by the peer, the summon, the
        verified webhook, the inbox delivery and the answer reaching the
        peer."""
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        cwd = self.mktemp()
        os.makedirs(cwd)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "lnproxy.demo", "--timeout", "30"], env=env, path=cwd
        ).addTimeout(40, reactor)
        text = out.decode()
        self.assertEqual(code, 0, text + err.decode())
        for line in NARRATION:
            self.assertIn(line, text)
        self.assertNotIn("FAILED", text)
        self.assertEqual(os.listdir(cwd), [])

    @defer.inlineCallbacks
    def test_demo_names_the_failed_step(self) -> Any:
        """With an impossible overall time limit the demo exits 1 and says
        which step did not happen."""
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        out, _, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "lnproxy.demo", "--timeout", "0.05"], env=env
        ).addTimeout(40, reactor)
        self.assertEqual(code, 1)
        self.assertRegex(
            out.decode(),
            r"FAILED: step '.+' failed: not done when the overall 0.05 s ran out",
        )
