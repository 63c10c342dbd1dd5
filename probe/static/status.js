// stageprobe /status: polls api/v1/status and draws the gate, one row per target, a small chart of
// recent results and latencies, and recent state changes. No libraries, nothing fetched from
// elsewhere (the page must work offline, under a strict CSP). Every piece of data goes into the DOM
// with textContent or as a number in an SVG attribute, never as markup: target names and failure
// details come from config files and from the staging backend's answers.
"use strict";
(() => {
  const TOKEN_KEY = "stageprobe.gateToken";
  const STATES = new Set(["pending", "ready", "failing", "stale"]);
  const SVGNS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = parseRefresh(new URLSearchParams(location.search).get("refresh"));
  const $ = (id) => document.getElementById(id);
  const expanded = new Set(); // targets whose state-change list the reader opened
  let timer = 0;
  let last = null; // last good answer, kept on screen while the daemon is unreachable
  let lastAt = 0; // when it arrived (browser clock)
  let updates = 0;
  let memToken = null; // the token when sessionStorage is unavailable
  let locked = false; // the API answered 401: wait for a token, meanwhile show /readyz's answer

  function parseRefresh(text) {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(text || "");
    if (!m) return 2000;
    const ms = parseFloat(m[1]) * { ms: 1, s: 1000, m: 60000 }[m[2] || "s"];
    return Math.min(Math.max(ms, 250), 600000);
  }

  // --- small DOM helpers (text only) ------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
  const stateOf = (s) => (STATES.has(s) ? s : "pending");

  // --- formatting ---------------------------------------------------------------------------
  function fmtMs(ms) {
    if (num(ms) === null) return "–";
    if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    if (ms >= 10) return Math.round(ms) + " ms";
    return ms.toFixed(1) + " ms";
  }
  function fmtAgo(seconds) {
    if (num(seconds) === null) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    const [big, small, bigUnit, smallUnit] = s < 86400
      ? [Math.floor(s / 3600), Math.floor((s % 3600) / 60), " h", " min"]
      : [Math.floor(s / 86400), Math.floor((s % 86400) / 3600), " d", " h"];
    return big + bigUnit + (small ? " " + small + smallUnit : "");
  }
  function fmtClock(epoch) {
    if (num(epoch) === null) return "";
    const d = new Date(epoch * 1000);
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    const today = new Date().toDateString() === d.toDateString();
    return today ? time : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
  }

  // --- fetching -----------------------------------------------------------------------------
  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || memToken; } catch { return memToken; }
  }
  function setToken(value) {
    memToken = value || null;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    } catch { /* storage disabled: the token lives in memToken, for this page only */ }
  }
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, REFRESH_MS);
  }

  async function poll() {
    clearTimeout(timer);
    if (locked) {
      await lockedVerdict();
      schedule();
      return;
    }
    const headers = { Accept: "application/json" };
    const tok = token();
    if (tok) headers.Authorization = "Bearer " + tok;
    let res;
    let body;
    try {
      res = await fetch("api/v1/status", { headers, cache: "no-store", credentials: "same-origin" });
      if (res.status === 401) {
        setToken(null);
        askToken(Boolean(tok));
        await lockedVerdict();
        schedule();
        return;
      }
      body = await res.json();
    } catch {
      stale("daemon unreachable");
      schedule();
      return;
    }
    if (!body || !Array.isArray(body.targets)) {
      stale("unexpected answer (HTTP " + res.status + ")");
    } else {
      $("auth").hidden = true;
      last = body;
      lastAt = Date.now();
      render(body);
    }
    schedule();
  }

  function askToken(rejected) {
    locked = true;
    $("auth").hidden = false;
    $("auth-error").hidden = !rejected;
    $("token").value = "";
    $("token").focus();
    $("gate").className = "gate locked";
    $("verdict").textContent = "Token needed";
    $("since").textContent = "";
    $("summary").textContent = "";
    $("targets").replaceChildren();
    $("changes-box").hidden = true;
    $("updated").className = "muted";
    $("updated").textContent = "locked";
  }

  // Without the token, /readyz still answers {"ready": bool}: show at least the gate's answer.
  async function lockedVerdict() {
    let ready;
    try {
      const res = await fetch("readyz", { cache: "no-store", headers: { Accept: "application/json" } });
      ready = (await res.json()).ready;
    } catch {
      return;
    }
    if (typeof ready !== "boolean" || !locked) return;
    $("gate").className = "gate " + (ready ? "ok" : "bad");
    $("verdict").textContent = ready ? "Ready" : "Not ready";
    $("summary").textContent = "Details need the gate token.";
  }

  function stale(why) {
    const ago = last ? " · last update " + fmtAgo((Date.now() - lastAt) / 1000) + " ago" : "";
    $("updated").textContent = why + ago;
    $("updated").className = "stale";
    $("gate").classList.add("stale");
  }

  // --- rendering ----------------------------------------------------------------------------
  function render(data) {
    const now = num(data.generated_at) ?? Date.now() / 1000;
    renderGate(data, now);
    const rows = data.targets.map((t) => renderTarget(t, now));
    $("targets").replaceChildren(...rows);
    renderChanges(data.targets, now);
    $("updated").className = "muted";
    $("updated").textContent = "updated " + fmtClock(now);
    document.documentElement.dataset.updates = String(++updates);
  }

  function renderGate(data, now) {
    const gate = $("gate");
    const critical = data.targets.filter((t) => t.critical !== false);
    const blocking = critical.filter((t) => t.ready !== true);
    const optional = data.targets.filter((t) => t.critical === false && t.ready !== true);
    let cls = data.ready ? "ok" : "bad";
    let verdict = data.ready ? "Ready" : "Not ready";
    if (data.draining) { cls = "warn"; verdict = "Draining"; }
    gate.className = "gate " + cls;
    $("verdict").textContent = verdict;
    document.title = (data.ready ? "✓ Ready" : "✕ Not ready") + " · stageprobe";
    const since = num(data.since);
    $("since").textContent = since === null ? "" :
      "since " + fmtClock(since) + " (" + fmtAgo(now - since) + " ago)";
    const parts = [];
    if (data.draining) parts.push("the daemon is shutting down");
    if (blocking.length) {
      parts.push("blocked by " + blocking.map((t) => t.name + (t.failure ? " (" + t.failure + ")" : "")).join(", "));
    } else {
      parts.push(critical.length + " of " + critical.length + " critical target" + (critical.length === 1 ? "" : "s") + " ready");
    }
    if (optional.length) parts.push(optional.length + " non-critical not ready");
    $("summary").textContent = parts.join(" · ");
  }

  function fact(label, value, cls) {
    const d = el("div", "fact" + (cls ? " " + cls : ""));
    d.append(el("dt", null, label));
    const dd = el("dd");
    if (value instanceof Node) dd.append(value); else dd.textContent = value;
    d.append(dd);
    return d;
  }

  function latencyFact(lat, label) {
    const v = num(lat[label]);
    const target = num(lat["target_" + label]);
    const frag = document.createDocumentFragment();
    frag.append(el("span", "v", fmtMs(v)));
    if (target !== null) frag.append(el("span", "goal", " / " + fmtMs(target)));
    const over = target !== null && v !== null && v > target;
    return fact(label, frag, over ? "over" : target !== null && v !== null ? "within" : "");
  }

  function renderTarget(t, now) {
    const state = stateOf(t.state);
    const notReady = t.ready !== true;
    const row = el("article", "target state-" + state + (notReady ? " not-ready" : " is-ready") +
      (t.critical === false ? " optional" : ""));
    row.dataset.target = String(t.name);
    row.dataset.state = state;

    const head = el("div", "t-head");
    const title = el("h3", "t-name");
    title.append(el("span", "dot"), el("span", null, t.name));
    head.append(title);
    if (t.kind) head.append(el("span", "badge", t.kind === "websocket" ? "ws" : t.kind));
    if (t.critical === false) head.append(el("span", "badge optional", "non-critical"));
    if (t.url) head.append(el("div", "t-url", t.url));

    const st = el("div", "t-state");
    const label = state === "ready" && notReady ? "not ready" : state;
    st.append(el("span", "pill " + (notReady ? (state === "pending" ? "pending" : "bad") : "ok"), label));
    if (t.failure) st.append(el("span", "t-failure", t.failure));
    const since = num(t.since);
    if (since !== null) st.append(el("span", "muted", "for " + fmtAgo(now - since)));
    if (t.detail) st.append(el("div", "t-detail", t.detail));

    const facts = el("dl", "t-facts");
    const isWs = t.kind === "websocket";
    const code = isWs && num(t.close_code) !== null ? t.close_code : t.status_code;
    facts.append(fact(isWs && num(t.close_code) !== null ? "close" : "status", num(code) ?? "–",
      num(code) !== null && !isWs && (code < 200 || code >= 400) ? "over" : ""));
    const lat = t.latency_ms && typeof t.latency_ms === "object" ? t.latency_ms : {};
    facts.append(latencyFact(lat, "p50"), latencyFact(lat, "p95"));
    const probed = num(t.last_probe_at);
    facts.append(fact("probed", probed === null ? "never" : fmtAgo(now - probed) + " ago"));
    if (num(lat.target_p99) !== null) facts.append(latencyFact(lat, "p99"));
    facts.append(fact("version", t.version || "–", "version"));

    row.append(head, st, facts, chart(t, now));
    const changes = (t.history && Array.isArray(t.history.transitions)) ? t.history.transitions : [];
    if (changes.length) row.append(changeDetails(t.name, changes, now));
    return row;
  }

  function chart(t, now) {
    const h = t.history && typeof t.history === "object" ? t.history : {};
    const points = Array.isArray(h.points) ? h.points : [];
    const fig = el("figure", "t-chart");
    const W = 240, H = 56, BAR = 6, TOP = 4, PLOT = H - BAR - TOP - 3;
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    const lat = t.latency_ms && typeof t.latency_ms === "object" ? t.latency_ms : {};
    const bound = num(lat.target_p95) ?? num(lat.target_p99) ?? num(lat.target_p50);
    const values = points.map((p) => num(p[3])).filter((v) => v !== null);
    const peak = Math.max(1, ...values, bound !== null ? bound * 1.25 : 0);
    const n = points.length;
    const bw = n ? W / n : W;
    const y = (ms) => TOP + PLOT - (Math.min(ms, peak) / peak) * PLOT;
    box.append(svg("rect", { class: "bg", x: 0, y: 0, width: W, height: H - BAR - 1 }));
    let path = "";
    let pen = false;
    let band = -1; // start index of the run of failing buckets being drawn as one band
    points.forEach((p, i) => {
      const count = num(p[1]) || 1;
      const fails = num(p[2]) || 0;
      const x = i * bw;
      if (fails > 0 && band < 0) band = i;
      if (band >= 0 && (fails === 0 || i === n - 1)) {
        const end = fails > 0 ? i + 1 : i;
        box.append(svg("rect", { class: "failband", x: band * bw, y: 0, width: Math.max((end - band) * bw, 1), height: H - BAR - 1 }));
        band = -1;
      }
      const strip = svg("rect", {
        class: fails === 0 ? "s-ok" : fails >= count ? "s-bad" : "s-mixed",
        x, y: H - BAR, width: Math.max(bw - (n > 80 ? 0 : 0.6), 0.8), height: BAR,
      });
      const tip = svg("title");
      tip.textContent = fmtClock(p[0]) + " · " + (fails ? fails + " of " + count + " failed" +
        (p[4] ? " (" + p[4] + ")" : "") : count + " ok") + (num(p[3]) !== null ? " · " + fmtMs(p[3]) : "");
      strip.append(tip);
      box.append(strip);
      const v = num(p[3]);
      if (v === null) { pen = false; return; }
      const cx = (x + bw / 2).toFixed(2);
      path += (pen ? "L" : "M") + cx + " " + y(v).toFixed(2);
      pen = true;
    });
    if (bound !== null) {
      const by = y(bound).toFixed(2);
      box.append(svg("line", { class: "bound", x1: 0, x2: W, y1: by, y2: by, "vector-effect": "non-scaling-stroke" }));
    }
    if (path) box.append(svg("path", { class: "lat", d: path, "vector-effect": "non-scaling-stroke" }));
    if (n === 1 && values.length) {
      box.append(svg("circle", { class: "lat-dot", cx: W / 2, cy: y(values[0]), r: 1.8 }));
    }
    const label = svg("title");
    label.textContent = "recent results and latency of " + t.name;
    box.prepend(label);
    fig.append(box);
    const cap = el("figcaption");
    const count = num(h.count) ?? 0;
    if (!n) {
      cap.textContent = "no results yet";
    } else {
      const first = num(points[0][0]);
      const failed = num(h.failures) ?? 0;
      cap.append(el("span", null, "last " + fmtAgo(first === null ? 0 : now - first) + " · " + count +
        " probe" + (count === 1 ? "" : "s")));
      cap.append(el("span", failed ? "fails" : null, " · " + failed + " failed"));
      const worst = values.length ? Math.max(...values) : null;
      if (worst !== null) cap.append(el("span", null, " · max " + fmtMs(worst) + (h.measure && h.measure !== "total" ? " " + h.measure : "")));
    }
    fig.append(cap);
    return fig;
  }

  function changeItem(c, now, name) {
    const li = el("li");
    li.append(el("time", "when", fmtClock(c.at)), el("span", "ago", fmtAgo(now - c.at) + " ago"));
    if (name !== undefined) li.append(el("strong", "who", name));
    const move = el("span", "move");
    move.append(el("span", "pill small " + pillFor(c.old), stateOf(c.old)), el("span", "arrow", "→"),
      el("span", "pill small " + pillFor(c.new), stateOf(c.new)));
    li.append(move);
    if (c.failure) li.append(el("span", "t-failure", c.failure));
    if (c.detail) li.append(el("span", "why", c.detail));
    return li;
  }
  const pillFor = (s) => ({ ready: "ok", failing: "bad", stale: "bad" })[s] || "pending";

  function changeDetails(name, changes, now) {
    const d = el("details", "t-changes");
    d.open = expanded.has(name);
    d.addEventListener("toggle", () => { if (d.open) expanded.add(name); else expanded.delete(name); });
    d.append(el("summary", null, changes.length + " recent state change" + (changes.length === 1 ? "" : "s")));
    const ol = el("ol");
    for (const c of changes.slice(0, 10)) ol.append(changeItem(c, now));
    d.append(ol);
    return d;
  }

  function renderChanges(targets, now) {
    const all = [];
    for (const t of targets) {
      const changes = t.history && Array.isArray(t.history.transitions) ? t.history.transitions : [];
      for (const c of changes) if (num(c.at) !== null) all.push([c, t.name]);
    }
    all.sort((a, b) => b[0].at - a[0].at);
    $("changes").replaceChildren(...all.slice(0, 15).map(([c, name]) => changeItem(c, now, name)));
    $("changes-box").hidden = all.length === 0;
  }

  // --- start ----------------------------------------------------------------------------------
  $("every").textContent = REFRESH_MS >= 1000 ? REFRESH_MS / 1000 + " s" : REFRESH_MS + " ms";
  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    setToken(value);
    $("token").value = "";
    $("auth-error").hidden = true;
    locked = false;
    poll();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  poll();
})();
