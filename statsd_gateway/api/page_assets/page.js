// The /ui page: asks for an API key once (kept in this tab's sessionStorage only), lists the
// tenant's metrics and charts one aggregation of the selected metric, drawn as SVG by this
// script. Everything it shows comes from the JSON API with "Authorization: Bearer"; the state
// lives in the URL fragment (#name=api.latency&agg=p99&since=-1h) so a link can be shared.
"use strict";
(() => {
  const KEY_STORE = "statsd-gateway.api-key";
  const PRESETS = { "-15m": 900, "-1h": 3600, "-6h": 21600, "-24h": 86400, "-7d": 604800 };
  // The aggregations offered, in this order, where the metric's type has them.
  const OFFERED = ["p50", "p90", "p99", "avg", "sum", "count", "rate", "min", "max", "last", "distinct"];
  const FIRST_CHOICE = ["p99", "rate", "last", "distinct", "sum"];
  const WINDOWS = [10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  const PICKABLE = [10, 60, 300, 900, 3600, 21600, 86400];
  const AUTO_POINTS = 240; // the auto window aims at about this many points across the range
  const REFRESH = { off: 0, "10s": 10e3, "30s": 30e3, "1m": 60e3, "5m": 300e3 };
  const COLORS = ["#1f5fbf", "#c23b22", "#2a7d2e", "#8a3ffc", "#b35c00", "#007d79", "#9f1853", "#4d5358"];
  const STATE_KEYS = ["name", "agg", "since", "until", "window", "tags", "group_by", "refresh"];
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem(KEY_STORE) || "";
  let metrics = [];
  let tiers = [{ resolution: 10, retention: 21600 }];
  let state = {};
  let timer = 0;
  let queryNumber = 0; // the latest query, list and tag request; an older answer is dropped
  let tagNumber = 0;
  let shownRange = null; // the custom range's fields as applyState filled them, and its state
  let drawn = null; // {times, series, x, y, width} of the chart on screen, for the cursor

  // -- the URL fragment --------------------------------------------------------------------

  function readFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    state = { since: "-1h", window: "auto", refresh: "off" };
    for (const k of STATE_KEYS) if (params.get(k)) state[k] = params.get(k);
    if (!(state.refresh in REFRESH)) state.refresh = "off";
  }

  function writeFragment() {
    const params = new URLSearchParams();
    for (const k of STATE_KEYS) {
      const v = state[k];
      if (v && !(k === "window" && v === "auto") && !(k === "refresh" && v === "off")) params.set(k, v);
    }
    history.replaceState(null, "", "#" + params.toString());
  }

  // -- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  async function api(path, params) {
    const url = path + (params ? "?" + new URLSearchParams(params).toString() : "");
    let response;
    try {
      response = await fetch(url, { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
    } catch (e) {
      throw new ApiError("The daemon did not answer (" + e.message + ")", 0);
    }
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON: reported below */ }
    if (!response.ok || !body || body.ok === false) {
      const message = body && body.error ? body.error.message : "HTTP " + response.status;
      throw new ApiError(message, response.status);
    }
    return body;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  // -- the key -----------------------------------------------------------------------------

  function askForKey() {
    $("key-form").hidden = false;
    $("key-held").hidden = true;
    $("main").hidden = true;
    $("api-key").value = "";
    $("api-key").focus();
  }

  async function start() {
    $("key-form").hidden = true;
    $("key-held").hidden = false;
    let body;
    try {
      body = await api("v1/metrics");
    } catch (e) {
      showError(e.message);
      if (e.status === 401 || e.status === 403) { forgetKey(); return; }
      askForKey(); // another failure (the daemon down, a 503): "Use key" tries again
      $("api-key").value = key;
      return;
    }
    showError("");
    metrics = body.metrics;
    if (body.tiers && body.tiers.length) tiers = body.tiers;
    $("main").hidden = false;
    fillWindows();
    listMetrics();
    applyState();
    if (state.name) await selectMetric(state.name, false);
    else $("metric-search").focus();
  }

  function forgetKey() {
    key = "";
    sessionStorage.removeItem(KEY_STORE);
    clearTimeout(timer);
    queryNumber++;
    tagNumber++;
    metrics = [];
    drawn = null;
    for (const id of ["metric-list", "chart", "legend", "tag-values", "tag-keys"]) $(id).replaceChildren();
    $("summary").textContent = "";
    askForKey();
  }

  // -- the metric list ---------------------------------------------------------------------

  function listMetrics() {
    const needle = $("metric-search").value.trim().toLowerCase();
    const list = $("metric-list");
    list.replaceChildren();
    const shown = metrics.filter((m) => m.name.toLowerCase().includes(needle));
    for (const m of shown) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.name = m.name;
      button.append(m.name);
      const type = document.createElement("span");
      type.className = "type";
      type.textContent = m.type;
      button.append(type);
      if (m.name === state.name) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => selectMetric(m.name, true));
      const item = document.createElement("li");
      item.append(button);
      list.append(item);
    }
    $("metric-empty").hidden = shown.length > 0;
  }

  function aggregationsOf(metric) {
    const has = new Set(metric.aggregations);
    return OFFERED.filter((a) => (/^p\d/.test(a) ? has.has("pNN") : has.has(a)));
  }

  async function selectMetric(name, chosen) {
    const metric = metrics.find((m) => m.name === name);
    state.name = name;
    $("chart-title").textContent = name;
    if (!metric) { await runQuery(); return; } // the API says what is wrong with the name
    const aggs = aggregationsOf(metric);
    // A quantile from a link (p95, p99.9) is kept where the type has quantiles.
    if (/^p\d+(\.\d+)?$/.test(state.agg || "") && !aggs.includes(state.agg) && metric.aggregations.includes("pNN")) {
      aggs.splice(aggs.indexOf("p99") + 1, 0, state.agg);
    }
    if (!aggs.includes(state.agg)) state.agg = FIRST_CHOICE.find((a) => aggs.includes(a)) || aggs[0];
    const select = $("agg");
    select.replaceChildren(...aggs.map((a) => new Option(a, a)));
    select.value = state.agg;
    fillTagLists(metric);
    listMetrics();
    if (chosen) select.focus();
    await runQuery();
  }

  async function fillTagLists(metric) {
    const number = ++tagNumber;
    $("tag-keys").replaceChildren(...metric.tag_keys.map((k) => new Option(k)));
    let values = [];
    try {
      const body = await api("v1/metrics/tags", { name: metric.name, limit: "50" });
      values = body.tags.flatMap((t) => t.values.map((v) => new Option(t.key + ":" + v.value)));
    } catch (e) { /* suggestions only: the chart's query reports what is wrong */ }
    if (number === tagNumber) $("tag-values").replaceChildren(...values);
  }

  // -- the controls ------------------------------------------------------------------------

  function windowText(seconds) {
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (seconds % size === 0) return seconds / size + unit;
    }
    return seconds + "s";
  }

  const isMultiple = (w, r) => Math.abs(w / r - Math.round(w / r)) < 1e-9;

  function fillWindows() {
    const finest = tiers[0].resolution;
    const choices = [...new Set([finest, ...PICKABLE.filter((w) => w >= finest && isMultiple(w, finest))])];
    const select = $("window");
    select.replaceChildren(new Option("Auto", "auto"), ...choices.map((w) => new Option(windowText(w), windowText(w))));
  }

  function toLocalInput(seconds) {
    const d = new Date(seconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  const UNIT = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };
  function durationSeconds(text) {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text || "");
    return m ? Number(m[1]) * UNIT[m[2] || "s"] : null;
  }

  function fromStateTime(text) {
    if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
    if (text === "now") return Date.now() / 1000;
    if (text.startsWith("-")) {
      const back = durationSeconds(text.slice(1));
      return back === null ? null : Date.now() / 1000 - back;
    }
    const ms = Date.parse(text);
    return Number.isNaN(ms) ? null : ms / 1000;
  }

  function applyState() {
    const range = $("range");
    if (state.since in PRESETS && !state.until) {
      range.value = state.since;
    } else if (/^-\d/.test(state.since) && !state.until) {
      if (![...range.options].some((o) => o.value === state.since)) range.add(new Option("Since " + state.since, state.since), range.options.length - 1);
      range.value = state.since;
    } else {
      range.value = "custom";
      const since = fromStateTime(state.since);
      const until = state.until ? fromStateTime(state.until) : Date.now() / 1000;
      $("since").value = since === null ? "" : toLocalInput(since);
      $("until").value = until === null ? "" : toLocalInput(until);
      // What the fields show stands for the state's own since/until ("-2h", no until) until
      // someone edits them: readControls keeps those then.
      shownRange = [$("since").value, $("until").value, state.since, state.until];
    }
    for (const f of document.querySelectorAll(".field.custom")) f.hidden = range.value !== "custom";
    const win = $("window");
    if (![...win.options].some((o) => o.value === state.window)) win.add(new Option(state.window, state.window));
    win.value = state.window;
    $("tags").value = state.tags || "";
    $("group-by").value = state.group_by || "";
    $("refresh").value = state.refresh;
    if (state.agg && [...$("agg").options].some((o) => o.value === state.agg)) $("agg").value = state.agg;
  }

  function readControls() {
    state.agg = $("agg").value;
    const range = $("range").value;
    for (const f of document.querySelectorAll(".field.custom")) f.hidden = range !== "custom";
    if (range === "custom" && shownRange && $("since").value === shownRange[0] && $("until").value === shownRange[1]) {
      [, , state.since, state.until] = shownRange;
    } else if (range === "custom") {
      if (!$("since").value) $("since").value = toLocalInput(Date.now() / 1000 - 3600);
      if (!$("until").value) $("until").value = toLocalInput(Date.now() / 1000);
      state.since = String(Math.floor(new Date($("since").value).getTime() / 1000));
      state.until = String(Math.ceil(new Date($("until").value).getTime() / 1000));
      shownRange = [$("since").value, $("until").value, state.since, state.until];
    } else {
      state.since = range;
      state.until = "";
    }
    state.window = $("window").value;
    state.tags = $("tags").value.trim();
    state.group_by = $("group-by").value.trim();
    state.refresh = $("refresh").value;
  }

  function rangeSeconds() {
    if (state.since in PRESETS && !state.until) return PRESETS[state.since];
    const since = fromStateTime(state.since);
    const until = state.until ? fromStateTime(state.until) : Date.now() / 1000;
    return since !== null && until !== null && until > since ? until - since : 3600;
  }

  function autoWindow() {
    // The finest tier that still keeps the range's start answers a window of its resolution.
    const since = fromStateTime(state.since);
    const age = since === null ? 0 : Date.now() / 1000 - since;
    const tier = tiers.find((t) => t.retention >= age) || tiers[tiers.length - 1];
    const finest = tier.resolution;
    const wanted = rangeSeconds() / AUTO_POINTS;
    const w = WINDOWS.find((s) => s >= wanted && isMultiple(s, finest));
    return windowText(w || Math.ceil(wanted / finest) * finest);
  }

  // -- the query ---------------------------------------------------------------------------

  async function refresh() {
    try {
      metrics = (await api("v1/metrics")).metrics; // a metric new since the last load shows up
      listMetrics();
    } catch (e) { /* the query below reports it */ }
    await runQuery();
  }

  async function runQuery() {
    clearTimeout(timer);
    if (!state.name || !key) return;
    writeFragment();
    const number = ++queryNumber;
    const params = { name: state.name, since: state.since };
    if (state.agg) params.agg = state.agg; // (absent for a link to no known metric: the API says)
    if (state.until) params.until = state.until;
    params.window = state.window === "auto" ? autoWindow() : state.window;
    if (state.tags) params.tags = state.tags;
    if (state.group_by) params.group_by = state.group_by;
    try {
      const answer = await api("v1/metrics/query", params);
      if (number !== queryNumber) return; // a later query was sent meanwhile
      showError("");
      draw(answer);
    } catch (e) {
      if (number !== queryNumber) return;
      showError(e.message);
      if (e.status === 401) forgetKey();
    }
    if (REFRESH[state.refresh] && number === queryNumber) timer = setTimeout(refresh, REFRESH[state.refresh]);
  }

  // -- the chart ---------------------------------------------------------------------------

  const el = (name, attrs) => {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  };

  function niceStep(span, count) {
    const raw = span / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  }

  function formatValue(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e6 || a < 1e-3) return v.toExponential(3);
    return String(Number(v.toPrecision(6)));
  }

  const pad2 = (n) => String(n).padStart(2, "0");
  function formatTime(seconds, withDate, withSeconds) {
    const d = new Date(seconds * 1000);
    const time = pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + (withSeconds ? ":" + pad2(d.getSeconds()) : "");
    return withDate ? `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${time}` : time;
  }

  function labelOf(tags) {
    const parts = Object.entries(tags || {}).map(([k, v]) => k + "=" + v);
    return parts.length ? parts.join(", ") : state.name;
  }

  function draw(answer) {
    const groups = answer.series && answer.series.length ? answer.series
      : [{ tags: {}, points: answer.points || [] }]; // one line, labelled by the metric's name
    const series = groups.map((g, i) => ({
      label: labelOf(g.tags), color: COLORS[i % COLORS.length],
      points: g.points.filter((p) => p.value !== null && Number.isFinite(p.value)),
    }));
    const box = $("chart");
    const width = Math.max(300, box.clientWidth || 800);
    const height = width < 600 ? 240 : 320;
    const m = { left: 60, right: 24, top: 12, bottom: 28 };
    const values = series.flatMap((s) => s.points.map((p) => p.value));
    let lo = 0, hi = 0; // (a loop: spreading 100,000 values into Math.min overflows the stack)
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (lo === hi) hi = lo + 1;
    const step = niceStep(hi - lo, 5);
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    const t0 = answer.since, t1 = Math.max(answer.until, answer.since + 1);
    const x = (t) => m.left + ((t - t0) / (t1 - t0)) * (width - m.left - m.right);
    const y = (v) => m.top + (1 - (v - lo) / (hi - lo)) * (height - m.top - m.bottom);
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true" });
    const axis = el("g", { class: "axis" });
    for (let v = lo; v <= hi + step / 2; v += step) {
      axis.append(el("line", { class: "grid", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }));
      const label = el("text", { x: m.left - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = formatValue(Number(v.toPrecision(12)));
      axis.append(label);
    }
    const tStep = WINDOWS.concat([172800, 604800]).find((s) => (t1 - t0) / s <= (width < 600 ? 4 : 7)) || 604800;
    const offset = new Date(t0 * 1000).getTimezoneOffset() * 60; // ticks on local hours and days
    for (let t = Math.ceil((t0 - offset) / tStep) * tStep + offset; t <= t1; t += tStep) {
      axis.append(el("line", { class: "grid", x1: x(t), x2: x(t), y1: m.top, y2: height - m.bottom }));
      const label = el("text", { x: x(t), y: height - 8, "text-anchor": "middle" });
      label.textContent = formatTime(t, t1 - t0 > 86400, tStep < 60);
      axis.append(label);
    }
    svg.append(axis);
    const bucket = durationSeconds(answer.window) || 0;
    const dots = values.length <= 3000; // past that, lines only: a circle each would crawl
    series.forEach((s, i) => {
      let d = "";
      let last = null;
      for (const p of s.points) {
        const gap = last === null || (bucket && p.timestamp - last > bucket * 1.5);
        d += (gap ? "M" : "L") + x(p.timestamp).toFixed(1) + " " + y(p.value).toFixed(1);
        last = p.timestamp;
      }
      const g = el("g", { class: "series", "data-series": i, "data-label": s.label });
      g.append(el("path", { d: d || "M0 0", fill: "none", stroke: s.color, "stroke-width": 2 }));
      for (const p of dots ? s.points : []) {
        g.append(el("circle", { cx: x(p.timestamp), cy: y(p.value), r: s.points.length > 150 ? 1.5 : 2.5, fill: s.color, "data-t": p.timestamp, "data-v": p.value }));
      }
      svg.append(g);
    });
    const cursor = el("line", { class: "cursor", y1: m.top, y2: height - m.bottom, visibility: "hidden" });
    svg.append(cursor);
    box.replaceChildren(svg);
    const times = [...new Set(series.flatMap((s) => s.points.map((p) => p.timestamp)))].sort((a, b) => a - b);
    drawn = { times, series, x, cursor, width, index: -1 };
    $("tooltip").hidden = true;
    $("legend").replaceChildren(...series.map((s) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.color;
      item.append(swatch, s.label);
      return item;
    }));
    const count = values.length;
    const what = `${answer.agg} of ${answer.name}` + (answer.window ? ` per ${answer.window}` : "");
    box.setAttribute("aria-label", `Line chart of ${what}: ${count} points. Arrow keys read them.`);
    $("summary").textContent = `${what}, ${formatTime(answer.since, true, true)} to ${formatTime(answer.until, true, true)}` +
      (count ? ` · ${count} points` : " · no data in this range");
  }

  function showCursor(index) {
    if (!drawn || !drawn.times.length) return;
    drawn.index = Math.max(0, Math.min(drawn.times.length - 1, index));
    const t = drawn.times[drawn.index];
    const px = drawn.x(t);
    drawn.cursor.setAttribute("x1", px);
    drawn.cursor.setAttribute("x2", px);
    drawn.cursor.setAttribute("visibility", "visible");
    const tip = $("tooltip");
    const head = document.createElement("div");
    head.textContent = formatTime(t, true, true);
    const rows = drawn.series.flatMap((s) => {
      const p = s.points.find((q) => q.timestamp === t);
      if (!p) return [];
      const row = document.createElement("div");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.color;
      row.append(swatch, `${s.label}: ${formatValue(p.value)}`);
      return [row];
    });
    tip.replaceChildren(head, ...rows);
    tip.hidden = false;
    const box = $("chart").getBoundingClientRect();
    const scale = box.width / drawn.width;
    const left = px * scale;
    tip.style.left = (left > box.width / 2 ? left - tip.offsetWidth - 12 : left + 12) + "px";
  }

  function hideCursor() {
    if (!drawn) return;
    drawn.cursor.setAttribute("visibility", "hidden");
    $("tooltip").hidden = true;
  }

  function nearestIndex(clientX) {
    const box = $("chart").getBoundingClientRect();
    const px = ((clientX - box.left) / box.width) * drawn.width;
    let best = 0;
    drawn.times.forEach((t, i) => { if (Math.abs(drawn.x(t) - px) < Math.abs(drawn.x(drawn.times[best]) - px)) best = i; });
    return best;
  }

  // -- wiring ------------------------------------------------------------------------------

  function wire() {
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      key = $("api-key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      start();
    });
    $("forget-key").addEventListener("click", forgetKey);
    $("metric-search").addEventListener("input", listMetrics);
    $("metric-search").addEventListener("keydown", (e) => {
      const first = $("metric-list").querySelector("button");
      if (e.key === "Enter" && first) { e.preventDefault(); first.click(); }
    });
    $("controls").addEventListener("submit", (e) => { e.preventDefault(); readControls(); runQuery(); });
    $("controls").addEventListener("change", (e) => {
      if (e.target.tagName === "SELECT") { readControls(); runQuery(); }
    });
    const chart = $("chart");
    chart.addEventListener("pointermove", (e) => drawn && drawn.times.length && showCursor(nearestIndex(e.clientX)));
    chart.addEventListener("pointerleave", hideCursor);
    chart.addEventListener("blur", hideCursor);
    chart.addEventListener("keydown", (e) => {
      if (!drawn) return;
      const moves = { ArrowLeft: drawn.index - 1, ArrowRight: drawn.index + 1, Home: 0, End: drawn.times.length - 1 };
      if (e.key in moves) { e.preventDefault(); showCursor(drawn.index < 0 && e.key.startsWith("Arrow") ? 0 : moves[e.key]); }
      if (e.key === "Escape") hideCursor();
    });
    window.addEventListener("hashchange", () => {
      clearTimeout(timer); // the old view's refresh ends with it
      queryNumber++;
      readFragment();
      applyState();
      if (state.name && metrics.length) selectMetric(state.name, false);
    });
  }

  readFragment();
  wire();
  if (key) start(); else askForKey();
})();
