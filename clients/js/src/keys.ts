/**
 * Node keys and the login signature (docs/protocol.md, "Session start and
 * login").
 *
 * The signature is a 64-byte compact ECDSA signature (r || s, low-S) over
 * `SHA256("lnproxy/1 login" || server_id || challenge)`: exactly one
 * SHA-256.  noble's `sign` hashes its input itself unless told
 * `prehash: false`, so the digest is computed here and signed as is.
 */

import { secp256k1 } from "@noble/curves/secp256k1.js";
import { sha256 } from "@noble/hashes/sha2.js";

import { concat, utf8 } from "./bytes.js";

const LOGIN_TAG = utf8("lnproxy/1 login");

/** A fresh random node secret key (32 bytes). */
export function newNodeSecret(): Uint8Array {
  return secp256k1.utils.randomSecretKey();
}

/** Whether `secret` is a valid secp256k1 secret key. */
export function isNodeSecret(secret: Uint8Array): boolean {
  return secret.length === 32 && secp256k1.utils.isValidSecretKey(secret);
}

/** The 33-byte node id (compressed public key) of `secret`. */
export function nodeIdOf(secret: Uint8Array): Uint8Array {
  return secp256k1.getPublicKey(secret, true);
}

/** `SHA256("lnproxy/1 login" || server_id || challenge)`. */
export function loginDigest(serverId: Uint8Array, challenge: Uint8Array): Uint8Array {
  return sha256(concat(LOGIN_TAG, serverId, challenge));
}

/** Sign a 32-byte digest as is: 64-byte compact, low-S, deterministic k. */
export function signDigest(secret: Uint8Array, digest: Uint8Array): Uint8Array {
  if (digest.length !== 32) throw new TypeError("digest must be 32 bytes");
  return secp256k1.sign(digest, secret, { prehash: false, lowS: true, format: "compact" });
}

/** The login signature for a `hello`'s server id and challenge. */
export function signLogin(
  secret: Uint8Array,
  serverId: Uint8Array,
  challenge: Uint8Array,
): Uint8Array {
  return signDigest(secret, loginDigest(serverId, challenge));
}

/** Verify a compact low-S signature over a 32-byte digest (webhooks, tests). */
export function verifyDigest(
  signature: Uint8Array,
  digest: Uint8Array,
  publicKey: Uint8Array,
): boolean {
  try {
    return secp256k1.verify(signature, digest, publicKey, { prehash: false, lowS: true });
  } catch {
    return false;
  }
}
