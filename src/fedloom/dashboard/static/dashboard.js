// fedloom dashboard: renders the run state served by the dashboard app (GET api/state, then
// server-sent events from api/events). Read-only; no libraries; charts are drawn on <canvas>.
"use strict";

const TOKEN = new URLSearchParams(window.location.search).get("token");
const COLORS = ["#2456a6", "#d9731a", "#1f7a3d", "#b3261e", "#7b4bb7", "#8a6d3b", "#0f8b8d"];
const PHASES = ["selection", "download", "client_work", "upload", "aggregation", "evaluation"];
// Round-record keys that describe the round, not the model (as tracking/summary.py).
const BOOKKEEPING = new Set([
  "round", "selected", "returned", "rejected", "failed", "bytes_up", "bytes_down",
  "compression_ratio_up", "seconds", "phase_seconds", "status", "dropped", "over_selected",
  "connected",
]);
let chosenMetric = null;

function api(path) {
  return TOKEN ? `${path}?token=${encodeURIComponent(TOKEN)}` : path;
}

function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

// As fedloom.tracking.console: integers with separators, else 4 decimals or scientific.
function fmtNumber(v) {
  if (!isNum(v)) return "-";
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(3);
  return v.toFixed(4);
}

function fmtBytes(n) {
  let v = Number(n);
  if (Math.abs(v) < 1000) return `${v.toFixed(0)} B`;
  let unit = "B";
  for (const u of ["kB", "MB", "GB", "TB"]) {
    v /= 1000;
    unit = u;
    if (Math.abs(v) < 999.95) break;
  }
  return `${v.toFixed(1)} ${unit}`;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fillTable(table, header, rows) {
  table.replaceChildren(
    el("thead", {}, el("tr", {}, ...header.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows),
  );
}

// -- charts --------------------------------------------------------------------------------

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

function ticks(lo, hi, count) {
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(t);
  return out;
}

function tickLabel(v, step) {
  if (Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-3)) return v.toExponential(1);
  let decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  while (decimals < 6 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) {
    decimals += 1;
  }
  return v.toFixed(decimals);
}

// A frame with axes, grid and labels; returns the maps from data to canvas coordinates.
// names: the legend, drawn on a line under the title when there is more than one series.
function frame(canvas, title, xlabel, ylabel, xr, yr, integerX, names) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width;
  const H = canvas.height;
  const withLegend = names && names.length > 1;
  const pad = { l: 62, r: 14, t: withLegend ? 44 : 26, b: 42 };
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, W, H);
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#1d2430";
  ctx.textAlign = "left";
  ctx.fillText(title, pad.l, 16);
  if (withLegend) {
    let xpos = pad.l;
    for (const [i, n] of names.entries()) {
      ctx.fillStyle = COLORS[i % COLORS.length];
      ctx.fillRect(xpos, 24, 10, 10);
      ctx.fillStyle = "#1d2430";
      ctx.fillText(n, xpos + 14, 33);
      xpos += ctx.measureText(n).width + 26;
    }
  }
  const x = (v) => pad.l + ((v - xr[0]) / (xr[1] - xr[0])) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - ((v - yr[0]) / (yr[1] - yr[0])) * (H - pad.t - pad.b);
  ctx.strokeStyle = "#e3e7ee";
  ctx.fillStyle = "#5b6678";
  ctx.lineWidth = 1;
  const ys = ticks(yr[0], yr[1], 5);
  const ystep = ys.length > 1 ? ys[1] - ys[0] : 1;
  ctx.textAlign = "right";
  for (const t of ys) {
    ctx.beginPath();
    ctx.moveTo(pad.l, y(t));
    ctx.lineTo(W - pad.r, y(t));
    ctx.stroke();
    ctx.fillText(tickLabel(t, ystep), pad.l - 6, y(t) + 4);
  }
  let xs = ticks(xr[0], xr[1], 6);
  if (integerX) xs = xs.filter((t) => Number.isInteger(t));
  const xstep = xs.length > 1 ? xs[1] - xs[0] : 1;
  ctx.textAlign = "center";
  for (const t of xs) ctx.fillText(tickLabel(t, xstep), x(t), H - pad.b + 16);
  ctx.strokeStyle = "#5b6678";
  ctx.beginPath();
  ctx.moveTo(pad.l, pad.t);
  ctx.lineTo(pad.l, H - pad.b);
  ctx.lineTo(W - pad.r, H - pad.b);
  ctx.stroke();
  ctx.fillText(xlabel, pad.l + (W - pad.l - pad.r) / 2, H - 8);
  ctx.save();
  ctx.translate(14, pad.t + (H - pad.t - pad.b) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(ylabel, 0, 0);
  ctx.restore();
  return { ctx, x, y, pad, W, H };
}

function range(values, padFraction, includeZero) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (includeZero) lo = Math.min(lo, 0);
  if (lo === hi) {
    const d = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    return [lo - d, hi + d];
  }
  const d = (hi - lo) * padFraction;
  return [includeZero && lo === 0 ? 0 : lo - d, hi + d];
}

function emptyChart(canvas, title, what) {
  const f = frame(canvas, title, "", "", [0, 1], [0, 1], false);
  f.ctx.textAlign = "center";
  f.ctx.fillText(`no ${what} yet`, f.W / 2, f.H / 2);
  canvas.dataset.points = "0";
}

// series: [{name, points: [[x, y], ...]}]
function lineChart(canvas, title, xlabel, ylabel, allSeries, integerX) {
  const series = allSeries.filter((s) => s.points.length);
  const pts = series.flatMap((s) => s.points);
  canvas.dataset.points = String(Math.max(0, ...series.map((s) => s.points.length)));
  if (!pts.length) return emptyChart(canvas, title, ylabel);
  const f = frame(
    canvas, title, xlabel, ylabel,
    range(pts.map((p) => p[0]), 0.03, false), range(pts.map((p) => p[1]), 0.08, false), integerX,
    series.map((s) => s.name),
  );
  const { ctx, x, y } = f;
  for (const [i, s] of series.entries()) {
    ctx.strokeStyle = ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach(([px, py], j) => (j ? ctx.lineTo(x(px), y(py)) : ctx.moveTo(x(px), y(py))));
    ctx.stroke();
    for (const [px, py] of s.points) {
      ctx.beginPath();
      ctx.arc(x(px), y(py), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
}

// Bars per round; stacked: one bar of all series, else side by side.
function barChart(canvas, title, ylabel, rounds, series, stacked, fmt) {
  canvas.dataset.points = String(rounds.length);
  if (!rounds.length) return emptyChart(canvas, title, ylabel);
  const tops = rounds.map((_, i) =>
    stacked ? series.reduce((a, s) => a + s.values[i], 0) : Math.max(...series.map((s) => s.values[i])),
  );
  const f = frame(
    canvas, title, "round", ylabel,
    [Math.min(...rounds) - 0.6, Math.max(...rounds) + 0.6], range([...tops, 0], 0.08, true), true,
    series.map((s) => s.name),
  );
  const { ctx, x, y } = f;
  const slot = Math.abs(x(1) - x(0)) * 0.8;
  rounds.forEach((r, i) => {
    let base = 0;
    series.forEach((s, k) => {
      ctx.fillStyle = COLORS[k % COLORS.length];
      const v = s.values[i];
      if (stacked) {
        ctx.fillRect(x(r) - slot / 2, y(base + v), slot, y(base) - y(base + v));
        base += v;
      } else {
        const w = slot / series.length;
        ctx.fillRect(x(r) - slot / 2 + k * w, y(v), w - 1, y(0) - y(v));
      }
    });
  });
  canvas.title = `${ylabel}: ${fmt(tops[tops.length - 1])} in round ${rounds[rounds.length - 1]}`;
}

// -- the page ------------------------------------------------------------------------------

function qualityKey(records) {
  for (const k of ["accuracy", "fed_accuracy_mean"]) {
    if (records.some((r) => isNum(r[k]))) return "accuracy";
  }
  return "r2";
}

function points(records, key, xs) {
  const out = [];
  records.forEach((r, i) => {
    if (isNum(r[key])) out.push([xs[i], r[key]]);
  });
  return out;
}

function cumulativeMB(records) {
  let total = 0;
  return records.map((r) => {
    total += (isNum(r.bytes_up) ? r.bytes_up : 0) + (isNum(r.bytes_down) ? r.bytes_down : 0);
    return total / 1e6;
  });
}

function renderHeader(state, records) {
  const live = state.live || {};
  const config = live.config || (state.summary && state.summary.config) || {};
  const total = live.rounds || config.rounds || records.length;
  const done = records.length ? records[records.length - 1].round : 0;
  const status = live.status || (state.summary ? "finished" : "unknown");
  document.getElementById("run-name").textContent = state.run;
  const badge = document.getElementById("status");
  badge.textContent = status;
  badge.className = `badge ${status}`;
  const counter = document.getElementById("round-counter");
  counter.textContent = `round ${done} / ${total}`;
  counter.dataset.round = String(done);
  counter.dataset.rounds = String(total);
  const inProgress = live.round_in_progress ? ` · round ${live.round_in_progress} in progress` : "";
  document.getElementById("mode").textContent = (live.mode || "") + inProgress;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.getElementById("config").textContent = JSON.stringify(config, null, 2);
  document.body.dataset.records = String(records.length);
}

function renderLatest(records) {
  const evaluated = [...records].reverse().find((r) => isNum(r.loss) || isNum(r.accuracy)
    || Object.keys(r).some((k) => k.startsWith("fed_")));
  const last = records[records.length - 1];
  const rows = [];
  const source = evaluated || last || {};
  document.getElementById("latest-title").textContent =
    evaluated ? `Latest metrics (round ${evaluated.round})` : "Latest metrics";
  for (const [k, v] of Object.entries(source)) {
    if (BOOKKEEPING.has(k) || !isNum(v)) continue;
    rows.push(el("tr", {}, el("th", {}, k), el("td", { "data-metric": k }, fmtNumber(v))));
  }
  if (last) {
    rows.push(el("tr", {}, el("th", {}, "bytes up / down (last round)"),
      el("td", { "data-metric": "bytes" }, `${fmtBytes(last.bytes_up)} / ${fmtBytes(last.bytes_down)}`)));
    rows.push(el("tr", {}, el("th", {}, "clients returned / selected"),
      el("td", { "data-metric": "returned" }, `${last.returned} / ${last.selected}`)));
  }
  fillTable(document.getElementById("latest-metrics"), ["metric", "value"], rows);
}

function renderCurves(records) {
  const rounds = records.map((r) => r.round);
  const mb = cumulativeMB(records);
  const q = qualityKey(records);
  const pair = (key) => [
    { name: "global model", points: points(records, key, rounds) },
    { name: "client mean", points: points(records, `fed_${key}_mean`, rounds) },
  ];
  const byBytes = (key) => [
    { name: "global model", points: points(records, key, mb) },
    { name: "client mean", points: points(records, `fed_${key}_mean`, mb) },
  ];
  lineChart(document.getElementById("chart-quality-round"), `${q} by round`, "round", q, pair(q), true);
  lineChart(document.getElementById("chart-quality-bytes"), `${q} by bytes`, "cumulative MB (up + down)", q, byBytes(q), false);
  lineChart(document.getElementById("chart-loss-round"), "loss by round", "round", "loss",
    pair("loss").concat([{ name: "train loss", points: points(records, "train_loss", rounds) }]), true);
  lineChart(document.getElementById("chart-loss-bytes"), "loss by bytes", "cumulative MB (up + down)", "loss", byBytes("loss"), false);

  const keys = new Set();
  for (const r of records) for (const [k, v] of Object.entries(r)) if (k !== "round" && isNum(v)) keys.add(k);
  const select = document.getElementById("metric-select");
  const options = [...keys].sort();
  if (!chosenMetric || !keys.has(chosenMetric)) {
    chosenMetric = ["f1_macro", "auc", "rmse", "train_loss"].find((k) => keys.has(k)) || options[0] || null;
  }
  if (select.dataset.options !== options.join(",")) {
    select.replaceChildren(...options.map((k) => el("option", { value: k }, k)));
    select.dataset.options = options.join(",");
  }
  if (chosenMetric) select.value = chosenMetric;
  const m = chosenMetric || "metric";
  lineChart(document.getElementById("chart-metric-round"), `${m} by round`, "round", m,
    [{ name: m, points: points(records, m, rounds) }], true);
  lineChart(document.getElementById("chart-metric-bytes"), `${m} by bytes`, "cumulative MB (up + down)", m,
    [{ name: m, points: points(records, m, mb) }], false);
}

function renderBytes(records) {
  const rounds = records.map((r) => r.round);
  barChart(document.getElementById("chart-bytes"), "bytes per round", "MB", rounds, [
    { name: "up", values: records.map((r) => (isNum(r.bytes_up) ? r.bytes_up / 1e6 : 0)) },
    { name: "down", values: records.map((r) => (isNum(r.bytes_down) ? r.bytes_down / 1e6 : 0)) },
  ], false, (v) => `${v.toFixed(3)} MB`);
}

function renderPhases(records) {
  const timed = records.filter((r) => r.phase_seconds);
  barChart(document.getElementById("chart-phases"), "seconds per phase", "seconds",
    timed.map((r) => r.round),
    PHASES.map((p) => ({ name: p, values: timed.map((r) => r.phase_seconds[p] || 0) })),
    true, (v) => `${v.toFixed(3)} s`);
  const last = timed[timed.length - 1];
  const rows = [];
  if (last) {
    const sum = PHASES.reduce((a, p) => a + (last.phase_seconds[p] || 0), 0);
    for (const p of PHASES) {
      const v = last.phase_seconds[p] || 0;
      rows.push(el("tr", {}, el("td", {}, p), el("td", { "data-phase": p }, v.toFixed(4)),
        el("td", {}, sum > 0 ? `${((100 * v) / sum).toFixed(1)} %` : "-")));
    }
  }
  fillTable(document.getElementById("phase-table"),
    [`round ${last ? last.round : "-"}`, "seconds", "share"], rows);
}

function renderPrivacy(records) {
  const section = document.getElementById("privacy");
  const eps = records.filter((r) => isNum(r.epsilon));
  section.hidden = eps.length === 0;
  if (!eps.length) return;
  const last = eps[eps.length - 1];
  const delta = isNum(last.delta) ? ` at δ = ${last.delta.toExponential(1)}` : "";
  const text = document.getElementById("privacy-text");
  text.textContent = `ε = ${fmtNumber(last.epsilon)}${delta} after round ${last.round}`;
  text.dataset.epsilon = String(last.epsilon);
  lineChart(document.getElementById("chart-epsilon"), "privacy loss ε by round", "round", "ε",
    [{ name: "ε", points: eps.map((r) => [r.round, r.epsilon]) }], true);
}

function ago(unixSeconds) {
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  return s < 60 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(1)} min ago`;
}

function renderClients(state) {
  const live = state.live || {};
  const table = document.getElementById("client-table");
  const title = document.getElementById("clients-title");
  if (Array.isArray(live.clients)) {
    title.textContent = `Clients (${live.clients.filter((c) => c.connected).length} connected of ${live.clients.length} seen)`;
    fillTable(table,
      ["client", "name", "connected", "last seen", "rounds joined", "results", "failures", "dropped", "rejected", "last rejection"],
      live.clients.map((c) => el("tr", { "data-client": c.client_id },
        el("td", {}, c.client_id), el("td", {}, c.name),
        el("td", { class: c.connected ? "" : "bad" }, c.connected ? (c.ready ? "yes" : "joining") : "no"),
        el("td", {}, ago(c.last_seen)), el("td", {}, c.rounds_joined), el("td", {}, c.results),
        el("td", { class: c.failures ? "bad" : "" }, c.failures),
        el("td", { class: c.dropped ? "bad" : "" }, c.dropped),
        el("td", { class: c.rejected ? "bad" : "" }, c.rejected),
        el("td", { class: "note" }, c.last_rejection || ""))));
    return;
  }
  const current = live.round_in_progress && (live.cohort || []).length;
  const cohort = current ? live.cohort : live.last_cohort || [];
  const round = current ? live.round_in_progress : live.last_round;
  title.textContent = cohort.length
    ? `Clients of round ${round} (${cohort.length} results${current ? " so far" : ""})`
    : "Clients (the selected cohort shows here while the run is live)";
  const sorted = [...cohort].sort((a, b) => a.client_id - b.client_id);
  fillTable(table, ["client", "task", "status", "train loss", "examples", "seconds", "error"],
    sorted.map((c) => el("tr", { "data-client": c.client_id },
      el("td", {}, c.client_id), el("td", {}, c.kind),
      el("td", { class: c.ok ? "" : "bad" }, c.ok ? "ok" : "failed"),
      el("td", {}, fmtNumber(c.train_loss)), el("td", {}, c.num_examples),
      el("td", {}, isNum(c.seconds) ? c.seconds.toFixed(3) : "-"),
      el("td", { class: "note" }, c.error || ""))));
}

let lastState = null;

function render(update) {
  // an update without records (null) keeps the records of the one before
  const state = update.records === null && lastState ? { ...update, records: lastState.records } : update;
  lastState = state;
  const records = (state.records || []).slice().sort((a, b) => a.round - b.round);
  renderHeader(state, records);
  renderLatest(records);
  renderCurves(records);
  renderBytes(records);
  renderPhases(records);
  renderPrivacy(records);
  renderClients(state);
}

document.getElementById("metric-select").addEventListener("change", (ev) => {
  chosenMetric = ev.target.value;
  if (lastState) render(lastState);
});

function connect() {
  const events = new EventSource(api("api/events"));
  events.onmessage = (ev) => {
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    render(JSON.parse(ev.data));
  };
  events.onerror = () => {
    const badge = document.getElementById("status");
    if (badge.textContent !== "finished") {
      badge.textContent = "disconnected";
      badge.className = "badge disconnected";
    }
  };
}

fetch(api("api/state"))
  .then((r) => r.json())
  .then(render)
  .finally(connect);
