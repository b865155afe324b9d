// The demo: starts `twistd -n lnproxy`, the local BOLT 8 peer and a static
// HTTP server for the page, all on 127.0.0.1, and prints the page's URL.
//
//   node demo/serve.mjs [--port 8080]      (or: npm run demo)
//
// The page is plain static files (index.html, app.js, style.css and the
// bundled client); any static server will do.  This one also answers
// GET /demo-config (where the proxy and peer are) and POST /peer/send (the
// local peer sends the body as a BOLT 1 warning), which only the demo has.
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { startPeer, startProxy } from "../test/support/harness.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css" };
const FILES = new Set(["index.html", "app.js", "style.css", "lnproxy-client.js"]);

/** A BOLT 1 warning (type 1), all channels, with `text`. */
export function warning(text) {
  const data = Buffer.from(text, "utf8").subarray(0, 1000);
  const head = Buffer.alloc(36);
  head.writeUInt16BE(1, 0);
  head.writeUInt16BE(data.length, 34);
  return Buffer.concat([head, data]).toString("hex");
}

/**
 * Start everything.
 * @returns {{url, proxy, peer, close(): Promise<void>}}
 */
export async function startDemo({ port = 0 } = {}) {
  const [proxy, peer] = await Promise.all([startProxy(), startPeer({ args: ["--features", "0200"] })]);
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path === "/demo-config") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ proxyUrl: proxy.url, peer: peer.address }));
      return;
    }
    if (path === "/peer/send" && req.method === "POST") {
      let body = "";
      for await (const chunk of req) body += chunk;
      peer.command({ send: warning(body || "hello") });
      res.writeHead(204).end();
      return;
    }
    const name = path === "/" ? "index.html" : normalize(path).replace(/^\/+/, "");
    if (!FILES.has(name)) {
      res.writeHead(404).end("not found");
      return;
    }
    try {
      const body = await readFile(join(HERE, name));
      res.writeHead(200, { "content-type": TYPES[extname(name)] ?? "application/octet-stream", "cache-control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404).end("not built: run npm run build");
    }
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}/`;
  return {
    url,
    proxy,
    peer,
    async close() {
      server.closeAllConnections?.();
      await new Promise((r) => server.close(r));
      await peer.stop();
      await proxy.cleanup();
    },
  };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf("--port");
  const demo = await startDemo({ port: i > 0 ? Number(process.argv[i + 1]) : 8080 });
  console.log(`proxy:  ${demo.proxy.url}`);
  console.log(`peer:   ${demo.peer.address}`);
  console.log(`open ${demo.url} (Ctrl-C stops everything)`);
  const stop = async () => {
    await demo.close();
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
