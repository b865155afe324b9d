// Unit tests: keys and the login signature, parsing of what the server
// sends, and the client's behaviour against a scripted fake proxy (a `ws`
// WebSocket server on 127.0.0.1) for the cases a real proxy never produces:
// a bad hello, malformed fields, silence, redirects, dropped sockets.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { WebSocket, WebSocketServer } from "ws";

import {
  ClientStopped,
  HandshakeFailed,
  LoginFailed,
  LnproxyClient,
  ProtocolViolation,
  ProxyError,
  RequestTimeout,
  ServerMismatch,
  VersionConflict,
  encodeInit,
  errorForCode,
  fromHex,
  loginDigest,
  newNodeSecret,
  nodeIdOf,
  parseEvent,
  parseHello,
  parsePeer,
  restoreFromAccount,
  signLogin,
  toHex,
  verifyDigest,
  webStorageState,
} from "../dist/index.js";

const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;

describe("keys and the login signature", () => {
  // Made with the Python reference (lnproxy.keys.login_digest / sign_digest,
  // libsecp256k1 through coincurve): secret 07*32, server key 09*32,
  // challenge 00..1f.
  const PY = {
    serverId: "0256b328b30c8bf5839e24058747879408bdb36241dc9c2e7c619faa12b2920967",
    challenge: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    digest: "eecc2159dac142a33424f7d9ab40d72d7a87a7a04a69553123b91dcd2a64236f",
    signature:
      "0673760152daedb6389eb51c5f4d0701c983a0a5cccabacacd9e545734c10800" +
      "763a104f0bf6a7fa4c584025e1eaf1aead16a29fdbf768e12f7abdc27ed9f3c6",
    nodeId: "02989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f",
  };

  test("the digest is one SHA-256 and the signature equals libsecp256k1's", () => {
    const secret = new Uint8Array(32).fill(7);
    assert.equal(toHex(nodeIdOf(secret)), PY.nodeId);
    const digest = loginDigest(fromHex(PY.serverId), fromHex(PY.challenge));
    assert.equal(toHex(digest), PY.digest);
    const sig = signLogin(secret, fromHex(PY.serverId), fromHex(PY.challenge));
    assert.equal(toHex(sig), PY.signature);
    assert.ok(verifyDigest(sig, digest, nodeIdOf(secret)));
  });

  test("signatures are 64 bytes and low-S", () => {
    for (let i = 0; i < 20; i++) {
      const secret = newNodeSecret();
      const sig = signLogin(secret, nodeIdOf(newNodeSecret()), new Uint8Array(32).fill(i));
      assert.equal(sig.length, 64);
      const s = BigInt("0x" + toHex(sig.subarray(32)));
      assert.ok(s <= N / 2n);
    }
  });
});

describe("parsing", () => {
  test("peers: node@host:port, IPv6 in brackets, default port 9735", () => {
    const id = toHex(nodeIdOf(newNodeSecret()));
    assert.deepEqual(parsePeer(`${id}@127.0.0.1:9736`), { nodeId: id, address: "127.0.0.1:9736" });
    assert.deepEqual(parsePeer(`${id.toUpperCase()}@[::1]`), { nodeId: id, address: "[::1]:9735" });
    for (const bad of [`${id}`, `${id}@`, `${id}@h:0`, `${id}@h:70000`, `02${"00".repeat(32)}@h`, "x@h"]) {
      assert.throws(() => parsePeer(bad), (e) => e.code === -32602 && e.local, bad);
    }
  });

  test("init: type 16, empty globalfeatures, our features", () => {
    assert.equal(toHex(encodeInit()), "001000000000");
    assert.equal(toHex(encodeInit(fromHex("0a0b"))), "0010000000020a0b");
  });

  test("hello: refused without a challenge, with bad hex, another version, another server", () => {
    const sid = toHex(nodeIdOf(newNodeSecret()));
    const good = { protocol: "lnproxy/1", server_id: sid, challenge: "ab".repeat(32), limits: {}, features: ["lease"] };
    assert.equal(parseHello(good).serverIdHex, sid);
    const cases = [
      [{ ...good, challenge: undefined }, /without a challenge/],
      [{ ...good, challenge: "ab".repeat(31) }, ProtocolViolation],
      [{ ...good, challenge: "zz".repeat(32) }, ProtocolViolation],
      [{ ...good, challenge: "ab".repeat(5000) }, /more than 32 bytes/],
      [{ ...good, server_id: sid.toUpperCase() }, ProtocolViolation],
      [{ ...good, server_id: "05" + sid.slice(2) }, ProtocolViolation],
      [{ ...good, protocol: "lnproxy/2" }, /lnproxy\/2/],
    ];
    for (const [params, err] of cases) assert.throws(() => parseHello(params), err);
    const other = (sid.startsWith("02") ? "03" : "02") + sid.slice(2);
    assert.throws(() => parseHello(good, other), ServerMismatch);
  });

  test("events: bytes for msg; non-hex, oversized and inconsistent fields refused", () => {
    const peer = toHex(nodeIdOf(newNodeSecret()));
    const ev = parseEvent("message", { seq: 3, at: 1.5, conn: "c1", peer, type: 16, msg: "00100000", summon: false });
    assert.deepEqual([ev.seq, ev.type, ev.conn, toHex(ev.msg)], [3, 16, "c1", "00100000"]);
    const bad = [
      { seq: 3, conn: "c1", peer, msg: "0010zz" },
      { seq: 3, conn: "c1", peer, msg: "00".repeat(65536) },
      { seq: 3, conn: "c1", peer, msg: "00" },
      { seq: 3, conn: "c1", peer, type: 17, msg: "0010" },
      { seq: 0, conn: "c1", peer, msg: "0010" },
      { seq: 1.5, conn: "c1", peer, msg: "0010" },
      { seq: 3, conn: "x".repeat(1000), peer, msg: "0010" },
      { seq: 3, conn: "c1", peer: "nothex", msg: "0010" },
    ];
    for (const p of bad) assert.throws(() => parseEvent("message", p), ProtocolViolation, JSON.stringify(p).slice(0, 80));
    const closed = parseEvent("closed", { seq: 4, conn: "c1", peer, reason: "peer closed", reconnect: true });
    assert.deepEqual([closed.reason, closed.reconnect], ["peer closed", true]);
  });

  test("errors are typed by code; unknown codes stay ProxyError", () => {
    assert.ok(errorForCode(10, "conflict", { version: 4 }) instanceof VersionConflict);
    assert.equal(errorForCode(10, "c", { version: 4 }).currentVersion, 4);
    assert.equal(errorForCode(9, "elsewhere", { url: "ws://b/" }).url, "ws://b/");
    const e = errorForCode(99, "new");
    assert.equal(e.constructor, ProxyError);
    assert.equal(e.message, "error 99: new");
  });

  test("web storage state round trip", async () => {
    const map = new Map();
    const store = webStorageState({ getItem: (k) => map.get(k) ?? null, setItem: (k, v) => map.set(k, v) });
    assert.equal(await store.load(), null);
    await store.save({ serverId: "02ab", lastSeq: 7 });
    assert.deepEqual(await store.load(), { serverId: "02ab", lastSeq: 7, rehandshake: {} });
    const pending = { "02cd": { address: "[::1]:9735", features: "0200" } };
    await store.save({ serverId: "02ab", lastSeq: 8, rehandshake: pending });
    assert.deepEqual(await store.load(), { serverId: "02ab", lastSeq: 8, rehandshake: pending });
  });
});

// -- a scripted fake proxy ------------------------------------------------------

const servers = [];
after(() => {
  for (const s of servers) {
    for (const ws of s.clients) ws.terminate();
    s.close();
  }
});

/**
 * A fake proxy.  `script.hello(ws)` sends the hello (default: a good one);
 * `script.handle(method, params, ws, session)` returns a result, or
 * `{error: {...}}`, or `undefined` to stay silent.
 */
async function fakeProxy(script = {}) {
  const serverSecret = script.serverSecret ?? newNodeSecret();
  const serverId = toHex(nodeIdOf(serverSecret));
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => wss.once("listening", r));
  servers.push(wss);
  const state = { serverId, connections: 0, requests: [], sockets: [] };
  wss.on("connection", (ws) => {
    state.connections++;
    state.sockets.push(ws);
    const session = { challenge: toHex(new Uint8Array(32).map(() => Math.floor(Math.random() * 256))) };
    const hello = script.hello
      ? script.hello(state, session)
      : { protocol: "lnproxy/1", server_id: serverId, challenge: session.challenge, limits: { max_message: 65535 }, features: [] };
    if (hello !== null) ws.send(JSON.stringify({ jsonrpc: "2.0", method: "hello", params: hello }));
    ws.on("message", async (data) => {
      const req = JSON.parse(String(data));
      state.requests.push(req);
      let result;
      if (req.method === "login" && !script.handleLogin) {
        const ok = verifyDigest(
          fromHex(req.params.signature),
          loginDigest(fromHex(serverId), fromHex(session.challenge)),
          fromHex(req.params.node_id),
        );
        result = ok
          ? { node_id: req.params.node_id, inbox: { next_seq: 1, pending: 0 }, connections: [] }
          : { error: { code: 2, message: "login failed" } };
      } else {
        result = await script.handle?.(req.method, req.params, ws, state);
      }
      if (result === undefined) return;
      const reply = "error" in (result ?? {}) ? { jsonrpc: "2.0", id: req.id, error: result.error } : { jsonrpc: "2.0", id: req.id, result };
      ws.send(JSON.stringify(reply));
      script.after?.(req.method, ws, state);
    });
  });
  state.url = `ws://127.0.0.1:${wss.address().port}/`;
  return state;
}

async function waitFor(fn, ms) {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

function fakeClient(url, opts = {}) {
  const c = new LnproxyClient({
    url,
    nodeSecret: opts.nodeSecret ?? newNodeSecret(),
    WebSocket,
    requestTimeout: opts.requestTimeout ?? 2000,
    backoff: { initial: 20, max: 100 },
    onEvent: opts.onEvent,
    serverId: opts.serverId,
  });
  return c;
}

describe("against a fake proxy", () => {
  test("logs in (the fake checks the signature over its challenge)", async () => {
    const fake = await fakeProxy();
    const c = fakeClient(fake.url);
    c.start();
    const info = await c.whenLoggedIn(3000);
    assert.equal(info.serverId, fake.serverId);
    c.stop();
  });

  test("a hello without a challenge stops the client with a clear error", async () => {
    const fake = await fakeProxy({ hello: (st) => ({ protocol: "lnproxy/1", server_id: st.serverId, limits: {} }) });
    const c = fakeClient(fake.url);
    c.start();
    await assert.rejects(c.whenLoggedIn(3000), /hello without a challenge/);
    assert.equal(c.running, false);
    assert.ok(!fake.requests.some((r) => r.method === "login"), "no login sent");
  });

  test("a non-hex server id stops the client", async () => {
    const fake = await fakeProxy({
      hello: (_st, s) => ({ protocol: "lnproxy/1", server_id: "zz".repeat(33), challenge: s.challenge }),
    });
    const c = fakeClient(fake.url);
    c.start();
    await assert.rejects(c.whenLoggedIn(3000), ProtocolViolation);
  });

  test("a pinned server id that differs is refused before login", async () => {
    const fake = await fakeProxy();
    const c = fakeClient(fake.url, { serverId: toHex(nodeIdOf(newNodeSecret())) });
    c.start();
    await assert.rejects(c.whenLoggedIn(3000), ServerMismatch);
    assert.ok(!fake.requests.some((r) => r.method === "login"));
  });

  test("a refused login stops the client for good (LoginFailed)", async () => {
    const fake = await fakeProxy({ handleLogin: true, handle: () => ({ error: { code: 2, message: "login failed" } }) });
    const c = fakeClient(fake.url);
    const fatal = new Promise((r) => c.on("fatal", r));
    c.start();
    await assert.rejects(c.whenLoggedIn(3000), LoginFailed);
    assert.ok((await fatal) instanceof LoginFailed);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(fake.connections, 1, "no reconnection after a refused login");
    await assert.rejects(c.call("connections"), LoginFailed);
  });

  test("every request has a timeout: a silent proxy gives RequestTimeout", async () => {
    const fake = await fakeProxy({ handle: () => undefined });
    const c = fakeClient(fake.url, { requestTimeout: 300 });
    c.start();
    await c.whenLoggedIn(3000);
    const t0 = Date.now();
    await assert.rejects(c.connections(), (e) => e instanceof RequestTimeout && e.method === "connections");
    assert.ok(Date.now() - t0 < 1500);
    c.stop();
  });

  test("a request waiting for a login fails at its timeout", async () => {
    const fake = await fakeProxy({ hello: () => null }); // never says hello
    const c = fakeClient(fake.url, { requestTimeout: 300 });
    c.start();
    await assert.rejects(c.call("connections"), RequestTimeout);
    c.stop();
    await assert.rejects(c.call("connections"), ClientStopped);
  });

  test("an oversized or non-hex act 2 is refused and the half-made connection disconnected", async () => {
    for (const act2 of ["00".repeat(51), "zz".repeat(50), "00".repeat(100000)]) {
      const fake = await fakeProxy({
        handle: (m) => (m === "connect" ? { conn: "c9", act2 } : m === "disconnect" ? {} : undefined),
      });
      const c = fakeClient(fake.url);
      c.start();
      await c.whenLoggedIn(3000);
      const peer = toHex(nodeIdOf(newNodeSecret()));
      await assert.rejects(c.openPeer(`${peer}@127.0.0.1:9735`), ProtocolViolation);
      assert.ok(fake.requests.some((r) => r.method === "disconnect" && r.params.conn === "c9"));
      assert.ok(!fake.requests.some((r) => r.method === "finish"));
      c.stop();
    }
  });

  test("an act 2 with a bad MAC: HandshakeFailed (local), disconnect sent, no finish", async () => {
    const fake = await fakeProxy({
      handle: (m) => {
        if (m === "connect") {
          const e = nodeIdOf(newNodeSecret());
          return { conn: "c1", act2: "00" + toHex(e) + "07".repeat(16) };
        }
        return m === "disconnect" ? {} : undefined;
      },
    });
    const c = fakeClient(fake.url);
    c.start();
    await c.whenLoggedIn(3000);
    const peer = toHex(nodeIdOf(newNodeSecret()));
    await assert.rejects(
      c.openPeer(`${peer}@127.0.0.1:9735`),
      (e) => e instanceof HandshakeFailed && e.local && /MAC/.test(e.message),
    );
    assert.deepEqual(
      fake.requests.map((r) => r.method),
      ["login", "connect", "disconnect"],
    );
    c.stop();
  });

  test("an act 2 whose key is not a point is refused locally (ACT2_BAD_PUBKEY)", async () => {
    const fake = await fakeProxy({ handle: (m) => (m === "connect" ? { conn: "c1", act2: "00".repeat(50) } : {}) });
    const c = fakeClient(fake.url);
    c.start();
    await c.whenLoggedIn(3000);
    await assert.rejects(
      c.openPeer(`${toHex(nodeIdOf(newNodeSecret()))}@h:1`),
      (e) => e instanceof HandshakeFailed && e.local && e.data.bolt8 === "ACT2_BAD_PUBKEY",
    );
    assert.ok(fake.requests.some((r) => r.method === "disconnect" && r.params.conn === "c1"));
    c.stop();
  });

  test("a malformed event is never handled nor acknowledged; the client reconnects", async () => {
    let sent = 0;
    const fake = await fakeProxy({
      handle: (m) => (m === "ack" ? {} : undefined),
      after: (m, ws) => {
        if (m === "login" && sent++ === 0) {
          ws.send(JSON.stringify({ jsonrpc: "2.0", method: "message", params: { seq: 1, conn: "c", msg: "00zz" } }));
        }
      },
    });
    const handled = [];
    const errors = [];
    const c = fakeClient(fake.url, { onEvent: (e) => void handled.push(e) });
    c.on("error", (e) => errors.push(e));
    c.start();
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(handled.length, 0);
    assert.ok(!fake.requests.some((r) => r.method === "ack"));
    assert.ok(errors.some((e) => e instanceof ProtocolViolation));
    assert.ok(fake.connections >= 2, "reconnected");
    c.stop();
  });

  test("a frame that is not JSON drops the session; the client reconnects", async () => {
    let n = 0;
    const fake = await fakeProxy({ after: (m, ws) => m === "login" && n++ === 0 && ws.send("not json{") });
    const c = fakeClient(fake.url);
    const errors = [];
    c.on("error", (e) => errors.push(e));
    c.start();
    try {
      const until = Date.now() + 3000;
      while (!(fake.connections === 2 && c.loggedIn) && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(fake.connections, 2);
      assert.ok(c.loggedIn);
      assert.ok(errors.some((e) => /not JSON/.test(e.message)), errors.map(String).join("; "));
    } finally {
      c.stop();
    }
  });

  test("reconnects with backoff after the proxy closes, and logs in again", async () => {
    const fake = await fakeProxy({
      hello: (st, s) => {
        if (st.connections <= 3) {
          setTimeout(() => st.sockets.at(-1).close(1011), 5);
          return null;
        }
        return { protocol: "lnproxy/1", server_id: st.serverId, challenge: s.challenge };
      },
    });
    const c = fakeClient(fake.url);
    const t0 = Date.now();
    c.start();
    await c.whenLoggedIn(5000);
    assert.equal(fake.connections, 4);
    // Delays of 20, 40, 80 ms with equal jitter: at least 70 ms in all.
    assert.ok(Date.now() - t0 >= 70);
    c.stop();
  });

  test("code 9 with a URL: the client logs in at the owner", async () => {
    const serverSecret = newNodeSecret(); // one deployment, one server id
    const owner = await fakeProxy({ serverSecret });
    const other = await fakeProxy({
      serverSecret,
      handleLogin: true,
      handle: () => ({ error: { code: 9, message: "served elsewhere", data: { url: owner.url } } }),
    });
    const c = fakeClient(other.url);
    c.start();
    const info = await c.whenLoggedIn(3000);
    assert.equal(info.serverId, owner.serverId);
    assert.equal(owner.connections, 1);
    c.stop();
  });

  test("code 9 to a process with another server id: refused (ServerMismatch)", async () => {
    const owner = await fakeProxy(); // a server id of its own
    const other = await fakeProxy({
      handleLogin: true,
      handle: () => ({ error: { code: 9, message: "served elsewhere", data: { url: owner.url } } }),
    });
    const c = fakeClient(other.url);
    c.start();
    await assert.rejects(c.whenLoggedIn(3000), (e) => e.name === "ServerMismatch");
    c.stop();
  });

  test("the owner dies: the client comes back through the configured URL", async () => {
    const serverSecret = newNodeSecret();
    const owner = await fakeProxy({ serverSecret });
    let ownerAlive = true;
    const configured = await fakeProxy({
      serverSecret,
      handleLogin: true,
      handle: (m, p) =>
        m === "login" && ownerAlive
          ? { error: { code: 9, message: "served elsewhere", data: { url: owner.url } } }
          : m === "login"
            ? { node_id: p.node_id, inbox: { next_seq: 1, pending: 0 }, connections: [] }
            : {},
    });
    const c = fakeClient(configured.url);
    c.start();
    await c.whenLoggedIn(3000);
    assert.equal(owner.connections, 1);
    // The owner's process dies: its socket and its listener go.
    ownerAlive = false;
    const ownerServer = servers.find((w) => owner.url.endsWith(`:${w.address().port}/`));
    for (const ws of owner.sockets) ws.terminate();
    await new Promise((r) => ownerServer.close(r));
    await waitFor(() => c.loginInfo && configured.connections >= 2, 5000);
    assert.equal(owner.connections, 1, "the dead owner is not retried forever");
    c.stop();
  });

  test("a redirect loop is cut after MAX_REDIRECTS and retried with backoff", async () => {
    const serverSecret = newNodeSecret();
    let bUrl = "";
    const redirect = (url) => ({ error: { code: 9, message: "elsewhere", data: { url } } });
    const a = await fakeProxy({ serverSecret, handleLogin: true, handle: () => redirect(bUrl) });
    const b = await fakeProxy({ serverSecret, handleLogin: true, handle: () => redirect(a.url) });
    bUrl = b.url;
    const c = fakeClient(a.url);
    const errors = [];
    c.on("error", (e) => errors.push(e));
    c.start();
    await new Promise((r) => setTimeout(r, 400));
    c.stop();
    // Cut after 3 redirects in a row, then back to the configured URL
    // after a backoff (20-100 ms here): a few rounds, not a tight loop.
    assert.ok(errors.some((e) => e.name === "ServedElsewhere"), "the cut is reported");
    const hops = a.connections + b.connections;
    assert.ok(hops >= 4 && hops <= 40, `connections in 400 ms: ${hops}`);
  });

  test("stop() fails what waits and closes the socket", async () => {
    const fake = await fakeProxy({ handle: () => undefined });
    const c = fakeClient(fake.url, { requestTimeout: 5000 });
    c.start();
    await c.whenLoggedIn(3000);
    const p = c.connections();
    c.stop();
    await assert.rejects(p, (e) => e.name === "ConnectionLost" || e instanceof ClientStopped);
  });

  test("Node 20 without a global WebSocket: the client finds the `ws` package itself", async () => {
    const fake = await fakeProxy();
    const c = new LnproxyClient({ url: fake.url, nodeSecret: newNodeSecret(), requestTimeout: 2000 });
    c.start();
    await c.whenLoggedIn(3000);
    c.stop();
  });

  test("lease, vault and webhook methods: params out, checked results in, typed errors", async () => {
    const vault = new Map();
    const fake = await fakeProxy({
      handle: (m, p) => {
        switch (m) {
          case "lease.acquire":
            return p.force ? { writer: true } : { error: { code: 11, message: "lease held" } };
          case "lease.release":
            return {};
          case "vault.put": {
            const cur = vault.get(p.name)?.version ?? 0;
            if (p.version !== cur) return { error: { code: 10, message: "conflict", data: { version: cur } } };
            vault.set(p.name, { version: cur + 1, blob: p.blob });
            return { version: cur + 1 };
          }
          case "vault.get":
            return vault.get(p.name) ?? { version: 0, blob: null };
          case "vault.list":
            return { entries: [...vault].map(([name, e]) => ({ name, version: e.version, size: e.blob.length / 2 })) };
          case "vault.remove":
            vault.delete(p.name);
            return {};
          case "webhook.set":
            return { id: "w1" };
          case "webhook.list":
            return { webhooks: [{ id: "w1", url: "https://push.example/x" }] };
          case "webhook.remove":
            return p.id === "w1" ? {} : { error: { code: 3, message: "unknown webhook" } };
          default:
            return { error: { code: -32601, message: "unknown method" } };
        }
      },
    });
    const c = fakeClient(fake.url);
    c.start();
    await c.whenLoggedIn(3000);
    await assert.rejects(c.leaseAcquire(), (e) => e.code === 11 && e.name === "LeaseHeld");
    assert.equal(await c.leaseAcquire(true), true);
    await c.leaseRelease();
    assert.equal(await c.vaultPut("backup.1", fromHex("c0ffee"), 0), 1);
    await assert.rejects(c.vaultPut("backup.1", fromHex("00"), 0), (e) => e instanceof VersionConflict && e.currentVersion === 1);
    assert.deepEqual(await c.vaultGet("backup.1"), { version: 1, blob: fromHex("c0ffee") });
    assert.deepEqual(await c.vaultGet("nothing"), { version: 0, blob: null });
    assert.deepEqual(await c.vaultList(), [{ name: "backup.1", version: 1, size: 3 }]);
    await c.vaultRemove("backup.1", 1);
    assert.equal(await c.webhookSet("https://push.example/x"), "w1");
    assert.deepEqual(await c.webhookList(), [{ id: "w1", url: "https://push.example/x" }]);
    await c.webhookRemove("w1");
    await assert.rejects(c.webhookRemove("w2"), (e) => e.code === 3);
    const sent = fake.requests.find((r) => r.method === "vault.put");
    assert.deepEqual(sent.params, { name: "backup.1", blob: "c0ffee", version: 0 });
    c.stop();
  });

  test("account.set then restoreFromAccount: the node key comes back, the proxy never sees the password", async () => {
    const accounts = new Map();
    const fake = await fakeProxy({
      handle: (m, p, _ws, st) => {
        if (m === "account.set") {
          accounts.set(p.user, { auth: p.auth, blob: p.blob, node: st.loggedIn });
          return {};
        }
        if (m === "account.login") {
          const a = accounts.get(p.user);
          return a && a.auth === p.auth ? { node_id: a.node, blob: a.blob } : { error: { code: 2, message: "login failed" } };
        }
        return undefined;
      },
      after: (m, _ws, st) => {
        if (m === "login") st.loggedIn = st.requests.findLast((r) => r.method === "login").params.node_id;
      },
    });
    const secret = newNodeSecret();
    const c = fakeClient(fake.url, { nodeSecret: secret, requestTimeout: 20_000 });
    c.start();
    await c.whenLoggedIn(3000);
    await c.accountSet("alice", "correct horse");
    c.stop();
    const set = fake.requests.find((r) => r.method === "account.set").params;
    assert.equal(set.auth.length, 64);
    assert.equal(set.blob.length, 2 * 60);
    assert.ok(!JSON.stringify(fake.requests).includes("correct horse"));
    assert.ok(!JSON.stringify(fake.requests).includes(toHex(secret)));
    const restored = await restoreFromAccount(fake.url, "alice", "correct horse", { WebSocket, timeout: 20_000 });
    assert.equal(toHex(restored), toHex(secret));
    await assert.rejects(restoreFromAccount(fake.url, "alice", "wrong", { WebSocket, timeout: 20_000 }), LoginFailed);
  });

  test("events: once, in seq order, replays acked not redelivered, a failing store retried", async () => {
    const peer = toHex(nodeIdOf(newNodeSecret()));
    const ev = (seq) => JSON.stringify({ jsonrpc: "2.0", method: "message", params: { seq, at: 1, conn: "c", peer, type: 1, msg: "0001" } });
    const fake = await fakeProxy({
      handle: (m) => (m === "ack" ? {} : undefined),
      // 1, 2, then 1 and 2 again (a replay), then 3.
      after: (m, ws) => m === "login" && [1, 2, 1, 2, 3].forEach((n) => ws.send(ev(n))),
    });
    let fails = 1;
    const saved = [];
    const store = {
      load: () => null,
      save: (st) => {
        if (st.lastSeq === 2 && fails-- > 0) throw new Error("disk full");
        saved.push(st.lastSeq);
      },
    };
    const handled = [];
    const c = new LnproxyClient({
      url: fake.url,
      nodeSecret: newNodeSecret(),
      WebSocket,
      state: store,
      backoff: { initial: 20, max: 100 },
      onEvent: (e) => void handled.push(e.seq),
    });
    c.start();
    await c.whenLoggedIn(3000);
    const until = Date.now() + 3000;
    while (c.lastSeq < 3 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(handled, [1, 2, 3]);
    assert.deepEqual(saved.filter((n) => n > 0), [1, 2, 3]);
    const acks = fake.requests.filter((r) => r.method === "ack").map((r) => r.params.seq);
    assert.equal(acks.at(-1), 3);
    assert.deepEqual(acks, [...acks].sort((a, b) => a - b), "acks never go backwards");
    c.stop();
  });

  test("a proxy that closes right after its hello: the client tries again", async () => {
    const fake = await fakeProxy({
      hello: (st, s) => {
        const h = { protocol: "lnproxy/1", server_id: st.serverId, challenge: s.challenge };
        if (st.connections <= 2) {
          const ws = st.sockets.at(-1);
          ws.send(JSON.stringify({ jsonrpc: "2.0", method: "hello", params: h }));
          ws.close(1012);
          return null;
        }
        return h;
      },
    });
    const c = fakeClient(fake.url);
    c.start();
    await c.whenLoggedIn(5000);
    assert.equal(fake.connections, 3);
    c.stop();
  });

  test("pending re-handshakes in the state resume after a restart (skipped if another device did it)", async () => {
    const peer = toHex(nodeIdOf(newNodeSecret()));
    const fake = await fakeProxy({
      handle: (m) =>
        m === "connections"
          ? { connections: [{ conn: "c7", peer, address: "127.0.0.1:9", state: "open", persist: true, since: 1, their_init: null }] }
          : undefined,
    });
    let saved = null;
    const store = {
      load: () => ({ serverId: fake.serverId, lastSeq: 4, rehandshake: { [peer]: { address: "127.0.0.1:9", features: "" } } }),
      save: (st) => void (saved = st),
    };
    const c = new LnproxyClient({ url: fake.url, nodeSecret: newNodeSecret(), WebSocket, state: store });
    c.start();
    await c.whenLoggedIn(3000);
    const until = Date.now() + 3000;
    while (saved === null && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(saved, { serverId: fake.serverId, lastSeq: 4, rehandshake: {} });
    assert.ok(fake.requests.some((r) => r.method === "connections"));
    assert.ok(!fake.requests.some((r) => r.method === "connect"), "no second connection");
    c.stop();
  });
});
