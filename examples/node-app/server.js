// The example app: a small JSON API in plain Node `http`, no npm dependencies.
// offload serves public/ and streams /api/* here, so this process never touches a file or gzip.
//   PORT=3000 HOST=127.0.0.1 node server.js
"use strict";

const http = require("node:http");

const notes = [{ id: 1, text: "offload served the page; Node answered this list" }];

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

function addNote(req, res) {
  readJson(req, 16 * 1024, (error, body) => {
    const text = !error && typeof body.text === "string" ? body.text.trim() : "";
    if (!text) return send(res, 400, { error: "send {\"text\": \"...\"}" });
    const note = { id: notes.length + 1, text: text.slice(0, 500) };
    notes.push(note);
    send(res, 201, note);
  });
}

const server = http.createServer((req, res) => {
  const { pathname } = new URL(`http://app.invalid${req.url}`);
  if (pathname === "/api/time" && req.method === "GET") {
    return send(res, 200, { now: new Date().toISOString(), servedBy: `node ${process.version}` });
  }
  if (pathname === "/api/notes" && req.method === "GET") return send(res, 200, notes);
  if (pathname === "/api/notes" && req.method === "POST") return addNote(req, res);
  send(res, 404, { error: `no route for ${req.method} ${pathname}` });
});

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "127.0.0.1";
server.listen(port, host, () => console.log(`example app listening on http://${host}:${port}`));
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
