/**
 * One WebSocket to the proxy: the `hello`, JSON-RPC requests with timeouts,
 * and notifications (docs/protocol.md, "Transport", "Session start and
 * login").
 *
 * {@link LnproxyClient} builds on it and adds login, reconnection and the
 * event pipeline; a Session alone is what a device uses before it has a node
 * key (`account.login`), and what tests use to speak the protocol directly.
 */

import { fromServerHex } from "./bytes.js";
import {
  ClientError,
  ConnectionLost,
  ProtocolViolation,
  ProxyUnreachable,
  RequestTimeout,
  ServerMismatch,
  errorForCode,
} from "./errors.js";
import { isNodeId } from "./noise.js";
import { toHex } from "./bytes.js";

/** The WebSocket subprotocol. */
export const SUBPROTOCOL = "lnproxy.v1";
/** `hello.protocol`: the protocol and major version this package speaks. */
export const PROTOCOL_VERSION = "lnproxy/1";
/**
 * Largest frame accepted from the proxy: a 65,535-byte Lightning message is
 * about 128 KiB of hex, plus the envelope.
 */
export const MAX_FRAME = 1024 * 1024;

/** The part of the WebSocket API used here (browsers' and `ws`'s). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor: the global one, or `ws`'s in older Node. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** What `hello` said, checked. */
export interface Hello {
  protocol: string;
  serverId: Uint8Array;
  serverIdHex: string;
  challenge: Uint8Array;
  limits: Record<string, unknown>;
  features: string[];
}

/**
 * Find a WebSocket: the given one, the global one, or the `ws` package
 * (an optional dependency, for Node versions without a global WebSocket).
 */
export async function findWebSocket(given?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (given) return given;
  const g = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (typeof g === "function") return g as WebSocketConstructor;
  try {
    const mod = (await import("ws")) as unknown as { WebSocket: WebSocketConstructor };
    return mod.WebSocket;
  } catch {
    throw new ClientError(
      "no WebSocket available: use a runtime with a global WebSocket or install the 'ws' package",
    );
  }
}

/**
 * Check the params of a `hello`.
 *
 * @param pinned the expected server id (hex), if any.
 * @throws ProtocolViolation for a malformed hello (a missing challenge, a
 *   field that is not hex or of the wrong size, another protocol version);
 *   ServerMismatch when the server id is not the pinned one.
 */
export function parseHello(params: unknown, pinned?: string): Hello {
  if (typeof params !== "object" || params === null) {
    throw new ProtocolViolation("the proxy sent a hello without params");
  }
  const p = params as Record<string, unknown>;
  if (p.protocol !== PROTOCOL_VERSION) {
    throw new ProtocolViolation(
      `the proxy speaks ${JSON.stringify(p.protocol)}, this client speaks ${PROTOCOL_VERSION}`,
    );
  }
  if (p.challenge === undefined || p.challenge === null) {
    throw new ProtocolViolation("the proxy sent a hello without a challenge");
  }
  const serverId = fromServerHex(p.server_id, "hello.server_id", 33);
  if (!isNodeId(serverId)) {
    throw new ProtocolViolation("hello.server_id is not a compressed secp256k1 point");
  }
  const serverIdHex = toHex(serverId);
  if (pinned !== undefined && pinned.toLowerCase() !== serverIdHex) {
    throw new ServerMismatch(pinned.toLowerCase(), serverIdHex);
  }
  const challenge = fromServerHex(p.challenge, "hello.challenge", 32);
  const limits =
    typeof p.limits === "object" && p.limits !== null && !Array.isArray(p.limits)
      ? (p.limits as Record<string, unknown>)
      : {};
  const features = Array.isArray(p.features)
    ? p.features.filter((f): f is string => typeof f === "string" && f.length <= 64)
    : [];
  return { protocol: PROTOCOL_VERSION, serverId, serverIdHex, challenge, limits, features };
}

interface Pending {
  method: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Options of {@link Session.open}. */
export interface SessionOptions {
  /** The WebSocket constructor (default: {@link findWebSocket}). */
  WebSocket?: WebSocketConstructor;
  /** The server id to insist on (hex). */
  serverId?: string;
  /** Milliseconds to wait for the WebSocket and its `hello` (default 30 s). */
  timeout?: number;
  /** Called for every notification after `hello`, in arrival order. */
  onNotification?: (method: string, params: unknown) => void;
  /** Called once when the WebSocket closes, with a reason in words. */
  onClose?: (reason: string, code: number) => void;
}

/** One WebSocket to the proxy, open and past its `hello`. */
export class Session {
  readonly url: string;
  readonly hello: Hello;
  #ws: WebSocketLike;
  #nextId = 0;
  #pending = new Map<number, Pending>();
  #closed = false;
  #closeReason = "";
  onNotification: ((method: string, params: unknown) => void) | undefined;
  onClose: ((reason: string, code: number) => void) | undefined;

  private constructor(url: string, ws: WebSocketLike, hello: Hello) {
    this.url = url;
    this.#ws = ws;
    this.hello = hello;
  }

  /**
   * Open a WebSocket and wait for a valid `hello`.
   *
   * @throws ProxyUnreachable when it cannot connect or the socket closes
   *   first; RequestTimeout when no hello comes in time; ProtocolViolation
   *   or ServerMismatch for a hello that must be refused (the socket is
   *   closed then).
   */
  static async open(url: string, opts: SessionOptions = {}): Promise<Session> {
    const WS = await findWebSocket(opts.WebSocket);
    const timeout = opts.timeout ?? 30_000;
    return new Promise<Session>((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new WS(url, [SUBPROTOCOL]);
      } catch (e) {
        reject(new ProxyUnreachable(url, (e as Error).message));
        return;
      }
      let session: Session | null = null;
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        try {
          ws.close();
        } catch {
          /* already closing */
        }
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new RequestTimeout("hello", timeout)),
        timeout,
      );
      ws.onerror = () => {
        /* onclose follows with the details */
      };
      ws.onclose = (ev) => {
        const reason = ev.reason || `closed with code ${ev.code}`;
        if (session) session.#closedBy(reason, ev.code);
        else fail(new ProxyUnreachable(url, reason));
      };
      ws.onmessage = (ev) => {
        if (session) {
          session.#frame(ev.data);
          return;
        }
        if (settled) return;
        let obj: unknown;
        try {
          obj = parseFrame(ev.data);
        } catch (e) {
          fail(e as Error);
          return;
        }
        const o = obj as { method?: unknown; params?: unknown };
        if (o.method !== "hello") {
          fail(new ProtocolViolation("the proxy did not start with hello"));
          return;
        }
        let hello: Hello;
        try {
          hello = parseHello(o.params, opts.serverId);
        } catch (e) {
          fail(e as Error);
          return;
        }
        settled = true;
        clearTimeout(timer);
        session = new Session(url, ws, hello);
        session.onNotification = opts.onNotification;
        session.onClose = opts.onClose;
        resolve(session);
      };
    });
  }

  /** Whether the WebSocket is still open. */
  get open(): boolean {
    return !this.#closed;
  }

  /** Why the WebSocket closed ("" while open). */
  get closeReason(): string {
    return this.#closeReason;
  }

  /**
   * Send one request; resolves with its `result`.
   *
   * @param timeout milliseconds before it fails with RequestTimeout (a
   *   late reply is then ignored).
   * @throws ProxyError (a subclass per code) for an error reply;
   *   ConnectionLost when the socket closes first.
   */
  request(method: string, params: Record<string, unknown> = {}, timeout = 30_000): Promise<unknown> {
    if (this.#closed) {
      return Promise.reject(new ConnectionLost(method, this.#closeReason || "not connected"));
    }
    const id = ++this.#nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new RequestTimeout(method, timeout));
      }, timeout);
      this.#pending.set(id, { method, resolve, reject, timer });
      try {
        this.#ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
      } catch (e) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(new ConnectionLost(method, (e as Error).message));
      }
    });
  }

  /** Close the WebSocket (1000, normal closure). */
  close(reason = "closed by the client"): void {
    if (!this.#closed) this.#closeReason = reason;
    try {
      this.#ws.close(1000);
    } catch {
      /* already closed */
    }
    // Browsers fire onclose later; fail what waits now.
    this.#closedBy(reason, 1000);
  }

  /** Drop the connection after a protocol violation. */
  abort(reason: string): void {
    this.#closeReason = reason;
    try {
      this.#ws.close(4000, reason.replace(/[^\x20-\x7e]/g, "?").slice(0, 120));
    } catch {
      /* already closed */
    }
    this.#closedBy(reason, 4000);
  }

  #closedBy(reason: string, code: number): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeReason = this.#closeReason || reason;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new ConnectionLost(p.method, this.#closeReason));
    }
    this.onClose?.(this.#closeReason, code);
  }

  #frame(data: unknown): void {
    let obj: Record<string, unknown>;
    try {
      obj = parseFrame(data) as Record<string, unknown>;
    } catch (e) {
      this.abort((e as Error).message);
      return;
    }
    if ("id" in obj && ("result" in obj || "error" in obj)) {
      const p = typeof obj.id === "number" ? this.#pending.get(obj.id) : undefined;
      if (!p) return; // timed out, or not ours
      this.#pending.delete(obj.id as number);
      clearTimeout(p.timer);
      if ("error" in obj) {
        const err = (typeof obj.error === "object" && obj.error !== null ? obj.error : {}) as {
          code?: unknown;
          message?: unknown;
          data?: unknown;
        };
        const code = typeof err.code === "number" && Number.isInteger(err.code) ? err.code : -32603;
        const message = typeof err.message === "string" ? err.message.slice(0, 1000) : "";
        p.reject(errorForCode(code, message, err.data));
      } else {
        p.resolve(obj.result);
      }
      return;
    }
    if (typeof obj.method === "string") {
      this.onNotification?.(obj.method, obj.params);
    }
  }
}

/** One text frame -> a JSON object, or a ProtocolViolation. */
function parseFrame(data: unknown): unknown {
  let text: string;
  if (typeof data === "string") text = data;
  else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    const bytes =
      data instanceof ArrayBuffer
        ? new Uint8Array(data)
        : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.length > MAX_FRAME) throw new ProtocolViolation("the proxy sent an oversized frame");
    text = new TextDecoder().decode(bytes);
  } else throw new ProtocolViolation("the proxy sent a frame of an unknown kind");
  if (text.length > MAX_FRAME) {
    throw new ProtocolViolation(`the proxy sent a frame of ${text.length} characters`);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch {
    throw new ProtocolViolation("the proxy sent a frame that is not JSON");
  }
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    throw new ProtocolViolation("the proxy sent a frame that is not a JSON object");
  }
  return obj;
}
