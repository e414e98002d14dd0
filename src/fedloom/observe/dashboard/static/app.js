// fedloom dashboard: polls the read-only JSON API and draws runs, progress, clients and
// metric plots (inline SVG). No framework, nothing loaded from the internet. Every value
// from the API is put into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const TOKEN_KEY = "fedloom-dashboard-token";
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const SVG = "http://www.w3.org/2000/svg";
  const W = 360, H = 200, ML = 52, MR = 12, MT = 10, MB = 28;

  let token = sessionStorage.getItem(TOKEN_KEY);
  let selected = null;
  let clientMetric = null;
  let timer = null;

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.has("token")) {
      token = params.get("token");
      sessionStorage.setItem(TOKEN_KEY, token);
      params.delete("token");
    }
    selected = params.get("run");
    const rest = params.toString();
    history.replaceState(null, "", rest ? "#" + rest : location.pathname + location.search);
  }

  function select(runId) {
    selected = runId;
    history.replaceState(null, "", "#" + new URLSearchParams({ run: runId }).toString());
    poll();
  }

  class Unauthorized extends Error {}

  async function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401) throw new Unauthorized("the dashboard needs a token");
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function number(value) {
    if (typeof value !== "number") return value === null || value === undefined ? "" : String(value);
    if (Number.isInteger(value)) return String(value);
    const size = Math.abs(value);
    return size !== 0 && (size < 1e-3 || size >= 1e4) ? value.toPrecision(4) : value.toFixed(4);
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1) return "just now";
    if (seconds < 120) return Math.round(seconds) + " s ago";
    if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  function when(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleString() : "";
  }

  function renderRuns(runs) {
    const body = $("runs").tBodies[0];
    body.replaceChildren();
    $("no-runs").hidden = runs.length > 0;
    for (const run of runs.slice().reverse()) {
      const row = el("tr", { "data-run-id": run.run_id });
      if (run.run_id === selected) row.className = "selected";
      const link = el("a", { href: "#" }, run.name || run.run_id);
      link.addEventListener("click", (event) => { event.preventDefault(); select(run.run_id); });
      const first = el("td");
      first.append(link);
      const planned = run.rounds_planned ? " / " + run.rounds_planned : "";
      row.append(first, el("td", {}, run.status), el("td", {}, run.rounds_done + planned),
        el("td", {}, when(run.created_at)), el("td", {}, run.seed), el("td", {}, run.code_version));
      body.append(row);
    }
  }

  function renderProgress(run, rounds) {
    $("run-name").textContent = run.name || run.run_id;
    const badge = $("run-status");
    badge.textContent = run.status;
    badge.className = "badge " + run.status;
    $("round-counter").textContent = String(run.rounds_done);
    $("rounds-total").textContent = run.rounds_planned ? String(run.rounds_planned) : "?";
    const bar = $("round-progress");
    bar.max = run.rounds_planned || Math.max(run.rounds_done, 1);
    bar.value = run.rounds_done;
    let live = "";
    if (run.status === "running") {
      const since = run.last_round_ended_at || run.created_at;
      live = "round " + (run.rounds_done + 1) + " in progress for " +
        Math.max(0, Math.round(run.now - since)) + " s";
    } else if (rounds.length) {
      live = "(" + run.status + ")";
    }
    $("round-live").textContent = live;
  }

  function numericKeys(rows) {
    const keys = new Set();
    for (const row of rows) {
      for (const [key, value] of Object.entries(row.metrics || {})) {
        if (typeof value === "number") keys.add(key);
      }
    }
    return Array.from(keys).sort();
  }

  // One line chart: series = [{name, color, points: [[round, value], ...]}].
  function plot(title, metric, series) {
    const figure = el("figure", { class: "plot", "data-metric": metric });
    figure.append(el("figcaption", {}, title));
    const all = series.flatMap((s) => s.points);
    const chart = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
    chart.append(svg("title", {}, title));
    if (all.length === 0) { figure.append(chart); return figure; }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
    const sx = (x) => ML + (x - x0) / (x1 - x0) * (W - ML - MR);
    const sy = (y) => H - MB - (y - y0) / (y1 - y0) * (H - MT - MB);
    chart.append(svg("line", { class: "axis", x1: ML, y1: H - MB, x2: W - MR, y2: H - MB }));
    chart.append(svg("line", { class: "axis", x1: ML, y1: MT, x2: ML, y2: H - MB }));
    chart.append(svg("text", { x: ML - 4, y: MT + 8, "text-anchor": "end" }, number(y1)));
    chart.append(svg("text", { x: ML - 4, y: H - MB, "text-anchor": "end" }, number(y0)));
    chart.append(svg("text", { x: ML, y: H - 8, "text-anchor": "middle" }, Math.round(x0)));
    chart.append(svg("text", { x: W - MR, y: H - 8, "text-anchor": "end" }, Math.round(x1)));
    chart.append(svg("text", { x: (ML + W - MR) / 2, y: H - 8, "text-anchor": "middle" }, "round"));
    for (const s of series) {
      const points = s.points.slice().sort((a, b) => a[0] - b[0]);
      const group = svg("g", { class: "series", "data-series": s.name });
      group.append(svg("polyline", {
        points: points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "),
        fill: "none", stroke: s.color, "stroke-width": 1.5,
      }));
      for (const [x, y] of points) {
        const dot = svg("circle", {
          class: "point", cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 2.5, fill: s.color,
          "data-round": x, "data-value": y,
        });
        dot.append(svg("title", {}, `${s.name} round ${x}: ${number(y)}`));
        group.append(dot);
      }
      chart.append(group);
    }
    figure.append(chart);
    if (series.length > 1) {
      const legend = el("div", { class: "legend" });
      for (const s of series) {
        const item = el("span");
        const swatch = el("span", { class: "swatch" });
        swatch.style.background = s.color;
        item.append(swatch, document.createTextNode(s.name));
        legend.append(item);
      }
      figure.append(legend);
    }
    return figure;
  }

  function renderGlobalPlots(rounds) {
    const area = $("global-plots");
    const figures = numericKeys(rounds).map((key) => plot(key, key, [{
      name: key, color: COLORS[0],
      points: rounds.filter((r) => typeof r.metrics[key] === "number")
        .map((r) => [r.server_round, r.metrics[key]]),
    }]));
    const durations = rounds.filter((r) => r.server_round > 0 && r.ended_at >= r.started_at)
      .map((r) => [r.server_round, r.ended_at - r.started_at]);
    figures.push(plot("round duration (s)", "round.duration_s",
      [{ name: "duration", color: COLORS[1], points: durations }]));
    const failures = rounds.filter((r) => r.server_round > 0)
      .map((r) => [r.server_round, r.num_failures]);
    figures.push(plot("failures per round", "round.num_failures",
      [{ name: "failures", color: COLORS[3], points: failures }]));
    area.replaceChildren(...figures);
  }

  function renderClientPlot(results) {
    const keyed = results.filter((r) => !r.failure).map((r) => ({
      ...r, metrics: Object.fromEntries(Object.entries(r.metrics || {})
        .map(([key, value]) => [r.kind + "." + key, value])),
    }));
    const keys = numericKeys(keyed);
    const selectBox = $("client-metric");
    const current = Array.from(selectBox.options).map((o) => o.value);
    if (current.join("\n") !== keys.join("\n")) {
      selectBox.replaceChildren(...keys.map((key) => el("option", { value: key }, key)));
    }
    if (!keys.includes(clientMetric)) {
      clientMetric = keys.includes("fit.loss") ? "fit.loss" : (keys[0] || null);
    }
    selectBox.value = clientMetric || "";
    if (!clientMetric) { $("client-plot").replaceChildren(el("p", { class: "muted" }, "no client metrics yet")); return; }
    const byClient = new Map();
    for (const r of keyed) {
      const value = r.metrics[clientMetric];
      if (typeof value !== "number") continue;
      if (!byClient.has(r.client_id)) byClient.set(r.client_id, []);
      byClient.get(r.client_id).push([r.server_round, value]);
    }
    const names = Array.from(byClient.keys()).sort();
    const series = names.map((name, i) => ({ name, color: COLORS[i % COLORS.length], points: byClient.get(name) }));
    $("client-plot").replaceChildren(plot(clientMetric + " per client", "client." + clientMetric, series));
  }

  function renderClients(clients, now) {
    const body = $("clients").tBodies[0];
    body.replaceChildren();
    for (const c of clients) {
      const row = el("tr", { "data-client-id": c.client_id });
      row.append(el("td", {}, c.client_id),
        el("td", { class: c.connected ? "yes" : "no" }, c.connected ? "yes" : "no"),
        el("td", {}, c.last_seen ? ago(now - c.last_seen) : ""),
        el("td", {}, c.num_results), el("td", {}, c.num_failures),
        el("td", {}, c.last_round === null ? "" : c.last_round),
        el("td", {}, c.last_failure || ""),
        el("td", {}, Object.keys(c.metadata || {}).length ? JSON.stringify(c.metadata) : ""));
      body.append(row);
    }
  }

  function renderRounds(rounds) {
    const table = $("rounds");
    const keys = numericKeys(rounds).slice(0, 8);
    const head = table.tHead.rows[0];
    head.replaceChildren(...["round", "outcome", "duration (s)", "results", "failures", ...keys]
      .map((name) => el("th", {}, name)));
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const r of rounds.slice().reverse()) {
      const row = el("tr");
      row.append(el("td", {}, r.server_round), el("td", {}, r.outcome),
        el("td", {}, r.server_round > 0 ? number(r.ended_at - r.started_at) : ""),
        el("td", {}, r.num_results), el("td", {}, r.num_failures),
        ...keys.map((key) => el("td", {}, number(r.metrics[key]))));
      body.append(row);
    }
  }

  function showError(message) {
    const box = $("error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  async function poll() {
    clearTimeout(timer);
    try {
      const runs = await api("/api/runs");
      $("token-form").hidden = true;
      if (!selected && runs.length) selected = runs[runs.length - 1].run_id;
      renderRuns(runs);
      if (selected) {
        const base = "/api/runs/" + encodeURIComponent(selected);
        const [run, rounds, clients, results] = await Promise.all([
          api(base), api(base + "/rounds"), api(base + "/clients"), api(base + "/client-results"),
        ]);
        $("run").hidden = false;
        renderProgress(run, rounds);
        renderGlobalPlots(rounds);
        renderClientPlot(results);
        renderClients(clients, run.now);
        renderRounds(rounds);
        const config = JSON.stringify(run.config, null, 2);
        if ($("config").textContent !== config) $("config").textContent = config;
      }
      showError("");
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (error instanceof Unauthorized) {
        $("token-form").hidden = false;
        showError(token ? "the token was refused" : "this dashboard needs the server's token");
      } else {
        showError(String(error.message || error));
      }
    }
    timer = setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    readHash();
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      token = $("token-input").value.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      poll();
    });
    window.addEventListener("hashchange", () => {  // e.g. a pasted #token=... or #run=...
      readHash();
      poll();
    });
    $("client-metric").addEventListener("change", (event) => {
      clientMetric = event.target.value;
      poll();
    });
    poll();
  });
})();
