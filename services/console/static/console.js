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

document.addEventListener("DOMContentLoaded", () => { runPage(); overviewPage(); });
