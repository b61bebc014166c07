// apikeyrouter dashboard: renders the snapshots and events of /dashboard/events (server-sent events).
// Every value goes in through textContent or an SVG attribute, never innerHTML: a key id or an upstream
// reason is data, not markup. Charts are drawn by hand in SVG.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = { success: "#3fb950", rate_limited: "#d29922", quota_exhausted: "#db6d28", overloaded: "#a371f7",
  server_error: "#f85149", timeout: "#ff7b72", connection: "#ffa198", auth_invalid: "#e3b341" };
const FALLBACK = ["#58a6ff", "#79c0ff", "#d2a8ff", "#ffa657", "#7ee787"];
const EVENTS_KEPT = 60;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    // Styles through the CSSOM: the page's CSP refuses style attributes (no 'unsafe-inline').
    if (k === "style") for (const rule of v.split(";")) { const [p, val] = rule.split(":"); node.style.setProperty(p, val); }
    else node.setAttribute(k, v);
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function pill(value) {
  return el("span", { class: "pill " + String(value) }, value);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
}

function color(outcome, index) {
  return COLORS[outcome] || FALLBACK[index % FALLBACK.length];
}

function renderKeys(keys) {
  const body = document.querySelector("#keys tbody");
  const rows = keys.map((k) => {
    const tr = el("tr", { "data-key": k.id });
    tr.append(el("td", { class: "id" }, k.id), el("td", {}, k.provider), el("td", { class: "muted" }, k.fingerprint));
    const life = el("td", { class: "lifecycle" });
    life.append(pill(k.lifecycle));
    if (k.lifecycle_until_wall) life.append(el("span", { class: "muted" }, " until " + k.lifecycle_until_wall.slice(11, 19)));
    if (k.lifecycle !== "active" && k.lifecycle_reason) life.title = k.lifecycle_reason;
    const cap = el("td", { class: "capacity" });
    const bar = el("span", { class: "bar " + k.capacity });
    bar.append(el("span", { style: "width:" + Math.max(0, Math.min(100, k.capacity_left_pct || 0)) + "%" }));
    cap.append(bar, pill(k.capacity), el("span", { class: "muted" }, " " + (k.capacity_left_pct ?? "–") + "%"));
    const brk = el("td", { class: "breaker" });
    brk.append(pill(k.breaker));
    const inflight = k.max_in_flight ? k.in_flight + " / " + k.max_in_flight : String(k.in_flight);
    const success = k.success_rate === null || k.success_rate === undefined ? "–" : (k.success_rate * 100).toFixed(1) + "%";
    const latency = k.latency_ms === null || k.latency_ms === undefined ? "–" : k.latency_ms.toFixed(0) + " ms";
    const spend = "$" + k.spend + (k.budget ? " / $" + k.budget : "");
    tr.append(life, cap, brk, el("td", {}, inflight), el("td", {}, success), el("td", {}, latency),
      el("td", {}, spend), el("td", {}, k.requests ?? 0));
    return tr;
  });
  body.replaceChildren(...rows);
  document.getElementById("serving").textContent =
    keys.filter((k) => k.lifecycle === "active" && k.breaker !== "open").length + " / " + keys.length;
  document.getElementById("inflight").textContent = keys.reduce((n, k) => n + (k.in_flight || 0), 0);
}

function renderRates(rates) {
  const chart = document.getElementById("rates");
  const W = 600, H = 160, pad = 18;
  const series = rates.series;
  const totals = series.map((row) => row.reduce((a, b) => a + b, 0));
  const peak = Math.max(1, ...totals);
  const width = (W - pad) / Math.max(series.length, 1);
  const nodes = [svg("line", { x1: pad, y1: H - 1, x2: W, y2: H - 1, stroke: "#263040" }),
    svg("text", { x: 2, y: 12, fill: "#8391a3", "font-size": 10 })];
  nodes[1].textContent = peak + "/s";
  series.forEach((row, i) => {
    let y = H - 1;
    row.forEach((count, j) => {
      if (!count) return;
      const h = (count / peak) * (H - 20);
      y -= h;
      nodes.push(svg("rect", { x: pad + i * width, y: y, width: Math.max(width - 1, 1), height: h,
        fill: color(rates.outcomes[j], j) }));
    });
  });
  chart.replaceChildren(...nodes);
  const legend = document.getElementById("rate-legend");
  legend.replaceChildren(...rates.outcomes.map((name, j) => {
    const item = el("span");
    item.append(el("i", { style: "background:" + color(name, j) }), document.createTextNode(name));
    return item;
  }));
  document.getElementById("rps").textContent = rates.per_second;
  document.getElementById("error-rate").textContent = (rates.error_rate * 100).toFixed(1) + "%";
  const errors = Object.entries(rates.errors_by_class).map(([name, n]) => name + ": " + n).join(" · ");
  document.getElementById("errors-by-class").textContent = errors ? "errors by class: " + errors : "no errors";
}

function renderBudgets(budgets) {
  const body = document.querySelector("#budgets tbody");
  document.getElementById("no-budgets").hidden = budgets.length > 0;
  body.replaceChildren(...budgets.map((b) => {
    const tr = el("tr", { "data-budget": b.id });
    const used = el("td");
    const bar = el("span", { class: "bar " + (b.used_pct > 90 ? "critical" : b.used_pct > 70 ? "constrained" : "") });
    bar.append(el("span", { style: "width:" + Math.min(100, b.used_pct) + "%" }));
    used.append(bar, document.createTextNode(b.used_pct + "% of $" + b.limit));
    const when = b.seconds_to_exhaustion === null ? "no spend lately"
      : "in " + duration(b.seconds_to_exhaustion) + " (" + b.exhaustion_wall.slice(0, 19).replace("T", " ") +
        " UTC, confidence " + b.confidence.toFixed(2) + ")";
    // Whose spend: every instance's on Redis, or this one's alone (and why, when Redis is away).
    const scope = b.scope === "shared" ? "all instances (this one: $" + b.local_spent + ")"
      : b.shared_error ? "this instance only: Redis is away (" + b.shared_error + ")" : "";
    const name = el("td", {}, b.id);
    if (scope) name.append(el("div", { class: b.shared_error ? "muted away" : "muted" }, scope));
    tr.append(name, used, el("td", {}, "$" + b.remaining), el("td", {}, "$" + b.per_hour),
      el("td", { class: "reason" }, when));
    return tr;
  }));
}

function burnChart(item) {
  // x: the last five minutes on the left, as much future on the right as the prediction needs (capped).
  const W = 260, H = 70, past = 300;
  const ahead = item.seconds_to_exhaustion === null ? 60 : Math.min(Math.max(item.seconds_to_exhaustion, 30), 900);
  const x = (t) => ((t + past) / (past + ahead)) * W;
  const y = (pct) => H - 2 - (pct / 100) * (H - 4);
  const nodes = [svg("line", { x1: x(0), y1: 0, x2: x(0), y2: H, stroke: "#263040" })];
  const pts = item.points.filter((p) => p[0] >= -past);
  if (pts.length) {
    nodes.push(svg("polyline", { points: pts.map((p) => x(p[0]) + "," + y(p[1])).join(" "), fill: "none",
      stroke: "#58a6ff", "stroke-width": 1.5 }));
    const last = pts[pts.length - 1];
    if (item.seconds_to_exhaustion !== null) {
      const end = Math.min(item.seconds_to_exhaustion, ahead);
      const pctAtEnd = last[1] * (1 - end / item.seconds_to_exhaustion);
      nodes.push(svg("line", { x1: x(last[0]), y1: y(last[1]), x2: x(end), y2: y(pctAtEnd), stroke: "#f85149",
        "stroke-dasharray": "4 3", "stroke-width": 1.5, opacity: 0.25 + 0.75 * (item.confidence || 0) }));
    }
  }
  const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none" });
  chart.append(...nodes);
  return chart;
}

function renderBurndown(items) {
  const grid = document.getElementById("burndown");
  grid.replaceChildren(...items.map((item) => {
    const box = el("div", { class: "burn", "data-key": item.key });
    const title = el("div", { class: "title" });
    const last = item.points.length ? item.points[item.points.length - 1][1] : null;
    const when = item.seconds_to_exhaustion === null ? "no exhaustion predicted"
      : "exhausts in " + duration(item.seconds_to_exhaustion) + " · confidence " + Number(item.confidence).toFixed(2);
    title.append(el("span", {}, item.key + (last === null ? "" : " · " + last + "%")), el("span", { class: "muted" }, when));
    box.append(title, burnChart(item));
    return box;
  }));
}

function renderDecisions(decisions) {
  const list = document.getElementById("decisions");
  list.replaceChildren(...decisions.map((d) => {
    const li = el("li", { "data-decision": d.id });
    const head = el("div");
    head.append(el("strong", {}, d.chosen ? "→ " + d.chosen : "no key"),
      el("span", { class: "muted" }, "  " + (d.model || "") + " · " + (d.at_wall || "").slice(11, 23) + " · " + d.id));
    li.append(head, el("div", { class: "why" }, d.explanation || ""));
    return li;
  }));
}

function render(snapshot) {
  document.getElementById("clock").textContent = snapshot.now_wall.slice(0, 19).replace("T", " ") + " UTC";
  renderKeys(snapshot.keys);
  renderRates(snapshot.rates);
  renderBudgets(snapshot.budgets);
  renderBurndown(snapshot.burndown);
  renderDecisions(snapshot.decisions);
}

function describe(event) {
  switch (event.kind) {
    case "key.transition": return event.key + ": " + event.from + " → " + event.to + " (" + event.reason + ")";
    case "key.breaker": return event.key + ": breaker " + event.change + (event.reason ? " (" + event.reason + ")" : "");
    case "key.registered": return event.key + " registered (" + event.provider + ")";
    case "provider.health": return event.provider + (event.degraded ? " degraded: " + event.reason : " healthy");
    default: return JSON.stringify(event);
  }
}

function onBus(event) {
  const list = document.getElementById("events");
  const li = el("li");
  li.append(el("span", { class: "kind" }, event.kind), el("span", { class: "muted" }, (event.at_wall || "").slice(11, 23) + " "),
    document.createTextNode(describe(event)));
  list.prepend(li);
  while (list.children.length > EVENTS_KEPT) list.lastChild.remove();
  if (event.kind === "key.transition") {
    // The row shows the new state at once; the next snapshot (a moment later) fills in the rest.
    const cell = document.querySelector('#keys tr[data-key="' + CSS.escape(event.key) + '"] td.lifecycle');
    if (cell) cell.replaceChildren(pill(event.to));
  }
}

function setStatus(text) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = "status " + text;
}

function connect() {
  const source = new EventSource("/dashboard/events");
  source.addEventListener("open", () => setStatus("live"));
  source.addEventListener("snapshot", (e) => { setStatus("live"); render(JSON.parse(e.data)); });
  source.addEventListener("bus", (e) => onBus(JSON.parse(e.data)));
  source.addEventListener("dropped", () => setStatus("reconnecting"));  // the browser reconnects by itself
  source.addEventListener("closing", () => setStatus("reconnecting"));
  source.addEventListener("expired", () => { source.close(); window.location.reload(); });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setStatus("closed");
      // Refused (401: the session ended): the page itself shows the login form.
      fetch("/dashboard/state", { credentials: "same-origin" }).then((r) => {
        if (r.status === 401) window.location.reload();
        else setTimeout(connect, 3000);
      }, () => setTimeout(connect, 3000));
    } else {
      setStatus("reconnecting");
    }
  });
}

document.addEventListener("DOMContentLoaded", connect);
