// The example app: a small JSON API in plain Node `http`, no npm dependencies.
// offload serves public/ and streams /api/* here, so this process never touches a file or gzip.
//   PORT=3000 HOST=127.0.0.1 node server.js
"use strict";

const http = require("node:http");

const notes = [{ id: 1, text: "offload served the page; Node answered this list" }];
const eventStreams = new Set(); // open GET /api/events responses

function clock() {
  return { now: new Date().toISOString(), servedBy: `node ${process.version}` };
}

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(data),
  });
  res.end(data);
}

function readJson(req, limitBytes, callback) {
  let size = 0;
  const chunks = [];
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size <= limitBytes) chunks.push(chunk);
  });
  req.on("end", () => {
    if (size > limitBytes) return callback(new Error("body too large"));
    try {
      callback(null, JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}"));
    } catch (error) {
      callback(error);
    }
  });
}

// Server-sent events (https://html.spec.whatwg.org/multipage/server-sent-events.html): the clock
// at once and every second, and each note as it is added.
function openEvents(req, res) {
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
  });
  eventStreams.add(res);
  res.on("close", () => eventStreams.delete(res));
  sendEvent(res, "time", clock());
}

function sendEvent(res, event, data) {
  res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

function broadcast(event, data) {
  for (const res of eventStreams) sendEvent(res, event, data);
}

setInterval(() => broadcast("time", clock()), 1000).unref();

function addNote(req, res) {
  readJson(req, 16 * 1024, (error, body) => {
    const text = !error && typeof body.text === "string" ? body.text.trim() : "";
    if (!text) return send(res, 400, { error: "send {\"text\": \"...\"}" });
    const note = { id: notes.length + 1, text: text.slice(0, 500) };
    notes.push(note);
    send(res, 201, note);
    broadcast("note", note);
  });
}

const server = http.createServer((req, res) => {
  const { pathname } = new URL(`http://app.invalid${req.url}`);
  if (pathname === "/api/time" && req.method === "GET") return send(res, 200, clock());
  if (pathname === "/api/events" && req.method === "GET") return openEvents(req, res);
  if (pathname === "/api/notes" && req.method === "GET") return send(res, 200, notes);
  if (pathname === "/api/notes" && req.method === "POST") return addNote(req, res);
  send(res, 404, { error: `no route for ${req.method} ${pathname}` });
});

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "127.0.0.1";
server.listen(port, host, () => console.log(`example app listening on http://${host}:${port}`));
function stop() {
  for (const res of eventStreams) res.end(); // an open stream would keep server.close() waiting
  server.close(() => process.exit(0));
}
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, stop);
