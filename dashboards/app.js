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
let ended = false;  // the run is over: a closed connection is no error
let socket = null;
let commandSeq = 0;

function text(id, value) { document.getElementById(id).textContent = value; }

function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

function showStatus(st) {
  ended = ["finished", "stopped", "failed"].includes(st.state);
  const took = st.duration_s !== null && st.duration_s !== undefined;
  text("state", ended && took ? st.state + " in " + fmtDuration(st.duration_s) : st.state);
  const total = st.last_epoch !== null && st.last_epoch !== undefined ? " / " + (st.last_epoch + 1) : "";
  text("epoch", st.epoch >= 0 ? (st.epoch + 1) + total : "–");  // 1-based, like its total
  text("iters", st.iters >= 0 ? String(st.iters) : "–");
  text("throughput", st.throughput ? st.throughput.toFixed(1) + " it/s" : "–");
  text("eta", st.state === "running" ? fmtDuration(st.eta_s) : (st.state === "finished" ? "done" : "–"));
  showHparams(st.hparams || {});
  const error = document.getElementById("error");
  error.hidden = !st.error;
  error.textContent = st.error || "";
}

let shownHparams = "";
function showHparams(hparams) {
  const names = Object.keys(hparams);
  const key = JSON.stringify(hparams);
  if (key === shownHparams) return;
  shownHparams = key;
  document.getElementById("hparams-section").hidden = names.length === 0;
  const body = document.querySelector("#hparams tbody");
  body.replaceChildren(...names.map((name) => {
    const row = document.createElement("tr");
    for (const value of [name, String(hparams[name])]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    return row;
  }));
}

function showHealth(name, dropped, failed) {
  // display loggers coalesce on purpose (information); a failure is an error
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
  if (failed !== null) { row.children[2].textContent = failed; row.className = "failed"; }
}

// Charts in a stable order: loss and accuracy first, timings last.
function priority(metric, source) {
  if (source === "system") return 10;  // resource use after the training's own charts
  if (/(^|_)loss$/.test(metric)) return 0;
  if (/acc/.test(metric)) return 1;
  if (/^(lr|mom)_/.test(metric)) return 8;
  if (/_(time|throughput)$/.test(metric)) return 9;
  return 5;
}

function unitOf(metric) {
  if (/_time$/.test(metric)) return " (s)";
  if (/_gb$/.test(metric)) return " (GB)";
  if (/_percent$/.test(metric)) return " (%)";
  if (/_throughput$/.test(metric)) return " (samples/s)";
  return "";
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
  const chart = charts.get(metric);
  if (chart && chart.sources.includes(source)) return;
  const sources = chart ? chart.sources.concat([source]) : [source];
  const el = chart ? chart.el : chartBox(metric, source);
  if (chart) chart.plot.destroy();
  charts.set(metric, {plot: makePlot(metric, sources, el), sources, el});
}

function chartBox(metric, source) {
  const el = document.createElement("div");
  el.className = "chart";
  el.dataset.metric = metric;
  el.dataset.source = source;
  const title = document.createElement("h3");
  title.textContent = metric + unitOf(metric);
  const csv = document.createElement("button");
  csv.className = "csv";
  csv.textContent = "CSV";
  csv.title = "download this chart's points (unsmoothed) as CSV";
  csv.addEventListener("click", () => downloadCsv(metric));
  title.appendChild(csv);
  el.appendChild(title);
  const box = document.getElementById("charts");
  const rank = priority(metric, source);
  const after = Array.from(box.children).find((c) => priority(c.dataset.metric, c.dataset.source) > rank);
  box.insertBefore(el, after || null);
  return el;
}

function makePlot(metric, sources, el) {
  const opts = {
    width: 420, height: 220,
    scales: {x: {time: false}, y: {distr: view.log ? 3 : 1}},
    axes: [{label: "iteration"}, {}],
    series: [{label: "iteration"}].concat(sources.map((src, i) => ({
      label: src, stroke: COLORS[i % COLORS.length], spanGaps: true, width: 1.5,
    }))),
  };
  return new uPlot(opts, shownData(metric, sources), el);
}

// What the reader chose: EMA smoothing (0: none) and a log y axis.
const view = {smoothing: 0, log: false};

function rawData(metric, sources) {
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

// The debiased exponential moving average (as TensorBoard's slider): early points are
// not pulled towards zero.
function smoothed(ys, weight) {
  if (!weight) return ys;
  let last = 0, count = 0;
  return ys.map((y) => {
    if (y === null || !Number.isFinite(y)) return y;
    last = last * weight + (1 - weight) * y;
    count += 1;
    return last / (1 - Math.pow(weight, count));
  });
}

function shownData(metric, sources) {
  const [xs, ...columns] = rawData(metric, sources);
  const shown = columns.map((ys) => smoothed(ys, view.smoothing));
  return [xs].concat(view.log ? shown.map((ys) => ys.map((y) => (y > 0 ? y : null))) : shown);
}

function downloadCsv(metric) {
  const chart = charts.get(metric);
  const [xs, ...columns] = rawData(metric, chart.sources);
  const lines = [["iteration"].concat(chart.sources).join(",")];
  xs.forEach((x, i) => lines.push([x].concat(columns.map((ys) => ys[i] ?? "")).join(",")));
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], {type: "text/csv"}));
  link.download = metric.replaceAll("/", "_") + ".csv";
  link.click();
  URL.revokeObjectURL(link.href);
}

function setupView() {
  const slider = document.getElementById("smoothing");
  slider.addEventListener("input", () => {
    view.smoothing = Number(slider.value);
    text("smoothing-value", view.smoothing.toFixed(2));
    dirty = true;
    redraw();
  });
  document.getElementById("log-scale").addEventListener("change", (e) => {
    view.log = e.target.checked;
    for (const [metric, chart] of charts) {  // a scale's kind is fixed: rebuild
      chart.plot.destroy();
      chart.plot = makePlot(metric, chart.sources, chart.el);
    }
  });
}

function redraw() {
  if (!dirty) return;
  dirty = false;
  for (const [metric, chart] of charts) chart.plot.setData(shownData(metric, chart.sources));
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

function record(source, iters, metrics, kinds) {
  // each value by the kind the run gave it (numbers on charts, the rest in frames)
  for (const [name, value] of Object.entries(metrics || {})) {
    const kind = (kinds || {})[name] || (typeof value === "number" ? "scalar" : "html");
    if (kind === "scalar") addPoint(source + "/" + name, iters, value);
    else if (kind === "html" || kind === "text") showReport(source + "/" + name, String(value));
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      text("run-name", msg.name);
      document.getElementById("controls").hidden = !msg.control;
      break;
    case "command_result":
      if (!msg.ok) text("command-status", msg.error);
      break;
    case "command_applied":
      text("command-status", msg.ok ? msg.op + " applied" + describeChanges(msg.changes) : msg.error);
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
      record("train", msg.iters, msg.metrics, msg.kinds);
      break;
    case "eval_finished":
      record(msg.prefix, msg.iters, msg.metrics, msg.kinds);
      break;
    case "system_sampled":
      record("system", msg.step, msg.metrics, msg.kinds);
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

function describeChanges(changes) {
  const parts = Object.entries(changes || {}).map(([k, [old, now]]) => `${k} ${old} → ${now}`);
  return parts.length ? ": " + parts.join(", ") : "";
}

function command(op, values) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  commandSeq += 1;
  socket.send(JSON.stringify({type: "command", op, values: values || {}, id: "page-" + commandSeq}));
  text("command-status", op + "…");
}

function setupControls() {
  for (const button of document.querySelectorAll("#controls button[data-op]")) {
    button.addEventListener("click", () => command(button.dataset.op));
  }
  document.getElementById("set-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = document.getElementById("set-name").value.trim();
    const value = Number(document.getElementById("set-value").value);
    if (name) command("set", {[name]: value});
  });
}

function connect() {
  const query = new URLSearchParams({format: "json"});
  if (token) query.set("token", token);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws?${query}`);
  socket = ws;
  const pill = document.getElementById("connection");
  ws.onopen = () => { retry = 500; pill.textContent = "live"; pill.className = "pill live"; };
  ws.onmessage = (ev) => {
    for (const msg of JSON.parse(ev.data)) onMessage(msg);
    redraw();
  };
  ws.onclose = () => {
    // after the run, a server that went away is the end, not an error
    pill.textContent = ended ? "ended" : "reconnecting…";
    pill.className = ended ? "pill" : "pill down";
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 5000);
  };
}

setupControls();
setupView();
connect();
