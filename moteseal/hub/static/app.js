// moteseal hub dashboard: plain DOM, uPlot for charts, server-sent events for live updates.
"use strict";

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "-";
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
}
function fmtAge(s) {
  if (s === null || s === undefined) return "-";
  if (s < 120) return s.toFixed(0) + " s";
  if (s < 7200) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function fmtValue(v) {
  return typeof v === "number" ? String(Math.round(v * 100) / 100) : String(v);
}
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function live(on) {
  const el = document.getElementById("live");
  el.textContent = on ? "live" : "reconnecting…";
  el.className = on ? "ok" : "warn";
}
function listen(onEvent) {
  const es = new EventSource("/events");
  es.onopen = () => live(true);
  es.onerror = () => live(false);
  es.onmessage = (m) => onEvent(JSON.parse(m.data));
  return es;
}

function gateway(g) {
  // The gateway's status file: its links, what it relayed and dropped, how fresh the file is.
  const box = document.getElementById("gateway");
  box.innerHTML = "";
  if (g.error) { box.textContent = g.error; box.className = "warn"; return; }
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of ["gateway", "link", "connected", "queue", "relayed", "dropped", "up", "updated"]) {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
  }
  const dropped = Object.values(g.dropped || {}).reduce((a, b) => a + b, 0);
  const age = g.updated ? Date.now() / 1000 - g.updated : null;
  const body = t.createTBody();
  for (const [name, link] of Object.entries(g.links || {})) {
    const tr = body.insertRow();
    cell(tr, g.name || "-");
    cell(tr, name);
    cell(tr, g.stopped ? "stopped" : (link.connected ? "yes" : "no"), link.connected && !g.stopped ? "ok" : "bad");
    cell(tr, String(link.queue_depth));
    cell(tr, String((g.relayed_by_link || {})[name] ?? g.relayed), "num");
    cell(tr, String(dropped), dropped ? "warn" : "");
    cell(tr, fmtAge(g.uptime_s));
    cell(tr, age === null ? "-" : fmtAge(age) + " ago", age !== null && age > 60 ? "warn" : "");
  }
  box.appendChild(t);
}

async function fleetPage() {
  let pending = false;
  async function load() {
    pending = false;
    const r = await fetch("/api/fleet");
    const doc = await r.json();
    document.getElementById("peer").textContent = "peer " + doc.peer;
    const body = document.querySelector("#fleet tbody");
    body.innerHTML = "";
    for (const d of doc.devices) {
      const tr = document.createElement("tr");
      const a = document.createElement("a");
      a.href = "/device/" + encodeURIComponent(d.device);
      a.textContent = d.device;
      const td = document.createElement("td");
      td.appendChild(a);
      tr.appendChild(td);
      cell(tr, fmtTime(d.last_seen));
      cell(tr, String(d.last_hour));
      cell(tr, fmtAge(d.session_age), d.session_age === null ? "warn" : "ok");
      cell(tr, d.key, d.key === "revoked" ? "bad" : "");
      cell(tr, String(d.refusals), d.refusals ? "warn" : "");
      cell(tr, String(d.lost), d.lost ? "bad" : "");
      body.appendChild(tr);
    }
    if (doc.gateway) gateway(doc.gateway);
    const counts = document.getElementById("counts");
    counts.innerHTML = "";
    for (const [k, v] of Object.entries(doc.counts)) {
      const span = document.createElement("span");
      span.className = "count" + (v && /refused|rejected|lost|store_errors|unstored/.test(k) ? " bad" : "");
      span.textContent = k.replace("_", " ") + " ";
      const b = document.createElement("b");
      b.textContent = String(v);
      span.appendChild(b);
      counts.appendChild(span);
    }
  }
  listen((ev) => {
    if (!pending) { pending = true; setTimeout(load, 300); }
  });
  setInterval(load, 30000);
  await load();
}

async function devicePage() {
  const device = decodeURIComponent(location.pathname.split("/").pop());
  document.getElementById("device").textContent = device;
  document.title = "moteseal " + device;
  const series = {};   // field -> {xs: [], ys: [], plot}
  let lastId = 0;
  let pending = false;

  function chart(field) {
    if (series[field]) return series[field];
    const box = document.createElement("div");
    box.className = "chart";
    box.id = "chart-" + field;
    const h = document.createElement("h3");
    const name = document.createElement("span");
    name.textContent = field;
    const latest = document.createElement("span");
    latest.className = "latest";
    h.appendChild(name);
    h.appendChild(latest);
    box.appendChild(h);
    document.getElementById("charts").appendChild(box);
    const s = { xs: [], ys: [], plot: null, box: box, latest: latest };
    s.plot = new uPlot({ width: 400, height: 170, legend: { show: false },
                         cursor: { drag: { x: true, y: false } },
                         series: [{}, { label: field, stroke: "#1a73e8", width: 1.5,
                                        points: { show: false } }],
                         scales: { x: { time: true } } }, [[], []], box);
    series[field] = s;
    return s;
  }
  function recent(rows) {
    const body = document.querySelector("#recent tbody");
    for (const r of rows) {
      const tr = document.createElement("tr");
      cell(tr, fmtTime(r.ts));
      cell(tr, String(r.seq));
      cell(tr, r.field);
      cell(tr, fmtValue(r.value), "num");
      body.insertBefore(tr, body.firstChild);
    }
    while (body.rows.length > 50) body.deleteRow(body.rows.length - 1);
  }
  function events(list) {
    const body = document.querySelector("#events tbody");
    body.innerHTML = "";
    for (const e of list.slice().reverse()) {
      const tr = document.createElement("tr");
      cell(tr, fmtTime(e.ts));
      cell(tr, e.event, e.event === "refused" ? "bad" : "");
      cell(tr, [e.via, e.reason, e.seq !== undefined ? "seq " + e.seq : ""].filter(Boolean).join(" "));
      body.appendChild(tr);
    }
  }
  async function load() {
    pending = false;
    const r = await fetch("/api/device/" + encodeURIComponent(device) + "?after=" + lastId);
    const doc = await r.json();
    const fresh = doc.rows.filter((row) => row.id > lastId);
    for (const row of fresh) {
      lastId = Math.max(lastId, row.id);
      if (typeof row.value !== "number") continue;
      const s = chart(row.field);
      s.xs.push(row.ts);
      s.ys.push(row.value);
    }
    for (const f in series) {
      const s = series[f];
      if (s.xs.length > 5000) { s.xs.splice(0, s.xs.length - 5000); s.ys.splice(0, s.ys.length - 5000); }
      s.plot.setData([s.xs, s.ys]);
      s.box.dataset.points = String(s.xs.length);  // what the chart holds, for tests and curious users
      if (s.ys.length) s.latest.textContent = fmtValue(s.ys[s.ys.length - 1]) + "  ·  " + s.xs.length + " points";
    }
    recent(fresh);
    events(doc.events);
  }
  document.getElementById("command").addEventListener("submit", async (e) => {
    e.preventDefault();
    const status = document.getElementById("status");
    const r = await fetch("/api/device/" + encodeURIComponent(device) + "/command", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ command: document.getElementById("cmd").value }) });
    const doc = await r.json();
    status.textContent = r.ok ? "command " + doc.id + ": " + doc.state : doc.error;
    status.className = r.ok ? "ok" : "bad";
  });
  listen((ev) => {
    if (ev.device === device && !pending) { pending = true; setTimeout(load, 100); }
  });
  await load();
}
