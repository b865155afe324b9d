// End-to-end: the client against a real `twistd -n lnproxy` and the local
// BOLT 8 peer (test/support/peer.py), all on 127.0.0.1.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { secp256k1 } from "@noble/curves/secp256k1.js";

import {
  HandshakeFailed,
  Initiator,
  InvalidParams,
  InvalidRequest,
  LeaseHeld,
  LimitExceeded,
  LnproxyClient,
  LoginFailed,
  MethodNotFound,
  NotLoggedIn,
  NotOpen,
  PeerUnreachable,
  ServerMismatch,
  Session,
  UnknownConnection,
  VersionConflict,
  fromHex,
  memoryState,
  newNodeSecret,
  nodeIdOf,
  restoreFromAccount,
  signLogin,
  toHex,
} from "../dist/index.js";
import {
  REPO,
  eventually,
  freePort,
  nodeWebSocket,
  python,
  startPeer,
  startProxy,
} from "./support/harness.mjs";

let proxy;
let peer;
let WS;
const clients = [];

before(async () => {
  WS = await nodeWebSocket();
  [proxy, peer] = await Promise.all([startProxy(), startPeer({ args: ["--features", "0200"] })]);
});

after(async () => {
  for (const c of clients) c.stop();
  await peer?.stop();
  await proxy?.cleanup();
});

/**
 * A WebSocket class that records the frames a client sends and can drop
 * acks or cut the connection, to see the event pipeline from outside.
 */
function spyingWebSocket() {
  const spy = { sent: [], sockets: [], dropAcks: false };
  class Spy extends WS {
    constructor(url, protocols) {
      super(url, protocols);
      spy.sockets.push(this);
    }
    send(data) {
      const obj = JSON.parse(data);
      spy.sent.push(obj);
      if (spy.dropAcks && obj.method === "ack") return;
      super.send(data);
    }
  }
  spy.WebSocket = Spy;
  spy.acks = () => spy.sent.filter((o) => o.method === "ack").map((o) => o.params.seq);
  return spy;
}

// Each client's secret, for the tests' own raw sessions as the same node.
const secretOf = new WeakMap();

function newClient(opts = {}) {
  const events = [];
  const secret = opts.nodeSecret ?? newNodeSecret();
  const client = new LnproxyClient({
    url: proxy.url,
    nodeSecret: secret,
    WebSocket: opts.WebSocket ?? WS,
    onEvent: opts.onEvent ?? ((e) => void events.push(e)),
    requestTimeout: 10_000,
    backoff: { initial: 50, max: 500 },
    ...opts.extra,
  });
  clients.push(client);
  secretOf.set(client, secret);
  client.events = events;
  return client;
}

/** Wait for an event the client handled. */
function handled(client, pred, ms = 10_000) {
  return eventually(() => client.events.find(pred), ms, "an event");
}

describe("session and handshake", () => {
  let client;
  let link;

  test("logs in with a signature the proxy accepts", async () => {
    client = newClient();
    client.start();
    const info = await client.whenLoggedIn(10_000);
    assert.equal(info.nodeId, client.nodeId);
    assert.deepEqual({ next: info.nextSeq, pending: info.pending }, { next: 1, pending: 0 });
    assert.equal(client.hello.serverIdHex.length, 66);
    assert.equal(typeof info.limits.max_message, "number");
  });

  test("opens a peer through the proxy: the peer sees our node id and our init", async () => {
    link = await client.openPeer(peer.address, { features: fromHex("0100") });
    const open = await peer.waitFor((e) => e.event === "open" && e.remote === client.nodeId);
    assert.ok(open);
    const init = await peer.waitFor((e) => e.event === "received" && e.type === 16);
    assert.equal(init.msg, "0010" + "0000" + "0002" + "0100");
  });

  test("the peer's init arrives as an event and in the connection object", async () => {
    const ev = await handled(client, (e) => e.kind === "message" && e.type === 16);
    assert.equal(ev.conn, link.conn);
    assert.equal(ev.peer, peer.nodeId);
    assert.equal(toHex(ev.msg), "0010" + "0000" + "0002" + "0200");
    assert.ok(ev.msg instanceof Uint8Array);
    const conns = await client.connections();
    const c = conns.find((x) => x.conn === link.conn);
    assert.equal(c.state, "open");
    assert.equal(c.peer, peer.nodeId);
    assert.deepEqual(c.theirInit, ev.msg);
  });

  test("a ping from the peer is answered by the proxy, not delivered", async () => {
    peer.command({ ping: 4 });
    const pong = await peer.waitFor((e) => e.event === "received" && e.type === 19);
    assert.equal(pong.msg, "0013" + "0004" + "00000000");
    // A marker after the ping: once it is here, the ping would be too.
    peer.command({ send: "8001" + "cafe" });
    const marker = await handled(client, (e) => e.type === 0x8001);
    assert.equal(toHex(marker.msg), "8001cafe");
    assert.equal(client.events.filter((e) => e.type === 18).length, 0);
  });

  test("a message sent by the peer arrives as bytes, in seq order, acknowledged", async () => {
    peer.command({ send: "0001" + "0000" + "0003" + "616263" }); // warning
    const ev = await handled(client, (e) => e.type === 1);
    assert.equal(toHex(ev.msg), "0001" + "0000" + "0003" + "616263");
    const seqs = client.events.map((e) => e.seq);
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1));
    await eventually(() => client.lastSeq === ev.seq, 5000, "lastSeq");
    // Another session of the node sees nothing pending: every event acked.
    await eventually(async () => (await pendingOf(client)) === 0, 5000, "pending 0");
  });

  test(
    "a ping sent by the client is answered by the peer and its pong delivered",
    async () => {
      await link.send(fromHex("0012" + "0003" + "0000"));
      const ping = await peer.waitFor((e) => e.event === "received" && e.type === 18);
      assert.equal(ping.msg, "001200030000");
      const pong = await handled(client, (e) => e.type === 19, 3000);
      assert.equal(toHex(pong.msg), "0013" + "0003" + "000000");
    },
  );
});

/** Log a raw session in as the client's node. */
function loginRaw(session, client) {
  const sig = signLogin(secretOf.get(client), session.hello.serverId, session.hello.challenge);
  return session.request("login", { node_id: client.nodeId, signature: toHex(sig) });
}

/** The node's pending count, seen by a fresh session. */
async function pendingOf(client) {
  const s = await Session.open(proxy.url, { WebSocket: WS });
  try {
    const r = await loginRaw(s, client);
    return r.inbox.pending;
  } finally {
    s.close();
  }
}

describe("events across a reconnect", () => {
  test("unacknowledged events are replayed after a reconnect, delivered once, acknowledged", async () => {
    const spy = spyingWebSocket();
    const client = newClient({ WebSocket: spy.WebSocket });
    client.start();
    await client.whenLoggedIn(10_000);
    await client.openPeer(peer.address);
    await handled(client, (e) => e.type === 16);
    await eventually(async () => (await pendingOf(client)) === 0, 5000, "init acknowledged");
    // The proxy never gets these acks: they are lost with the connection.
    spy.dropAcks = true;
    for (const n of [1, 2, 3]) peer.command({ send: `8003000${n}` });
    await handled(client, (e) => toHex(e.msg ?? new Uint8Array()) === "80030003");
    assert.equal(await pendingOf(client), 3);
    const before = client.events.length;
    const acksBefore = spy.acks().length;
    // Cut the WebSocket as a network failure would; the client reconnects.
    spy.dropAcks = false;
    let logins = 0;
    client.on("login", () => logins++);
    spy.sockets.at(-1).terminate();
    await eventually(() => logins === 1, 10_000, "a new login");
    await eventually(async () => (await pendingOf(client)) === 0, 10_000, "pending 0");
    // Nothing delivered twice; every seq once, in order.
    assert.equal(client.events.length, before);
    const seqs = client.events.map((e) => e.seq);
    assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b));
    // The replayed seqs were acknowledged after the reconnect.
    const replayAcks = spy.acks().slice(acksBefore);
    assert.ok(replayAcks.includes(client.lastSeq), JSON.stringify(replayAcks));
  });

  test("an event is acknowledged only after the handler finishes; a failing handler is retried", async () => {
    const spy = spyingWebSocket();
    let release;
    const gate = new Promise((r) => (release = r));
    let failOnce = true;
    const seen = [];
    const client = newClient({
      WebSocket: spy.WebSocket,
      onEvent: async (e) => {
        if (e.type === 0x8005) {
          if (failOnce) {
            failOnce = false;
            throw new Error("the application failed once");
          }
          await gate;
        }
        seen.push(e);
      },
    });
    client.start();
    await client.whenLoggedIn(10_000);
    await client.openPeer(peer.address);
    await eventually(() => seen.some((e) => e.type === 16), 10_000, "init");
    peer.command({ send: "80050001" });
    // Let the handler fail, be retried, and wait at the gate.
    await new Promise((r) => setTimeout(r, 700));
    const seq = client.lastSeq + 1;
    assert.ok(!spy.acks().includes(seq), "acknowledged before the handler finished");
    release();
    await eventually(() => spy.acks().includes(seq), 5000, "the ack");
    assert.equal(seen.filter((e) => e.type === 0x8005).length, 1);
    assert.equal(spy.acks().filter((s) => s === seq).length, 1);
  });
});

describe("persistent peers", () => {
  test("a dropped persist connection is recorded, acknowledged, and handshaken again", async () => {
    const store = memoryState();
    const client = newClient({ extra: { state: store } });
    const links = [];
    client.on("link", (l) => links.push(l));
    client.start();
    await client.whenLoggedIn(10_000);
    const first = await client.openPeer(peer.address, { persist: true, features: fromHex("0100") });
    await handled(client, (e) => e.type === 16 && e.conn === first.conn);
    const opens = peer.events.filter((e) => e.event === "open" && e.remote === client.nodeId).length;
    // The peer drops every connection; the proxy summons us to reconnect.
    peer.command({ close: true });
    const closed = await handled(client, (e) => e.kind === "closed" && e.conn === first.conn);
    assert.equal(closed.reconnect, true);
    await eventually(() => links.length === 1, 15_000, "a new link");
    const again = links[0];
    assert.notEqual(again.conn, first.conn);
    assert.equal(again.peer, peer.nodeId);
    assert.equal(again.persist, true);
    await eventually(
      () => peer.events.filter((e) => e.event === "open" && e.remote === client.nodeId).length === opens + 1,
      5000,
      "the peer sees a new handshake",
    );
    // Same init features as the first time.
    const inits = peer.events.filter((e) => e.event === "received" && e.type === 16);
    assert.equal(inits.at(-1).msg, "001000000002" + "0100");
    // Nothing left to do in the state.
    assert.deepEqual((await store.load()).rehandshake, {});
    const conns = await client.connections();
    assert.equal(conns.find((c) => c.conn === again.conn).state, "open");
  });
});

describe("every error code the client can get", () => {
  let client;
  let link;
  before(async () => {
    client = newClient();
    client.start();
    await client.whenLoggedIn(10_000);
    link = await client.openPeer(peer.address);
  });

  test("1: a request before login (NotLoggedIn)", async () => {
    const s = await Session.open(proxy.url, { WebSocket: WS });
    await assert.rejects(s.request("connections"), (e) => e instanceof NotLoggedIn && e.code === 1);
    s.close();
  });

  test("2: a wrong login signature (LoginFailed)", async () => {
    const s = await Session.open(proxy.url, { WebSocket: WS });
    const secret = newNodeSecret();
    const wrong = signLogin(secret, s.hello.serverId, new Uint8Array(32));
    await assert.rejects(
      s.request("login", { node_id: toHex(nodeIdOf(secret)), signature: toHex(wrong) }),
      (e) => e instanceof LoginFailed && e.code === 2,
    );
    s.close();
  });

  test("-32600: a second login on a session (InvalidRequest)", async () => {
    await assert.rejects(
      client.call("login", { node_id: client.nodeId, signature: "00".repeat(64) }),
      (e) => e instanceof InvalidRequest && e.code === -32600,
    );
  });

  test("-32601: an unknown method (MethodNotFound)", async () => {
    await assert.rejects(client.call("no.such.method"), (e) => e instanceof MethodNotFound && e.code === -32601);
  });

  test("-32602: invalid params (InvalidParams): a 1-byte message, an ack beyond the newest", async () => {
    await assert.rejects(link.send(fromHex("00")), (e) => e instanceof InvalidParams && e.code === -32602 && !e.local);
    await assert.rejects(client.ack(1_000_000), (e) => e instanceof InvalidParams);
  });

  test("3: an unknown connection (UnknownConnection)", async () => {
    await assert.rejects(client.send("no-such-conn", fromHex("0001")), (e) => e instanceof UnknownConnection && e.code === 3);
  });

  test("4: a peer nobody listens on (PeerUnreachable)", async () => {
    const port = await freePort();
    await assert.rejects(client.openPeer(`${peer.nodeId}@127.0.0.1:${port}`), (e) => e instanceof PeerUnreachable && e.code === 4);
  });

  test("5: a peer that closes during the handshake (HandshakeFailed from the proxy)", async () => {
    const server = createServer((sock) => sock.destroy());
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    try {
      await assert.rejects(
        client.openPeer(`${peer.nodeId}@127.0.0.1:${server.address().port}`),
        (e) => e instanceof HandshakeFailed && e.code === 5 && !e.local,
      );
    } finally {
      server.close();
    }
  });

  test("5: an act 2 that fails its MAC (HandshakeFailed found by the client; the half-made connection is closed)", async () => {
    let closed;
    const peerClosed = new Promise((r) => (closed = r));
    const server = createServer((sock) => {
      let got = 0;
      sock.on("data", (d) => {
        got += d.length;
        if (got >= 50) {
          // Right shape (version 0, a real point), wrong MAC.
          const e = secp256k1.getPublicKey(newNodeSecret(), true);
          sock.write(Buffer.concat([Buffer.of(0), e, Buffer.alloc(16, 7)]));
        }
      });
      sock.on("close", () => closed(Date.now()));
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    try {
      const t0 = Date.now();
      await assert.rejects(
        client.openPeer(`${peer.nodeId}@127.0.0.1:${server.address().port}`),
        (e) =>
          e instanceof HandshakeFailed && e.code === 5 && e.local && e.data.bolt8 === "ACT2_BAD_TAG",
      );
      // Closed by the client's disconnect, long before the handshake timeout.
      const at = await peerClosed;
      assert.ok(at - t0 < 5000);
      const conns = await client.connections();
      assert.ok(!conns.some((c) => c.state === "handshake"));
    } finally {
      server.close();
    }
  });

  test("6: send on a connection still in its handshake (NotOpen)", async () => {
    const init = new Initiator(newNodeSecret(), fromHex(peer.nodeId));
    const r = await client.call("connect", { peer: peer.address, act1: toHex(init.act1()) });
    await assert.rejects(client.send(r.conn, fromHex("0001")), (e) => e instanceof NotOpen && e.code === 6);
    await client.disconnect(r.conn);
  });

  test("7: a message over 65535 bytes (LimitExceeded)", async () => {
    await assert.rejects(link.send(new Uint8Array(65536)), (e) => e instanceof LimitExceeded && e.code === 7);
  });

  test("a pinned server id that differs stops the client (ServerMismatch)", async () => {
    const c = newClient({ extra: { serverId: "02" + "11".repeat(32) } });
    const fatal = new Promise((r) => c.on("fatal", r));
    c.start();
    await assert.rejects(c.whenLoggedIn(5000), ServerMismatch);
    assert.ok((await fatal) instanceof ServerMismatch);
    assert.equal(c.running, false);
  });
});

// -- several devices of one node (docs/protocol.md, "Several devices of one node")

/** Two started, logged-in clients of one node (a phone and a laptop). */
async function twoDevices() {
  const secret = newNodeSecret();
  const a = newClient({ nodeSecret: secret });
  const b = newClient({ nodeSecret: secret });
  a.start();
  b.start();
  await Promise.all([a.whenLoggedIn(10_000), b.whenLoggedIn(10_000)]);
  return [a, b];
}

/** Run the Python client's CLI (lnproxy-client) with `input` on stdin. */
function pythonCli(args, input = "") {
  const child = spawn(
    python(),
    ["-c", "import sys; from lnproxy.client.cli import main; main(sys.argv[1:])", ...args],
    { env: { ...process.env, PYTHONPATH: REPO }, stdio: ["pipe", "pipe", "pipe"] },
  );
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  child.stdin.end(input);
  return new Promise((resolve) => child.once("exit", (code) => resolve({ code, out, err })));
}

/** A fresh session's `account.login` with an `auth` no password gives. */
async function accountLoginRaw(user, auth = newNodeSecret()) {
  const s = await Session.open(proxy.url, { WebSocket: WS });
  try {
    return await s.request("account.login", { user, auth: toHex(auth) });
  } finally {
    s.close();
  }
}

describe("several devices of one node", () => {
  test("hello announces lease, vault, account and peer_storage", async () => {
    const s = await Session.open(proxy.url, { WebSocket: WS });
    s.close();
    for (const f of ["lease", "vault", "account", "peer_storage"]) {
      assert.ok(s.hello.features.includes(f), `${f} not in ${JSON.stringify(s.hello.features)}`);
    }
  });

  test("the writer lease: the other device gets 11, force moves it, the loser is told, it ends with its session", async () => {
    const [a, b] = await twoDevices();
    const told = { a: [], b: [] };
    a.on("lease", (l) => told.a.push(l));
    b.on("lease", (l) => told.b.push(l));
    assert.equal(await a.leaseAcquire(), true);
    const link = await a.openPeer(peer.address);
    await peer.waitFor((e) => e.event === "open" && e.remote === a.nodeId);
    // B, not the writer, cannot touch peer connections (connect, send,
    // disconnect) nor take the lease without force; it can still read.
    const held = (e) => e instanceof LeaseHeld && e.code === 11 && !e.local;
    await assert.rejects(b.openPeer(peer.address), held);
    await assert.rejects(b.send(link.conn, fromHex("8009" + "0001")), held);
    await assert.rejects(b.disconnect(link.conn), held);
    await assert.rejects(b.leaseAcquire(), held);
    assert.ok((await b.connections()).some((c) => c.conn === link.conn && c.state === "open"));
    assert.equal(b.writer, false);
    // A forced acquire moves the lease; A is told by the proxy's `lease`
    // notification.
    assert.equal(await b.leaseAcquire(true), true);
    await eventually(() => told.a.length === 2, 5000, "the lease notification");
    assert.deepEqual(told.a, [{ writer: true }, { writer: false }]);
    assert.deepEqual(told.b, [{ writer: false }, { writer: true }]);
    assert.deepEqual([a.writer, b.writer], [false, true]);
    await assert.rejects(a.send(link.conn, fromHex("8009" + "0002")), held);
    await b.send(link.conn, fromHex("8009" + "0003"));
    const got = await peer.waitFor((e) => e.event === "received" && e.msg === "80090003");
    assert.ok(got);
    assert.ok(!peer.events.some((e) => e.event === "received" && /^8009000[12]$/.test(e.msg)));
    // The lease ends with B's session: A may write again.
    b.stop();
    await eventually(
      async () => {
        try {
          await a.send(link.conn, fromHex("8009" + "0004"));
          return true;
        } catch (e) {
          if (!(e instanceof LeaseHeld)) throw e;
          return false;
        }
      },
      5000,
      "the lease to end with its session",
    );
    await peer.waitFor((e) => e.event === "received" && e.msg === "80090004");
    assert.equal(await a.leaseAcquire(), true);
    await a.leaseRelease();
    await link.disconnect();
  });

  test("lease: true: the lease is asked for at every login; only the holder handshakes a dropped persist peer again", async () => {
    const secret = newNodeSecret();
    const spy = spyingWebSocket();
    const a = newClient({ nodeSecret: secret, WebSocket: spy.WebSocket, extra: { lease: true } });
    const linksA = [];
    a.on("link", (l) => linksA.push(l));
    a.start();
    await a.whenLoggedIn(10_000);
    await eventually(() => a.writer === true, 5000, "A to hold the lease");
    const spyB = spyingWebSocket();
    const b = newClient({ nodeSecret: secret, WebSocket: spyB.WebSocket, extra: { lease: true } });
    const linksB = [];
    const toldB = [];
    b.on("link", (l) => linksB.push(l));
    b.on("lease", (l) => toldB.push(l));
    b.start();
    await b.whenLoggedIn(10_000);
    await eventually(() => b.writer === false, 5000, "B to learn that A holds the lease");
    assert.deepEqual(toldB, [{ writer: false }]);
    // The lease ends with A's WebSocket; A logs in again and takes it again.
    let logins = 0;
    a.on("login", () => logins++);
    spy.sockets.at(-1).terminate();
    await eventually(() => logins === 1 && a.writer === true, 10_000, "A to hold the lease again");
    // A persist connection drops: both devices get the closed event; only
    // A (the holder) handshakes again.
    const first = await a.openPeer(peer.address, { persist: true });
    await handled(b, (e) => e.type === 16 && e.conn === first.conn);
    const opens = () => peer.events.filter((e) => e.event === "open" && e.remote === a.nodeId).length;
    const before = opens();
    peer.command({ close: true });
    await handled(b, (e) => e.kind === "closed" && e.conn === first.conn && e.reconnect);
    await eventually(() => linksA.length === 1, 15_000, "A's new link");
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(opens(), before + 1);
    assert.deepEqual(linksB, []);
    // B did not even try: it knows A holds the lease.
    assert.deepEqual(spyB.sent.filter((o) => o.method === "connect"), []);
    const conns = await b.connections();
    assert.equal(conns.filter((c) => c.state === "open" && c.peer === peer.nodeId).length, 1);
    await linksA[0].disconnect();
  });

  test("vault: two writers of one version, exactly one wins, the other gets 10 with the version and wins on retry", async () => {
    const [a, b] = await twoDevices();
    assert.deepEqual(await a.vaultGet("channels.v1"), { version: 0, blob: null });
    const results = await Promise.allSettled([
      a.vaultPut("channels.v1", fromHex("aa01"), 0),
      b.vaultPut("channels.v1", fromHex("bb01"), 0),
    ]);
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r) => r.status === "rejected");
    assert.equal(won.length, 1, JSON.stringify(results));
    assert.equal(won[0].value, 1);
    const err = lost[0].reason;
    assert.ok(err instanceof VersionConflict && err.code === 10, String(err));
    assert.deepEqual(err.data, { version: 1 });
    assert.equal(err.currentVersion, 1);
    // The loser reads, merges, writes naming the version it read.
    const [winner, loser] = results[0].status === "fulfilled" ? [a, b] : [b, a];
    const current = await loser.vaultGet("channels.v1");
    assert.equal(current.version, 1);
    const merged = new Uint8Array([...current.blob, 0xcc]);
    assert.equal(await loser.vaultPut("channels.v1", merged, current.version), 2);
    assert.deepEqual(await winner.vaultGet("channels.v1"), { version: 2, blob: merged });
    // A stale write changes nothing.
    await assert.rejects(winner.vaultPut("channels.v1", fromHex("00"), 1), (e) => e instanceof VersionConflict && e.currentVersion === 2);
    // list and remove.
    assert.equal(await a.vaultPut("settings", fromHex("0102030405"), 0), 1);
    const list = await b.vaultList();
    list.sort((x, y) => x.name.localeCompare(y.name));
    assert.deepEqual(list, [
      { name: "channels.v1", version: 2, size: 3 },
      { name: "settings", version: 1, size: 5 },
    ]);
    await assert.rejects(b.vaultRemove("channels.v1", 1), (e) => e instanceof VersionConflict && e.currentVersion === 2);
    await b.vaultRemove("channels.v1", 2);
    assert.deepEqual(await a.vaultGet("channels.v1"), { version: 0, blob: null });
    assert.deepEqual(await a.vaultList(), [{ name: "settings", version: 1, size: 5 }]);
    // Another node sees none of it.
    const other = newClient();
    other.start();
    assert.deepEqual(await other.vaultList(), []);
  });
});

describe("accounts", () => {
  // Non-ASCII on purpose: both implementations must hash the same UTF-8.
  const password = "correct horse ñ battery 🔑 staple";
  const user = `js-${toHex(newNodeSecret()).slice(0, 12)}`;
  let a;
  let linkA;

  test("a device with the key sets an account; a device without restores the key, logs in and gets the node's events", { timeout: 120_000 }, async () => {
    a = newClient();
    a.start();
    await a.whenLoggedIn(10_000);
    linkA = await a.openPeer(peer.address);
    await handled(a, (e) => e.type === 16 && e.conn === linkA.conn);
    await a.accountSet(user, password);
    const secret = await restoreFromAccount(proxy.url, user, password, { WebSocket: WS, timeout: 60_000 });
    assert.equal(toHex(secret), toHex(secretOf.get(a)));
    const c = newClient({ nodeSecret: secret });
    c.start();
    const info = await c.whenLoggedIn(10_000);
    assert.equal(info.nodeId, a.nodeId);
    assert.ok(info.connections.some((x) => x.conn === linkA.conn));
    peer.command({ send: "800b" + "beef" });
    const ev = await handled(c, (e) => e.type === 0x800b && e.conn === linkA.conn);
    assert.equal(toHex(ev.msg), "800bbeef");
    await handled(a, (e) => e.type === 0x800b && e.conn === linkA.conn);
  });

  test("a wrong password and an unknown user both give 2; repeated failures give 7", { timeout: 120_000 }, async () => {
    assert.ok(a, "needs the account of the previous test");
    const wrong = await restoreFromAccount(proxy.url, user, password + "!", { WebSocket: WS, timeout: 60_000 }).then(
      () => assert.fail("a wrong password restored a key"),
      (e) => e,
    );
    const unknown = await restoreFromAccount(proxy.url, `${user}-nobody`, password, { WebSocket: WS, timeout: 60_000 }).then(
      () => assert.fail("an unknown user restored a key"),
      (e) => e,
    );
    for (const e of [wrong, unknown]) assert.ok(e instanceof LoginFailed && e.code === 2, String(e));
    // The same answer for both: user names cannot be probed.
    assert.equal(wrong.message, unknown.message);
    assert.deepEqual(wrong.data, unknown.data);
    // 1 failure so far for `user`; 4 more, then the name is blocked (7),
    // even with the right password.
    for (let i = 0; i < 4; i++) {
      await assert.rejects(accountLoginRaw(user), (e) => e instanceof LoginFailed && e.code === 2);
    }
    await assert.rejects(accountLoginRaw(user), (e) => e instanceof LimitExceeded && e.code === 7);
    await assert.rejects(
      restoreFromAccount(proxy.url, user, password, { WebSocket: WS, timeout: 60_000 }),
      (e) => e instanceof LimitExceeded && e.code === 7,
    );
    // Another name is not affected.
    await assert.rejects(accountLoginRaw(`${user}-other`), (e) => e instanceof LoginFailed);
  });

  test("an account set by the Python client is restored by the JS client, and the other way round", { timeout: 180_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "lnproxy-js-account-"));
    try {
      // Python sets, JS restores.
      const pySecret = newNodeSecret();
      const keyPath = join(dir, "py.key");
      writeFileSync(keyPath, toHex(pySecret) + "\n", { mode: 0o600 });
      const pyUser = `py-${toHex(newNodeSecret()).slice(0, 12)}`;
      const set = await pythonCli(
        ["--proxy", proxy.url, "--key", keyPath, "account", "set", "--user", pyUser, "--password-fd", "0"],
        password + "\n",
      );
      assert.equal(set.code, 0, set.err);
      const restored = await restoreFromAccount(proxy.url, pyUser, password, { WebSocket: WS, timeout: 60_000 });
      assert.equal(toHex(restored), toHex(pySecret));
      // JS sets, Python restores (writes a new key file).
      const jsClient = newClient();
      jsClient.start();
      await jsClient.whenLoggedIn(10_000);
      const jsUser = `js-${toHex(newNodeSecret()).slice(0, 12)}`;
      await jsClient.accountSet(jsUser, password);
      const out = join(dir, "restored.key");
      const r = await pythonCli(
        ["--proxy", proxy.url, "--key", out, "account", "restore", "--user", jsUser, "--password-fd", "0"],
        password + "\n",
      );
      assert.equal(r.code, 0, r.err);
      assert.equal(r.out.trim(), jsClient.nodeId);
      assert.equal(readFileSync(out, "ascii").trim(), toHex(secretOf.get(jsClient)));
      // And a wrong password is refused by the Python client too.
      const bad = await pythonCli(
        ["--proxy", proxy.url, "--key", join(dir, "bad.key"), "account", "restore", "--user", jsUser, "--password-fd", "0"],
        "not the password at all\n",
      );
      assert.equal(bad.code, 1);
      assert.match(bad.err, /wrong user name or password/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
