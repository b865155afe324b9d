// The demo page in a real browser: Debian's Chromium, headless, driven by
// playwright-core.  It clicks through the flow (generate a key, log in,
// connect to the local peer, ask the peer to send a message, ping) and checks
// what the page shows against what the peer received and sent.  A
// screenshot is saved (path printed; not committed).
//
//   CHROMIUM=/usr/bin/chromium node --test test/browser/
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { startDemo, warning } from "../../demo/serve.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOT = resolve(process.env.LNPROXY_ARTIFACTS ?? join(HERE, "..", "..", "artifacts"), "demo.png");

let demo;
let context;
let profile;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM} (apt-get install chromium)`);
  demo = await startDemo();
  profile = mkdtempSync(join(tmpdir(), "lnproxy-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
    viewport: { width: 1280, height: 900 },
  });
});

after(async () => {
  await context?.close();
  await demo?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test("the demo page logs in, connects, and shows what the peer sent", { timeout: 90_000 }, async () => {
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(demo.url);
  await page.waitForSelector("body[data-ready='1']");
  assert.equal(await page.inputValue("#url"), demo.proxy.url);

  // A key, and the node id shown for it.
  await page.click("#generate");
  const nodeId = (await page.textContent("#node-id")).trim();
  assert.match(nodeId, /^0[23][0-9a-f]{64}$/);

  // Log in.
  await page.click("#login");
  await page.waitForSelector("#status.ok", { timeout: 15_000 });
  assert.equal(await page.textContent("#status"), "logged in");
  assert.match(await page.textContent("#server-id"), /^0[23][0-9a-f]{64}$/);

  // Connect: the peer sees this node's id and its init.
  await page.click("#connect");
  const open = await demo.peer.waitFor((e) => e.event === "open");
  assert.equal(open.remote, nodeId, "the peer's initiator is the page's node");
  const ourInit = await demo.peer.waitFor((e) => e.event === "received" && e.type === 16);
  assert.equal(ourInit.msg, "001000000000");

  // The peer's init arrives as event seq 1, bytes as the peer sent them.
  const initRow = page.locator("#events tbody tr[data-type='16']");
  await initRow.waitFor({ timeout: 10_000 });
  assert.equal(await initRow.getAttribute("data-msg"), "0010" + "0000" + "0002" + "0200");
  assert.equal(await initRow.getAttribute("data-seq"), "1");

  // The connection list shows it open, with the peer's init.
  const connRow = page.locator("#connections tbody tr[data-state='open']");
  await connRow.waitFor({ timeout: 10_000 });
  assert.match(await connRow.textContent(), /0010000000020200/);

  // A message sent by the peer shows up, decoded.
  const text = "hello from the peer, at " + Date.now();
  await page.fill("#peer-text", text);
  await page.click("#peer-send");
  const sent = await demo.peer.waitFor((e) => e.event === "sent" && e.msg === warning(text));
  const warnRow = page.locator("#events tbody tr[data-type='1']");
  await warnRow.waitFor({ timeout: 10_000 });
  assert.equal(await warnRow.getAttribute("data-msg"), sent.msg);
  assert.match(await warnRow.textContent(), new RegExp(text));

  // A ping from the page reaches the peer, and the peer's pong comes back
  // as an event (the proxy passes on the pong of the client's own ping).
  await page.click("#ping");
  const ping = await demo.peer.waitFor((e) => e.event === "received" && e.type === 18);
  assert.equal(ping.msg, "001200040000");
  const pongRow = page.locator("#events tbody tr[data-type='19']");
  await pongRow.waitFor({ timeout: 10_000 });
  assert.equal(await pongRow.getAttribute("data-msg"), "0013" + "0004" + "00000000");

  // Inbox: every event (init, warning, pong) handled and acknowledged.
  await page.waitForFunction(() => /3 handled · acknowledged up to seq 3/.test(document.getElementById("inbox").textContent), null, { timeout: 10_000 });
  assert.equal(await page.textContent("#event-count"), String(await page.locator("#events tbody tr").count()));

  mkdirSync(dirname(SHOT), { recursive: true });
  await page.screenshot({ path: SHOT, fullPage: true });
  console.log(`screenshot: ${SHOT}`);
  assert.deepEqual(errors, []);
});
