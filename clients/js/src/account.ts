/**
 * Account key derivation (docs/protocol.md, "Several devices of one node"):
 * a device without the node key gets it from the proxy, encrypted with a key
 * derived from the user's password, which the proxy never sees.
 *
 *     k    = Argon2id(password UTF-8, salt = SHA256("lnproxy/1 account" ||
 *            server_id || user UTF-8), t=3, m=65536 KiB, p=1, 64 bytes)
 *     auth = k[0:32], enc = k[32:64]
 *     blob = nonce (12) || ChaCha20-Poly1305(enc, nonce, node secret,
 *            ad = "lnproxy/1 account" || user UTF-8)
 */

import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { argon2idAsync } from "@noble/hashes/argon2.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { randomBytes } from "@noble/hashes/utils.js";

import { concat, utf8 } from "./bytes.js";
import { ClientError } from "./errors.js";

const ACCOUNT_TAG = utf8("lnproxy/1 account");

/** The contract's Argon2id parameters. */
export const ACCOUNT_KDF = { t: 3, m: 65536, p: 1, dkLen: 64 } as const;

/** What a password derives to: `auth` goes to the proxy, `enc` never does. */
export interface AccountKeys {
  auth: Uint8Array;
  enc: Uint8Array;
}

/** The Argon2id salt: `SHA256("lnproxy/1 account" || server_id || user)`. */
export function accountSalt(serverId: Uint8Array, user: string): Uint8Array {
  return sha256(concat(ACCOUNT_TAG, serverId, utf8(user)));
}

/**
 * Derive `auth` and `enc` from a password (about a second: Argon2id with
 * 64 MiB; it yields to the event loop while it runs).
 *
 * @param kdf only for tests: cheaper parameters.  Real accounts must use
 *   the default, or other clients cannot restore them.
 */
export async function deriveAccountKeys(
  password: string,
  serverId: Uint8Array,
  user: string,
  kdf: { t: number; m: number; p: number } = ACCOUNT_KDF,
): Promise<AccountKeys> {
  checkUser(user);
  const k = await argon2idAsync(utf8(password), accountSalt(serverId, user), {
    ...kdf,
    dkLen: 64,
  });
  return { auth: k.slice(0, 32), enc: k.slice(32, 64) };
}

function checkUser(user: string): void {
  const n = [...user].length;
  if (n < 1 || n > 64) throw new RangeError("user must be 1-64 characters");
}

/** `nonce || ChaCha20-Poly1305(enc, nonce, secret, ad)`: the account blob. */
export function sealNodeSecret(
  enc: Uint8Array,
  user: string,
  secret: Uint8Array,
  nonce: Uint8Array = randomBytes(12),
): Uint8Array {
  if (secret.length !== 32) throw new TypeError("node secret must be 32 bytes");
  if (nonce.length !== 12) throw new TypeError("nonce must be 12 bytes");
  const ad = concat(ACCOUNT_TAG, utf8(user));
  return concat(nonce, chacha20poly1305(enc, nonce, ad).encrypt(secret));
}

/**
 * Decrypt an account blob.
 *
 * @throws ClientError when it does not authenticate (wrong password, or a
 *   blob made for another user name).
 */
export function openNodeSecret(enc: Uint8Array, user: string, blob: Uint8Array): Uint8Array {
  if (blob.length !== 12 + 32 + 16) {
    throw new ClientError(`account blob is ${blob.length} bytes, expected 60`);
  }
  const ad = concat(ACCOUNT_TAG, utf8(user));
  try {
    return chacha20poly1305(enc, blob.subarray(0, 12), ad).decrypt(blob.subarray(12));
  } catch {
    throw new ClientError("account blob does not decrypt: wrong password or user");
  }
}
