// Events per second received by the JavaScript client through the proxy,
// against the Python reference client (lnproxy.client) in the same run, and
// the browser bundle's size.
//
//   node bench/events.mjs [--count 5000] [--rounds 3]     (or: npm run bench)
//       [--compare-python DIR]
//
// --compare-python DIR also measures the Python client of another checkout
// (DIR is its repository root, e.g. `git worktree add DIR main`) in the
// same run, against the same proxy, to compare two versions of it.
//
// One `twistd -n lnproxy` and the local peer (test/support/peer.py) on
// 127.0.0.1.  For each client in turn: log in, open the peer, then the peer
// sends COUNT messages (type 32769, 32 bytes) at once; the figure is COUNT
// divided by the time from the burst command to the last event handled
// (each event is handed to the application in seq order, recorded and
// acknowledged, as a real wallet would).  The best of ROUNDS is kept for
// each client.  Python: see test/support/harness.mjs.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

import { LnproxyClient, newNodeSecret } from "../dist/index.js";
import { nodeWebSocket, python, startPeer, startProxy } from "../test/support/harness.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const argText = (name) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const COUNT = arg("count", 5000);
const OTHER_PY = argText("compare-python");
const ROUNDS = arg("rounds", 3);
const MSG = "8001" + "ab".repeat(30); // 32 bytes, odd unknown type: queue class

async function jsRound(proxy, peer, WS) {
  let got = 0;
  let resolveDone;
  const done = new Promise((r) => (resolveDone = r));
  let t0 = 0;
  let sawInit;
  const init = new Promise((r) => (sawInit = r));
  const client = new LnproxyClient({
    url: proxy.url,
    nodeSecret: newNodeSecret(),
    WebSocket: WS,
    onEvent: (e) => {
      if (e.type === 16) sawInit();
      if (e.type !== 0x8001) return;
      got += 1;
      if (got === COUNT) resolveDone(performance.now());
    },
  });
  client.start();
  await client.whenLoggedIn(10_000);
  const link = await client.openPeer(peer.address);
  await init;
  t0 = performance.now();
  peer.command({ burst: MSG, count: COUNT });
  const t1 = await done;
  await new Promise((r) => setTimeout(r, 200));
  await link.disconnect();
  client.stop();
  return COUNT / ((t1 - t0) / 1000);
}

async function pyRound(proxy, peer, root = join(HERE, "..", "..", "..")) {
  const script = join(root, "clients", "js", "bench", "py_events.py");
  const child = spawn(python(), [script, proxy.url, peer.address, String(COUNT)], {
    env: { ...process.env, PYTHONPATH: root },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  let t0 = 0;
  const result = await new Promise((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`py_events.py exited with ${code}`)));
    lines.on("line", (line) => {
      const o = JSON.parse(line);
      if (o.ready) {
        t0 = performance.now();
        peer.command({ burst: MSG, count: COUNT });
      } else if (o.done !== undefined) {
        // The script's own clock for the span of arrivals, plus the delay
        // from the command to the first event seen from here.
        resolve({ t1: performance.now(), span: o.last_at - o.first_at, tail: o.now - o.last_at });
      }
    });
  });
  await new Promise((r) => child.once("exit", r));
  // Time from the burst command to the last event, as for JS: subtract the
  // 0.2 s the script waits after the last event before it reports.
  const elapsed = (result.t1 - t0) / 1000 - result.tail;
  return COUNT / elapsed;
}

const WS = await nodeWebSocket();
const [proxy, peer] = await Promise.all([startProxy(), startPeer()]);
try {
  const js = [];
  const py = [];
  const other = [];
  for (let i = 0; i < ROUNDS; i++) {
    js.push(await jsRound(proxy, peer, WS));
    py.push(await pyRound(proxy, peer));
    if (OTHER_PY) other.push(await pyRound(proxy, peer, resolve(OTHER_PY)));
  }
  const best = (xs) => Math.max(...xs);
  const fmt = (x) => `${Math.round(x)}`;
  console.log(`events: ${COUNT} per round, ${ROUNDS} rounds, node ${process.version}, python ${python()}`);
  console.log(`JS client:     ${js.map(fmt).join(", ")} events/s (best ${fmt(best(js))})`);
  console.log(`Python client: ${py.map(fmt).join(", ")} events/s (best ${fmt(best(py))})`);
  if (OTHER_PY) {
    console.log(`Python client of ${OTHER_PY}: ${other.map(fmt).join(", ")} events/s (best ${fmt(best(other))})`);
  }
  console.log(`ratio JS/Python (best): ${(best(js) / best(py)).toFixed(2)}`);
} finally {
  await peer.stop();
  await proxy.cleanup();
}

try {
  const code = readFileSync(join(HERE, "..", "dist", "lnproxy-client.min.js"));
  const gz = gzipSync(code, { level: 9 }).length;
  console.log(`bundle: ${(code.length / 1024).toFixed(1)} KiB minified, ${(gz / 1024).toFixed(1)} KiB minified+gzipped (target < 40 KiB)`);
} catch {
  console.log("bundle: not built (npm run build)");
}
