// The app the tests put behind offload: plain Node `http`, no dependencies.
// It reports what reached it, so the tests can check what offload forwarded.
// Listens on PORT (0 = any free port) and prints "listening <port>" once ready.
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { attachWebSocketServer, closeRecord } = require("./websocket.js");

const releases = new Map(); // stream id -> function that finishes that stream
const streamStates = new Map(); // stream id -> "open" | "finished" | "aborted"
const fanouts = new Map(); // fan-out group id -> its open event streams
const seen = []; // "METHOD url" of the latest requests, whatever their route: what reached the app
const SEEN_KEPT = 10000;

function json(res, status, body, headers = {}) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(data);
}

function echo(req, res) {
  const hash = crypto.createHash("sha256");
  let length = 0;
  req.on("data", (chunk) => {
    length += chunk.length;
    hash.update(chunk);
  });
  req.on("end", () => {
    json(res, 200, {
      method: req.method,
      url: req.url,
      httpVersion: req.httpVersion,
      rawHeaders: req.rawHeaders,
      rawTrailers: req.rawTrailers,
      bodyLength: length,
      bodySha256: hash.digest("hex"),
    });
  });
}

// Sends "first", then waits until /release?id=ID is requested before sending "last":
// a proxy that buffers the response never delivers "first", and the test times out.
function stream(req, res, id) {
  res.writeHead(200, { "content-type": "text/plain" });
  res.write("first\n");
  track(res, id);
  releases.set(id, () => res.end("last\n"));
}

// Sends the head at once and nothing else until released: an event stream waiting for events.
function headOnly(req, res, id) {
  res.writeHead(200, { "content-type": "text/event-stream" });
  res.flushHeaders();
  track(res, id);
  releases.set(id, () => res.end("data: done\n\n"));
}

// Neither reads the body nor answers: an app stuck before it looks at the upload.
function noRead(req, res, id) {
  req.pause();
  track(res, id);
}

function track(res, id) {
  streamStates.set(id, "open");
  res.on("close", () => streamStates.set(id, res.writableFinished ? "finished" : "aborted"));
}

// Server-Sent Events: one event now, one more each time /api/release?id=ID is requested,
// until the third ends the stream.
function events(req, res, id) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  let sent = 0;
  const next = () => {
    sent += 1;
    res.write(`id: ${sent}\ndata: ${JSON.stringify({ event: sent, pad: "x".repeat(600) })}\n\n`);
    if (sent === 3) return res.end();
    releases.set(id, next);
  };
  track(res, id);
  next();
}

function bigJson(res, extraHeaders) {
  const items = Array.from({ length: 500 }, (_, n) => ({ id: n, name: `item number ${n}` }));
  json(res, 200, { items }, extraHeaders);
}

function release(res, id) {
  const finish = releases.get(id);
  releases.delete(id);
  if (finish) finish();
  json(res, finish ? 200 : 404, { released: Boolean(finish) });
}

// Counts the request body and answers its length: an upload the app reads to the end.
function upload(req, res) {
  let bytes = 0;
  req.on("data", (chunk) => {
    bytes += chunk.length;
  });
  req.on("end", () => json(res, 200, { bytes }));
}

// Server-Sent Events fan-out (bench/fanout.py): every GET /api/fanout?id=GROUP stays open until
// the client leaves; each POST /api/fanout/send?id=GROUP sends all of them one event stamped with
// the time. X-Accel-Buffering: no makes nginx pass the events on rather than buffer them.
function subscribe(res, id) {
  res.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
  });
  res.write(": subscribed\n\n");
  const group = fanouts.get(id) || new Set();
  fanouts.set(id, group.add(res));
  res.on("close", () => {
    group.delete(res);
    if (group.size === 0 && fanouts.get(id) === group) fanouts.delete(id);
  });
}

function broadcast(res, id) {
  const group = fanouts.get(id) || new Set();
  const event = `data: ${JSON.stringify({ sent: Date.now() })}\n\n`;
  for (const subscriber of group) subscriber.write(event);
  json(res, 200, { clients: group.size });
}

function download(res, bytes) {
  const chunk = Buffer.alloc(64 * 1024, "x");
  res.writeHead(200, { "content-type": "application/octet-stream", "content-length": bytes });
  let left = bytes;
  const pump = () => {
    while (left > 0) {
      const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
      left -= piece.length;
      if (!res.write(piece)) return res.once("drain", pump);
    }
    res.end();
  };
  pump();
}

// A chunked response whose trailer section comes in the same write as its head: fields a proxy
// must not merge into the header section (RFC 9110 §6.5.1).
function withTrailers(res) {
  res.socket.cork();
  res.writeHead(200, { "content-type": "text/plain", trailer: "x-accel-redirect, set-cookie" });
  res.write("the body\n");
  res.addTrailers({
    "x-accel-redirect": "/protected/report.txt",
    "set-cookie": "trailer=1; Path=/",
    location: "/elsewhere",
  });
  res.end();
  process.nextTick(() => res.socket && res.socket.uncork());
}

const server = http.createServer((req, res) => {
  seen.push(`${req.method} ${req.url}`);
  if (seen.length > SEEN_KEPT) seen.shift();
  // Routing as Node documents it, new URL(req.url, base): a target that starts with "//" names
  // a host, and the path after it is what such an app routes.
  if (new URL(req.url, "http://app.invalid").pathname.startsWith("/admin/")) {
    return json(res, 200, { admin: true, url: req.url });
  }
  const url = new URL(`http://app.invalid${req.url}`);
  const id = url.searchParams.get("id") || "";
  switch (url.pathname) {
    case "/api/seen": {
      // how many requests that reached the app contain ?marker= in their method and target
      const marker = url.searchParams.get("marker") || "";
      const count = seen.filter((line) => !line.startsWith("GET /api/seen") && line.includes(marker));
      return json(res, 200, { count: count.length });
    }
    case "/api/trailers":
      return withTrailers(res);
    case "/api/echo":
      return echo(req, res);
    case "/api/cookies":
      res.setHeader("set-cookie", ["a=1; Path=/", "b=2; Path=/; HttpOnly"]);
      return json(res, 200, { cookies: 2 });
    case "/api/hop-by-hop":
      return json(res, 200, {}, {
        connection: "keep-alive, x-private",
        "x-private": "must not reach the client",
        "keep-alive": "timeout=5",
        "proxy-authenticate": "Basic",
        "x-public": "kept",
      });
    case "/api/stream":
      return stream(req, res, id);
    case "/api/head-only":
      return headOnly(req, res, id);
    case "/api/no-read":
      return noRead(req, res, id);
    case "/api/release":
      return release(res, id);
    case "/api/stream-state":
      return json(res, 200, { state: streamStates.get(id) || "unknown" });
    case "/api/slow":
      return setTimeout(() => json(res, 200, { slow: true }), Number(url.searchParams.get("ms")));
    case "/api/download":
      return download(res, Number(url.searchParams.get("bytes")));
    case "/api/upload":
      return upload(req, res);
    case "/api/fanout":
      return subscribe(res, id);
    case "/api/fanout/send":
      return broadcast(res, id);
    case "/api/fanout/clients":
      return json(res, 200, { clients: (fanouts.get(id) || new Set()).size });
    case "/api/events":
      return events(req, res, id);
    case "/api/big-json":
      return bigJson(res, {});
    case "/api/big-json-no-transform":
      return bigJson(res, { "cache-control": "no-transform" });
    case "/api/small-json":
      return json(res, 200, { ok: true });
    case "/api/precompressed":
      res.writeHead(200, { "content-type": "application/json", "content-encoding": "gzip" });
      return res.end(require("node:zlib").gzipSync(JSON.stringify({ already: "compressed" })));
    case "/api/accel": {
      const headers = {
        "x-accel-redirect": url.searchParams.get("to") || "/protected/report.txt",
        "content-disposition": 'attachment; filename="report.txt"',
        "set-cookie": "downloaded=1; Path=/",
      };
      res.writeHead(200, headers);
      return res.end("the app's own body, never sent");
    }
    case "/api/redirect":
      res.writeHead(302, { location: `http://127.0.0.1:${server.address().port}/api/echo?from=redirect` });
      return res.end();
    case "/api/ws-close":
      return json(res, 200, closeRecord(id) || {});
    case "/api/malformed":
      return req.socket.end("HTTP/1.1 ???\r\n\r\n");
    default:
      return json(res, 404, { app: true, method: req.method, url: req.url });
  }
});

attachWebSocketServer(server);
if (process.env.SOCKET) {
  server.listen(process.env.SOCKET, () => console.log(`listening ${process.env.SOCKET}`));
} else {
  server.listen(Number(process.env.PORT || 0), process.env.HOST || "127.0.0.1", () => {
    console.log(`listening ${server.address().port}`);
  });
}
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
