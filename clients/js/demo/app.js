// The demo page: a Lightning node in the browser through lnproxy.
// Uses only the bundled client (lnproxy-client.js, built by `npm run build`).
import {
  LnproxyClient,
  fromHex,
  isNodeSecret,
  newNodeSecret,
  nodeIdOf,
  toHex,
} from "./lnproxy-client.js";

const $ = (id) => document.getElementById(id);
const TYPES = { 1: "warning", 16: "init", 17: "error", 18: "ping", 19: "pong" };

let client = null;
let link = null;
let handled = 0;
let pendingAtLogin = 0;

function log(text, bad = false) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (bad) li.className = "bad";
  $("log").prepend(li);
}

function setStatus(text, cls = "") {
  $("status").textContent = text;
  $("status").className = cls;
}

function short(hex, n = 48) {
  return hex.length > n ? `${hex.slice(0, n)}… (${hex.length / 2} bytes)` : hex;
}

/** A warning or error (BOLT 1): channel_id (32), u16 length, text. */
function describe(ev) {
  const msg = ev.msg;
  if (!msg) return ev.kind === "closed" ? `${ev.reason}${ev.reconnect ? " (reconnect)" : ""}` : "";
  if ((ev.type === 1 || ev.type === 17) && msg.length >= 36) {
    const n = (msg[34] << 8) | msg[35];
    return `“${new TextDecoder().decode(msg.subarray(36, 36 + n))}”`;
  }
  return short(toHex(msg));
}

function showInbox() {
  $("inbox").textContent = client?.loginInfo
    ? `${pendingAtLogin} pending at login · ${handled} handled · acknowledged up to seq ${client.lastSeq}`
    : "–";
}

function addEvent(ev) {
  const tr = document.createElement("tr");
  tr.dataset.seq = String(ev.seq);
  tr.dataset.type = ev.type === undefined ? "" : String(ev.type);
  tr.dataset.msg = ev.msg ? toHex(ev.msg) : "";
  for (const text of [
    String(ev.seq),
    ev.kind,
    ev.type === undefined ? "" : `${ev.type} ${TYPES[ev.type] ?? ""}`.trim(),
    describe(ev),
  ]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  $("events").querySelector("tbody").append(tr);
  $("event-count").textContent = String($("events").querySelectorAll("tbody tr").length);
}

async function refreshConnections() {
  if (!client?.loggedIn) return;
  let conns;
  try {
    conns = await client.connections();
  } catch (e) {
    log(`connections: ${e.message}`, true);
    return;
  }
  const body = $("connections").querySelector("tbody");
  body.replaceChildren();
  for (const c of conns) {
    const tr = document.createElement("tr");
    tr.dataset.conn = c.conn;
    tr.dataset.state = c.state;
    for (const text of [c.conn, `${c.peer.slice(0, 16)}…`, c.address, c.state, c.theirInit ? toHex(c.theirInit) : "–"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  }
}

function enable(loggedIn) {
  $("login").disabled = loggedIn;
  $("logout").disabled = !loggedIn;
  $("connect").disabled = !loggedIn;
  $("ping").disabled = !(loggedIn && link);
  $("disconnect").disabled = !(loggedIn && link);
  $("peer-send").disabled = !(loggedIn && link);
}

$("generate").onclick = () => {
  $("secret").value = toHex(newNodeSecret());
  $("secret").dispatchEvent(new Event("input"));
};

$("secret").oninput = () => {
  try {
    const s = fromHex($("secret").value.trim());
    $("node-id").textContent = isNodeSecret(s) ? toHex(nodeIdOf(s)) : "not a valid key";
  } catch {
    $("node-id").textContent = "not a valid key";
  }
};

$("login").onclick = async () => {
  let secret;
  try {
    secret = fromHex($("secret").value.trim());
    if (!isNodeSecret(secret)) throw new Error("not a valid secp256k1 secret key");
  } catch (e) {
    setStatus(`node key: ${e.message}`, "bad");
    return;
  }
  try {
    client = new LnproxyClient({
      url: $("url").value.trim(),
      nodeSecret: secret,
      serverId: $("pin").value.trim() || undefined,
      onEvent: async (ev) => {
        handled += 1;
        addEvent(ev);
        showInbox();
        if (ev.kind === "closed" || ev.type === 16) await refreshConnections();
      },
    });
  } catch (e) {
    setStatus(e.message, "bad");
    return;
  }
  handled = 0;
  client.on("handled", showInbox);
  client.on("login", (info) => {
    pendingAtLogin = info.pending;
    setStatus("logged in", "ok");
    $("server-id").textContent = info.serverId;
    showInbox();
    enable(true);
    log(`logged in: next seq ${info.nextSeq}, ${info.pending} pending, ${info.connections.length} connections`);
    void refreshConnections();
  });
  client.on("disconnect", (why) => {
    setStatus(`reconnecting (${why})`);
    enable(false);
    $("login").disabled = true;
    $("logout").disabled = false;
  });
  client.on("fatal", (e) => {
    setStatus(e.message, "bad");
    log(e.message, true);
    enable(false);
  });
  client.on("handshake", (h) => {
    $("handshake").textContent = `handshake: ${h.step}${h.conn ? ` (${h.conn})` : ""}`;
  });
  setStatus("connecting…");
  $("login").disabled = true;
  client.start();
  document.body.dataset.node = client.nodeId;
};

$("logout").onclick = () => {
  client?.stop();
  client = null;
  link = null;
  setStatus("not connected");
  enable(false);
};

$("connect").onclick = async () => {
  $("connect").disabled = true;
  try {
    link = await client.openPeer($("peer").value.trim());
    log(`connected to ${link.peer.slice(0, 16)}… as ${link.conn}; init sent`);
    $("handshake").textContent = `open: ${link.conn}`;
  } catch (e) {
    log(`connect: ${e.message}`, true);
    $("handshake").textContent = e.message;
  }
  enable(true);
  await refreshConnections();
};

$("ping").onclick = async () => {
  try {
    await link.send(fromHex("0012" + "0004" + "0000")); // ping: 4 pong bytes, no padding
    log("ping sent");
  } catch (e) {
    log(`ping: ${e.message}`, true);
  }
};

$("disconnect").onclick = async () => {
  try {
    await link.disconnect();
    log(`disconnected ${link.conn}`);
    link = null;
  } catch (e) {
    log(`disconnect: ${e.message}`, true);
  }
  enable(true);
  await refreshConnections();
};

$("peer-send").onclick = async () => {
  const r = await fetch("/peer/send", { method: "POST", body: $("peer-text").value });
  log(r.ok ? "asked the local peer to send a warning" : `peer: ${await r.text()}`, !r.ok);
};

// The demo server tells where the proxy and the local peer are.
try {
  const r = await fetch("/demo-config");
  if (r.ok) {
    const cfg = await r.json();
    $("url").value = cfg.proxyUrl;
    $("peer").value = cfg.peer;
    $("peer-control").hidden = false;
  }
} catch {
  /* served elsewhere: fill the fields by hand */
}
document.body.dataset.ready = "1";
