/* SVG plots for the pydist dashboard and reports: a task stream, lines over time, bars.
   No library: the page must work offline and as one file. */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MARGIN = { left: 70, right: 16, top: 8, bottom: 22 };

function svgEl(tag, attrs, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function clearSvg(svg, height) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = Math.max(svg.clientWidth || svg.parentNode.clientWidth || 600, 300);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", height);
  return width;
}

/* One colour per function name, stable across pages and reloads. */
function functionColor(name) {
  let hash = 0;
  for (let i = 0; i < name.length; i++) hash = (hash * 31 + name.charCodeAt(i)) >>> 0;
  return `hsl(${hash % 360}, 62%, 52%)`;
}

/* Ten colours people tell apart (Tableau 10); workers ten ids apart share one. */
const WORKER_COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                       "#ff9da7", "#9c755f", "#bab0ac"];
function workerColor(pid) {
  return WORKER_COLORS[pid % WORKER_COLORS.length];
}

function formatSeconds(s) {
  if (s == null) return "?";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  if (s < 120) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function formatBytes(n) {
  if (n == null) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * power) return m * power;
  return 10 * power;
}

/* The time axis: ticks relative to `origin` (seconds), labelled like "-30 s" or "12 s". */
function timeAxis(svg, x, t0, t1, origin, top, bottom) {
  const step = niceStep(t1 - t0, 8);
  for (let t = Math.ceil((t0 - origin) / step) * step + origin; t <= t1 + 1e-9; t += step) {
    const px = x(t);
    svgEl("line", { x1: px, x2: px, y1: top, y2: bottom, class: "grid" }, svg);
    const label = svgEl("text", { x: px, y: bottom + 14, "text-anchor": "middle" }, svg);
    const rel = t - origin;
    label.textContent = `${Math.abs(rel) < 1e-9 ? 0 : +rel.toPrecision(3)} s`;
  }
}

/* Task stream: one lane per worker, one bar per call from its start to its end, coloured by
   function; the call's wait before it started is a faint bar. Returns the names drawn. */
function drawTaskStream(svg, tasks, pids, t0, t1, origin) {
  const laneHeight = 26;
  const height = MARGIN.top + MARGIN.bottom + Math.max(pids.length, 1) * laneHeight;
  const width = clearSvg(svg, height);
  const span = Math.max(t1 - t0, 1e-6);
  const x = (t) => MARGIN.left + (t - t0) / span * (width - MARGIN.left - MARGIN.right);
  const lane = new Map(pids.map((pid, i) => [pid, i]));
  const bottom = height - MARGIN.bottom;
  timeAxis(svg, x, t0, t1, origin, MARGIN.top, bottom);
  pids.forEach((pid, i) => {
    const label = svgEl("text", { x: MARGIN.left - 8, y: MARGIN.top + i * laneHeight + 14, "text-anchor": "end" }, svg);
    label.textContent = pid === 1 ? "master" : `worker ${pid}`;
  });
  const names = new Set();
  const visible = tasks.filter((t) => t[4] >= t0 && t[3] <= t1 && lane.has(t[0]));
  const [row, rows] = packRows(visible);
  visible.forEach((task, i) => {
    const [pid, name, queued, start, end, bytesIn, bytesOut, ok] = task;
    names.add(name);
    const height = (laneHeight - 4) / rows.get(pid);
    const y = MARGIN.top + lane.get(pid) * laneHeight + 2 + row[i] * height;
    const left = x(Math.max(start, t0));
    if (start - queued > 0 && queued >= t0) {     // arrived, not started yet: unpickling, a thread
      svgEl("rect", { x: x(queued), y, height: Math.max(height - 1, 1), width: Math.max(left - x(queued), 0),
                      fill: functionColor(name), class: "wait", opacity: 0.25 }, svg);
    }
    const bar = svgEl("rect", {
      x: left, y, height: Math.max(height - 1, 1), width: Math.max(x(Math.min(end, t1)) - left, 1.5),
      fill: functionColor(name), class: ok ? "task" : "task failed", "data-pid": pid, "data-name": name,
    }, svg);
    svgEl("title", {}, bar).textContent =
      `${name} on worker ${pid}: ran ${formatSeconds(end - start)}, waited ${formatSeconds(start - queued)}, ` +
      `${formatBytes(bytesIn)} in, ${formatBytes(bytesOut)} out${ok ? "" : ", FAILED"}`;
  });
  return [...names].sort();
}

/* Calls run concurrently on a worker: give overlapping ones rows of their own in its lane
   (first row free when the call arrived; at most MAX_ROWS). Returns each task's row and the
   rows each worker uses. */
const MAX_ROWS = 4;
function packRows(tasks) {
  const order = tasks.map((_, i) => i).sort((a, b) => tasks[a][2] - tasks[b][2]);
  const ends = new Map();          // pid -> end time of the last call in each row
  const row = new Array(tasks.length);
  for (const i of order) {
    const [pid, , start, , end] = tasks[i];     // from its arrival: its wait is drawn too
    const rowEnds = ends.get(pid) || [];
    let r = rowEnds.findIndex((e) => e <= start);
    if (r < 0) r = rowEnds.length < MAX_ROWS ? rowEnds.length : rowEnds.indexOf(Math.min(...rowEnds));
    rowEnds[r] = end;
    ends.set(pid, rowEnds);
    row[i] = r;
  }
  return [row, new Map([...ends].map(([pid, rowEnds]) => [pid, rowEnds.length]))];
}

/* Lines over time, one per worker: samples are [{t, <key>: {pid: value}}]. */
function drawLines(svg, samples, key, pids, t0, t1, origin, format, fixedMax) {
  const height = 170;
  const width = clearSvg(svg, height);
  let max = fixedMax || 0;
  for (const sample of samples) for (const v of Object.values(sample[key] || {})) if (v != null && v > max) max = v;
  max = max || 1;
  const bottom = height - MARGIN.bottom;
  const span = Math.max(t1 - t0, 1e-6);
  const x = (t) => MARGIN.left + (t - t0) / span * (width - MARGIN.left - MARGIN.right);
  const y = (v) => bottom - v / max * (bottom - MARGIN.top);
  timeAxis(svg, x, t0, t1, origin, MARGIN.top, bottom);
  for (const frac of [0, 0.5, 1]) {
    svgEl("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(max * frac), y2: y(max * frac), class: "grid" }, svg);
    svgEl("text", { x: MARGIN.left - 8, y: y(max * frac) + 4, "text-anchor": "end" }, svg).textContent = format(max * frac);
  }
  for (const pid of pids) {
    const points = [];
    for (const sample of samples) {
      const v = (sample[key] || {})[pid];
      if (v != null && sample.t >= t0) points.push(`${x(sample.t).toFixed(1)},${y(v).toFixed(1)}`);
    }
    if (!points.length) continue;
    const line = svgEl("polyline", { points: points.join(" "), fill: "none", stroke: workerColor(pid),
                                     "stroke-width": 2, class: "series", "data-pid": pid }, svg);
    svgEl("title", {}, line).textContent = pid === 1 ? "master" : `worker ${pid}`;
  }
}

/* A row of coloured swatches under a plot: items are {label, color}. */
function drawLegend(box, items) {
  box.replaceChildren(...items.map(({ label, color }) => {
    const item = document.createElement("span");
    item.textContent = label;
    item.style.setProperty("--swatch", color);
    return item;
  }));
}

/* Horizontal bars: rows are {label, value, color, note}. */
function drawBars(svg, rows, format) {
  const barHeight = 20;
  const height = MARGIN.top + 6 + rows.length * barHeight;
  const width = clearSvg(svg, height);
  const left = 180;
  const max = Math.max(...rows.map((r) => r.value), 1e-12);
  rows.forEach((row, i) => {
    const y = MARGIN.top + i * barHeight;
    svgEl("text", { x: left - 8, y: y + 14, "text-anchor": "end" }, svg).textContent = row.label;
    const bar = svgEl("rect", { x: left, y: y + 2, height: barHeight - 4, fill: row.color, class: "bar",
                                width: Math.max(1, row.value / max * (width - left - 120)) }, svg);
    svgEl("title", {}, bar).textContent = row.note || format(row.value);
    svgEl("text", { x: left + Math.max(1, row.value / max * (width - left - 120)) + 6, y: y + 14 }, svg)
      .textContent = format(row.value);
  });
}
