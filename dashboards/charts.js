// What both pages draw with: chart order and units, smoothing, colours, sizes, CSV.
"use strict";

const COLORS = ["#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00897b",
                "#6d4c41", "#d81b60", "#3949ab", "#7cb342"];

// One colour per series however many: the palette, then hues spread by the golden angle.
function colorFor(i) {
  if (i < COLORS.length) return COLORS[i];
  return `hsl(${Math.round((i * 137.508) % 360)}, 65%, 45%)`;
}

function text(id, value) { document.getElementById(id).textContent = value; }

function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

// Charts in a stable order: loss and accuracy first, learning rates together, timings
// and resource use last.
function priority(metric, source) {
  if (source === "system") return 10;
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

// A chart as wide as the window allows, up to 420 px (two per row on a phone's side).
function chartWidth() {
  return Math.max(240, Math.min(420, window.innerWidth - 56));
}

function downloadCsv(filename, header, xs, columns) {
  const lines = [header.join(",")];
  xs.forEach((x, i) => lines.push([x].concat(columns.map((ys) => ys[i] ?? "")).join(",")));
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], {type: "text/csv"}));
  link.download = filename.replaceAll("/", "_") + ".csv";
  link.click();
  URL.revokeObjectURL(link.href);
}

// A chart's title bar: its name and unit, a CSV button, and a zoom reset that shows
// while the chart is zoomed (drag across a chart to zoom; double-click resets too).
function chartTitle(metric, onCsv, onReset) {
  const title = document.createElement("h3");
  title.textContent = metric + unitOf(metric);
  const reset = document.createElement("button");
  reset.className = "reset-zoom";
  reset.textContent = "reset zoom";
  reset.hidden = true;
  reset.addEventListener("click", onReset);
  const csv = document.createElement("button");
  csv.className = "csv";
  csv.textContent = "CSV";
  csv.title = "download this chart's points (unsmoothed) as CSV";
  csv.addEventListener("click", onCsv);
  title.append(csv, reset);
  return title;
}

// uPlot hooks that show the title's reset button while the x range is a zoom.
function zoomHooks(el, onZoom) {
  return {
    setSelect: [(u) => {
      if (u.select.width > 0) {
        const x0 = u.posToVal(u.select.left, "x"), x1 = u.posToVal(u.select.left + u.select.width, "x");
        el.querySelector(".reset-zoom").hidden = false;
        if (onZoom) onZoom(x0, x1);
      }
    }],
  };
}
