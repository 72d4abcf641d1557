"use strict";
// Minimal, dependency-free WebSocket server (RFC 6455) for the test upstream app.
// Endpoints: /ws/echo (echo + test commands), /ws/reject (refused handshake).
const crypto = require("node:crypto");

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"; // §1.3
const SUPPORTED_PROTOCOLS = new Set(["chat.v2", "chat.v1"]);
const MAX_MESSAGE = 64 * 1024 * 1024; // well above the 16 MiB the tests need
const OP = { CONT: 0x0, TEXT: 0x1, BINARY: 0x2, CLOSE: 0x8, PING: 0x9, PONG: 0xa }; // §5.2
const CLOSE_TIMEOUT_MS = 1000;
const utf8 = new TextDecoder("utf-8", { fatal: true });

// Close code/reason the client sent, keyed by the `id` query parameter ("" if absent).
const closeRecords = new Map();
const closeRecord = (id) => closeRecords.get(id) || null;

// A protocol violation; `code` is the close status to fail the connection with (§7.4.1).
class WsError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

function attachWebSocketServer(server) {
  server.on("upgrade", (req, socket, head) => {
    socket.on("error", () => socket.destroy()); // never let a socket error crash us
    try { handleUpgrade(server, req, socket, head); } catch { socket.destroy(); }
  });
}

// ---- Handshake (§4.2) ------------------------------------------------------

function handleUpgrade(server, req, socket, head) {
  const qIndex = req.url.indexOf("?");
  const path = qIndex === -1 ? req.url : req.url.slice(0, qIndex);
  const query = qIndex === -1 ? "" : req.url.slice(qIndex + 1);
  if (!path.startsWith("/ws/")) {
    if (server.listenerCount("upgrade") > 1) return; // someone else may handle it
    return refuse(socket, "404 Not Found", "not found\n");
  }
  if (path === "/ws/reject") return refuse(socket, "403 Forbidden", "websocket upgrade refused\n");
  if (!isValidHandshake(req)) {
    return socket.write("HTTP/1.1 400 Bad Request\r\n\r\n", () => socket.destroy());
  }
  if (path !== "/ws/echo") return refuse(socket, "404 Not Found", "no such websocket endpoint\n");

  const protocol = chooseProtocol(req.headers["sec-websocket-protocol"]);
  const cookie = req.headers.cookie || "";
  const requestId = req.headers["x-request-id"] || "";
  const lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
    `Sec-WebSocket-Accept: ${acceptKey(req.headers["sec-websocket-key"])}`,
    // Never send Sec-WebSocket-Extensions: no extension is negotiated (§9.1).
    ...(protocol ? [`Sec-WebSocket-Protocol: ${protocol}`] : []),
    `X-Seen-Cookie: ${cookie}`,
    `X-Seen-Query: ${query}`,
  ];
  socket.write(lines.join("\r\n") + "\r\n\r\n");
  const id = new URLSearchParams(query).get("id") || "";
  const conn = new Connection(socket, { id, protocol, cookie, query, requestId });
  if (head && head.length) conn.onData(head); // bytes that arrived with the handshake
}

function refuse(socket, status, body) {
  const len = Buffer.byteLength(body);
  socket.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${len}\r\n` +
    `Connection: close\r\n\r\n${body}`);
}

// §4.2.1: GET, Upgrade: websocket, Connection: Upgrade, a 16-byte base64 key, version 13.
function isValidHandshake(req) {
  const tokens = (v) => String(v || "").toLowerCase().split(",").map((s) => s.trim());
  const key = req.headers["sec-websocket-key"] || "";
  return req.method === "GET" &&
    tokens(req.headers.upgrade).includes("websocket") &&
    tokens(req.headers.connection).includes("upgrade") &&
    String(req.headers["sec-websocket-version"]).trim() === "13" &&
    /^[A-Za-z0-9+/]{22}==$/.test(key.trim());
}

// §4.2.2 step 5.4: base64(SHA-1(key + GUID)).
const acceptKey = (key) => crypto.createHash("sha1").update(key.trim() + GUID).digest("base64");

// §4.2.2 step 5.5 / §1.9: pick the first client-offered subprotocol we support.
function chooseProtocol(header) {
  const offered = String(header || "").split(",").map((s) => s.trim());
  return offered.find((p) => SUPPORTED_PROTOCOLS.has(p)) || null;
}

// ---- Framing (§5) ----------------------------------------------------------

// Parse and unmask one frame (layout per §5.2) from the reader; null if bytes are missing.
function parseFrame(reader) {
  if (reader.length < 2) return null;
  const hdr = reader.peek(Math.min(14, reader.length));
  const fin = (hdr[0] & 0x80) !== 0, opcode = hdr[0] & 0x0f;
  if (hdr[0] & 0x70) throw new WsError(1002, "RSV bits set without extension"); // §5.2
  if (!Object.values(OP).includes(opcode)) throw new WsError(1002, "unknown opcode");
  if (!(hdr[1] & 0x80)) throw new WsError(1002, "client frame not masked"); // §5.1
  let len = hdr[1] & 0x7f;
  const offset = len === 126 ? 4 : len === 127 ? 10 : 2; // 7-bit, 16-bit or 64-bit length
  if (hdr.length < offset) return null;
  if (len === 126) len = hdr.readUInt16BE(2);
  if (len === 127) {
    const big = hdr.readBigUInt64BE(2); // (its most significant bit must be 0)
    if (big > BigInt(MAX_MESSAGE)) throw new WsError(1009, "frame too big");
    len = Number(big);
  }
  if (opcode >= 0x8 && (!fin || len > 125)) throw new WsError(1002, "bad control frame"); // §5.5
  if (reader.length < offset + 4 + len) return null;
  const frame = reader.take(offset + 4 + len);
  const mask = frame.subarray(offset, offset + 4);
  const payload = frame.subarray(offset + 4);
  for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3]; // §5.3
  return { fin, opcode, payload };
}

// Byte queue that only concatenates once a whole frame is available (linear in size).
function makeReader() {
  const chunks = [];
  return {
    length: 0,
    push(chunk) { chunks.push(chunk); this.length += chunk.length; },
    peek(n) { // merge just enough leading chunks, in one copy, to expose n bytes
      let k = 0;
      for (let have = 0; have < n; k++) have += chunks[k].length;
      if (k > 1) chunks.splice(0, k, Buffer.concat(chunks.slice(0, k)));
      return chunks[0].subarray(0, n);
    },
    take(n) { // the socket's chunks are ours, so the caller may unmask in place
      const out = this.peek(n);
      chunks[0] = chunks[0].subarray(n);
      if (chunks[0].length === 0) chunks.shift();
      this.length -= n;
      return out;
    },
  };
}

// Server-to-client frames are never masked (§5.1); each message is one FIN frame.
function sendFrame(socket, opcode, payload) {
  if (!socket.writable) return;
  const n = payload.length; // 7-bit, 16-bit or 64-bit length (§5.2)
  const header = Buffer.alloc(n < 126 ? 2 : n < 65536 ? 4 : 10);
  header[0] = 0x80 | opcode;
  header[1] = n < 126 ? n : n < 65536 ? 126 : 127;
  if (header[1] === 126) header.writeUInt16BE(n, 2);
  if (header[1] === 127) header.writeBigUInt64BE(BigInt(n), 2);
  socket.cork(); // header + payload leave in one TCP write, without copying the payload
  socket.write(header);
  if (payload.length) socket.write(payload);
  socket.uncork();
}

// §5.5.1: optional 2-byte status code, then an optional UTF-8 reason.
function closePayload(code, reason = "") {
  if (code === undefined) return Buffer.alloc(0);
  return Buffer.concat([Buffer.from([(code >> 8) & 0xff, code & 0xff]), Buffer.from(reason)]);
}

// §7.4: codes a peer may legitimately send in a close frame.
const isValidCloseCode = (c) =>
  (c >= 1000 && c <= 1014 && ![1004, 1005, 1006].includes(c)) || (c >= 3000 && c <= 4999);

// ---- Connection ------------------------------------------------------------

class Connection {
  constructor(socket, info) {
    Object.assign(this, { socket, info, reader: makeReader(), timer: null });
    this.fragments = null; // payloads of a fragmented message in progress (§5.4)
    this.closeSent = this.closeReceived = this.stopped = false;
    socket.setNoDelay(true);
    socket.on("data", (chunk) => this.onData(chunk));
    socket.on("end", () => socket.end());
    socket.on("close", () => { // §7.1.5: no close frame received means code 1006
      clearTimeout(this.timer);
      if (!this.closeReceived) closeRecords.set(info.id, { code: 1006, reason: "" });
    });
  }

  onData(chunk) {
    if (this.stopped) return;
    this.reader.push(chunk);
    try {
      let frame;
      while (!this.stopped && (frame = parseFrame(this.reader))) this.onFrame(frame);
    } catch (err) {
      this.fail(err instanceof WsError ? err.code : 1011);
    }
  }

  onFrame({ fin, opcode, payload }) {
    if (opcode === OP.CLOSE) return this.onClose(payload);
    if (opcode === OP.PING && !this.closeSent) sendFrame(this.socket, OP.PONG, payload); // §5.5.2
    if (opcode >= 0x8) return; // control frame handled; pongs need no answer (§5.5.3)
    if ((opcode === OP.CONT) !== (this.fragments !== null)) { // §5.4: no interleaved messages
      throw new WsError(1002, "unexpected continuation state");
    }
    if (opcode !== OP.CONT) Object.assign(this, { fragments: [], msgOpcode: opcode, msgSize: 0 });
    this.fragments.push(payload);
    this.msgSize += payload.length;
    if (this.msgSize > MAX_MESSAGE) throw new WsError(1009, "message too big");
    if (!fin) return;
    const data = Buffer.concat(this.fragments);
    this.fragments = null;
    if (!this.closeSent) this.onMessage(this.msgOpcode, data); // §5.5.1: no data after close
  }

  // /ws/echo behaviour: echo everything, except the test commands.
  onMessage(opcode, data) {
    if (opcode === OP.BINARY) return sendFrame(this.socket, OP.BINARY, data);
    const text = decodeText(data);
    const cmd = /^close:(\d+):(.*)$/s.exec(text);
    if (cmd) return this.sendClose(Number(cmd[1]), cmd[2]);
    if (text === "hello") {
      const { protocol, cookie, query, requestId } = this.info;
      const body = { subprotocol: protocol, cookie: cookie || null, query: query || null, requestId };
      return sendFrame(this.socket, OP.TEXT, Buffer.from(JSON.stringify(body)));
    }
    sendFrame(this.socket, OP.TEXT, data);
  }

  onClose(payload) { // §5.5.1
    if (payload.length === 1) throw new WsError(1002, "bad close payload");
    const code = payload.length ? payload.readUInt16BE(0) : undefined;
    if (code !== undefined && !isValidCloseCode(code)) throw new WsError(1002, "bad close code");
    const reason = decodeText(payload.subarray(2));
    this.closeReceived = this.stopped = true;
    closeRecords.set(this.info.id, { code: code === undefined ? 1005 : code, reason }); // §7.1.5
    this.sendClose(code, ""); // echo the status code; a no-op if we sent close first
    this.socket.end(); // §7.1.1: the server closes the TCP connection first
  }

  sendClose(code, reason) {
    if (this.closeSent) return;
    this.closeSent = true;
    sendFrame(this.socket, OP.CLOSE, closePayload(code, reason));
    // Wait for the peer's close reply (§7.1.2), but not forever.
    this.timer = setTimeout(() => this.socket.destroy(), CLOSE_TIMEOUT_MS);
  }

  fail(code) { // §7.1.7 "Fail the WebSocket Connection"
    this.stopped = true;
    this.sendClose(code, "");
    this.socket.end();
  }
}

// Text messages and close reasons must be valid UTF-8 (§8.1).
function decodeText(buf) {
  try { return utf8.decode(buf); } catch { throw new WsError(1007, "invalid UTF-8"); }
}

module.exports = { attachWebSocketServer, closeRecord };
