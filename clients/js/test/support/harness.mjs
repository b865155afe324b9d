// Real parts for the end-to-end tests, the demo and the benchmark: a
// `twistd -n lnproxy` process and the local BOLT 8 peer (peer.py), both on
// 127.0.0.1, started with the project's Python.
//
// Python: $LNPROXY_PYTHON if set, else the tox environment's
// (<repo>/.tox/py3/bin/python, which CI has after tox), else `python3`.
// The repository root is put on PYTHONPATH, so a clone works uninstalled
// as long as that Python has the project's dependencies.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

/** The Python that runs the proxy and the peer. */
export function python() {
  if (process.env.LNPROXY_PYTHON) return process.env.LNPROXY_PYTHON;
  const tox = join(REPO, ".tox", "py3", "bin", "python");
  return existsSync(tox) ? tox : "python3";
}

const HINT =
  "set LNPROXY_PYTHON to a Python with the project's dependencies, e.g. .tox/py3/bin/python after tox";

function pyEnv() {
  const sep = process.platform === "win32" ? ";" : ":";
  const pp = process.env.PYTHONPATH ? REPO + sep + process.env.PYTHONPATH : REPO;
  return { ...process.env, PYTHONPATH: pp, PYTHONUNBUFFERED: "1" };
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function canConnect(port) {
  return new Promise((res) => {
    const c = tcpConnect({ port, host: "127.0.0.1" });
    c.once("connect", () => {
      c.destroy();
      res(true);
    });
    c.once("error", () => res(false));
  });
}

const TWISTD =
  "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())";

/**
 * Start `twistd -n lnproxy` on a free port with a fresh data dir.
 *
 * @returns {{url, port, dataDir, log(): string, stop(): Promise<number>,
 *   restart(): Promise<void>, cleanup(): Promise<void>}}
 */
export async function startProxy({ args = [], dataDir } = {}) {
  const port = await freePort();
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), "lnproxy-js-"));
  let out = "";
  let child;
  let exited;
  const launch = async () => {
    child = spawn(
      python(),
      ["-c", TWISTD, "-n", "--pidfile=", "lnproxy", "--listen", `tcp:${port}:interface=127.0.0.1`,
        "--data-dir", dir, ...args],
      { env: pyEnv(), cwd: dir, stdio: ["ignore", "pipe", "pipe"] },
    );
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    exited = new Promise((r) => child.once("exit", (code, sig) => r(code ?? sig)));
    const until = Date.now() + 30_000;
    while (!(await canConnect(port))) {
      if (child.exitCode !== null || Date.now() > until) {
        throw new Error(`twistd lnproxy did not start (python: ${python()}; ${HINT}):\n${out}`);
      }
      await sleep(50);
    }
  };
  await launch();
  const proxy = {
    url: `ws://127.0.0.1:${port}/`,
    port,
    dataDir: dir,
    log: () => out,
    /** SIGTERM and wait: a clean stop. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
    /** Stop and start again on the same port and data dir. */
    async restart() {
      await proxy.stop();
      await launch();
    },
    async cleanup() {
      await proxy.stop();
      if (!dataDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return proxy;
}

/**
 * Start the local BOLT 8 peer (test/support/peer.py).
 *
 * @returns {{nodeId, port, address, events: object[], waitFor(pred, ms),
 *   command(obj), stop()}}
 */
export async function startPeer({ args = [] } = {}) {
  const script = join(REPO, "clients", "js", "test", "support", "peer.py");
  const child = spawn(python(), [script, ...args], {
    env: pyEnv(),
    stdio: ["pipe", "pipe", "pipe"],
  });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const events = [];
  const waiters = [];
  const lines = createInterface({ input: child.stdout });
  const first = new Promise((res, rej) => {
    child.once("exit", (code) => rej(new Error(`peer.py exited with ${code} (python: ${python()}; ${HINT}):\n${err}`)));
    lines.on("line", (line) => {
      let obj;
      try {
        obj = JSON.parse(line);
      } catch {
        return;
      }
      if (obj.node_id) {
        res(obj);
        return;
      }
      events.push(obj);
      for (const w of [...waiters]) {
        if (w.pred(obj)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(obj);
        }
      }
    });
  });
  const hello = await first;
  return {
    nodeId: hello.node_id,
    port: hello.port,
    address: `${hello.node_id}@127.0.0.1:${hello.port}`,
    events,
    stderr: () => err,
    /** The first event (already seen or coming) for which pred is true. */
    waitFor(pred, ms = 10_000) {
      const seen = events.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve };
        waiters.push(w);
        setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) {
            waiters.splice(i, 1);
            reject(new Error(`peer: no matching event within ${ms} ms; saw ${JSON.stringify(events)}`));
          }
        }, ms);
      });
    },
    command(obj) {
      child.stdin.write(JSON.stringify(obj) + "\n");
    },
    async stop() {
      if (child.exitCode !== null) return;
      const done = new Promise((r) => child.once("exit", r));
      child.stdin.end();
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await done;
      clearTimeout(t);
    },
  };
}

/** The WebSocket for Node: the global one (Node 22+) or `ws`'s. */
export async function nodeWebSocket() {
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  return (await import("ws")).WebSocket;
}

/** Poll `fn` until it returns a truthy value. */
export async function eventually(fn, ms = 10_000, what = "condition") {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
