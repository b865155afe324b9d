/**
 * lnproxy-client: a Lightning node for browsers and Node that keeps its key
 * and lets an lnproxy hold its peer connections.  See README.md.
 */

export * from "./errors.js";
export { fromHex, toHex } from "./bytes.js";
export {
  Initiator,
  Bolt8Error,
  hkdf2,
  nonce96,
  isNodeId,
  ACT1_SIZE,
  ACT2_SIZE,
  ACT3_SIZE,
  type TransportKeys,
} from "./noise.js";
export {
  newNodeSecret,
  isNodeSecret,
  nodeIdOf,
  loginDigest,
  signDigest,
  signLogin,
  verifyDigest,
} from "./keys.js";
export {
  ACCOUNT_KDF,
  accountSalt,
  deriveAccountKeys,
  sealNodeSecret,
  openNodeSecret,
  type AccountKeys,
} from "./account.js";
export {
  Session,
  parseHello,
  findWebSocket,
  SUBPROTOCOL,
  PROTOCOL_VERSION,
  type Hello,
  type SessionOptions,
  type WebSocketLike,
  type WebSocketConstructor,
} from "./session.js";
export {
  LnproxyClient,
  PeerLink,
  parsePeer,
  parseEvent,
  parseConnection,
  encodeInit,
  memoryState,
  webStorageState,
  restoreFromAccount,
  MAX_MESSAGE,
  MAX_FRAME,
  type LnEvent,
  type Connection,
  type LoginInfo,
  type ClientState,
  type StateStore,
  type ClientOptions,
} from "./client.js";
