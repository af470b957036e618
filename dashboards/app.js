// The evloop live dashboard: one websocket, charts per metric (uPlot), reports in
// sandboxed frames (no script from a class name or caption can ever run), reconnects.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const COLORS = ["#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00897b"];

const series = new Map();   // "source/metric" -> {xs: [], ys: []}
const charts = new Map();   // metric -> {plot, sources: [], el}
const reports = new Map();  // "source/metric" -> iframe
let retry = 500;
let dirty = false;

function text(id, value) { document.getElementById(id).textContent = value; }

function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

function showStatus(st) {
  text("state", st.state);
  text("epoch", st.epoch >= 0 ? (st.epoch + (st.epochs ? " / " + st.epochs : "")) : "–");
  text("iters", st.iters >= 0 ? String(st.iters) : "–");
  text("throughput", st.throughput ? st.throughput.toFixed(1) + " it/s" : "–");
  text("eta", st.state === "running" ? fmtDuration(st.eta_s) : (st.state === "finished" ? "done" : "–"));
  const error = document.getElementById("error");
  error.hidden = !st.error;
  error.textContent = st.error || "";
}

function showHealth(name, dropped, failed) {
  const body = document.querySelector("#health tbody");
  let row = body.querySelector(`tr[data-name="${CSS.escape(name)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.name = name;
    for (let i = 0; i < 3; i++) row.appendChild(document.createElement("td"));
    row.children[0].textContent = name;
    body.appendChild(row);
  }
  if (dropped !== null) row.children[1].textContent = String(dropped);
  if (failed !== null) row.children[2].textContent = failed;
}

function addPoint(key, x, y) {
  let s = series.get(key);
  if (!s) { s = {xs: [], ys: []}; series.set(key, s); }
  const n = s.xs.length;
  if (n && x < s.xs[n - 1]) return;  // shown already: points only move forward
  if (n && x === s.xs[n - 1]) s.ys[n - 1] = y;  // an epoch end repeating its last batch
  else { s.xs.push(x); s.ys.push(y); }
  ensureChart(key);
  dirty = true;
}

function ensureChart(key) {
  const [source, ...rest] = key.split("/");
  const metric = rest.join("/");
  let chart = charts.get(metric);
  if (chart && chart.sources.includes(source)) return;
  const sources = chart ? chart.sources.concat([source]) : [source];
  let el = chart ? chart.el : null;
  if (chart) chart.plot.destroy();
  if (!el) {
    el = document.createElement("div");
    el.className = "chart";
    el.dataset.metric = metric;
    const title = document.createElement("h3");
    title.textContent = metric;
    el.appendChild(title);
    document.getElementById("charts").appendChild(el);
  }
  const opts = {
    width: 420, height: 220,
    scales: {x: {time: false}},
    axes: [{label: "iteration"}, {}],
    series: [{label: "iteration"}].concat(sources.map((src, i) => ({
      label: src, stroke: COLORS[i % COLORS.length], spanGaps: true, width: 1.5,
    }))),
  };
  const plot = new uPlot(opts, chartData(metric, sources), el);
  charts.set(metric, {plot, sources, el});
}

function chartData(metric, sources) {
  const xs = new Set();
  for (const src of sources) for (const x of series.get(src + "/" + metric).xs) xs.add(x);
  const sorted = Array.from(xs).sort((a, b) => a - b);
  const data = [sorted];
  for (const src of sources) {
    const s = series.get(src + "/" + metric);
    const at = new Map(s.xs.map((x, i) => [x, s.ys[i]]));
    data.push(sorted.map((x) => (at.has(x) ? at.get(x) : null)));
  }
  return data;
}

function redraw() {
  if (!dirty) return;
  dirty = false;
  for (const [metric, chart] of charts) chart.plot.setData(chartData(metric, chart.sources));
}
setInterval(redraw, 250);

function showReport(key, html) {
  let frame = reports.get(key);
  if (!frame) {
    const box = document.createElement("div");
    box.className = "report";
    box.dataset.window = key;
    const title = document.createElement("h3");
    title.textContent = key;
    frame = document.createElement("iframe");
    frame.setAttribute("sandbox", "");  // no scripts, no same-origin, no forms
    frame.setAttribute("title", key);
    box.appendChild(title);
    box.appendChild(frame);
    document.getElementById("reports").appendChild(box);
    reports.set(key, frame);
  }
  frame.srcdoc = html;
}

function record(source, iters, metrics) {
  for (const [name, value] of Object.entries(metrics || {})) {
    if (typeof value === "number") addPoint(source + "/" + name, iters, value);
    else if (typeof value === "string") showReport(source + "/" + name, value);
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      text("run-name", msg.name);
      break;
    case "history":
      series.clear();
      for (const chart of charts.values()) { chart.plot.destroy(); chart.el.remove(); }
      charts.clear();
      for (const [key, points] of Object.entries(msg.series)) {
        for (const [x, y] of points) addPoint(key, x, y);
      }
      for (const [key, html] of Object.entries(msg.latest)) showReport(key, html);
      for (const [name, h] of Object.entries(msg.health)) showHealth(name, h.dropped, h.failed);
      showStatus(msg.status);
      break;
    case "status":
      showStatus(msg);
      break;
    case "batch_ended":
    case "epoch_ended":
      record("train", msg.iters, msg.metrics);
      break;
    case "eval_finished":
      record(msg.prefix, msg.iters, msg.metrics);
      break;
    case "subscriber_dropped":
      showHealth(msg.subscriber, msg.total, null);
      break;
    case "subscriber_failed":
      showHealth(msg.subscriber, null, msg.error);
      break;
    default:
      break;
  }
}

function connect() {
  const query = new URLSearchParams({format: "json"});
  if (token) query.set("token", token);
  const ws = new WebSocket(`ws://${location.host}/ws?${query}`);
  const pill = document.getElementById("connection");
  ws.onopen = () => { retry = 500; pill.textContent = "live"; pill.className = "pill live"; };
  ws.onmessage = (ev) => {
    for (const msg of JSON.parse(ev.data)) onMessage(msg);
    redraw();
  };
  ws.onclose = () => {
    pill.textContent = "reconnecting…";
    pill.className = "pill down";
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 5000);
  };
}

connect();
