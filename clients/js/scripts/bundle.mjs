// Bundle the client for browsers (one ESM file, minified) and report its
// size minified and gzipped.  Output: dist/lnproxy-client.min.js and a copy
// for the demo page (demo/lnproxy-client.js).
import { copyFileSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "dist", "lnproxy-client.min.js");
await build({
  entryPoints: [join(root, "src", "index.ts")],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: false,
  // Node without a global WebSocket loads `ws`; browsers never do.
  external: ["ws"],
  outfile: out,
  logLevel: "warning",
});
copyFileSync(out, join(root, "demo", "lnproxy-client.js"));
const code = readFileSync(out);
const gz = gzipSync(code, { level: 9 }).length;
console.log(
  `bundle: ${out} ${(code.length / 1024).toFixed(1)} KiB minified, ` +
    `${(gz / 1024).toFixed(1)} KiB minified+gzipped`,
);
