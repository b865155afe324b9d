/**
 * Typed errors.
 *
 * Every error reply of the proxy becomes a {@link ProxyError} subclass chosen
 * by its code (docs/protocol.md, "Error codes"), so that callers write
 * `err instanceof PeerUnreachable` instead of comparing numbers.  Failures
 * that are not replies (a timeout, a dropped WebSocket, a server that breaks
 * the protocol) are {@link ClientError} subclasses without a code.
 */

/** Base class of everything this package throws on purpose. */
export class ClientError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/**
 * An error reply from the proxy, or the same condition found locally
 * (`local` is then true; e.g. an act 2 that fails its MAC is a
 * {@link HandshakeFailed} found by the client).
 */
export class ProxyError extends ClientError {
  /** The code this class stands for (undefined on the base class). */
  static readonly code: number | undefined = undefined;
  readonly code: number;
  readonly data: unknown;
  readonly local: boolean;
  /** The proxy's message, without the `error N:` prefix. */
  readonly detail: string;

  constructor(code: number, message: string, data?: unknown, local = false) {
    super(`error ${code}: ${message}`);
    this.code = code;
    this.detail = message;
    this.data = data;
    this.local = local;
  }
}

/** -32700: the proxy could not parse what we sent. */
export class ParseError extends ProxyError {
  static override readonly code = -32700;
}
/** -32600: not a valid request (e.g. a second `login`). */
export class InvalidRequest extends ProxyError {
  static override readonly code = -32600;
}
/** -32601: unknown method (or a feature this proxy does not offer). */
export class MethodNotFound extends ProxyError {
  static override readonly code = -32601;
}
/** -32602: a parameter is missing, malformed or out of range. */
export class InvalidParams extends ProxyError {
  static override readonly code = -32602;
}
/** -32603: the proxy failed internally. */
export class InternalError extends ProxyError {
  static override readonly code = -32603;
}
/** 1: a request before a successful login. */
export class NotLoggedIn extends ProxyError {
  static override readonly code = 1;
}
/** 2: login (or account login) refused. */
export class LoginFailed extends ProxyError {
  static override readonly code = 2;
}
/** 3: unknown connection or webhook (or another node's). */
export class UnknownConnection extends ProxyError {
  static override readonly code = 3;
}
/** 4: the proxy could not open TCP to the peer. */
export class PeerUnreachable extends ProxyError {
  static override readonly code = 4;
}
/** 5: the peer closed, or sent a malformed or unauthenticated act 2. */
export class HandshakeFailed extends ProxyError {
  static override readonly code = 5;
}
/** 6: the connection is still in its handshake, or closed. */
export class NotOpen extends ProxyError {
  static override readonly code = 6;
}
/** 7: a limit (connections, inbox, webhooks, message size, rate). */
export class LimitExceeded extends ProxyError {
  static override readonly code = 7;
}
/** 8: not allowed (policy, webhook URL, a user name bound to another node). */
export class NotAllowed extends ProxyError {
  static override readonly code = 8;
}
/** 9: the node is served by another process; `data.url` says where. */
export class ServedElsewhere extends ProxyError {
  static override readonly code = 9;
  /** The owner's public URL, if the proxy said it. */
  get url(): string | undefined {
    const d = this.data as { url?: unknown } | undefined;
    return typeof d?.url === "string" ? d.url : undefined;
  }
}
/** 10: vault version conflict; `data.version` is the current one. */
export class VersionConflict extends ProxyError {
  static override readonly code = 10;
  /** The current version, if the proxy said it. */
  get currentVersion(): number | undefined {
    const d = this.data as { version?: unknown } | undefined;
    return typeof d?.version === "number" ? d.version : undefined;
  }
}
/** 11: another session of the node holds the writer lease. */
export class LeaseHeld extends ProxyError {
  static override readonly code = 11;
}

/** Code -> class, for every code of the contract. */
export const ERROR_CLASSES: ReadonlyMap<number, typeof ProxyError> = new Map(
  [
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    InternalError,
    NotLoggedIn,
    LoginFailed,
    UnknownConnection,
    PeerUnreachable,
    HandshakeFailed,
    NotOpen,
    LimitExceeded,
    NotAllowed,
    ServedElsewhere,
    VersionConflict,
    LeaseHeld,
  ].map((cls) => [cls.code as number, cls as typeof ProxyError]),
);

/**
 * The error for a reply's `error` member.  A code this package does not
 * know (the contract may add some) gives a plain {@link ProxyError}.
 */
export function errorForCode(code: number, message: string, data?: unknown): ProxyError {
  const cls = ERROR_CLASSES.get(code) ?? ProxyError;
  return new cls(code, message, data);
}

/** No reply within the request timeout (waiting for a login included). */
export class RequestTimeout extends ClientError {
  constructor(
    readonly method: string,
    readonly timeout: number,
  ) {
    super(`${method}: no reply from the proxy within ${timeout / 1000} s`);
  }
}

/**
 * The WebSocket closed after the request was sent and before its reply.
 * The proxy may or may not have executed the request.
 */
export class ConnectionLost extends ClientError {
  constructor(
    readonly method: string,
    reason = "",
  ) {
    super(`${method}: the connection to the proxy was lost${reason ? ` (${reason})` : ""}`);
  }
}

/** The proxy could not be reached, or closed the WebSocket before login. */
export class ProxyUnreachable extends ClientError {
  constructor(
    readonly url: string,
    readonly reason: string,
  ) {
    super(`cannot reach the proxy at ${url}: ${reason}`);
  }
}

/** The proxy's `server_id` is not the pinned one. */
export class ServerMismatch extends ClientError {
  constructor(
    readonly expected: string,
    readonly got: string,
  ) {
    super(`proxy server_id is ${got}, expected ${expected}`);
  }
}

/**
 * The server sent something the contract does not allow: a `hello`
 * without a challenge, a field that is not hex or is too long, a frame that
 * is not JSON.
 */
export class ProtocolViolation extends ClientError {}

/** The client is not running (never started, stopped, or failed for good). */
export class ClientStopped extends ClientError {}
