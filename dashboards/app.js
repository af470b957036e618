// The evloop live dashboard: one websocket, charts per metric (uPlot), reports in
// sandboxed frames (no script from a class name or caption can ever run), reconnects.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");

const series = new Map();   // "source/metric" -> {xs: [], ys: []}
const charts = new Map();   // metric -> {plot, sources: [], el}
const reports = new Map();  // "source/metric" -> iframe
const MAX_POINTS = 20000;  // per series in the page: redraws stay fast however long the run
let retry = 500;
let dirty = false;
let ended = false;  // the run is over: a closed connection is no error
let socket = null;
let commandSeq = 0;

function showStatus(st) {
  batchesPerEpoch = st.batches_per_epoch || batchesPerEpoch;
  if (runStarted === null && st.started) runStarted = st.started;
  ended = ["finished", "stopped", "pruned", "preempted", "failed"].includes(st.state);
  const took = st.duration_s !== null && st.duration_s !== undefined;
  text("state", ended && took ? st.state + " in " + fmtDuration(st.duration_s) : st.state);
  showTitle(st.state);
  const total = st.last_epoch !== null && st.last_epoch !== undefined ? " / " + (st.last_epoch + 1) : "";
  text("epoch", st.epoch >= 0 ? (st.epoch + 1) + total : "–");  // 1-based, like its total
  text("iters", st.iters >= 0 ? String(st.iters) : "–");
  text("throughput", st.throughput ? st.throughput.toFixed(1) + " it/s" : "–");
  text("eta", st.state === "running" ? fmtDuration(st.eta_s) : (st.state === "finished" ? "done" : "–"));
  showHparams(st.hparams || {});
  showSettings(st.settings || {});
  const error = document.getElementById("error");
  error.hidden = !st.error;
  error.textContent = st.error || "";
}

// the tab says whether the run is live or over, and which run it is
function showTitle(state) {
  const name = document.getElementById("run-name").textContent;
  const what = state === "running" ? "live run" : (state === "idle" ? "run" : state + " run");
  document.title = "evloop — " + what + (name ? " " + name : "");
}

const shownTables = {};
function showHparams(hparams) { showTable("hparams", hparams); }
function showSettings(settings) { showTable("settings", settings); }

function showTable(id, values) {
  // name | value rows; redrawn only when something changed
  const names = Object.keys(values);
  const key = JSON.stringify(values);
  if (key === shownTables[id]) return;
  shownTables[id] = key;
  document.getElementById(id + "-section").hidden = names.length === 0;
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...names.map((name) => {
    const row = document.createElement("tr");
    for (const value of [name, String(values[name])]) {
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

function addPoint(key, x, y, t) {
  let s = series.get(key);
  if (!s) { s = {xs: [], ys: [], ts: []}; series.set(key, s); }
  const n = s.xs.length;
  if (n && x < s.xs[n - 1]) return;  // shown already: points only move forward
  if (n && x === s.xs[n - 1]) s.ys[n - 1] = y;  // an epoch end repeating its last batch
  else { s.xs.push(x); s.ys.push(y); s.ts.push(t); }
  if (s.xs.length > MAX_POINTS) {  // a long run: every other point goes, as the server does
    const even = (_, i) => i % 2 === 0;
    s.xs = s.xs.filter(even); s.ys = s.ys.filter(even); s.ts = s.ts.filter(even);
  }
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
  const entry = {sources, el, zoomed: false};
  entry.plot = makePlot(metric, entry);
  charts.set(metric, entry);
}

function chartBox(metric, source) {
  const el = document.createElement("div");
  el.className = "chart";
  el.dataset.metric = metric;
  el.dataset.source = source;
  el.appendChild(chartTitle(metric, () => downloadPoints(metric), () => resetZoom(metric)));
  const box = document.getElementById("charts");
  const rank = priority(metric, source);
  const after = Array.from(box.children).find((c) => priority(c.dataset.metric, c.dataset.source) > rank);
  box.insertBefore(el, after || null);
  return el;
}

function makePlot(metric, chart) {
  const opts = {
    width: chartWidth(), height: 220,
    scales: {x: {time: false}, y: {distr: view.log ? 3 : 1}},
    axes: [{label: AXIS_LABELS[view.axis]}, {}],
    series: [{label: AXIS_LABELS[view.axis]}].concat(chart.sources.map((src, i) => ({
      label: src, stroke: colorFor(i), spanGaps: true, width: 1.5,
    }))),
    hooks: zoomHooks(chart.el, () => { chart.zoomed = true; }),
  };
  return new uPlot(opts, shownData(metric, chart.sources), chart.el);
}

function resetZoom(metric) {
  const chart = charts.get(metric);
  chart.zoomed = false;
  chart.el.querySelector(".reset-zoom").hidden = true;
  chart.plot.setData(shownData(metric, chart.sources), true);
}

// What the reader chose: EMA smoothing (0: none), a log y axis, the x axis.
const view = {smoothing: 0, log: false, axis: "step"};
const AXIS_LABELS = {step: "iteration", epoch: "epoch", time: "seconds since start"};
let batchesPerEpoch = null;
let runStarted = null;  // the first run's start: the wall-time axis' origin

// A series' x on the chosen axis: iterations, epochs done, or seconds since the run
// started (the events' own times).
function xsOf(s) {
  if (view.axis === "time") return s.ts;
  if (view.axis === "epoch" && batchesPerEpoch) return s.xs.map((x) => (x + 1) / batchesPerEpoch);
  return s.xs;
}

function rawData(metric, sources) {
  const xs = new Set();
  for (const src of sources) for (const x of xsOf(series.get(src + "/" + metric))) xs.add(x);
  const sorted = Array.from(xs).sort((a, b) => a - b);
  const data = [sorted];
  for (const src of sources) {
    const s = series.get(src + "/" + metric);
    const own = xsOf(s);
    const at = new Map(own.map((x, i) => [x, s.ys[i]]));
    data.push(sorted.map((x) => (at.has(x) ? at.get(x) : null)));
  }
  return data;
}

function shownData(metric, sources) {
  const [xs, ...columns] = rawData(metric, sources);
  const shown = columns.map((ys) => smoothed(ys, view.smoothing));
  return [xs].concat(view.log ? shown.map((ys) => ys.map((y) => (y > 0 ? y : null))) : shown);
}

function downloadPoints(metric) {
  const chart = charts.get(metric);
  const [xs, ...columns] = rawData(metric, chart.sources);
  downloadCsv(metric, [AXIS_LABELS[view.axis]].concat(chart.sources), xs, columns);
}

function setupView() {
  const slider = document.getElementById("smoothing");
  slider.addEventListener("input", () => {
    view.smoothing = Number(slider.value);
    text("smoothing-value", view.smoothing.toFixed(2));
    dirty = true;
    redraw();
  });
  const rebuild = () => {
    for (const [metric, chart] of charts) {  // a scale's kind is fixed: rebuild
      chart.plot.destroy();
      chart.zoomed = false;
      chart.el.querySelector(".reset-zoom").hidden = true;
      chart.plot = makePlot(metric, chart);
    }
  };
  document.getElementById("log-scale").addEventListener("change", (e) => {
    view.log = e.target.checked;
    rebuild();
  });
  document.getElementById("axis").addEventListener("change", (e) => {
    view.axis = e.target.value;
    rebuild();
  });
  window.addEventListener("resize", () => {
    for (const chart of charts.values()) chart.plot.setSize({width: chartWidth(), height: 220});
  });
}

function redraw() {
  if (!dirty) return;
  dirty = false;
  for (const [metric, chart] of charts) {
    chart.plot.setData(shownData(metric, chart.sources), !chart.zoomed);  // a zoom stays
  }
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
    // no scripts, no forms: nothing in a report runs; same origin only so that the
    // page can size the frame to its content
    frame.setAttribute("sandbox", "allow-same-origin");
    frame.addEventListener("load", () => fitFrame(frame));
    frame.setAttribute("title", key);
    box.appendChild(title);
    box.appendChild(frame);
    document.getElementById("reports").appendChild(box);
    reports.set(key, frame);
  }
  frame.srcdoc = html;
}

function fitFrame(frame) {
  const doc = frame.contentDocument;
  if (!doc || !doc.documentElement) return;
  // the document's own height (its scrollHeight is at least the frame's)
  const height = Math.min(800, Math.ceil(doc.documentElement.getBoundingClientRect().height) + 4);
  const width = Math.min(960, Math.max(240, doc.documentElement.scrollWidth + 4));
  frame.style.height = height + "px";
  frame.style.width = width + "px";
}

function record(source, iters, msg) {
  // each value by the kind the run gave it (numbers on charts, the rest in frames)
  const kinds = msg.kinds || {};
  const seconds = runStarted === null ? 0 : msg.time - runStarted;
  for (const [name, value] of Object.entries(msg.metrics || {})) {
    const kind = kinds[name] || (typeof value === "number" ? "scalar" : "html");
    if (kind === "scalar") addPoint(source + "/" + name, iters, value, seconds);
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
      showNotice(msg);
      break;
    case "history":
      series.clear();
      for (const chart of charts.values()) { chart.plot.destroy(); chart.el.remove(); }
      charts.clear();
      runStarted = msg.origin ?? null;
      for (const [key, points] of Object.entries(msg.series)) {
        const times = (msg.times || {})[key] || [];
        points.forEach(([x, y], i) => addPoint(key, x, y, times[i] ?? null));
      }
      for (const [key, html] of Object.entries(msg.latest)) showReport(key, html);
      for (const [name, h] of Object.entries(msg.health)) showHealth(name, h.dropped, h.failed);
      document.getElementById("notices").replaceChildren();
      (msg.notices || []).forEach(showNotice);
      clearInsight();
      (msg.steps || []).forEach(addStepTimes);
      (msg.profiles || []).forEach(showProfile);
      showStatus(msg.status);
      break;
    case "status":
      showStatus(msg);
      break;
    case "batch_ended":
    case "epoch_ended":
      record("train", msg.iters, msg);
      break;
    case "eval_finished":
      record(msg.prefix, msg.iters, msg);
      break;
    case "system_sampled":
      record("system", msg.step, msg);
      break;
    case "ranks_sampled":
      showRanks(msg);
      break;
    case "step_times":
      addStepTimes(msg);
      break;
    case "profile_report":
      showProfile(msg);
      break;
    case "subscriber_dropped":
      showHealth(msg.subscriber, msg.total, null);
      break;
    case "subscriber_failed":
      showHealth(msg.subscriber, null, msg.error);
      break;
    case "sync_detected":
    case "divergence_rolled_back":
    case "eval_skipped":
    case "settings_rolled_back":
    case "stalled":
      showNotice(msg);
      break;
    default:
      break;
  }
}

// each rank's time per step, one line per rank, and the slowest rank
function showRanks(msg) {
  const seconds = runStarted === null ? 0 : msg.time - runStarted;
  for (const [measure, values] of [["step_s", msg.step_s], ["busy_s", msg.busy_s || []]]) {
    values.forEach((value, rank) => {
      if (value !== null) addPoint(`rank ${rank}/${measure}`, msg.step, value, seconds);
    });
  }
  const slow = msg.slowest;
  const busy = (msg.busy_s || [])[slow];
  const step = msg.step_s[slow];
  const measured = busy !== null && busy !== undefined ? `busy ${busy.toFixed(3)} s/step`
    : (step !== null && step !== undefined ? `${step.toFixed(3)} s/step` : "no step");
  text("slowest", `rank ${slow} (${measured})`);
  document.getElementById("slowest-cell").hidden = false;
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
    redrawBreakdown();
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
setupProfile();
setupView();
connect();
