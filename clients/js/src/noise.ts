/**
 * The initiator side of BOLT 8 (Noise_XK_secp256k1_ChaChaPoly_SHA256), split
 * around the proxy.
 *
 * The client writes act 1, the proxy carries it to the peer and brings act 2
 * back; only the client can check act 2's MAC, and it then writes act 3 and
 * hands the transport keys (`sk`, `rk` and the final `ck`) to the proxy
 * (docs/protocol.md, "Outbound connection (the split handshake)").  Nothing
 * here does I/O.  Checked against the BOLT 8 test vectors
 * (tests/vectors/bolt8_vectors.json).
 */

import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { randomBytes } from "@noble/hashes/utils.js";

import { concat, utf8 } from "./bytes.js";

export const ACT1_SIZE = 50;
export const ACT2_SIZE = 50;
export const ACT3_SIZE = 66;

const PROTOCOL_NAME = utf8("Noise_XK_secp256k1_ChaChaPoly_SHA256");
const PROLOGUE = utf8("lightning");

/**
 * An act was refused.  `code` is the spec's label (`ACT2_BAD_TAG`,
 * `ACT2_BAD_VERSION`, `ACT2_BAD_PUBKEY`, `ACT2_READ_FAILED`).
 */
export class Bolt8Error extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = "Bolt8Error";
  }
}

/** The keys the proxy needs to own a connection. */
export interface TransportKeys {
  /** Our sending key. */
  sk: Uint8Array;
  /** Our receiving key. */
  rk: Uint8Array;
  /** The final chaining key: the starting chaining key of both directions. */
  ck: Uint8Array;
}

/** RFC 5869 HKDF-SHA256 with empty info: two 32-byte keys. */
export function hkdf2(salt: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
  const prk = hmac(sha256, salt, ikm);
  const t1 = hmac(sha256, prk, Uint8Array.of(1));
  const t2 = hmac(sha256, prk, concat(t1, Uint8Array.of(2)));
  return [t1, t2];
}

/** BOLT 8's 96-bit nonce: 4 zero bytes, then the counter little-endian. */
export function nonce96(n: number): Uint8Array {
  const out = new Uint8Array(12);
  new DataView(out.buffer).setBigUint64(4, BigInt(n), true);
  return out;
}

/** BOLT 8's ECDH: SHA256 of the compressed shared point. */
function ecdh(secret: Uint8Array, point: Uint8Array): Uint8Array {
  return sha256(secp256k1.getSharedSecret(secret, point, true));
}

/** Whether `key` is a 33-byte compressed point on secp256k1. */
export function isNodeId(key: Uint8Array): boolean {
  if (key.length !== 33 || (key[0] !== 2 && key[0] !== 3)) return false;
  try {
    secp256k1.Point.fromBytes(key);
    return true;
  } catch {
    return false;
  }
}

/**
 * The initiator: `act1()`, `readAct2(act2)`, `act3()`, in that order.
 *
 * @param localSecret the node's 32-byte secret key.
 * @param remoteStatic the peer's 33-byte node id.
 * @param ephemeralSecret only for test vectors; random otherwise.
 */
export class Initiator {
  #ls: Uint8Array;
  #rs: Uint8Array;
  #e: Uint8Array;
  #h: Uint8Array;
  #ck: Uint8Array;
  #re: Uint8Array | null = null;
  #tempK2: Uint8Array | null = null;
  #step = 1;

  constructor(localSecret: Uint8Array, remoteStatic: Uint8Array, ephemeralSecret?: Uint8Array) {
    if (!isNodeId(remoteStatic)) {
      throw new Bolt8Error("the peer's node id is not a compressed secp256k1 point", "BAD_PUBKEY");
    }
    this.#ls = localSecret;
    this.#rs = remoteStatic;
    this.#e = ephemeralSecret ?? secp256k1.utils.randomSecretKey();
    this.#ck = sha256(PROTOCOL_NAME);
    this.#h = sha256(concat(sha256(concat(this.#ck, PROLOGUE)), remoteStatic));
  }

  #mixHash(data: Uint8Array): void {
    this.#h = sha256(concat(this.#h, data));
  }

  #mixKey(ikm: Uint8Array): Uint8Array {
    const [ck, tempK] = hkdf2(this.#ck, ikm);
    this.#ck = ck;
    return tempK;
  }

  /** Act 1 (50 bytes). */
  act1(): Uint8Array {
    if (this.#step !== 1) throw new Error("act1() called out of order");
    const ePub = secp256k1.getPublicKey(this.#e, true);
    this.#mixHash(ePub);
    const k1 = this.#mixKey(ecdh(this.#e, this.#rs));
    const c = chacha20poly1305(k1, nonce96(0), this.#h).encrypt(new Uint8Array(0));
    this.#mixHash(c);
    this.#step = 2;
    return concat(Uint8Array.of(0), ePub, c);
  }

  /**
   * Check act 2 from the responder.
   *
   * @throws Bolt8Error when it is short, of another version, carries a bad
   *   key or fails its MAC; the handshake is then dead.
   */
  readAct2(act2: Uint8Array): void {
    if (this.#step !== 2) throw new Error("readAct2() called out of order");
    this.#step = -1; // stays so unless the act is accepted
    if (act2.length !== ACT2_SIZE) {
      throw new Bolt8Error(`act 2 is ${act2.length} bytes, expected ${ACT2_SIZE}`, "ACT2_READ_FAILED");
    }
    if (act2[0] !== 0) {
      throw new Bolt8Error(`act 2 has handshake version ${act2[0]}`, "ACT2_BAD_VERSION");
    }
    const re = act2.subarray(1, 34);
    if (!isNodeId(re)) {
      throw new Bolt8Error("act 2's ephemeral key is not a secp256k1 point", "ACT2_BAD_PUBKEY");
    }
    this.#mixHash(re);
    const k2 = this.#mixKey(ecdh(this.#e, re));
    const c = act2.subarray(34);
    try {
      chacha20poly1305(k2, nonce96(0), this.#h).decrypt(c);
    } catch {
      throw new Bolt8Error(
        "act 2 failed its MAC check: the peer is not the node asked for",
        "ACT2_BAD_TAG",
      );
    }
    this.#mixHash(c);
    this.#re = Uint8Array.from(re);
    this.#tempK2 = k2;
    this.#step = 3;
  }

  /** Act 3 (66 bytes) and the transport keys to hand to the proxy. */
  act3(): { act3: Uint8Array; keys: TransportKeys } {
    if (this.#step !== 3 || this.#re === null || this.#tempK2 === null) {
      throw new Error("act3() called out of order");
    }
    const sPub = secp256k1.getPublicKey(this.#ls, true);
    const c = chacha20poly1305(this.#tempK2, nonce96(1), this.#h).encrypt(sPub);
    this.#mixHash(c);
    const k3 = this.#mixKey(ecdh(this.#ls, this.#re));
    const t = chacha20poly1305(k3, nonce96(0), this.#h).encrypt(new Uint8Array(0));
    const [sk, rk] = hkdf2(this.#ck, new Uint8Array(0));
    this.#step = 4;
    const ck = this.#ck;
    // Forget the handshake secrets; the caller hands the keys over and
    // should keep no copy.
    this.#e.fill(0);
    this.#tempK2.fill(0);
    return { act3: concat(Uint8Array.of(0), c, t), keys: { sk, rk, ck } };
  }
}

/** A fresh random 32-byte value (nonces, test keys). */
export function random32(): Uint8Array {
  return randomBytes(32);
}
