// Lepton Mesh console: live charts over Server-Sent Events (uPlot, shipped with the package).
"use strict";

function readJson(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

// ------------------------------------------------------------------ run page: learning curves
function curveChart(el, points) {
  const data = () => [
    points.map((p) => p.epoch),
    points.map((p) => p.loss),
    points.map((p) => p.train_accuracy),
    points.map((p) => p.val_accuracy),
  ];
  const opts = {
    width: Math.min(el.clientWidth || 800, 900),
    height: 280,
    scales: { x: { time: false }, acc: { range: [0, 1] } },
    axes: [
      { label: "epoch" },
      { label: "loss", scale: "y" },
      { label: "accuracy", scale: "acc", side: 1, grid: { show: false } },
    ],
    series: [
      { label: "epoch" },
      { label: "loss", stroke: "#d9480f", width: 2, scale: "y", points: { show: true } },
      { label: "train accuracy", stroke: "#1c7ed6", width: 2, scale: "acc", points: { show: true } },
      { label: "val accuracy", stroke: "#2b8a3e", width: 2, scale: "acc", points: { show: true } },
    ],
  };
  const plot = new uPlot(opts, data(), el);
  return { add(point) {
    const i = points.findIndex((p) => p.epoch === point.epoch);
    if (i >= 0) return false;
    points.push(point);
    points.sort((a, b) => a.epoch - b.epoch);
    plot.setData(data());
    return true;
  } };
}

function runPage() {
  const el = document.getElementById("curve");
  if (!el) return;
  const run = el.dataset.run;
  const points = readJson("curve-data") || [];
  const chart = curveChart(el, points);
  el.dataset.points = String(points.length);
  const source = new EventSource("/events?run=" + encodeURIComponent(run));
  source.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    if (p.run_id !== run || !chart.add(p)) return;
    el.dataset.points = String(points.length);
    document.getElementById("points").textContent = points.length + " epochs";
    if (p.worker) document.getElementById("worker").textContent = p.worker;
  });
  source.addEventListener("event", (e) => {
    const ev = JSON.parse(e.data);
    if (ev.run_id === run && (ev.topic === "training.completed.v1" || ev.topic === "training.failed.v1")) {
      const status = document.getElementById("run-status");
      status.textContent = ev.topic === "training.completed.v1" ? "completed" : "failed";
      status.className = ev.topic === "training.completed.v1" ? "ok" : "bad";
    }
  });
}

// ------------------------------------------------------------------ overview: sparklines
function sparkline(el, values) {
  const xs = values.map((_, i) => i);
  const opts = {
    width: 180, height: 32, cursor: { show: false }, legend: { show: false },
    scales: { x: { time: false } }, axes: [{ show: false }, { show: false }],
    series: [{}, { stroke: "#1c7ed6", fill: "rgba(28,126,214,0.15)", width: 1 }],
  };
  return new uPlot(opts, [xs, values], el);
}

function overviewPage() {
  const stats = readJson("stats");
  if (!stats) return;
  const charts = {};
  const draw = (s) => {
    for (const [topic, values] of Object.entries(s.rates || {})) {
      const el = document.querySelector(`[data-spark="${CSS.escape(topic)}"]`);
      if (!el) continue;
      if (!charts[topic]) charts[topic] = sparkline(el, values);
      else charts[topic].setData([values.map((_, i) => i), values]);
      const rate = document.querySelector(`[data-rate="${CSS.escape(topic)}"]`);
      if (rate && values.length) rate.textContent = values[values.length - 1].toPrecision(3);
    }
    for (const [topic, end] of Object.entries(s.ends || {})) {
      const cell = document.querySelector(`[data-end="${CSS.escape(topic)}"]`);
      if (cell) cell.textContent = end;
    }
    const total = document.getElementById("dlq-total");
    if (total) {
      total.textContent = Object.entries(s.ends || {})
        .filter(([topic]) => topic.endsWith(".dlq.v1"))
        .reduce((sum, [, end]) => sum + end, 0);
    }
    for (const [name, alive] of Object.entries(s.alive || {})) {
      const cell = document.querySelector(`tr[data-service="${CSS.escape(name)}"] .alive`);
      if (cell) { cell.textContent = alive ? "alive" : "down"; cell.className = (alive ? "ok" : "bad") + " alive"; }
    }
  };
  draw(stats);
  const source = new EventSource("/events");
  source.addEventListener("stats", (e) => draw(JSON.parse(e.data)));
}

// ------------------------------------------------------------------ model page: health charts
// One point per model.health.v1 window: the page starts from the monitor's history
// (GET /models/{name}/health, after the page shows) and adds the windows streamed over SSE.
const HEALTH_W = 400;
const HEALTH_H = 180;

function aligned(seriesList) {
  // one x array (window ends, seconds) for several versions' points; null where absent
  const xs = [...new Set(seriesList.flatMap((s) => s.points.map((p) => p.t)))].sort((a, b) => a - b);
  return [xs, ...seriesList.map((s) => {
    const at = new Map(s.points.map((p) => [p.t, p[s.key]]));
    return xs.map((x) => (at.has(x) ? at.get(x) : null));
  })];
}

function healthChart(el, title, lines, scales, axes, width = HEALTH_W) {
  const fig = document.createElement("figure");
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  fig.appendChild(cap);
  el.appendChild(fig);
  const opts = {
    width, height: HEALTH_H, scales: { x: { time: true }, ...scales }, axes,
    series: [{}, ...lines.map((l) => ({ spanGaps: true, width: 2, points: { show: true, size: 4 }, ...l }))],
  };
  let plot = null;
  return (data) => {
    if (!plot) plot = new uPlot(opts, data, fig);
    else plot.setData(data);
  };
}

function versionCharts(container, version, points) {
  const box = document.createElement("div");
  box.className = "health-version";
  box.id = "health-v" + version;
  box.dataset.version = String(version);
  const h = document.createElement("h3");
  h.textContent = "v" + version;
  box.appendChild(h);
  container.appendChild(box);
  const drift = healthChart(box, "drift (PSI)", [
    { label: "input drift", stroke: "#d9480f" },
    { label: "prediction drift", stroke: "#9c36b5" },
  ], {}, [{}, { label: "PSI" }]);
  const live = healthChart(box, "live accuracy, error rate, p99 latency", [
    { label: "live accuracy", stroke: "#2b8a3e", scale: "frac" },
    { label: "error rate", stroke: "#cf222e", scale: "frac" },
    { label: "p99 ms", stroke: "#1c7ed6", scale: "ms" },
  ], { frac: { range: [0, 1] } }, [{}, { scale: "frac", label: "share" }, { scale: "ms", side: 1, label: "ms", grid: { show: false } }]);
  const draw = () => {
    const key = (k) => ({ points, key: k });
    drift(aligned([key("input_drift"), key("prediction_drift")]));
    live(aligned([key("accuracy"), key("error_rate"), key("latency_ms_p99")]));
    box.dataset.points = String(points.length);
  };
  draw();
  return draw;
}

const PAIR_FIGURES = [
  ["agreement", "agreement with the champion (shadow)", { range: [0, 1] }],
  ["accuracy", "live accuracy", { range: [0, 1] }],
  ["error_rate", "error rate", { range: [0, 1] }],
  ["latency_ms_p99", "p99 latency (ms)", {}],
];

function rolloutCharts(el, pair, series) {
  const candidate = String(pair.candidate);
  const champion = pair.champion == null ? null : String(pair.champion);
  const width = Math.max(200, Math.min(HEALTH_W, Math.floor((el.clientWidth || 2 * HEALTH_W) / 2) - 8));
  const draws = PAIR_FIGURES.map(([key, title, range]) => {
    const fig = document.createElement("div");
    fig.id = "rollout-" + key;
    el.appendChild(fig);
    const draw = healthChart(fig, title, [
      { label: "candidate v" + candidate, stroke: "#1c7ed6" },
      { label: "champion v" + (champion || "—"), stroke: "#868e96" },
    ], { y: range }, [{}, {}], width);
    return (c, h) => {
      draw(aligned([{ points: c, key }, { points: h, key }]));
      fig.dataset.points = String(c.length + h.length);
    };
  });
  const draw = () => {
    const c = series[candidate] || [];
    const h = (champion && series[champion]) || [];
    draws.forEach((d) => d(c, h));
    el.dataset.candidatePoints = String(c.length);
    el.dataset.championPoints = String(h.length);
  };
  draw();
  return { draw, versions: [candidate, champion] };
}

function pointsOf(cols) {  // the monitor's columns as points
  return (cols.t || []).map((t, i) => {
    const p = { t };
    for (const [k, col] of Object.entries(cols)) p[k] = col[i];
    return p;
  });
}

function modelPage() {
  // The page never waits on the monitor: the charts' data comes from data-src once the
  // page is shown; windows streamed meanwhile wait in `pending`.
  const section = document.getElementById("health");
  if (!section) return;
  const model = section.dataset.model;
  const container = document.getElementById("health-charts");
  const none = document.getElementById("health-none");
  const pairEl = document.getElementById("rollout-charts");
  const series = {};  // version -> points, oldest first
  const charts = {};
  let pair = null;
  let loaded = false;
  const pending = [];
  const add = (p) => {
    const v = String(p.version);
    const pts = series[v] || (series[v] = []);
    if (pts.some((q) => q.t === p.t)) return;  // already in the history the page loaded
    pts.push(p);
    pts.sort((a, b) => a.t - b.t);
    if (pts.length > 360) pts.shift();
    if (!charts[v]) {
      charts[v] = versionCharts(container, v, pts);
      container.dataset.versions = String(Object.keys(charts).length);
      none.hidden = true;
    } else charts[v]();
    if (pair && pair.versions.includes(v)) pair.draw();
  };
  const source = new EventSource("/events?model=" + encodeURIComponent(model));
  source.addEventListener("health", (e) => {
    const p = JSON.parse(e.data);
    if (p.model_name !== model) return;
    if (loaded) add(p); else pending.push(p);
  });
  fetch(section.dataset.src)
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
    .then((data) => {
      for (const [v, cols] of Object.entries({ ...(data.extra || {}), ...(data.versions || {}) })) series[v] = pointsOf(cols);
      for (const v of Object.keys(data.versions || {}).sort((a, b) => b - a)) charts[v] = versionCharts(container, v, series[v]);
      container.dataset.versions = String(Object.keys(charts).length);
      none.textContent = "no data yet (" + (data.monitor ? "the monitor has published no health window for this model" : "the monitor does not answer") + "); charts appear live as it does";
      none.hidden = Object.keys(charts).length > 0;
    })
    .catch((err) => { none.textContent = "the monitor's windows could not be loaded (" + err.message + "); charts appear live"; })
    .finally(() => {
      if (pairEl) pair = rolloutCharts(pairEl, { candidate: pairEl.dataset.candidate, champion: pairEl.dataset.champion || null }, series);
      loaded = true;
      pending.splice(0).forEach(add);
      section.dataset.loaded = "true";
    });
}

document.addEventListener("DOMContentLoaded", () => { runPage(); overviewPage(); modelPage(); });
