// fedfm dashboard: polls /api/metrics once a second and redraws. No dependencies.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const token = new URLSearchParams(window.location.search).get("token");
const POLL_MS = 1000;

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

// A line chart of series [{name, points: [[round, value], ...]}] into an <svg viewBox="0 0 400 220">.
function lineChart(svg, series, roundsPlanned) {
  const W = 400, H = 220, L = 44, R = 10, T = 10, B = 26;
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points);
  const maxRound = Math.max(roundsPlanned || 1, ...all.map((p) => p[0]), 1);
  let lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  if (!all.length) { lo = 0; hi = 1; }
  if (hi === lo) { hi += Math.abs(hi) * 0.05 || 1; lo -= Math.abs(lo) * 0.05 || 0; }
  const x = (r) => L + ((r - 1) / Math.max(maxRound - 1, 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  svg.append(el("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(el("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (const v of [lo, (lo + hi) / 2, hi]) {
    svg.append(el("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, Number(v.toPrecision(3)).toString()));
  }
  svg.append(el("text", { x: L, y: H - 8, "text-anchor": "middle" }, "1"));
  svg.append(el("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `round ${maxRound}`));
  for (const s of series) {
    if (!s.points.length) continue;
    const line = s.points.map(([r, v]) => `${x(r).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { class: `s-${s.name}`, points: line }));
    for (const [r, v] of s.points) {
      const dot = el("circle", { class: `point s-${s.name}`, cx: x(r), cy: y(v), r: 3, "data-round": r });
      dot.append(el("title", {}, `round ${r}: ${v}`));
      svg.append(dot);
    }
  }
}

function series(rows, key, name) {
  const points = [];
  for (const row of rows) {
    const v = row[key];
    if (typeof v === "number" && Number.isFinite(v)) points.push([row.round, v]);
  }
  return { name, points };
}

function cumulative(rows, key, name) {
  let total = 0;
  return { name, points: rows.map((row) => [row.round, (total += (row[key] || 0)) / 1e6]) };
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node.textContent !== String(text)) node.textContent = text;
}

function render(data) {
  const run = data.run;
  const status = document.getElementById("run-status");
  if (!run) {
    status.textContent = "loading the model…";
    status.className = "status";
    return;
  }
  const rows = data.rounds;
  const last = rows.length ? rows[rows.length - 1] : null;
  setText("run-name", run.name);
  setText("run-dir", run.run_dir);
  status.textContent = run.finished ? "finished" : "in progress";
  status.className = `status ${run.finished ? "finished" : "running"}`;
  setText("round-count", last ? last.round : 0);
  setText("rounds-planned", run.rounds_planned ?? "?");
  const accuracies = series(rows, "accuracy", "accuracy");
  const latestAcc = accuracies.points.length ? accuracies.points[accuracies.points.length - 1][1] : null;
  setText("accuracy", fmt(data.summary?.final_accuracy ?? latestAcc, 4));
  setText("loss", fmt(last?.loss, 4));
  const up = rows.reduce((a, r) => a + (r.bytes_up || 0), 0) / 1e6;
  const down = rows.reduce((a, r) => a + (r.bytes_down || 0), 0) / 1e6;
  setText("megabytes", (up + down).toFixed(2));
  setText("megabytes-split", `${up.toFixed(2)} up · ${down.toFixed(2)} down`);
  const eps = series(rows, "epsilon", "epsilon").points;
  document.getElementById("epsilon-card").hidden = !run.differential_privacy;
  setText("epsilon", eps.length ? fmt(eps[eps.length - 1][1], 3) : fmt(data.summary?.epsilon, 3));
  const clients = data.clients;
  document.getElementById("clients-card").hidden = !clients;
  document.getElementById("client-lists").hidden = !clients || !(clients.late.length || clients.rejected.length);
  if (clients) {
    // connected: only the serving process knows; a served run's directory knows who joined
    const live = clients.connected !== null;
    const ids = live ? clients.connected : clients.joined;
    setText("clients-connected", ids ? ids.length : "—");
    setText("clients-connected-label", live || !ids ? "connected" : "joined");
    setText("clients-late", clients.late_total);
    setText("clients-rejected", clients.rejected_total);
    const list = document.getElementById("client-events");
    list.replaceChildren(
      ...clients.late.map((e) => item(`late: ${e.client} (round ${e.round}) ${e.reason}`)),
      ...clients.rejected.map((e) => item(`rejected: ${e.client} (round ${e.round}) ${e.reason}`)),
    );
  }
  lineChart(document.getElementById("accuracy-chart"), [accuracies], run.rounds_planned);
  lineChart(document.getElementById("loss-chart"), [series(rows, "loss", "train"), series(rows, "eval_loss", "eval")], run.rounds_planned);
  lineChart(document.getElementById("bytes-chart"), [cumulative(rows, "bytes_up", "up"), cumulative(rows, "bytes_down", "down")], run.rounds_planned);
  const body = document.querySelector("#rounds-table tbody");
  body.replaceChildren(...rows.slice().reverse().map((r) => {
    const tr = document.createElement("tr");
    for (const cell of [r.round, (r.clients || []).length, fmt(r.loss, 4), fmt(r.accuracy, 4),
      fmt(r.bytes_up / 1e6, 3), fmt(r.bytes_down / 1e6, 3), fmt(r.epsilon, 3), fmt(r.round_seconds, 1)]) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }));
}

function item(text) {
  const li = document.createElement("li");
  li.textContent = text;  // client ids and reasons come from clients: text, never HTML
  return li;
}

async function poll() {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch("api/metrics", { headers, cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    render(data);
    if (data.run && data.run.finished && !data.live) return;  // nothing will change any more
  } catch (error) {
    const status = document.getElementById("run-status");
    status.textContent = `offline (${error.message})`;
    status.className = "status offline";
  }
  setTimeout(poll, POLL_MS);
}

poll();
