// Account key derivation (docs/protocol.md, "Several devices of one node")
// against vectors computed independently with Python's `cryptography`
// (Argon2id, ChaCha20-Poly1305) and coincurve by
// test/support/account_vectors.py; pasted here from its output.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ClientError,
  accountSalt,
  deriveAccountKeys,
  fromHex,
  openNodeSecret,
  sealNodeSecret,
  toHex,
} from "../dist/index.js";

// python clients/js/test/support/account_vectors.py
const VECTORS = [
  {
    server_id: "031b84c5567b126440995d3ed5aaba0565d71e1834604819ff9c17f5e9d5dd078f",
    user: "alice",
    password: "correct horse battery staple",
    t: 3,
    m: 65536,
    salt: "04c83031899d613f4d8f2b330808bd4fed946f1d45c92463eb673b660ee81bb8",
    auth: "f0efdeeeb7fb3df94a9f62f08c228593a64c949d968ab04fac0d4277582fe0bd",
    enc: "280e09d23738ebf764b433c7df45a61d38df45349669496d74d076a3e35af7ba",
    node_secret: "1111111111111111111111111111111111111111111111111111111111111111",
    nonce: "222222222222222222222222",
    blob: "2222222222222222222222220477a7b3c0eb2a19fdf906927446bccc0d3a962e24450c07ef0eaa07556106a2b06e651dfc17ab6896927df6f8f110c5",
  },
  {
    server_id: "024d4b6cd1361032ca9bd2aeb9d900aa4d45d9ead80ac9423374c451a7254d0766",
    user: "bob \u00fcn\u00efc\u00f8d\u00e9",
    password: "p\u00e4ssw\u00f6rd",
    t: 3,
    m: 65536,
    salt: "b4f311beda4e355624b5f781764c7acc6041205cac01d24316105ad5d6e04a65",
    auth: "3e857e07ca799bd6fb98c9fb6beed9c987b3777a6bc118a451048b2f3af2f542",
    enc: "1272aa818fd289da7a736a118cd135e559b93c17673ff60667343a312c6ce82a",
    node_secret: "3333333333333333333333333333333333333333333333333333333333333333",
    nonce: "444444444444444444444444",
    blob: "444444444444444444444444a1edb0bfc8708db9fe7299bc9e8b972856f1e10d690d904449b130346ff6f9942c3a3d69e88a8323b3997fbe10ad8d7c",
  },
  {
    server_id: "02531fe6068134503d2723133227c867ac8fa6c83c537e9a44c3c5bdbdcb1fe337",
    user: "carol",
    password: "cheap",
    t: 1,
    m: 64,
    salt: "9741ed425918b122f8172d43366cf3354feb261877d4cdf89eb80df59f9cdb01",
    auth: "0d185fe49129b2216c4daf51e89201b7fd2cebb4499f1d23c589ec33b78e107a",
    enc: "ca41ff9d23f2dab33eba2abfddcb370e249c7fb752a5ed1744466644a8b352b2",
    node_secret: "5555555555555555555555555555555555555555555555555555555555555555",
    nonce: "666666666666666666666666",
    blob: "6666666666666666666666664b4e7d97c40060bf7f180c12aae6fa8a85db5fee2dd1676cd70a2867d505f63c720747ee7bae98a2443a9c7ab51d462d",
  },
];

for (const v of VECTORS) {
  test(`account derivation matches Python's cryptography: ${v.user} (t=${v.t}, m=${v.m})`, async () => {
    const sid = fromHex(v.server_id);
    assert.equal(toHex(accountSalt(sid, v.user)), v.salt);
    const kdf = v.t === 3 && v.m === 65536 ? undefined : { t: v.t, m: v.m, p: 1 };
    const keys = await deriveAccountKeys(v.password, sid, v.user, kdf);
    assert.equal(toHex(keys.auth), v.auth);
    assert.equal(toHex(keys.enc), v.enc);
    const blob = sealNodeSecret(keys.enc, v.user, fromHex(v.node_secret), fromHex(v.nonce));
    assert.equal(toHex(blob), v.blob);
    assert.equal(toHex(openNodeSecret(keys.enc, v.user, blob)), v.node_secret);
  });
}

test("an account blob does not open with another user name or key", () => {
  const v = VECTORS[2];
  const blob = fromHex(v.blob);
  assert.throws(() => openNodeSecret(fromHex(v.enc), "mallory", blob), ClientError);
  assert.throws(() => openNodeSecret(new Uint8Array(32), v.user, blob), ClientError);
  assert.throws(() => openNodeSecret(fromHex(v.enc), v.user, blob.subarray(1)), /60/);
});

test("user names must be 1-64 characters", async () => {
  const sid = fromHex(VECTORS[0].server_id);
  await assert.rejects(deriveAccountKeys("pw", sid, "", { t: 1, m: 8, p: 1 }), RangeError);
  await assert.rejects(deriveAccountKeys("pw", sid, "x".repeat(65), { t: 1, m: 8, p: 1 }), RangeError);
});
