// The HTTP answers of tests/conformance/test_http_curl.py that node plays: node's own http
// server (trailers, gzip cut short, stacked and unasked codings, 200 header lines), and a raw
// `net` server on the second port for the heads http cannot write (bare LF, obs-fold).
// Usage: node http_server.js HTTP_PORT RAW_PORT
"use strict";
const http = require("http");
const net = require("net");
const zlib = require("zlib");

const BODY = JSON.stringify({ status: "healthy", version: "4.5.6" });
const [httpPort, rawPort] = process.argv.slice(2).map(Number);

const routes = {
  "/trailer": (res) => {
    res.writeHead(200, { "Content-Type": "application/json", Trailer: "X-Build" });
    res.write(BODY);
    res.addTrailers({ "X-Build": "4.5.6" });
    res.end();
  },
  "/gzip-cut": (res) => {
    const whole = zlib.gzipSync(BODY);
    const cut = whole.subarray(0, Math.floor(whole.length / 2));
    res.writeHead(200, { "Content-Encoding": "gzip", "Content-Length": cut.length });
    res.end(cut);
  },
  "/gzip-twice": (res) => {
    const twice = zlib.gzipSync(zlib.gzipSync(BODY));
    res.writeHead(200, { "Content-Encoding": "gzip, gzip", "Content-Length": twice.length });
    res.end(twice);
  },
  "/br": (res) => {  // sent whatever Accept-Encoding says
    const packed = zlib.brotliCompressSync(BODY);
    res.writeHead(200, { "Content-Encoding": "br", "Content-Length": packed.length });
    res.end(packed);
  },
  "/many-headers": (res) => {
    for (let i = 0; i < 200; i++) res.setHeader(`X-Pad-${i}`, String(i));
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(BODY);
  },
};

http.createServer((req, res) => {
  const route = routes[req.url];
  if (route) route(res);
  else { res.writeHead(404); res.end(); }
}).listen(httpPort, "127.0.0.1");

const RAW = {
  "/bare-lf": "HTTP/1.1 200 OK\nContent-Type: application/json\nX-Build: 4.5.6\n" +
    `Content-Length: ${BODY.length}\n\n${BODY}`,
  "/folded": "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Build: 4.5\r\n .6\r\n" +
    `Content-Length: ${BODY.length}\r\n\r\n${BODY}`,
};

net.createServer((sock) => {
  let head = "";
  sock.on("data", (data) => {
    head += data.toString("latin1");
    if (!head.includes("\r\n\r\n")) return;
    const path = head.split(" ")[1];
    sock.end(RAW[path] || "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
  });
  sock.on("error", () => {});
}).listen(rawPort, "127.0.0.1");
