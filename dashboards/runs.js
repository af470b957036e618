// The runs page: a sortable, filterable list of runs; the selected ones overlaid on the
// same charts (one colour per run), bucketed by the server so that any number of runs
// and points opens fast; zooming asks the server for the points in view.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const REFRESH_MS = 2000;  // while a selected run is still running
const POINTS = 1000;      // buckets per chart
const BANDS_UP_TO = 8;    // min/max bands drawn for this many runs at most

let runs = [];                  // the list, as /api/runs gave it
const selected = [];            // run ids, in the order picked (their colours)
const charts = new Map();       // metric -> {el, plot, data, zoom: [x0, x1] | null}
const view = {smoothing: 0, log: false, axis: "step", sort: "start", descending: true, filter: ""};
let loaded = Promise.resolve();  // the last chart load (tests wait on it)

function api(path, query) {
  const q = new URLSearchParams(query || {});
  if (token) q.set("token", token);
  return fetch(`${path}?${q}`).then((r) => {
    if (!r.ok) return r.text().then((t) => { throw new Error(`${path}: ${r.status} ${t}`); });
    return r.json();
  });
}

function pill(textValue, kind) {
  const el = document.getElementById("connection");
  el.textContent = textValue;
  el.className = "pill " + (kind || "");
}

// -- the run list -----------------------------------------------------------------------
const BASE_COLUMNS = [
  ["name", "run"], ["status", "status"], ["start", "started"], ["duration", "duration"],
];

function hparamNames() {
  const counts = new Map();
  for (const run of runs) for (const k of Object.keys(run.hparams || {})) counts.set(k, (counts.get(k) || 0) + 1);
  return Array.from(counts.keys()).sort((a, b) => counts.get(b) - counts.get(a) || a.localeCompare(b)).slice(0, 12);
}

function evalNames() {
  const names = new Set();
  for (const run of runs) for (const k of Object.keys(run.evaluation || {})) names.add(k);
  return Array.from(names).sort();
}

function cellValue(run, column) {
  if (column === "lineage") {
    const fork = forkOf(run);
    return fork ? `${fork.parent} @ ${fork.iters}` : undefined;
  }
  if (column.startsWith("hp:")) return (run.hparams || {})[column.slice(3)];
  if (column.startsWith("ev:")) return (run.evaluation || {})[column.slice(3)];
  return run[column];
}

function shownValue(run, column) {
  const value = cellValue(run, column);
  if (value === null || value === undefined) return "";
  if (column === "duration") return fmtDuration(value);
  if (column === "start") return new Date(value * 1000).toLocaleString();
  if (typeof value === "number" && !Number.isInteger(value)) return value.toPrecision(4);
  return String(value);
}

// A forked run's parent and the step it forked at ("base @ 8"), with what it changed.
function forkOf(run) {
  const lineage = run.lineage;
  if (!lineage || typeof lineage !== "object" || typeof lineage.iters !== "number") return null;
  return {parent: String(lineage.parent || "?"), iters: lineage.iters, settings: lineage.settings || {}};
}

function parentId(fork) {
  const parent = runs.find((run) => run.name === fork.parent || run.id === fork.parent);
  return parent ? parent.id : null;
}

function columns() {
  const lineage = runs.some(forkOf) ? [["lineage", "forked from"]] : [];
  return BASE_COLUMNS.concat(
    lineage,
    evalNames().map((k) => ["ev:" + k, k]),
    hparamNames().map((k) => ["hp:" + k, k]),
  );
}

function compare(a, b) {
  const x = cellValue(a, view.sort), y = cellValue(b, view.sort);
  if (x === y) return 0;
  if (x === undefined || x === null) return 1;  // blanks last either way
  if (y === undefined || y === null) return -1;
  const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
  return view.descending ? -order : order;
}

function matches(run) {
  if (!view.filter) return true;
  const haystack = [run.name, run.status].concat(
    Object.entries(run.hparams || {}).map(([k, v]) => `${k}=${v}`),
    forkOf(run) ? [`fork ${forkOf(run).parent}`] : [],
  ).join(" ").toLowerCase();
  return view.filter.toLowerCase().split(/\s+/).every((word) => haystack.includes(word));
}

function shownRuns() { return runs.filter(matches).sort(compare); }

function renderList() {
  const cols = columns();
  const head = document.createElement("tr");
  head.append(document.createElement("th"));
  for (const [key, label] of cols) {
    const th = document.createElement("th");
    th.textContent = label + (view.sort === key ? (view.descending ? " ▼" : " ▲") : "");
    th.dataset.key = key;
    th.addEventListener("click", () => {
      view.descending = view.sort === key ? !view.descending : false;
      view.sort = key;
      renderList();
    });
    head.append(th);
  }
  document.querySelector("#runs thead").replaceChildren(head);
  const shown = shownRuns();
  document.querySelector("#runs tbody").replaceChildren(...shown.map((run) => runRow(run, cols)));
  text("run-count", `${shown.length} of ${runs.length} runs, ${selected.length} selected`);
}

function runRow(run, cols) {
  const row = document.createElement("tr");
  row.dataset.run = run.id;
  row.className = "status-" + run.status;
  const pick = document.createElement("td");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = selected.includes(run.id);
  box.setAttribute("aria-label", "select " + run.id);
  box.addEventListener("change", () => select(run.id, box.checked));
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  const index = selected.indexOf(run.id);
  if (index >= 0) swatch.style.background = colorFor(index);
  pick.append(box, swatch);
  row.append(pick);
  for (const [key] of cols) {
    const td = document.createElement("td");
    if (key === "name") {
      const link = document.createElement("a");
      link.href = `/run/${encodeURIComponent(run.id)}/` + (token ? `?token=${encodeURIComponent(token)}` : "");
      link.textContent = run.id;
      link.title = "this run's own page (its reports, subscribers, replay)";
      td.append(link);
    } else if (key === "lineage" && forkOf(run)) {
      td.append(forkCell(run, forkOf(run)));
    } else {
      td.textContent = shownValue(run, key);
    }
    if (key === "status" && run.error) td.title = run.error;
    row.append(td);
  }
  return row;
}

// "base @ 8": a click draws the parent beside its fork, on the same steps.
function forkCell(run, fork) {
  const button = document.createElement("button");
  button.className = "fork-of";
  const changed = Object.entries(fork.settings).map(([k, v]) => `${k}=${v}`).join(", ");
  button.textContent = `${fork.parent} @ ${fork.iters}` + (changed ? ` · ${changed}` : "");
  button.title = `forked from ${fork.parent} at step ${fork.iters}` +
    (changed ? `, with ${changed}` : "") + ": click to draw both";
  button.addEventListener("click", () => {
    for (const id of [parentId(fork), run.id]) if (id && !selected.includes(id)) selected.push(id);
    renderList();
    reloadCharts();
  });
  return button;
}

function select(id, on) {
  const at = selected.indexOf(id);
  if (on && at < 0) selected.push(id);
  if (!on && at >= 0) selected.splice(at, 1);
  renderList();
  reloadCharts();
}

function loadRuns() {
  return api("/api/runs").then((answer) => {
    runs = answer.runs;
    renderList();
    pill("up to date", "live");
  }).catch((error) => pill("server unreachable: retrying", "down"));
}

// -- the charts -------------------------------------------------------------------------
function reloadCharts() {
  remember();
  document.getElementById("empty-hint").hidden = selected.length > 0;
  if (!selected.length) {
    for (const chart of charts.values()) { chart.plot.destroy(); chart.el.remove(); }
    charts.clear();
    loaded = Promise.resolve();
    return loaded;
  }
  loaded = metricsOf(selected).then((answer) => {
    const wanted = new Set(answer.metrics);
    for (const [metric, chart] of charts) {
      if (!wanted.has(metric)) { chart.plot.destroy(); chart.el.remove(); charts.delete(metric); }
    }
    return Promise.all(answer.metrics.map((metric) => loadChart(metric)));
  }).catch((error) => pill(String(error.message || error), "down"));
  return loaded;
}

// The metrics of these runs: from the list when the server had read their logs,
// else asked for (the server reads them then).
function metricsOf(ids) {
  const listed = ids.map((id) => runs.find((run) => run.id === id));
  if (listed.every((run) => run && Array.isArray(run.series))) {
    const names = new Set(listed.flatMap((run) => run.series));
    return Promise.resolve({metrics: Array.from(names).sort()});
  }
  return api("/api/metrics", {runs: ids.join(",")});
}

function loadChart(metric) {
  const chart = charts.get(metric);
  const query = {runs: selected.join(","), metric, axis: view.axis, points: POINTS,
                 stats: selected.length <= BANDS_UP_TO ? "mean,min,max" : "mean"};
  if (chart && chart.zoom) { query.x0 = chart.zoom[0]; query.x1 = chart.zoom[1]; }
  return api("/api/series", query).then((answer) => draw(metric, answer));
}

function draw(metric, answer) {
  let chart = charts.get(metric);
  if (!chart) {
    chart = {el: chartBox(metric), zoom: null};
    charts.set(metric, chart);
  }
  chart.data = answer;
  if (chart.plot) chart.plot.destroy();
  chart.plot = new uPlot(plotOptions(metric, chart, answer), plotData(answer), chart.el);
}

function chartBox(metric) {
  const el = document.createElement("div");
  el.className = "chart";
  el.dataset.metric = metric;
  const [source, ...rest] = metric.split("/");
  const name = rest.join("/");
  el.append(chartTitle(metric, () => downloadPoints(metric), () => zoomTo(metric, null)));
  el.addEventListener("dblclick", () => zoomTo(metric, null));
  el.dataset.order = chartOrder(name, source);
  const box = document.getElementById("charts");
  const after = Array.from(box.children).find((c) => c.dataset.order > el.dataset.order);
  box.insertBefore(el, after || null);
  return el;
}

// loss and accuracy first, then by name; a metric's training chart before its tests'
function chartOrder(name, source) {
  return `${priority(name, source)}|${name}|${source === "train" ? "" : source}`;
}

function drawnRuns(answer) { return selected.filter((id) => id in answer.runs); }

function plotOptions(metric, chart, answer) {
  const ids = drawnRuns(answer);
  const bands = answer.bucketed && ids.every((id) => "min" in answer.runs[id]);
  const series = [{label: view.axis}];
  const bandList = [];
  ids.forEach((id) => {
    const color = colorFor(selected.indexOf(id));
    series.push({label: id, stroke: color, spanGaps: true, width: 1.5});
    if (bands) {
      const at = series.length - 1;
      series.push({label: id + " max", stroke: "transparent", show: true, spanGaps: true, band: true},
                  {label: id + " min", stroke: "transparent", show: true, spanGaps: true, band: true});
      bandList.push({series: [at + 1, at + 2], fill: color + "22"});
    }
  });
  return {
    width: chartWidth(), height: 240,
    scales: {x: {time: false}, y: {distr: view.log ? 3 : 1}},
    axes: [{label: view.axis === "time" ? "seconds since start" : view.axis}, {}],
    series, bands: bandList,
    legend: {show: ids.length <= 20},
    cursor: {drag: {x: true, y: false}},
    hooks: {
      ...zoomHooks(chart.el, (x0, x1) => zoomTo(metric, [x0, x1])),
      init: [hideBandRows],
      draw: [(u) => drawForkPoints(u, chart.el, ids)],
    },
  };
}

// Each drawn fork's first step on the step axis: a dashed line in its colour, "fork"
// written on it; the chart's data-forks lists them (run, step) for whoever reads it.
function drawForkPoints(u, el, ids) {
  const drawn = [];
  if (view.axis === "step") {
    const ctx = u.ctx, top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
    for (const id of ids) {
      const run = runs.find((r) => r.id === id), fork = run && forkOf(run);
      if (!fork) continue;
      const x = u.valToPos(fork.iters, "x", true);
      if (!(x >= u.bbox.left && x <= u.bbox.left + u.bbox.width)) continue;
      ctx.save();
      ctx.strokeStyle = ctx.fillStyle = colorFor(selected.indexOf(id));
      ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, bottom);
      ctx.stroke();
      ctx.font = `${11 * devicePixelRatio}px sans-serif`;
      ctx.textAlign = "left";  // uPlot leaves its axes' alignment set
      const label = `fork of ${fork.parent}`, width = ctx.measureText(label).width;
      const right = x + 4 * devicePixelRatio + width <= u.bbox.left + u.bbox.width;
      ctx.fillText(label, right ? x + 4 * devicePixelRatio : x - 4 * devicePixelRatio - width,
                   top + 12 * devicePixelRatio);
      ctx.restore();
      drawn.push(`${id}@${fork.iters}`);
    }
  }
  el.dataset.forks = drawn.join(",");
}

// a run's band (its min and max) is drawn, not listed: one legend row per run
function hideBandRows(u) {
  const rows = u.root.querySelectorAll(".u-legend .u-series");
  u.series.forEach((s, i) => { if (s.band && rows[i]) rows[i].style.display = "none"; });
}

function positive(ys) { return view.log ? ys.map((y) => (y > 0 ? y : null)) : ys; }

function plotData(answer) {
  const bands = answer.bucketed && drawnRuns(answer).every((id) => "min" in answer.runs[id]);
  const data = [answer.x];
  for (const id of drawnRuns(answer)) {
    const run = answer.runs[id];
    data.push(positive(smoothed(run.mean, view.smoothing)));
    if (bands) data.push(positive(run.max), positive(run.min));
  }
  return data;
}

function zoomTo(metric, range) {
  const chart = charts.get(metric);
  chart.zoom = range;
  if (!range) chart.el.querySelector(".reset-zoom").hidden = true;
  loaded = loadChart(metric);
}

function downloadPoints(metric) {
  const answer = charts.get(metric).data;
  const ids = drawnRuns(answer);
  downloadCsv(metric, [view.axis].concat(ids), answer.x, ids.map((id) => answer.runs[id].mean));
}

function redrawAll() {
  for (const [metric, chart] of charts) {
    if (!chart.data) continue;
    chart.plot.destroy();
    chart.plot = new uPlot(plotOptions(metric, chart, chart.data), plotData(chart.data), chart.el);
  }
}

// -- the reader's choices ---------------------------------------------------------------
function setup() {
  document.getElementById("filter").addEventListener("input", (e) => { view.filter = e.target.value.trim(); remember(); renderList(); });
  document.getElementById("select-shown").addEventListener("change", (e) => {
    for (const run of shownRuns()) {
      const at = selected.indexOf(run.id);
      if (e.target.checked && at < 0) selected.push(run.id);
      if (!e.target.checked && at >= 0) selected.splice(at, 1);
    }
    renderList();
    reloadCharts();
  });
  document.getElementById("axis").addEventListener("change", (e) => {
    view.axis = e.target.value;
    for (const chart of charts.values()) chart.zoom = null;
    reloadCharts();
  });
  const slider = document.getElementById("smoothing");
  slider.addEventListener("input", () => {
    view.smoothing = Number(slider.value);
    text("smoothing-value", view.smoothing.toFixed(2));
    remember();
    redrawAll();
  });
  document.getElementById("log-scale").addEventListener("change", (e) => { view.log = e.target.checked; remember(); redrawAll(); });
  window.addEventListener("resize", () => {
    for (const chart of charts.values()) if (chart.plot) chart.plot.setSize({width: chartWidth(), height: 240});
  });
}

// The page's address holds the selection and the view, so that a comparison can be
// bookmarked or shared (with the token it was opened with).
function remember() {
  const q = new URLSearchParams();
  if (token) q.set("token", token);
  if (selected.length) q.set("runs", selected.join(","));
  if (view.axis !== "step") q.set("axis", view.axis);
  if (view.smoothing) q.set("smoothing", String(view.smoothing));
  if (view.log) q.set("log", "1");
  if (view.filter) q.set("filter", view.filter);
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

function restore() {
  selected.push(...(params.get("runs") || "").split(",").filter(Boolean));
  view.axis = ["step", "epoch", "time"].includes(params.get("axis")) ? params.get("axis") : "step";
  view.smoothing = Math.min(0.99, Math.max(0, Number(params.get("smoothing")) || 0));
  view.log = params.get("log") === "1";
  view.filter = params.get("filter") || "";
  document.getElementById("axis").value = view.axis;
  document.getElementById("smoothing").value = String(view.smoothing);
  text("smoothing-value", view.smoothing.toFixed(2));
  document.getElementById("log-scale").checked = view.log;
  document.getElementById("filter").value = view.filter;
}

function refreshLive() {
  const live = runs.some((run) => run.status === "running" && selected.includes(run.id));
  loadRuns().then(() => { if (live) reloadCharts(); });
}

setup();
restore();
loadRuns().then(() => {
  selected.splice(0, selected.length, ...selected.filter((id) => runs.some((run) => run.id === id)));
  renderList();
  reloadCharts();
});
setInterval(refreshLive, REFRESH_MS);
