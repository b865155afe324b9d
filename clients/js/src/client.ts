/**
 * The client: a node that keeps its key and lets the proxy hold its peers.
 *
 * Started, it connects to the proxy, checks `hello` (and the pinned server
 * id), logs in with a signature by the node key, and stays connected: when
 * the WebSocket drops it reconnects with jittered exponential backoff and
 * logs in again.  On top of that:
 *
 * - **Peer connections**: {@link LnproxyClient.openPeer} runs the BOLT 8
 *   initiator itself; act 1 goes out in `connect`, act 2 comes back and is
 *   checked here (only the key holder can), act 3 and the transport keys go
 *   out in `finish`, then our `init`.
 * - **Events, once, in seq order**: each event goes to `onEvent`, one at a
 *   time; after the handler has finished (it may return a promise) the seq is
 *   recorded in the state store and only then acknowledged (acks of the
 *   events handled in one turn of the event loop are coalesced into one).  A replay of a
 *   recorded seq (after a reconnect) is acknowledged again, not delivered.
 *   A handler that throws is retried with backoff.
 * - **Persistent peers**: a `closed` event with `reconnect: true` (a persist
 *   connection dropped) is recorded in the state with the peer's address,
 *   then the client runs a new handshake to that peer with backoff until one
 *   is open (unless another device of the node already has one).  The
 *   pending re-handshakes are in the state, so a restart resumes them.
 * - **The writer lease** (docs/protocol.md, "Several devices of one node"):
 *   {@link LnproxyClient.writer} says whether this session holds it.  After a
 *   successful {@link LnproxyClient.leaseAcquire} (or with the option
 *   `lease: true`) the client asks for it again, without force, after every
 *   login, since a lease ends with its WebSocket.  The `lease` client event
 *   reports each change (`{writer: false}` when another device forced it
 *   away).  Persistent peers are handshaken again only when no other device
 *   is known to hold the lease; the proxy's code 11 leaves the re-handshake
 *   (kept in the state) until this client gets the lease.
 * - **Every request has a timeout**; waiting for a login counts in it.
 */

import { deriveAccountKeys, openNodeSecret, sealNodeSecret } from "./account.js";
import { concat, fromHex, fromServerHex, toHex } from "./bytes.js";
import {
  ClientError,
  ClientStopped,
  HandshakeFailed,
  InvalidParams,
  LeaseHeld,
  LoginFailed,
  ProtocolViolation,
  ProxyError,
  RequestTimeout,
  ServedElsewhere,
  ServerMismatch,
} from "./errors.js";
import { isNodeSecret, nodeIdOf, signLogin } from "./keys.js";
import { Bolt8Error, Initiator, isNodeId } from "./noise.js";
import {
  type Hello,
  MAX_FRAME,
  Session,
  type WebSocketConstructor,
} from "./session.js";

/** Largest Lightning message (BOLT 8). */
export const MAX_MESSAGE = 65535;
const MAX_ID = 128;

/** A durable event from the proxy (`message`, `closed`, ...). */
export interface LnEvent {
  /** The notification's method: `"message"`, `"closed"`, or a later kind. */
  kind: string;
  seq: number;
  at: number;
  conn?: string;
  /** The peer's node id, hex. */
  peer?: string;
  /** Lightning message type (`message`). */
  type?: number;
  /** The whole Lightning message, type included (`message`). */
  msg?: Uint8Array;
  /** Whether the policy says the message needs the client. */
  summon?: boolean;
  /** Why the connection closed (`closed`). */
  reason?: string;
  /** Whether a closed persist connection asks for a new handshake. */
  reconnect?: boolean;
  /** The params as sent (hex left as is). */
  params: Record<string, unknown>;
}

/** A connection object (docs/protocol.md, "Using a connection"). */
export interface Connection {
  conn: string;
  peer: string;
  address: string;
  state: string;
  persist: boolean;
  since: number;
  /** The peer's init (type included), or null before it came. */
  theirInit: Uint8Array | null;
}

/** What the proxy said at the last login. */
export interface LoginInfo {
  nodeId: string;
  serverId: string;
  nextSeq: number;
  pending: number;
  connections: Connection[];
  limits: Record<string, unknown>;
  features: string[];
}

/** What the client keeps between runs to handle every event once. */
export interface ClientState {
  /** The proxy the seqs belong to (hex), or null before the first hello. */
  serverId: string | null;
  /** The highest seq handled and recorded. */
  lastSeq: number;
  /** Persist peers to handshake with again: node id -> address, features. */
  rehandshake?: Record<string, { address: string; features: string }>;
}

/** Where the state lives (memory by default; {@link webStorageState}). */
export interface StateStore {
  load(): ClientState | null | Promise<ClientState | null>;
  save(state: ClientState): void | Promise<void>;
}

/** A state store in memory (the default: a restart replays every unacked event). */
export function memoryState(): StateStore {
  let st: ClientState | null = null;
  return {
    load: () => st,
    save: (s) => {
      st = { ...s };
    },
  };
}

/** A state store in a Web Storage (`localStorage`) entry. */
export function webStorageState(
  storage: { getItem(k: string): string | null; setItem(k: string, v: string): void },
  key = "lnproxy-state",
): StateStore {
  return {
    load: () => {
      const text = storage.getItem(key);
      if (!text) return null;
      const o = JSON.parse(text) as Partial<ClientState>;
      return {
        serverId: typeof o.serverId === "string" ? o.serverId : null,
        lastSeq: typeof o.lastSeq === "number" ? o.lastSeq : 0,
        rehandshake: typeof o.rehandshake === "object" && o.rehandshake ? o.rehandshake : {},
      };
    },
    save: (s) => storage.setItem(key, JSON.stringify(s)),
  };
}

/** Options of {@link LnproxyClient}. */
export interface ClientOptions {
  /** `ws://host:port/` or `wss://host:port/`. */
  url: string;
  /** The node's 32-byte secret key.  It never leaves this object. */
  nodeSecret: Uint8Array;
  /** The proxy's expected id (hex or bytes); another one is refused. */
  serverId?: string | Uint8Array;
  /** Called for each new event, in seq order, one at a time. */
  onEvent?: (event: LnEvent) => void | Promise<void>;
  /** Where the handled seq is kept (default: memory). */
  state?: StateStore;
  /** Our init features (default: none). */
  features?: Uint8Array;
  /** Milliseconds a request may take, waiting for a login included (30 s). */
  requestTimeout?: number;
  /**
   * Handshake again with a persist peer when the proxy says its connection
   * dropped (`closed` with `reconnect: true`); default true.
   */
  rehandshake?: boolean;
  /** Reconnection backoff in ms: first delay and cap (500 ms, 60 s). */
  backoff?: { initial?: number; max?: number };
  /** The WebSocket constructor (default: global, else the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /**
   * Ask for the node's writer lease (without force) at every login; default
   * false.  {@link LnproxyClient.leaseAcquire} turns it on,
   * {@link LnproxyClient.leaseRelease} off.
   */
  lease?: boolean;
}

/** A peer connection opened by this client. */
export class PeerLink {
  constructor(
    readonly client: LnproxyClient,
    readonly conn: string,
    readonly peer: string,
    readonly address: string,
    readonly persist: boolean,
  ) {}

  /** Send one Lightning message (type included). */
  send(msg: Uint8Array): Promise<void> {
    return this.client.send(this.conn, msg);
  }

  /** Ask the proxy to close the connection. */
  disconnect(): Promise<void> {
    return this.client.disconnect(this.conn);
  }
}

type Listener<T> = (value: T) => void;

interface ClientEvents {
  login: LoginInfo;
  disconnect: string;
  /** Problems that do not stop the client (a handler that threw, a bad frame). */
  error: Error;
  /** The error that stopped the client for good. */
  fatal: Error;
  /**
   * The writer lease changed hands: `{writer: true}` when this session got
   * it, `{writer: false}` when another device took it (the proxy's `lease`
   * notification) or holds it (code 11 to our acquire at login).
   */
  lease: { writer: boolean };
  /** An event was handled, recorded and its ack sent (the seq). */
  handled: number;
  /** A persist peer's connection was opened again after a drop. */
  link: PeerLink;
  /** `act1`, `act2`, `act3`, `init` while {@link LnproxyClient.openPeer} runs. */
  handshake: { step: string; conn?: string };
}

const PEER = /^([0-9a-fA-F]{66})@(\[[0-9a-fA-F:.]+\]|[^:[\]@\s]+)(?::([0-9]{1,5}))?$/;

/**
 * Split `node_id@host[:port]` (IPv6 hosts in brackets; port 9735 by default).
 *
 * @throws InvalidParams (local) when it is malformed.
 */
export function parsePeer(peer: string): { nodeId: string; address: string } {
  const m = PEER.exec(peer);
  if (!m) {
    throw new InvalidParams(-32602, `peer ${JSON.stringify(peer)} is not <node id>@<host>[:<port>]`, undefined, true);
  }
  const nodeId = m[1]!.toLowerCase();
  if (!isNodeId(fromHex(nodeId))) {
    throw new InvalidParams(-32602, "peer node id is not a valid public key", undefined, true);
  }
  const port = m[3] === undefined ? 9735 : Number(m[3]);
  if (port < 1 || port > 65535) {
    throw new InvalidParams(-32602, `port ${port} is outside 1-65535`, undefined, true);
  }
  return { nodeId, address: `${m[2]}:${port}` };
}

/** Lightning `init` (type 16) with empty globalfeatures and our features. */
export function encodeInit(features: Uint8Array = new Uint8Array(0)): Uint8Array {
  const head = new Uint8Array(6 + 0);
  const v = new DataView(head.buffer);
  v.setUint16(0, 16);
  v.setUint16(2, 0);
  v.setUint16(4, features.length);
  return concat(head, features);
}

function str(v: unknown, name: string, max = MAX_ID): string {
  if (typeof v !== "string" || v.length === 0 || v.length > max) {
    throw new ProtocolViolation(`the proxy sent ${name} that is not a string of 1-${max} characters`);
  }
  return v;
}

function int(v: unknown, name: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    throw new ProtocolViolation(`the proxy sent ${name} that is not a non-negative integer`);
  }
  return v;
}

/** Check a connection object from the proxy. */
export function parseConnection(c: unknown): Connection {
  if (typeof c !== "object" || c === null) throw new ProtocolViolation("connection is not an object");
  const o = c as Record<string, unknown>;
  const peer = toHex(fromServerHex(o.peer, "connection.peer", 33));
  return {
    conn: str(o.conn, "connection.conn"),
    peer,
    address: str(o.address, "connection.address", 300),
    state: str(o.state, "connection.state", 32),
    persist: o.persist === true,
    since: typeof o.since === "number" ? o.since : 0,
    theirInit:
      o.their_init === null || o.their_init === undefined
        ? null
        : fromServerHex(o.their_init, "connection.their_init", { min: 2, max: MAX_MESSAGE }),
  };
}

/** Check an event's params from the proxy. */
export function parseEvent(kind: string, params: unknown): LnEvent {
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    throw new ProtocolViolation(`the proxy sent a ${kind} event without params`);
  }
  const p = params as Record<string, unknown>;
  const seq = int(p.seq, `${kind}.seq`);
  if (seq < 1) throw new ProtocolViolation(`the proxy sent ${kind}.seq ${seq}`);
  const ev: LnEvent = { kind, seq, at: typeof p.at === "number" ? p.at : 0, params: p };
  if (p.conn !== undefined) ev.conn = str(p.conn, `${kind}.conn`);
  if (p.peer !== undefined) ev.peer = toHex(fromServerHex(p.peer, `${kind}.peer`, 33));
  if (kind === "message") {
    const msg = fromServerHex(p.msg, "message.msg", { min: 2, max: MAX_MESSAGE });
    ev.msg = msg;
    ev.type = (msg[0]! << 8) | msg[1]!;
    if (p.type !== undefined && p.type !== ev.type) {
      throw new ProtocolViolation(`message.type ${String(p.type)} does not match the message`);
    }
    ev.summon = p.summon === true;
  }
  if (kind === "closed") {
    ev.reason = typeof p.reason === "string" ? p.reason.slice(0, 1000) : "";
    ev.reconnect = p.reconnect === true;
  }
  return ev;
}

/** The client (see the module comment). */
export class LnproxyClient {
  readonly url: string;
  /** Our node id, hex. */
  readonly nodeId: string;
  /** The last `hello`, or null before the first one. */
  hello: Hello | null = null;
  /** The last login's info, or null. */
  loginInfo: LoginInfo | null = null;
  /** The error that stopped the client for good, or null. */
  failure: Error | null = null;

  #secret: Uint8Array;
  #pinned: string | undefined;
  #onEvent: ((e: LnEvent) => void | Promise<void>) | undefined;
  #store: StateStore;
  #state: ClientState = { serverId: null, lastSeq: 0 };
  #features: Uint8Array;
  #timeout: number;
  #backoff: { initial: number; max: number };
  #WS: WebSocketConstructor | undefined;
  #target: string;

  #running = false;
  #session: Session | null = null; // logged in
  #socket: Session | null = null; // open, maybe not logged in
  #attempt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  #sessionWaiters: Array<{ resolve: (s: Session) => void; reject: (e: Error) => void }> = [];
  #loginWaiters: Array<{ resolve: (i: LoginInfo) => void; reject: (e: Error) => void }> = [];
  #listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();

  // Event pipeline.
  #queue: LnEvent[] = [];
  #busy = false;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #failures = 0;
  #ackWanted = 0;
  #ackSent = 0;
  #ackTimer: ReturnType<typeof setTimeout> | null = null;
  #stateLoaded: Promise<void> | null = null;

  // Persistent peers.
  #rehandshakeOn: boolean;
  #addresses = new Map<string, string>(); // conn -> host:port
  #linkFeatures = new Map<string, string>(); // conn -> init features hex
  #rehandshaking = new Set<string>(); // node ids

  // Writer lease.
  #wantsLease: boolean;
  #writer: boolean | null = null;

  constructor(opts: ClientOptions) {
    if (!/^wss?:\/\/[^/]+/.test(opts.url)) {
      throw new TypeError(`proxy URL must be ws://host:port/ or wss://host:port/, not ${opts.url}`);
    }
    if (!(opts.nodeSecret instanceof Uint8Array) || !isNodeSecret(opts.nodeSecret)) {
      throw new TypeError("nodeSecret must be a valid 32-byte secp256k1 secret key");
    }
    this.url = opts.url;
    this.#target = opts.url;
    this.#secret = Uint8Array.from(opts.nodeSecret);
    this.nodeId = toHex(nodeIdOf(this.#secret));
    this.#pinned =
      opts.serverId === undefined
        ? undefined
        : typeof opts.serverId === "string"
          ? opts.serverId.toLowerCase()
          : toHex(opts.serverId);
    this.#onEvent = opts.onEvent;
    this.#store = opts.state ?? memoryState();
    this.#features = opts.features ?? new Uint8Array(0);
    this.#timeout = opts.requestTimeout ?? 30_000;
    this.#backoff = { initial: opts.backoff?.initial ?? 500, max: opts.backoff?.max ?? 60_000 };
    this.#WS = opts.WebSocket;
    this.#rehandshakeOn = opts.rehandshake ?? true;
    this.#wantsLease = opts.lease ?? false;
  }

  /**
   * Whether this session holds the node's writer lease: true after it got
   * it, false when another device holds it, null when unknown (no lease
   * asked for on this session, or logged out).
   */
  get writer(): boolean | null {
    return this.#writer;
  }

  #setWriter(writer: boolean): void {
    const changed = this.#writer !== writer;
    this.#writer = writer;
    if (changed) this.#emit("lease", { writer });
    if (writer && changed) this.#resumeRehandshakes();
  }

  #resumeRehandshakes(): void {
    for (const node of Object.keys(this.#state.rehandshake ?? {})) this.#startRehandshake(node);
  }

  /** Subscribe to a client event; returns the unsubscribe function. */
  on<K extends keyof ClientEvents>(name: K, fn: Listener<ClientEvents[K]>): () => void {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => set!.delete(fn as Listener<never>);
  }

  #emit<K extends keyof ClientEvents>(name: K, value: ClientEvents[K]): void {
    for (const fn of this.#listeners.get(name) ?? []) {
      try {
        (fn as Listener<ClientEvents[K]>)(value);
      } catch {
        /* a listener's failure is its own */
      }
    }
  }

  /** Whether a WebSocket is open and logged in right now. */
  get loggedIn(): boolean {
    return this.#session !== null;
  }

  /** Whether the client is running (started, not stopped, not failed). */
  get running(): boolean {
    return this.#running;
  }

  /** The highest seq handled and recorded. */
  get lastSeq(): number {
    return this.#state.lastSeq;
  }

  /** Connect (and keep reconnecting) to the proxy. */
  start(): void {
    if (this.#running) return;
    if (this.failure) throw new ClientStopped(`the client failed: ${this.failure.message}`);
    this.#running = true;
    this.#stateLoaded ??= Promise.resolve(this.#store.load()).then((s) => {
      if (s) {
        this.#state = { serverId: s.serverId, lastSeq: s.lastSeq, rehandshake: { ...(s.rehandshake ?? {}) } };
      }
    });
    void this.#connect();
  }

  /**
   * Close the WebSocket and stop reconnecting.  Events not yet handled are
   * forgotten (the proxy keeps them until they are acknowledged).
   */
  stop(): void {
    this.#halt(new ClientStopped("the client was stopped"));
  }

  #halt(err: Error): void {
    this.#running = false;
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#reconnectTimer = this.#retryTimer = null;
    this.#queue = [];
    const socket = this.#socket;
    this.#socket = this.#session = null;
    socket?.close("client stopped");
    for (const w of this.#loginWaiters.splice(0)) w.reject(err);
    for (const w of this.#sessionWaiters.splice(0)) w.reject(err);
  }

  #fatal(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.#emit("fatal", err);
    this.#halt(err);
  }

  /**
   * Resolves once logged in (at once if already).
   *
   * @param timeout milliseconds (default: none: until the client stops).
   * @throws the fatal error (LoginFailed, ServerMismatch, ProtocolViolation
   *   in hello) if the client stops for good first.
   */
  whenLoggedIn(timeout?: number): Promise<LoginInfo> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.#session && this.loginInfo) return Promise.resolve(this.loginInfo);
    if (!this.#running) return Promise.reject(new ClientStopped("the client is not running"));
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const w = {
        resolve: (i: LoginInfo) => {
          clearTimeout(timer);
          resolve(i);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.#loginWaiters.push(w);
      if (timeout !== undefined) {
        timer = setTimeout(() => {
          const i = this.#loginWaiters.indexOf(w);
          if (i >= 0) {
            this.#loginWaiters.splice(i, 1);
            reject(new RequestTimeout("login", timeout));
          }
        }, timeout);
      }
    });
  }

  // -- connecting ------------------------------------------------------------

  async #connect(): Promise<void> {
    this.#reconnectTimer = null;
    if (!this.#running) return;
    await this.#stateLoaded;
    let socket: Session;
    try {
      socket = await Session.open(this.#target, {
        WebSocket: this.#WS,
        serverId: this.#pinned,
        timeout: this.#timeout,
      });
    } catch (e) {
      if (e instanceof ServerMismatch || e instanceof ProtocolViolation) this.#fatal(e);
      else this.#retryLater(e as Error);
      return;
    }
    if (!this.#running) {
      socket.close("client stopped");
      return;
    }
    this.#socket = socket;
    this.hello = socket.hello;
    socket.onNotification = (method, params) => this.#notification(socket, method, params);
    socket.onClose = (reason) => this.#closed(socket, reason);
    if (!socket.open) {
      // It closed right after its hello, before we were listening.
      this.#closed(socket, socket.closeReason);
      return;
    }
    try {
      await this.#adoptServer(socket.hello.serverIdHex);
      const signature = signLogin(this.#secret, socket.hello.serverId, socket.hello.challenge);
      const result = await socket.request(
        "login",
        { node_id: this.nodeId, signature: toHex(signature) },
        this.#timeout,
      );
      if (!socket.open || socket !== this.#socket) return;
      this.#loggedIn(socket, result);
    } catch (e) {
      if (e instanceof LoginFailed) {
        this.#fatal(e);
      } else if (e instanceof ProtocolViolation) {
        this.#emit("error", e);
        socket.abort(e.message);
      } else if (e instanceof ServedElsewhere && e.url && /^wss?:\/\//.test(e.url)) {
        // docs/protocol.md, "Running several processes": log in at the owner.
        this.#target = e.url;
        this.#attempt = 0;
        socket.close("node served elsewhere");
      } else {
        this.#emit("error", e as Error);
        socket.close("login did not succeed");
      }
    }
  }

  async #adoptServer(serverId: string): Promise<void> {
    if (this.#state.serverId === serverId) return;
    // Another proxy's seqs start over.
    const known = this.#state.serverId === null;
    this.#state = {
      serverId,
      lastSeq: known ? this.#state.lastSeq : 0,
      rehandshake: known ? this.#state.rehandshake : {},
    };
    await this.#store.save(this.#state);
  }

  #loggedIn(socket: Session, result: unknown): void {
    const r = (typeof result === "object" && result !== null ? result : {}) as Record<string, unknown>;
    const inbox = (typeof r.inbox === "object" && r.inbox !== null ? r.inbox : {}) as Record<string, unknown>;
    const conns = Array.isArray(r.connections) ? r.connections : [];
    const info: LoginInfo = {
      nodeId: this.nodeId,
      serverId: socket.hello.serverIdHex,
      nextSeq: int(inbox.next_seq ?? 0, "inbox.next_seq"),
      pending: int(inbox.pending ?? 0, "inbox.pending"),
      connections: conns.map(parseConnection),
      limits: socket.hello.limits,
      features: socket.hello.features,
    };
    this.#session = socket;
    this.#ackSent = 0;
    this.#attempt = 0;
    this.loginInfo = info;
    for (const w of this.#loginWaiters.splice(0)) w.resolve(info);
    for (const w of this.#sessionWaiters.splice(0)) w.resolve(socket);
    for (const c of info.connections) this.#addresses.set(c.conn, c.address);
    this.#writer = null;
    this.#emit("login", info);
    if (this.#wantsLease && socket.hello.features.includes("lease")) {
      // Re-handshakes wait for the answer: only a writer should run them.
      this.#acquireAtLogin(socket);
    } else {
      this.#resumeRehandshakes();
    }
    this.#pump();
  }

  /** Ask for the lease again on a new session (it ended with the old one). */
  #acquireAtLogin(socket: Session): void {
    socket.request("lease.acquire", { force: false }, this.#timeout).then(
      (r) => {
        if (socket !== this.#session) return;
        if ((r as { writer?: unknown } | null)?.writer === true) this.#setWriter(true);
      },
      (e: Error) => {
        if (socket !== this.#session) return;
        if (e instanceof LeaseHeld) this.#setWriter(false);
        else this.#emit("error", e);
      },
    );
  }

  #closed(socket: Session, reason: string): void {
    if (socket !== this.#socket) return;
    const wasLoggedIn = socket === this.#session;
    this.#socket = this.#session = null;
    this.#writer = null; // the lease ends with its session
    this.#queue = [];
    this.#ackWanted = 0;
    if (wasLoggedIn) this.#emit("disconnect", reason);
    if (this.#running) this.#retryLater(new ClientError(reason));
  }

  #retryLater(err: Error): void {
    if (!this.#running || this.#reconnectTimer) return;
    this.#emit("error", err);
    const delay = this.#delay(this.#attempt++);
    this.#reconnectTimer = setTimeout(() => void this.#connect(), delay);
  }

  /** Exponential backoff with "equal jitter": half fixed, half random. */
  #delay(attempt: number): number {
    const base = Math.min(this.#backoff.max, this.#backoff.initial * 2 ** Math.min(attempt, 30));
    return base / 2 + Math.random() * (base / 2);
  }

  // -- requests ------------------------------------------------------------------

  #waitSession(): Promise<Session> {
    if (this.#session) return Promise.resolve(this.#session);
    if (this.failure) return Promise.reject(this.failure);
    if (!this.#running) return Promise.reject(new ClientStopped("the client is not running"));
    return new Promise((resolve, reject) => this.#sessionWaiters.push({ resolve, reject }));
  }

  /**
   * Send one request once logged in; resolves with its `result`.
   *
   * @param timeout milliseconds (default: the client's request timeout),
   *   waiting for a login included.
   * @throws ProxyError (a subclass per code), RequestTimeout,
   *   ConnectionLost, ClientStopped.
   */
  call(method: string, params: Record<string, unknown> = {}, timeout = this.#timeout): Promise<unknown> {
    const started = Date.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RequestTimeout(method, timeout)), timeout);
    });
    const run = this.#waitSession().then((s) =>
      s.request(method, params, Math.max(1, timeout - (Date.now() - started))),
    );
    return Promise.race([run, deadline]).finally(() => clearTimeout(timer));
  }

  /**
   * Open a peer connection through the proxy (the split handshake), then
   * send our `init`.
   *
   * @param peer `node_id@host[:port]`.
   * @throws PeerUnreachable (4); HandshakeFailed (5, `local` when act 2
   *   failed here: the half-made connection is disconnected first);
   *   ProtocolViolation when the proxy's reply is malformed.
   */
  async openPeer(
    peer: string,
    opts: { persist?: boolean; features?: Uint8Array } = {},
  ): Promise<PeerLink> {
    const { nodeId, address } = parsePeer(peer);
    const persist = opts.persist ?? false;
    const init = new Initiator(this.#secret, fromHex(nodeId));
    const act1 = init.act1();
    this.#emit("handshake", { step: "act1" });
    const r = (await this.call("connect", {
      peer: `${nodeId}@${address}`,
      act1: toHex(act1),
      persist,
    })) as Record<string, unknown> | null;
    const conn = str(r?.conn, "connect.conn");
    this.#emit("handshake", { step: "act2", conn });
    try {
      init.readAct2(fromServerHex(r?.act2, "connect.act2", 50));
    } catch (e) {
      // Do not leave the half-made connection to the handshake timeout.
      await this.call("disconnect", { conn }).catch(() => undefined);
      if (e instanceof Bolt8Error) {
        throw new HandshakeFailed(5, e.message, { bolt8: e.code, conn }, true);
      }
      throw e;
    }
    const { act3, keys } = init.act3();
    try {
      await this.call("finish", {
        conn,
        act3: toHex(act3),
        sk: toHex(keys.sk),
        rk: toHex(keys.rk),
        ck: toHex(keys.ck),
      });
    } finally {
      keys.sk.fill(0);
      keys.rk.fill(0);
      keys.ck.fill(0);
    }
    this.#emit("handshake", { step: "act3", conn });
    await this.send(conn, encodeInit(opts.features ?? this.#features));
    this.#emit("handshake", { step: "init", conn });
    this.#addresses.set(conn, address);
    this.#linkFeatures.set(conn, toHex(opts.features ?? this.#features));
    return new PeerLink(this, conn, nodeId, address, persist);
  }

  /** Send one Lightning message (2-byte type, then payload) on a connection. */
  async send(conn: string, msg: Uint8Array): Promise<void> {
    if (!(msg instanceof Uint8Array)) throw new TypeError("msg must be a Uint8Array");
    await this.call("send", { conn, msg: toHex(msg) });
  }

  /** Close a connection. */
  async disconnect(conn: string): Promise<void> {
    await this.call("disconnect", { conn });
  }

  /** The node's connections. */
  async connections(): Promise<Connection[]> {
    const r = (await this.call("connections")) as { connections?: unknown } | null;
    if (!Array.isArray(r?.connections)) throw new ProtocolViolation("connections is not a list");
    const conns = r.connections.map(parseConnection);
    for (const c of conns) this.#addresses.set(c.conn, c.address);
    return conns;
  }

  /** Acknowledge every event up to `seq` (the pipeline does it by itself). */
  async ack(seq: number): Promise<void> {
    await this.call("ack", { seq });
  }

  /** Register a webhook; resolves with its id. */
  async webhookSet(url: string): Promise<string> {
    const r = (await this.call("webhook.set", { url })) as { id?: unknown } | null;
    return str(r?.id, "webhook id");
  }

  /** The node's webhooks. */
  async webhookList(): Promise<Array<{ id: string; url: string }>> {
    const r = (await this.call("webhook.list")) as { webhooks?: unknown } | null;
    if (!Array.isArray(r?.webhooks)) throw new ProtocolViolation("webhooks is not a list");
    return r.webhooks.map((w: { id?: unknown; url?: unknown }) => ({
      id: str(w?.id, "webhook id"),
      url: str(w?.url, "webhook url", 4096),
    }));
  }

  /** Remove a webhook. */
  async webhookRemove(id: string): Promise<void> {
    await this.call("webhook.remove", { id });
  }

  /**
   * Take the node's writer lease (`force` moves it from another session).
   * From then on the client asks for it again after every login.
   *
   * @throws LeaseHeld (11) when another session holds it and not `force`.
   */
  async leaseAcquire(force = false): Promise<boolean> {
    this.#wantsLease = true;
    let r: { writer?: unknown } | null;
    try {
      r = (await this.call("lease.acquire", { force })) as { writer?: unknown } | null;
    } catch (e) {
      if (e instanceof LeaseHeld) this.#setWriter(false);
      throw e;
    }
    const writer = r?.writer === true;
    if (writer) this.#setWriter(true);
    return writer;
  }

  /** Give the writer lease up (and stop asking for it at login). */
  async leaseRelease(): Promise<void> {
    this.#wantsLease = false;
    await this.call("lease.release");
    this.#writer = null;
  }

  /**
   * Write a vault entry; `version` is the version replaced (0 for a new
   * name).  Resolves with the new version; VersionConflict (10) otherwise.
   */
  async vaultPut(name: string, blob: Uint8Array, version: number): Promise<number> {
    const r = (await this.call("vault.put", { name, blob: toHex(blob), version })) as {
      version?: unknown;
    } | null;
    return int(r?.version, "vault version");
  }

  /** Read a vault entry (`blob` null for a name never written). */
  async vaultGet(name: string): Promise<{ version: number; blob: Uint8Array | null }> {
    const r = (await this.call("vault.get", { name })) as Record<string, unknown> | null;
    return {
      version: int(r?.version, "vault version"),
      blob:
        r?.blob === null || r?.blob === undefined
          ? null
          : fromServerHex(r.blob, "vault blob", { max: MAX_MESSAGE }),
    };
  }

  /** The vault's entries. */
  async vaultList(): Promise<Array<{ name: string; version: number; size: number }>> {
    const r = (await this.call("vault.list")) as { entries?: unknown } | null;
    if (!Array.isArray(r?.entries)) throw new ProtocolViolation("entries is not a list");
    return r.entries.map((e: Record<string, unknown>) => ({
      name: str(e?.name, "vault name", 64),
      version: int(e?.version, "vault version"),
      size: int(e?.size, "vault size"),
    }));
  }

  /** Remove a vault entry (VersionConflict when `version` is not current). */
  async vaultRemove(name: string, version: number): Promise<void> {
    await this.call("vault.remove", { name, version });
  }

  /**
   * Bind a user name to this node and store the node key encrypted with the
   * password (derived here; the proxy sees `auth` and the blob only).
   */
  async accountSet(user: string, password: string): Promise<void> {
    const s = await this.#waitSession();
    const keys = await deriveAccountKeys(password, s.hello.serverId, user);
    const blob = sealNodeSecret(keys.enc, user, this.#secret);
    keys.enc.fill(0);
    await this.call("account.set", { user, auth: toHex(keys.auth), blob: toHex(blob) });
  }

  /** Remove this node's account. */
  async accountRemove(): Promise<void> {
    await this.call("account.remove");
  }

  // -- events: in order, once ---------------------------------------------------

  #notification(socket: Session, method: string, params: unknown): void {
    if (socket !== this.#socket) return;
    if (method === "lease") {
      const p = params as { writer?: unknown } | null;
      if (socket === this.#session) this.#setWriter(p?.writer === true);
      return;
    }
    if (method === "hello") return;
    let ev: LnEvent;
    try {
      ev = parseEvent(method, params);
    } catch (e) {
      // Never acknowledge what could not be read: drop the session; the
      // event stays in the inbox.
      this.#emit("error", e as Error);
      socket.abort((e as Error).message);
      return;
    }
    if (!this.#onEvent) return; // a passive client acknowledges nothing
    this.#queue.push(ev);
    this.#pump();
  }

  #pump(): void {
    while (!this.#busy && this.#session && this.#retryTimer === null && this.#queue.length) {
      const ev = this.#queue.shift()!;
      if (ev.seq <= this.#state.lastSeq) {
        // Handled before (a replay after a reconnect): ack again only.
        this.#sendAck(ev.seq);
        continue;
      }
      this.#busy = true;
      void this.#handle(ev);
    }
  }

  async #handle(ev: LnEvent): Promise<void> {
    try {
      await this.#onEvent!(ev);
    } catch (e) {
      this.#busy = false;
      this.#failures++;
      this.#emit("error", new ClientError(`event handler failed for seq ${ev.seq}: ${String(e)}`));
      if (this.#running && this.#session) {
        this.#queue.unshift(ev);
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = null;
          this.#pump();
        }, this.#delay(this.#failures - 1));
      }
      return;
    }
    this.#failures = 0;
    // Record the seq (and a persist peer to handshake with again) before
    // acknowledging it; a store that fails is retried with backoff (the
    // event is not handed over again).
    const rehandshake = ev.seq > this.#state.lastSeq ? await this.#wantRehandshake(ev) : null;
    for (let attempt = 0; ev.seq > this.#state.lastSeq; attempt++) {
      const next = { ...this.#state, lastSeq: ev.seq };
      if (rehandshake) next.rehandshake = { ...(this.#state.rehandshake ?? {}), ...rehandshake };
      try {
        await this.#store.save(next);
        this.#state = next;
      } catch (e) {
        this.#emit("error", new ClientError(`cannot record seq ${ev.seq}: ${String(e)}`));
        if (!this.#running) {
          this.#busy = false;
          return;
        }
        await new Promise((r) => setTimeout(r, this.#delay(attempt)));
      }
    }
    this.#sendAck(ev.seq);
    this.#emit("handled", ev.seq);
    for (const node of Object.keys(rehandshake ?? {})) this.#startRehandshake(node);
    this.#busy = false;
    this.#pump();
  }

  // -- persistent peers ------------------------------------------------------------

  /** For a `closed` event asking for a re-handshake: the entry to record. */
  async #wantRehandshake(
    ev: LnEvent,
  ): Promise<Record<string, { address: string; features: string }> | null> {
    if (!this.#rehandshakeOn || ev.kind !== "closed" || !ev.reconnect || !ev.peer || !ev.conn) {
      return null;
    }
    let address = this.#addresses.get(ev.conn);
    if (address === undefined) {
      try {
        await this.connections();
      } catch (e) {
        this.#emit("error", e as Error);
      }
      address = this.#addresses.get(ev.conn);
    }
    if (address === undefined) {
      this.#emit("error", new ClientError(`cannot handshake again with ${ev.peer}: address of ${ev.conn} unknown`));
      return null;
    }
    return { [ev.peer]: { address, features: this.#linkFeatures.get(ev.conn) ?? toHex(this.#features) } };
  }

  #startRehandshake(node: string): void {
    if (this.#rehandshaking.has(node) || !this.#running) return;
    this.#rehandshaking.add(node);
    void this.#rehandshakeLoop(node).finally(() => this.#rehandshaking.delete(node));
  }

  /** Open a new connection to a persist peer; retry with backoff. */
  async #rehandshakeLoop(node: string): Promise<void> {
    for (let attempt = 0; this.#running; attempt++) {
      const entry = this.#state.rehandshake?.[node];
      if (!entry) return;
      let link: PeerLink | null = null;
      try {
        // Left to the device holding the lease (kept in the state until
        // this client gets it).
        if (this.#writer === false) return;
        const conns = await this.connections();
        // Another device of this node may have done it already.
        if (!conns.some((c) => c.peer === node && c.state === "open")) {
          link = await this.openPeer(`${node}@${entry.address}`, {
            persist: true,
            features: fromHex(entry.features),
          });
        }
      } catch (e) {
        if (e instanceof LeaseHeld) {
          if (this.#writer === null) this.#setWriter(false);
          this.#emit("error", new ClientError(`handshake again with ${node} left to the device holding the writer lease`));
          return;
        }
        this.#emit("error", new ClientError(`handshake again with ${node} failed: ${(e as Error).message}`));
        await new Promise((r) => setTimeout(r, this.#delay(attempt)));
        continue;
      }
      const wanted = { ...(this.#state.rehandshake ?? {}) };
      delete wanted[node];
      const next = { ...this.#state, rehandshake: wanted };
      try {
        await this.#store.save(next);
        this.#state = next;
      } catch (e) {
        // Harmless: the next attempt finds the open connection.
        this.#emit("error", new ClientError(`cannot record the state: ${String(e)}`));
      }
      if (link) this.#emit("link", link);
      return;
    }
  }

  /**
   * Acknowledge `seq` soon.  Acks of events handled in one turn of the event
   * loop are coalesced into one `ack` of the highest seq (an ack covers
   * every lower seq too), so a burst of events costs the proxy one ack per
   * batch instead of one per event.
   */
  #sendAck(seq: number): void {
    if (seq > this.#ackWanted) this.#ackWanted = seq;
    if (this.#ackTimer !== null) return;
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = null;
      const s = this.#session;
      const n = this.#ackWanted;
      this.#ackWanted = 0;
      // Lost with the socket: replayed and acknowledged after the next login.
      // An ack at or below one already sent on this session adds nothing.
      if (!s || n <= this.#ackSent) return;
      this.#ackSent = n;
      s.request("ack", { seq: n }, this.#timeout).catch((e: Error) => {
        if (e instanceof ProxyError) this.#emit("error", e);
      });
    }, 0);
  }
}

/**
 * Get the node key of an account from the proxy (a device that has none):
 * opens its own WebSocket, derives `auth`/`enc` from the password, calls
 * `account.login` and decrypts the blob.  Log in with the result as usual.
 *
 * @throws LoginFailed (2) for a wrong user or password; LimitExceeded (7)
 *   after repeated failures; MethodNotFound when the proxy has no accounts.
 */
export async function restoreFromAccount(
  url: string,
  user: string,
  password: string,
  opts: { serverId?: string; WebSocket?: WebSocketConstructor; timeout?: number } = {},
): Promise<Uint8Array> {
  const s = await Session.open(url, { serverId: opts.serverId, WebSocket: opts.WebSocket, timeout: opts.timeout });
  try {
    const keys = await deriveAccountKeys(password, s.hello.serverId, user);
    const r = (await s.request("account.login", { user, auth: toHex(keys.auth) }, opts.timeout)) as Record<
      string,
      unknown
    > | null;
    const blob = fromServerHex(r?.blob, "account blob", { max: 4096 });
    const secret = openNodeSecret(keys.enc, user, blob);
    keys.enc.fill(0);
    if (typeof r?.node_id === "string" && r.node_id !== toHex(nodeIdOf(secret))) {
      throw new ProtocolViolation("the account's node_id does not match its key");
    }
    return secret;
  } finally {
    s.close("account restored");
  }
}

export { MAX_FRAME };
