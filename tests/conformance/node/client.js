// The browser-like reference client of tests/conformance: node's `ws` client, used the way a
// browser's WebSocket is (no compression offer, no redirects followed, a failed handshake when an
// offered subprotocol is not selected). Reads a JSON list of cases on stdin, runs them all at
// once, prints one JSON object {case id: observation} on stdout. Python maps an observation to
// stageprobe's failure vocabulary (tests/conformance/reference.py).
//
// A case: {id, url, protocols: [...], headers: {...}, messages: [{send, expect (a regex), timeout}],
//          hold, keepalive, timeout} (seconds). Every wait is bounded by the case's timeout.
'use strict';

const WebSocket = require('ws');

// A page keeps a session it opened for a while: after its steps the reference stays this long
// (seconds) at least before it closes, so a server that closes a session right after accepting
// it is seen doing so, not raced by the client's own close.
const SETTLE = 0.25;

function run(c) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const seen = {
      opened: false, protocol: null, status: null, location: null, code: null, reason: null,
      error: null, outcome: null, step: null, client_closed: false, server_closed_first: false,
      seconds: null,
    };
    let finished = false;
    const timers = [];
    const finish = () => {
      if (finished) return;
      finished = true;
      timers.forEach(clearTimeout);
      seen.seconds = (Date.now() - t0) / 1000;
      resolve([c.id, seen]);
    };
    const later = (ms, fn) => timers.push(setTimeout(fn, ms));
    let ws;
    try {
      ws = new WebSocket(c.url, c.protocols, {
        perMessageDeflate: false, followRedirects: false, handshakeTimeout: c.timeout * 1000,
        closeTimeout: 5000, headers: c.headers || {},
      });
    } catch (err) {
      seen.error = err.message;
      finish();
      return;
    }
    later(c.timeout * 1000, () => {
      seen.error = seen.error || 'timeout';
      ws.terminate();
      later(100, finish);
    });
    const inbox = [];
    let wake = null;
    const notify = () => { if (wake) { const w = wake; wake = null; w(); } };
    ws.on('message', (data) => { inbox.push(data.toString()); notify(); });
    ws.on('unexpected-response', (req, res) => {
      seen.status = res.statusCode;
      seen.location = res.headers.location || null;
      res.resume();
      req.destroy();
      finish();
    });
    ws.on('error', (err) => { seen.error = seen.error || err.message; });
    ws.on('close', (code, reason) => {
      seen.code = code;
      seen.reason = reason.toString();
      notify();
      finish();
    });
    // A server's close frame moves readyState to CLOSING before the TCP connection ends (when
    // the 'close' event fires): a browser's readyState does the same.
    const open = () => ws.readyState === WebSocket.OPEN;
    const waitFor = (ms) => new Promise((done) => {
      const poll = setInterval(() => { if (!open()) notify(); }, 20);
      const timer = setTimeout(notify, ms);
      wake = () => { clearInterval(poll); clearTimeout(timer); done(); };
    });
    ws.on('open', async () => {
      seen.opened = true;
      seen.protocol = ws.protocol || null;
      for (const [i, step] of (c.messages || []).entries()) {
        seen.step = i + 1;
        if (!open()) break;
        if (step.send !== undefined && step.send !== null) ws.send(step.send);
        if (!step.expect) continue;
        if (!inbox.length) await waitFor(step.timeout * 1000);
        if (!inbox.length) {
          if (open()) seen.outcome = 'no_reply';
          break;
        }
        if (!new RegExp(step.expect).test(inbox.shift())) {
          seen.outcome = 'mismatch';
          break;
        }
      }
      if (!seen.outcome && open()) {
        seen.step = null;
        const until = Date.now() + Math.max(c.hold || 0, SETTLE) * 1000;
        while (open() && Date.now() < until) {
          const wait = Math.min(until - Date.now(), (c.keepalive || c.hold || 0) * 1000);
          await waitFor(wait);
          if (open() && c.keepalive) ws.ping();
        }
      }
      if (open()) {
        seen.client_closed = true;
        ws.close(1000);
      } else {
        seen.server_closed_first = true;
      }
    });
  });
}

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', async () => {
  const results = await Promise.all(JSON.parse(input).map(run));
  process.stdout.write(`${JSON.stringify(Object.fromEntries(results))}\n`);
  process.exit(0);
});
