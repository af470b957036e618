// Inside a step: the stacked breakdown of sampled steps (step_times), its verdict,
// and the reports of profiles asked for from this page or `evloop ctl ... profile`.
"use strict";

const PARTS = ["data", "forward", "optimizer", "callbacks", "engine"];
const PART_NAMES = {data: "data (loader wait)", forward: "forward + backward",
                    optimizer: "optimizer step", callbacks: "callbacks", engine: "engine"};
const MAX_STEPS = 2000;  // samples kept on the chart
const steps = {xs: [], parts: PARTS.map(() => [])};
let breakdownPlot = null;
let breakdownDirty = false;

function clearInsight() {
  steps.xs.length = 0;
  steps.parts.forEach((ys) => { ys.length = 0; });
  document.getElementById("profile-reports").replaceChildren();
}

function addStepTimes(msg) {
  document.getElementById("breakdown-section").hidden = false;
  if (steps.xs.length && msg.iters <= steps.xs[steps.xs.length - 1]) return;  // seen
  steps.xs.push(msg.iters);
  PARTS.forEach((part, i) => steps.parts[i].push(1e3 * (msg.parts[part] || 0)));
  if (steps.xs.length > MAX_STEPS) {
    steps.xs.shift();
    steps.parts.forEach((ys) => ys.shift());
  }
  showLatestStep(msg);
  breakdownDirty = true;
}

function showLatestStep(msg) {
  const verdict = document.getElementById("verdict");
  verdict.textContent = msg.verdict || "no part dominates the step";
  verdict.className = msg.verdict ? "verdict warn" : "verdict";
  const clock = msg.clock === "cuda" ? "CUDA events" : "monotonic clock";
  const parts = PARTS.map((p) => `${PART_NAMES[p]} ${ms(msg.parts[p] || 0)}`).join(" · ");
  text("breakdown-latest",
       `iteration ${msg.iters}: ${ms(msg.step_s)} per step (${clock}) — ${parts}`);
  const rows = Object.entries(msg.callbacks || {}).map(([name, s]) => {
    const row = document.createElement("tr");
    const cells = [name, ms(s), pct(s, msg.step_s)].map((value) => {
      const cell = document.createElement("td");
      cell.textContent = value;
      return cell;
    });
    row.append(...cells);
    return row;
  });
  document.querySelector("#breakdown-callbacks tbody").replaceChildren(...rows);
}

function ms(seconds) { return (1e3 * seconds).toFixed(seconds < 0.01 ? 2 : 1) + " ms"; }
function pct(part, whole) { return whole > 0 ? Math.round((100 * part) / whole) + "%" : "–"; }

// Stacked: each series is drawn as the sum of its part and those below it, the
// topmost first so that each fill covers only its own band.
function stackedData() {
  const sums = [];
  let below = steps.xs.map(() => 0);
  for (const ys of steps.parts) {
    below = below.map((b, j) => b + ys[j]);
    sums.push(below);
  }
  return [steps.xs].concat(sums.slice().reverse());
}

function redrawBreakdown() {
  if (!breakdownDirty) return;
  breakdownDirty = false;
  const data = stackedData();
  if (breakdownPlot) { breakdownPlot.setData(data); return; }
  const order = PARTS.slice().reverse();
  breakdownPlot = new uPlot({
    width: Math.max(320, Math.min(860, window.innerWidth - 56)),
    height: 240,
    scales: {x: {time: false}},
    axes: [{label: "iteration"}, {label: "ms per step (stacked)"}],
    series: [{label: "iteration"}].concat(order.map((part) => {
      const color = colorFor(PARTS.indexOf(part));
      return {label: PART_NAMES[part], stroke: color, fill: color + "99", width: 1,
              value: (u, v, si, i) => (i === null ? "–" : ms(ownPart(part, i) / 1e3))};
    })),
  }, data, document.getElementById("breakdown-chart"));
}

function ownPart(part, i) { return steps.parts[PARTS.indexOf(part)][i]; }

// -- profiles -----------------------------------------------------------------------
function setupProfile() {
  document.getElementById("profile-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const count = Number(document.getElementById("profile-steps").value);
    const values = {steps: count};
    if (document.getElementById("profile-all").checked) values.ranks = "all";
    command("profile", values);
  });
}

function showProfile(msg) {
  document.getElementById("breakdown-section").hidden = false;
  const box = document.createElement("article");
  box.className = "profile";
  const title = document.createElement("h3");
  title.textContent = `profile of iterations ${msg.first}–${msg.last} (rank ${msg.rank})`;
  box.append(title);
  if (msg.error) {
    const note = document.createElement("p");
    note.className = msg.ok ? "note" : "note failed";
    note.textContent = msg.error;
    box.append(note);
  }
  if (msg.path) {
    const link = document.createElement("a");
    const query = token ? "?token=" + encodeURIComponent(token) : "";
    link.href = "/" + msg.path + query;
    link.download = msg.path.split("/").pop();
    link.textContent = "download the trace (Chrome / Perfetto JSON)";
    const where = document.createElement("p");
    where.append(link, ` — ${msg.path} in the run folder`);
    if (msg.step_s !== null && msg.step_s !== undefined) where.append(`; ${ms(msg.step_s)} per step while profiled`);
    box.append(where);
  }
  if (Object.keys(msg.breakdown || {}).length) {
    const total = Object.values(msg.breakdown).reduce((a, b) => a + b, 0);
    const line = document.createElement("p");
    line.textContent = "breakdown: " + Object.entries(msg.breakdown)
      .map(([part, s]) => `${PART_NAMES[part] || part} ${ms(s)} (${pct(s, total)})`).join(" · ");
    box.append(line);
  }
  if ((msg.top || []).length) box.append(operatorTable(msg.top));
  const list = document.getElementById("profile-reports");
  list.prepend(box);
}

function operatorTable(top) {
  const table = document.createElement("table");
  table.className = "operators";
  const head = document.createElement("tr");
  for (const name of ["operator", "self", "total", "calls"]) {
    const th = document.createElement("th");
    th.textContent = name;
    head.append(th);
  }
  const body = document.createElement("tbody");
  for (const op of top) {
    const row = document.createElement("tr");
    for (const value of [op.name, ms(op.self_s), ms(op.total_s), String(op.calls)]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    body.append(row);
  }
  const thead = document.createElement("thead");
  thead.append(head);
  table.append(thead, body);
  return table;
}
