// BOLT 8 test vectors (tests/vectors/bolt8_vectors.json, the same file the
// Python tests read) against the package's initiator, plus the transport
// message vectors against its key schedule (hkdf2, nonce96).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { chacha20poly1305 } from "@noble/ciphers/chacha.js";

import { Bolt8Error, Initiator, fromHex, hkdf2, nonce96, toHex } from "../dist/index.js";

const V = JSON.parse(
  readFileSync(new URL("../../../tests/vectors/bolt8_vectors.json", import.meta.url), "utf8"),
);
const initiators = V.handshake.filter((v) => v.role === "initiator");

test("the vector file has the initiator cases", () => {
  assert.equal(initiators.length, 5);
  assert.equal(initiators.filter((v) => v.expected.outcome === "success").length, 1);
});

for (const v of initiators) {
  test(`BOLT 8: ${v.name}`, () => {
    const init = new Initiator(fromHex(v.ls_priv), fromHex(v.rs_pub), fromHex(v.e_priv));
    const act = (n) => v.acts.find((a) => a.act === n);
    assert.equal(toHex(init.act1()), act(1).hex);
    if (v.expected.outcome === "success") {
      init.readAct2(fromHex(act(2).hex));
      const { act3, keys } = init.act3();
      assert.equal(toHex(act3), act(3).hex);
      assert.equal(toHex(keys.sk), v.expected.sk);
      assert.equal(toHex(keys.rk), v.expected.rk);
      assert.equal(toHex(keys.ck), v.expected.ck);
    } else {
      const input = v.expected.rejected_input_hex ?? act(2).hex;
      assert.throws(
        () => init.readAct2(fromHex(input)),
        (e) => e instanceof Bolt8Error && e.code === v.expected.error_code,
      );
      assert.throws(() => init.act3(), /out of order/);
    }
  });
}

test("acts out of order are refused", () => {
  const v = initiators[0];
  const init = new Initiator(fromHex(v.ls_priv), fromHex(v.rs_pub), fromHex(v.e_priv));
  assert.throws(() => init.readAct2(new Uint8Array(50)), /out of order/);
  init.act1();
  assert.throws(() => init.act1(), /out of order/);
});

test("a remote static key that is not a point is refused", () => {
  const bad = new Uint8Array(33).fill(5);
  assert.throws(() => new Initiator(new Uint8Array(32).fill(1), bad), Bolt8Error);
});

// A BOLT 8 sender built from the package's key schedule, to check it against
// the spec's message vectors (including the key rotations at 500 and 1000).
function sender(sk, ck) {
  let k = sk;
  let c = ck;
  let n = 0;
  const enc = (p) => {
    const out = chacha20poly1305(k, nonce96(n), new Uint8Array(0)).encrypt(p);
    n += 1;
    if (n === 1000) {
      [c, k] = hkdf2(c, k);
      n = 0;
    }
    return out;
  };
  return (msg) => {
    const len = new Uint8Array(2);
    new DataView(len.buffer).setUint16(0, msg.length);
    const a = enc(len);
    const b = enc(msg);
    const out = new Uint8Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
  };
}

test("BOLT 8 message vectors (0, 1, 500, 501, 1000, 1001) with the package's hkdf2", () => {
  const m = V.message;
  const send = sender(fromHex(m.sk), fromHex(m.ck));
  const want = new Map(m.outputs.map((o) => [o.index, o.hex]));
  const msg = fromHex(m.plaintext_hex);
  for (let i = 0; i <= 1001; i++) {
    const out = send(msg);
    if (want.has(i)) assert.equal(toHex(out), want.get(i), `message ${i}`);
  }
});

test("BOLT 8 key rotation vectors", () => {
  for (const r of V.message.rotations) {
    const [ck, k] = hkdf2(fromHex(r.ck_in), fromHex(r.k_in));
    assert.equal(toHex(ck), r.ck_out);
    assert.equal(toHex(k), r.k_out);
  }
});
