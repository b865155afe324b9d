/**
 * Bytes and hex, strictly.
 *
 * Everything binary on the wire is lowercase hex (docs/protocol.md,
 * "Transport").  What comes from the server is checked before use: a field
 * that is not hex, has an odd length or is longer than allowed is refused
 * with a {@link ProtocolViolation} instead of being half-parsed.
 */

import { ProtocolViolation } from "./errors.js";

const HEX = /^[0-9a-f]*$/;
const HEX_CHARS = "0123456789abcdef";

/** Lowercase hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    out += HEX_CHARS[b >> 4]! + HEX_CHARS[b & 15]!;
  }
  return out;
}

/**
 * Parse hex text.  Upper case is accepted for input written by people
 * (a pasted key); {@link fromServerHex} is the strict form for the wire.
 *
 * @throws TypeError when `text` is not even-length hex.
 */
export function fromHex(text: string): Uint8Array {
  if (typeof text !== "string") throw new TypeError("hex must be a string");
  const lower = text.toLowerCase();
  if (lower.length % 2 !== 0 || !HEX.test(lower)) {
    throw new TypeError("not an even-length hex string");
  }
  const out = new Uint8Array(lower.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(lower.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

/**
 * A hex field sent by the server, checked before it is decoded.
 *
 * @param value the field's value (anything: it came over the network).
 * @param name the field's name, for the error message.
 * @param size exact size in bytes, or `{min, max}` bounds.
 * @throws ProtocolViolation when the value is not lowercase hex or its size
 *   is out of bounds (the length is checked before any decoding).
 */
export function fromServerHex(
  value: unknown,
  name: string,
  size: number | { min?: number; max: number },
): Uint8Array {
  if (typeof value !== "string") {
    throw new ProtocolViolation(`the proxy sent ${name} that is not a string`);
  }
  const min = typeof size === "number" ? size : (size.min ?? 0);
  const max = typeof size === "number" ? size : size.max;
  if (value.length > 2 * max) {
    throw new ProtocolViolation(
      `the proxy sent ${name} of ${value.length} hex characters, more than ${max} bytes`,
    );
  }
  if (value.length < 2 * min || value.length % 2 !== 0 || !HEX.test(value)) {
    throw new ProtocolViolation(
      `the proxy sent ${name} that is not ${
        typeof size === "number" ? `${size} bytes of` : ""
      } lowercase hex`.replace("  ", " "),
    );
  }
  return fromHex(value);
}

/** Concatenate byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** UTF-8 bytes of `text`. */
export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** Constant-shape equality of two byte arrays. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
