/* The dashboard (live: server-sent events from /events) and the performance report (the
   data embedded in the page), drawn with plots.js. */
"use strict";

const LIVE_WINDOW = 60;        // seconds of task stream and lines shown live ...
const MIN_WINDOW = 2;          // ... or, while the dashboard is younger than that, its age
const LIVE_TASKS = 20000;      // tasks kept by the live page (the server keeps as many)
const LIVE_SAMPLES = 600;

const state = { workers: [], samples: [], tasks: [], errors: [], output: [], pmaps: [], lost: 0, t: 0 };

function merge(message) {
  if (message.kind !== "update") {             // "state" (on connect) or "report": replace
    Object.assign(state, message);
    return;
  }
  const keep = (list, added, max) => { list.push(...added); if (list.length > max) list.splice(0, list.length - max); };
  keep(state.tasks, message.tasks, LIVE_TASKS);
  keep(state.samples, message.samples, LIVE_SAMPLES);
  keep(state.errors, message.errors, 50);
  keep(state.output, message.output, 500);
  state.workers = message.workers;
  state.pmaps = message.pmaps;
  state.lost = message.lost;
  state.t = message.t;
}

function text(tag, content, attrs) {
  const node = document.createElement(tag);
  node.textContent = content;
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function formatUptime(s) {
  if (s == null) return "?";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? `${d}d ` : "") + `${h}:${String(m).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function meter(fraction) {
  const outer = document.createElement("span");
  outer.className = "meter";
  const inner = document.createElement("span");
  inner.style.width = `${Math.min(100, Math.max(0, fraction * 100)).toFixed(0)}%`;
  outer.appendChild(inner);
  return outer;
}

function drawWorkers() {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren();
  const maxRss = Math.max(...state.workers.map((w) => w.rss || 0), 1);
  for (const w of state.workers) {
    const row = document.createElement("tr");
    row.dataset.pid = w.id;
    if (w.error) row.className = "failing";
    row.append(text("td", w.id === 1 ? "1 (master)" : w.id), text("td", w.host || "?"),
               text("td", w.manager || (w.id === 1 ? "" : "?")), text("td", formatUptime(w.uptime)));
    const cpu = text("td", w.cpu_pct == null ? "–" : `${w.cpu_pct.toFixed(0)} %`);
    if (w.cpu_pct != null) cpu.append(meter(w.cpu_pct / 100));
    const rss = text("td", formatBytes(w.rss));
    if (w.rss != null) rss.append(meter(w.rss / maxRss));
    row.append(cpu, rss);
    if (w.error) row.append(text("td", `not answering: ${w.error}`, { colspan: 2 }));
    else row.append(text("td", w.calls), text("td", w.queued));
    body.append(row);
  }
}

function lanes() {
  const pids = new Set(state.workers.map((w) => w.id));
  if (document.body.classList.contains("report")) for (const t of state.tasks) pids.add(t[0]);
  return [...pids].sort((a, b) => a - b);
}

function legends(streamNames, linePids) {
  drawLegend(document.getElementById("legend"), streamNames.map((name) => ({ label: name, color: functionColor(name) })));
  const workers = linePids.map((pid) => ({ label: pid === 1 ? "master" : `worker ${pid}`, color: workerColor(pid) }));
  for (const id of ["memory-legend", "cpu-legend"]) drawLegend(document.getElementById(id), workers);
}

function drawErrors() {
  const box = document.getElementById("errors");
  if (!state.errors.length) return;
  box.replaceChildren(...state.errors.slice().reverse().map(([pid, time, name, traceback]) => {
    const details = document.createElement("details");
    details.className = "error";
    details.dataset.pid = pid;
    const lines = traceback.trim().split("\n");
    details.append(text("summary", `worker ${pid} · ${name} · ${new Date(time * 1000).toLocaleTimeString()} · ` +
                                   lines[lines.length - 1]), text("pre", traceback));
    return details;
  }));
}

function drawPmaps() {
  const box = document.getElementById("pmaps");
  if (!state.pmaps.length) { box.replaceChildren(text("p", "no pmap running", { class: "empty" })); return; }
  box.replaceChildren(...state.pmaps.map((p) => {
    const row = document.createElement("div");
    row.className = "pmap";
    const bar = document.createElement("progress");
    bar.max = p.total;
    bar.value = p.done;
    row.append(text("span", p.name), bar, text("span", `${p.done} / ${p.total}`));
    return row;
  }));
}

function drawOutput() {
  const out = document.getElementById("output");
  const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
  out.textContent = state.output.map(([, pid, line]) => `From worker ${pid}: ${line}`).join("\n");
  if (atEnd) out.scrollTop = out.scrollHeight;
}

function drawLive() {
  const now = state.t || Date.now() / 1000;
  const workers = state.workers.filter((w) => w.id !== 1).length;
  document.getElementById("summary").textContent =
    `cluster ${state.cluster_id} · ${workers} worker${workers === 1 ? "" : "s"} · ${new Date(now * 1000).toLocaleTimeString()}`;
  drawWorkers();
  const pids = lanes();
  // The last minute; less while the dashboard is younger, so its first seconds are not a sliver.
  const span = Math.min(LIVE_WINDOW, Math.max(MIN_WINDOW, Math.ceil(now - state.started)));
  const t0 = now - span;
  legends(drawTaskStream(document.getElementById("stream"), state.tasks, pids, t0, now, now), pids);
  document.getElementById("stream-note").textContent = `last ${span} s`;
  drawLines(document.getElementById("memory"), state.samples, "rss", pids, t0, now, now, formatBytes);
  drawLines(document.getElementById("cpu"), state.samples, "cpu", pids, t0, now, now, (v) => `${v.toFixed(0)} %`, 100);
  drawPmaps();
  drawErrors();
  drawOutput();
}

function functionTotals() {
  const totals = new Map();
  for (const [, name, queued, start, end, bytesIn, bytesOut, ok] of state.tasks) {
    const t = totals.get(name) || { name, calls: 0, total: 0, max: 0, waited: 0, bytesIn: 0, bytesOut: 0, failed: 0 };
    t.calls += 1; t.total += end - start; t.max = Math.max(t.max, end - start); t.waited += start - queued;
    t.bytesIn += bytesIn; t.bytesOut += bytesOut; t.failed += ok ? 0 : 1;
    totals.set(name, t);
  }
  return [...totals.values()].sort((a, b) => b.total - a.total);
}

function drawReport() {
  document.body.classList.add("report");
  const tasks = state.tasks;
  const t0 = tasks.reduce((t, task) => Math.min(t, task[2]), state.started);
  const t1 = tasks.reduce((t, task) => Math.max(t, task[4]), state.ended || state.t);
  const pids = lanes();
  const totals = functionTotals();
  const busy = totals.reduce((sum, t) => sum + t.total, 0);
  document.getElementById("summary").textContent =
    `cluster ${state.cluster_id} · ${tasks.length} calls on ${pids.length} processes in ${formatSeconds(t1 - t0)} · ` +
    `${formatSeconds(busy)} of work` + (state.lost ? ` · ${state.lost} calls not recorded` : "");
  const names = drawTaskStream(document.getElementById("stream"), tasks, pids, t0, t1, t0);
  document.getElementById("stream-note").textContent = `${tasks.length} calls`;
  drawBars(document.getElementById("functions"), totals.map((t) => ({
    label: t.name, value: t.total, color: functionColor(t.name), note: `${t.calls} calls, ${formatSeconds(t.total)}` })),
    formatSeconds);
  document.querySelector("#totals tbody").replaceChildren(...totals.map((t) => {
    const row = document.createElement("tr");
    row.append(text("td", t.name), text("td", t.calls), text("td", formatSeconds(t.total)),
               text("td", formatSeconds(t.total / t.calls)), text("td", formatSeconds(t.max)),
               text("td", formatSeconds(t.waited)), text("td", formatBytes(t.bytesIn)),
               text("td", formatBytes(t.bytesOut)), text("td", t.failed));
    return row;
  }));
  const samplePids = [...new Set(state.samples.flatMap((s) => Object.keys(s.rss).map(Number)))].sort((a, b) => a - b);
  legends(names, samplePids);
  drawLines(document.getElementById("memory"), state.samples, "rss", samplePids, t0, t1, t0, formatBytes);
  drawLines(document.getElementById("cpu"), state.samples, "cpu", samplePids, t0, t1, t0, (v) => `${v.toFixed(0)} %`, 100);
  drawErrors();
}

function connect() {
  const token = new URLSearchParams(location.search).get("token") || "";
  const status = document.getElementById("connection");
  const events = new EventSource(`events?token=${encodeURIComponent(token)}`);
  let pending = false;
  events.onopen = () => { status.className = "up"; status.textContent = "live"; };
  events.onerror = () => { status.className = "down"; status.textContent = "reconnecting…"; };
  events.onmessage = (event) => {
    merge(JSON.parse(event.data));
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; drawLive(); }); }
  };
  window.addEventListener("resize", drawLive);
}

const embedded = JSON.parse(document.getElementById("data").textContent);
if (embedded) {
  merge(embedded);
  drawReport();
  window.addEventListener("resize", drawReport);
} else {
  connect();
}
