// End-to-end: the client against a real `twistd -n lnproxy` and the local
// BOLT 8 peer (test/support/peer.py), all on 127.0.0.1.
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, describe, test } from "node:test";

import { secp256k1 } from "@noble/curves/secp256k1.js";

import {
  HandshakeFailed,
  Initiator,
  InvalidParams,
  InvalidRequest,
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
  fromHex,
  memoryState,
  newNodeSecret,
  nodeIdOf,
  signLogin,
  toHex,
} from "../dist/index.js";
import { eventually, freePort, nodeWebSocket, startPeer, startProxy } from "./support/harness.mjs";

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

  test("lease, vault and account: used when hello announces them, MethodNotFound otherwise", async () => {
    const features = client.hello.features;
    if (features.includes("lease")) assert.equal(await client.leaseAcquire(), true);
    else await assert.rejects(client.leaseAcquire(), MethodNotFound);
    if (features.includes("vault")) {
      const v = await client.vaultPut("js-test", fromHex("0102"), 0);
      assert.deepEqual(await client.vaultGet("js-test"), { version: v, blob: fromHex("0102") });
    } else {
      await assert.rejects(client.vaultList(), MethodNotFound);
    }
    if (!features.includes("account")) await assert.rejects(client.accountRemove(), MethodNotFound);
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
