"""A scriptable Electrum Lightning node, for the demo, the tests and the bench.

Run it with the Python that has Electrum (Debian: ``/usr/bin/python3`` with
``python3-electrum``) and this repository on ``PYTHONPATH``::

    /usr/bin/python3 -m lnproxy.electrum_node peer            # listens on TCP
    /usr/bin/python3 -m lnproxy.electrum_node client          # behind lnproxy

It runs Electrum's own ``lnpeer.Peer`` (handshake, init, ping, the channel
opening with real signatures) with a small in-memory stand-in for Electrum's
``LNWallet``: no blockchain, no wallet file.  The funder's funding
transaction spends a made-up segwit input, as Electrum's own unit tests do,
so the channel never confirms; everything up to ``funding_signed`` (both
commitment signatures made and checked by Electrum) is real.

It reads one JSON command per line on stdin and writes one JSON event per
line on stdout, each with ``"t"`` (unix time).  The node key (hex) comes
from the file descriptor ``--key-fd`` names (a pipe the parent writes once
and closes: :class:`lnproxy.electrum_demo.ElectrumNode` passes fd 3), or
else from the environment variable ``LNPROXY_NODE_KEY``, which is taken out
of the environment at once so that no process the node starts inherits it
(it stays readable, to this user and root only, in ``/proc/PID/environ``:
prefer ``--key-fd``).  Never from the command line; it is never printed.

Commands (``{"cmd": ...}``):

* ``connect`` ``{"node_id", "host", "port", "via": "proxy"|"direct",
  "persist"}``: open a peer (through the proxy of ``--proxy``, or plain TCP);
* ``resume``: log in to the proxy and take over every open connection;
* ``open_channel`` ``{"sat"}``: Electrum's channel opening as funder;
* ``ping``: Electrum's ping; ``pong`` is reported when its pong arrives;
* ``raw`` ``{"hex"}``: send a message as is; ``query_channel_range``;
* ``webhook`` ``{"url"}``: register a webhook (client);
* ``leave``: close the session with the proxy (the proxy keeps the peer);
* ``disconnect``; ``exit``.

Events: ``ready``, ``logged_in``, ``recv`` / ``sent`` (every message with its
type), ``initialized``, ``channel`` (a channel reached OPENING), ``pong``,
``closed``, ``error``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from electrum import bitcoin, constants, ecc
from electrum import util as electrum_util
from electrum.crypto import sha256
from electrum.invoices import PR_UNPAID
from electrum.lnchannel import Channel, ChannelState
from electrum.lnpeer import Peer
from electrum.lnrouter import RouteEdge
from electrum.lntransport import LNResponderTransport, LNTransport
from electrum.lnutil import (
    RECEIVED,
    LnFeatures,
    LNPeerAddr,
    ShortChannelID,
    derive_payment_secret_from_payment_preimage,
    ln_dummy_address,
    privkey_to_pubkey,
)
from electrum.lnworker import PaymentInfo
from electrum.simple_config import SimpleConfig
from electrum.transaction import (
    PartialTransaction,
    PartialTxInput,
    PartialTxOutput,
    TxOutpoint,
)

from lnproxy.electrum import ProxySession

FEATURES = (
    LnFeatures.OPTION_DATA_LOSS_PROTECT_REQ
    | LnFeatures.OPTION_STATIC_REMOTEKEY_REQ
    | LnFeatures.VAR_ONION_OPT
    | LnFeatures.PAYMENT_SECRET_OPT
    | LnFeatures.OPTION_UPFRONT_SHUTDOWN_SCRIPT_OPT
    | LnFeatures.OPTION_CHANNEL_TYPE_OPT
    | LnFeatures.GOSSIP_QUERIES_OPT
)


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


class MockWallet:
    """The part of Electrum's wallet the channel opening uses: one key."""

    txin_type = "p2wpkh"

    def __init__(self) -> None:
        self.key = ecc.ECPrivkey.generate_random_key()
        self.pubkey = self.key.get_public_key_bytes()
        self.address = bitcoin.pubkey_to_address("p2wpkh", self.pubkey.hex())

    def get_new_sweep_address_for_channel(self) -> str:
        """Where Electrum's to_remote output pays."""
        return str(self.address)

    def get_public_key(self, addr: str) -> str:
        """The key of our only address."""
        return str(self.pubkey.hex())

    def is_change(self, addr: str) -> bool:
        """No change addresses here."""
        return False

    def set_reserved_state_of_address(self, addr: str, *, reserved: bool) -> None:
        """Nothing to reserve."""

    def save_db(self) -> None:
        """Nothing to save."""

    def is_lightning_backup(self) -> bool:
        """A full wallet."""
        return False


class MockNetwork:
    """Electrum's Network as far as a Peer needs it: no servers, no gossip."""

    def __init__(self, config: SimpleConfig) -> None:
        self.config = config
        self.asyncio_loop = asyncio.get_running_loop()
        self.lngossip = None
        self.channel_db = None
        self.proxy = None

    def get_local_height(self) -> int:
        """No blockchain."""
        return 0

    def blockchain(self) -> Any:
        """A chain at height 0 whose tip is never stale."""
        return _Chain()


class _Chain:
    """What ``Peer.maybe_fulfill_htlc`` asks of the blockchain."""

    def height(self) -> int:
        """Height 0, like get_local_height."""
        return 0

    def is_tip_stale(self) -> bool:
        """Never: there is no chain to fall behind."""
        return False


class MockLNWallet:
    """The LNWallet methods that Peer and Channel call, in memory."""

    def __init__(self, privkey: bytes, user_dir: str) -> None:
        from electrum.lnutil import Keypair

        self.node_keypair = Keypair(pubkey=privkey_to_pubkey(privkey), privkey=privkey)
        self.config = SimpleConfig({}, read_user_dir_function=lambda: user_dir)
        self.network = MockNetwork(self.config)
        self.wallet = MockWallet()
        self.features = LnFeatures(FEATURES)
        self._channels: dict[bytes, Channel] = {}
        self._peers: dict[bytes, Peer] = {}
        self.lnwatcher = None
        self.db = None
        self.enable_htlc_settle = True
        self.enable_htlc_forwarding = True
        self.downstream_htlc_to_upstream_peer_map: dict[Any, Any] = {}
        self.preimages: dict[bytes, bytes] = {}
        self.payment_info: dict[bytes, PaymentInfo] = {}
        self.trampoline_forwarding_failures: dict[Any, Any] = {}

    @property
    def peers(self) -> dict[bytes, Peer]:
        """Open peers by node id."""
        return self._peers

    @property
    def channels(self) -> dict[bytes, Channel]:
        """Channels by id."""
        return self._channels

    def uses_trampoline(self) -> bool:
        """Like a mobile Electrum: no gossip database."""
        return True

    def is_trampoline_peer(self, node_id: bytes) -> bool:
        """Any peer will do."""
        return True

    def has_recoverable_channels(self) -> bool:
        """No OP_RETURN backups (they need a seed-derived key)."""
        return False

    def current_feerate_per_kw(self) -> int:
        """A fixed feerate."""
        return 2500

    def channels_for_peer(self, node_id: bytes) -> dict[bytes, Channel]:
        """Channels with one peer."""
        return {k: c for k, c in self._channels.items() if c.node_id == node_id}

    def get_channel_by_id(self, channel_id: bytes) -> Channel | None:
        """A channel by id."""
        return self._channels.get(channel_id)

    def get_channel_by_short_id(self, scid: bytes) -> Channel | None:
        """No confirmed channels here."""
        return None

    def add_new_channel(self, chan: Channel) -> None:
        """Electrum calls this once both commitment signatures checked out."""
        self._channels[chan.channel_id] = chan
        emit(
            "channel",
            channel_id=chan.channel_id.hex(),
            state=chan.get_state().name,
            funder=chan.constraints.is_initiator,
            capacity=chan.constraints.capacity,
        )

    def save_channel(self, chan: Channel) -> None:
        """In memory only."""

    def channel_state_changed(self, chan: Channel) -> None:
        """Report the new state."""
        emit("state", channel_id=chan.channel_id.hex(), state=chan.get_state().name)

    def get_payment_info(self, payment_hash: bytes) -> PaymentInfo | None:
        """An invoice of ours, by payment hash."""
        return self.payment_info.get(payment_hash)

    def get_preimage(self, payment_hash: bytes) -> bytes | None:
        """The preimage of an invoice of ours (or one learned)."""
        return self.preimages.get(payment_hash)

    def save_preimage(self, payment_hash: bytes, preimage: bytes) -> None:
        """Learned from an update_fulfill_htlc."""
        self.preimages[payment_hash] = preimage

    def set_request_status(self, payment_hash: bytes, status: int) -> None:
        """Electrum decided to fulfill an HTLC paying our invoice."""
        emit("paid", payment_hash=payment_hash.hex())

    def htlc_fulfilled(self, chan: Channel, payment_hash: bytes, htlc_id: int) -> None:
        """Our HTLC was fulfilled and the commitment without it revoked."""
        emit("htlc_fulfilled", payment_hash=payment_hash.hex(), htlc_id=htlc_id)

    def htlc_failed(
        self, chan: Channel, payment_hash: bytes, htlc_id: int, *a: Any
    ) -> None:
        """Our HTLC failed."""
        emit("htlc_failed", payment_hash=payment_hash.hex(), htlc_id=htlc_id)

    def on_peer_successfully_established(self, peer: Peer) -> None:
        """Init exchanged."""
        emit("initialized", peer=peer.pubkey.hex())

    def peer_closed(self, peer: Peer) -> None:
        """Forget the peer."""
        pubkey = peer.pubkey
        if self._peers.get(pubkey) is peer:
            del self._peers[pubkey]
        emit("closed", peer=pubkey.hex())


class ScriptedPeer(Peer):
    """Electrum's Peer, reporting every message, answering gossip queries."""

    DELAY_INC_MSG_PROCESSING_SLEEP = 0

    def process_message(self, message: bytes) -> None:
        """Report, then let Electrum process it."""
        msg_type = int.from_bytes(message[:2], "big")
        extra = {"hex": message.hex()} if len(message) <= 1024 else {}
        emit("recv", type=msg_type, size=len(message), **extra)
        if msg_type == 263 and self.lnworker.answer_queries:
            self.send_message(
                "reply_channel_range",
                chain_hash=constants.net.rev_genesis_bytes(),
                first_blocknum=int.from_bytes(message[34:38], "big"),
                number_of_blocks=int.from_bytes(message[38:42], "big"),
                complete=b"\x01",
                len=1,
                encoded_short_ids=b"\x00",
            )
        super().process_message(message)


class _ReportingSend:
    """Wraps a transport's send_bytes to report every sent message."""

    def __init__(self, transport: Any) -> None:
        inner = transport.send_bytes

        def send_bytes(msg: bytes) -> None:
            emit("sent", type=int.from_bytes(msg[:2], "big"), size=len(msg))
            inner(msg)

        transport.send_bytes = send_bytes


def fake_funding_tx(wallet: MockWallet, funding_sat: int) -> PartialTransaction:
    """A funding transaction with Electrum's dummy output, spending a
    made-up segwit input (never broadcast)."""
    txin = PartialTxInput(prevout=TxOutpoint(txid=os.urandom(32), out_idx=0))
    txin.script_type = "p2wpkh"
    txin.pubkeys = [wallet.pubkey]
    txin.num_sig = 1
    txin._trusted_value_sats = funding_sat + 10_000
    out = PartialTxOutput.from_address_and_value(ln_dummy_address(), funding_sat)
    return PartialTransaction.from_io([txin], [out])


class Node:
    """One Electrum node driven by stdin commands."""

    def __init__(self, args: argparse.Namespace, privkey: bytes) -> None:
        self.args = args
        self.privkey = privkey
        self.user_dir = args.user_dir
        self.lnworker = MockLNWallet(privkey, self.user_dir)
        self.lnworker.answer_queries = args.answer_queries  # type: ignore[attr-defined]
        self.session: ProxySession | None = None
        self.peer: Peer | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any, what: str) -> None:
        """Run ``coro``; report its failure."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                emit("error", what=what, error=repr(t.exception()))

        task.add_done_callback(done)

    def start_peer(self, pubkey: bytes, transport: Any) -> Peer:
        """Electrum's Peer on ``transport``, running its main loop."""
        _ReportingSend(transport)
        peer = ScriptedPeer(self.lnworker, pubkey, transport)
        self.lnworker._peers[pubkey] = peer
        self.peer = peer
        self.spawn(peer.main_loop(), "main_loop")
        return peer

    async def session_start(self) -> ProxySession:
        """Log in to the proxy (once)."""
        if self.session is None or self.session.closed.is_set():
            self.session = ProxySession(
                self.args.proxy, self.privkey, request_timeout=15
            )
            result = await self.session.start()
            emit(
                "logged_in",
                node_id=result["node_id"],
                pending=result["inbox"]["pending"],
                connections=[
                    {"conn": c["conn"], "state": c["state"], "peer": c["peer"]}
                    for c in result["connections"]
                ],
            )
        return self.session

    async def listen(self) -> None:
        """Peer role: accept BOLT 8 connections on TCP."""

        async def accepted(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            transport = LNResponderTransport(self.privkey, reader, writer)
            try:
                rs = await asyncio.wait_for(transport.handshake(), 20)
            except Exception as e:
                emit("error", what="handshake", error=repr(e))
                writer.close()
                return
            emit("handshake", peer=rs.hex())
            self.start_peer(rs, transport)

        server = await asyncio.start_server(accepted, "127.0.0.1", self.args.port)
        port = server.sockets[0].getsockname()[1]
        emit("ready", node_id=privkey_to_pubkey(self.privkey).hex(), port=port)

    async def command(self, cmd: dict[str, Any]) -> None:
        """Carry out one command."""
        name = cmd["cmd"]
        if name == "connect":
            addr = LNPeerAddr(
                cmd["host"], int(cmd["port"]), bytes.fromhex(cmd["node_id"])
            )
            if cmd.get("via", "proxy") == "proxy":
                session = await self.session_start()
                transport: Any = session.transport(
                    addr, persist=bool(cmd.get("persist"))
                )
            else:
                transport = LNTransport(self.privkey, addr, proxy=None)
            self.start_peer(addr.pubkey, transport)
        elif name == "resume":
            session = await self.session_start()
            for c in session.open_connections():
                t = session.resume(c["conn"])
                emit("resumed", conn=c["conn"], peer=c["peer"])
                self.start_peer(bytes.fromhex(c["peer"]), t)
        elif name == "open_channel":
            peer = self._peer()
            sat = int(cmd.get("sat", 200_000))
            emit("opening", sat=sat)
            chan, _ = await peer.channel_establishment_flow(
                funding_tx=fake_funding_tx(self.lnworker.wallet, sat),
                funding_sat=sat,
                push_msat=0,
                temp_channel_id=os.urandom(32),
            )
            emit("opened", channel_id=chan.channel_id.hex())
        elif name == "fund":
            # No blockchain: declare every OPENING channel funded (with a
            # short channel id both sides derive from the channel id), then
            # Electrum's own funding_locked exchange marks it OPEN.
            peer = self._peer()
            for chan in list(peer.channels.values()):
                if chan.get_state() != ChannelState.OPENING:
                    continue
                block = 100 + int.from_bytes(chan.channel_id[:2], "big")
                chan.set_short_channel_id(ShortChannelID.from_components(block, 1, 0))
                chan.set_state(ChannelState.FUNDED)
                peer.send_funding_locked(chan)
        elif name == "invoice":
            preimage = os.urandom(32)
            payment_hash = sha256(preimage)
            msat = int(cmd["msat"])
            self.lnworker.preimages[payment_hash] = preimage
            self.lnworker.payment_info[payment_hash] = PaymentInfo(
                payment_hash, msat, RECEIVED, PR_UNPAID
            )
            emit(
                "invoice",
                payment_hash=payment_hash.hex(),
                payment_secret=derive_payment_secret_from_payment_preimage(
                    preimage
                ).hex(),
                msat=msat,
            )
        elif name == "pay":
            peer = self._peer()
            chans = [c for c in peer.channels.values() if c.can_send_update_add_htlc()]
            if not chans:
                raise RuntimeError("no open channel to pay through")
            chan = chans[0]
            msat = int(cmd["msat"])
            route = [
                RouteEdge(
                    start_node=self.lnworker.node_keypair.pubkey,
                    end_node=peer.pubkey,
                    short_channel_id=chan.short_channel_id,
                    fee_base_msat=0,
                    fee_proportional_millionths=0,
                    cltv_expiry_delta=0,
                    node_features=peer.their_features,
                )
            ]
            htlc = peer.pay(
                route=route,
                chan=chan,
                amount_msat=msat,
                total_msat=msat,
                payment_hash=bytes.fromhex(cmd["payment_hash"]),
                min_final_cltv_expiry=200,
                payment_secret=bytes.fromhex(cmd["payment_secret"]),
            )
            emit("htlc_added", htlc_id=htlc.htlc_id, msat=htlc.amount_msat)
        elif name == "ping":
            peer = self._peer()
            await asyncio.wait_for(peer.initialized, 20)
            peer.pong_event.clear()
            peer.send_message("ping", num_pong_bytes=4, byteslen=4)
            await peer.pong_event.wait()
            emit("pong")
        elif name == "query_channel_range":
            peer = self._peer()
            await asyncio.wait_for(peer.initialized, 20)
            peer.query_channel_range(
                int(cmd.get("first", 700000)), int(cmd.get("num", 1000))
            )
            index, num, complete, ids = await peer.reply_channel_range.get()
            emit("reply_channel_range", first=index, num=num, complete=complete)
        elif name == "raw":
            self._peer().transport.send_bytes(bytes.fromhex(cmd["hex"]))
        elif name == "webhook":
            session = await self.session_start()
            r = await session.call("webhook.set", url=cmd["url"])
            emit("webhook", id=r["id"])
        elif name == "leave":
            if self.session is not None:
                await self.session.close()
            emit("left")
        elif name == "disconnect":
            self._peer().close_and_cleanup()
        else:
            emit("error", what="command", error=f"unknown command {name!r}")

    def _peer(self) -> Peer:
        if self.peer is None:
            raise RuntimeError("no peer")
        return self.peer


def read_key(key_fd: int | None) -> bytes:
    """The node key: from ``key_fd`` (read to its end, then closed), else
    from ``LNPROXY_NODE_KEY`` (removed from the environment), else a new
    random one."""
    env_hex = os.environ.pop("LNPROXY_NODE_KEY", "")
    if key_fd is not None:
        with os.fdopen(key_fd, "rb") as f:
            key_hex = f.read(1024).decode("ascii", "replace").strip()
    else:
        key_hex = env_hex
    if not key_hex:
        return os.urandom(32)
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SystemExit("the node key must be 64 hex characters")
    return key


async def amain(args: argparse.Namespace) -> None:
    """Run the node until ``exit`` or the end of stdin."""
    privkey = read_key(args.key_fd)
    # Electrum's callbacks (util.trigger_callback) run on its global loop,
    # which Electrum's daemon would have made: this one.
    electrum_util._asyncio_event_loop = asyncio.get_running_loop()
    node = Node(args, privkey)
    if args.role == "peer":
        await node.listen()
    else:
        emit("ready", node_id=privkey_to_pubkey(privkey).hex())
    for line in args.commands:
        node.spawn(node.command(json.loads(line)), "command")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd.get("cmd") == "exit":
            break
        node.spawn(node.command(cmd), str(cmd.get("cmd")))
    if node.session is not None:
        await node.session.close()
    for task in list(node.tasks):
        task.cancel()
    emit("exit")


def main(argv: list[str] | None = None) -> None:
    """Entry point (``python3 -m lnproxy.electrum_node``)."""
    parser = argparse.ArgumentParser(prog="python3 -m lnproxy.electrum_node")
    parser.add_argument("role", choices=["peer", "client"])
    parser.add_argument(
        "--port", type=int, default=0, help="peer: TCP port to listen on"
    )
    parser.add_argument("--proxy", default="", help="client: the proxy's ws:// URL")
    parser.add_argument("--user-dir", default=os.environ.get("TMPDIR", "/tmp"))
    parser.add_argument(
        "--key-fd", type=int, default=None,
        help="read the node key (hex) from this inherited file descriptor",
    )  # fmt: skip
    parser.add_argument(
        "--answer-queries", action="store_true",
        help="answer query_channel_range (Electrum 4.3 does not)",
    )  # fmt: skip
    parser.add_argument(
        "--command", dest="commands", action="append", default=[],
        help="a JSON command to run at start (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    # Electrum's own log (disconnect reasons, ...) on stderr.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(name)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(amain(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
