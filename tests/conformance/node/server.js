// node's `ws` as a third-party WebSocket server for tests/conformance: one process serves every
// case path on 127.0.0.1 (the port is argv[2]; it prints "listening PORT" once it listens).
// Routing is done the way ws's README does it: an `upgrade` handler on node's HTTP server that
// hands a request to a WebSocketServer in noServer mode, or writes an HTTP answer and destroys
// the socket.
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const plain = new WebSocketServer({ noServer: true, handleProtocols: () => false });
const chat = new WebSocketServer({
  noServer: true,
  handleProtocols: (offered) => (offered.has('chat.v1') ? 'chat.v1' : false),
});

function answer(socket, status, headers, body) {
  const lines = [`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}`, 'Connection: close',
    `Content-Length: ${Buffer.byteLength(body)}`, ...headers];
  socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
}

// What each path does once the session is open.
const sessions = {
  '/echo': (ws) => ws.on('message', (data, binary) => ws.send(data, { binary })),
  '/subprotocol': (ws) => ws.on('message', (data, binary) => ws.send(data, { binary })),
  '/close-4001': (ws) => ws.close(4001, 'bad token'),
  '/close-1008-after-msg': (ws) => ws.once('message', () => ws.close(1008, 'policy violation')),
  // A handler that throws would take the whole process down: a crash is a 1011 close here.
  '/crash-after-msg': (ws) => ws.once('message', () => ws.close(1011, 'internal error')),
  '/silent': () => {},
  '/cut-1s': (ws) => {
    const timer = setTimeout(() => ws.close(1001, 'session expired'), 1000);
    ws.on('close', () => clearTimeout(timer));
  },
};

const server = http.createServer((req, res) => {
  if (new URL(req.url, 'http://x').pathname === '/http') {
    res.end('plain http\n');
  } else {
    res.statusCode = 404;
    res.end('not found\n');
  }
});

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => socket.destroy());
  const path = new URL(req.url, 'http://x').pathname;
  if (path === '/reject') {
    answer(socket, 403, ['Content-Type: text/plain'], 'bad token');
  } else if (path === '/redirect' || path === '/moved') {
    answer(socket, path === '/moved' ? 301 : 302, ['Location: /echo?token=redirect-secret'], '');
  } else if (sessions[path]) {
    const wss = path === '/subprotocol' ? chat : plain;
    wss.handleUpgrade(req, socket, head, (ws) => sessions[path](ws));
  } else {
    // ws's README: an upgrade no WebSocketServer handles is destroyed (an upgrade request never
    // reaches the HTTP route of /http either: node hands every one to this handler).
    socket.destroy();
  }
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
