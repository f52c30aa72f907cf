// Momentum console: one page per question, drawn from the server's JSON routes with plain
// fetch (the session cookie authenticates them; state-changing requests carry the CSRF token
// from the page's <meta> tag). Charts are inline SVG drawn here. No framework, no external file.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const main = document.getElementById("main");
let refreshTimer = null;

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

// ---------------------------------------------------------------- formatting

const nf = new Intl.NumberFormat("en-US");
function fmtInt(n) { return n === null || n === undefined ? "—" : nf.format(Math.round(n) || 0); }
function fmtNum(n, d = 2) { return n === null || n === undefined || !isFinite(n) ? "—" : Number(n).toFixed(d); }
function fmtPct(x, d = 1) { return x === null || x === undefined || !isFinite(x) ? "—" : (100 * x).toFixed(d) + " %"; }
function fmtMs(x) {
  if (x === null || x === undefined || !isFinite(x)) return "—";
  if (x < 1) return Math.round(x * 1000) + " µs";
  if (x < 100) return x.toFixed(x < 10 ? 2 : 1) + " ms";
  return Math.round(x) + " ms";
}
function fmtBytes(b) {
  if (!b) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + " " + units[i];
}
function pad(n) { return String(n).padStart(2, "0"); }
function fmtTime(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
function fmtClock(ms) { const d = new Date(ms); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; }
function fmtDuration(secs) {
  if (!secs) return "—";
  if (secs % 86400 === 0) return secs / 86400 + " d";
  if (secs % 3600 === 0) return secs / 3600 + " h";
  if (secs % 60 === 0) return secs / 60 + " min";
  return secs + " s";
}
function fmtRelative(ms, now) {
  if (ms === null || ms === undefined) return "never";
  const d = Math.round((ms - now) / 1000);
  const a = Math.abs(d);
  const t = a < 90 ? a + " s" : a < 5400 ? Math.round(a / 60) + " min" : a < 129600 ? Math.round(a / 3600) + " h" : Math.round(a / 86400) + " d";
  return d < 0 ? t + " ago" : "in " + t;
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, opts = {}) {
  const headers = { Accept: "application/json" };
  const init = { method: opts.method || "GET", credentials: "same-origin", headers };
  if (init.method !== "GET") headers["X-CSRF-Token"] = CSRF;
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    window.location.assign("/console/login");
    throw new ApiError(401, "unauthorized", "The session has expired.");
  }
  if (res.status === 204) return null;
  let body = null;
  try { body = await res.json(); } catch (_) { /* empty */ }
  if (!res.ok) {
    const e = body && body.error ? body.error : { code: "http_" + res.status, message: "HTTP " + res.status };
    throw new ApiError(res.status, e.code, e.message);
  }
  return body;
}

/** Resolves to the body, or to an ApiError (so one failing section does not hide the page). */
function soft(promise) { return promise.catch((e) => (e instanceof ApiError ? e : new ApiError(0, "network", e.message))); }
function failed(x) { return x instanceof ApiError; }
function errorBox(e, what) {
  const hint = e.code === "model_not_ready" ? " The models are trained by the trainer (scheduled, or “Train now” on the Models page)." : "";
  return h("div", { class: "error", role: "alert" }, `${what}: ${e.message}${hint}`);
}

// ---------------------------------------------------------------- widgets

function card(label, value, testid, hint) {
  return h("div", { class: "card" },
    h("div", { class: "label", id: "l-" + testid }, label),
    h("div", { class: "value", "data-testid": testid, "aria-labelledby": "l-" + testid }, value),
    hint ? h("div", { class: "hint" }, hint) : null);
}

function table(caption, headers, rows, testid) {
  const numeric = headers.map((x) => x.startsWith("#"));
  return h("div", { class: "table-wrap" },
    h("table", { "data-testid": testid },
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((x, i) => h("th", { scope: "col", class: numeric[i] ? "num" : null }, x.replace(/^#/, ""))))),
      h("tbody", {}, rows.length
        ? rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: numeric[i] ? "num" : null }, c))))
        : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "nothing yet")))));
}

function badge(text, kind) { return h("span", { class: "badge " + kind }, text); }

/**
 * A line chart of `series` ([{name, points: [[t_ms, value|null], …]}]), y from 0, time on x.
 * The SVG has a text alternative (latest values) for screen readers.
 */
function lineChart(title, series, yFormat, opts = {}) {
  const W = 380, H = opts.height || 170, L = 58, R = 10, T = 10, B = 24;
  const pts = series.flatMap((x) => x.points.filter((p) => p[1] !== null && isFinite(p[1])));
  const fig = h("figure", { class: "chart panel" }, h("figcaption", {}, title));
  if (pts.length === 0) {
    fig.append(h("p", { class: "muted" }, "No data in the sampled window yet (a sample every 5 s)."));
    return fig;
  }
  let t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
  if (t1 === t0) { t0 -= 1000; t1 += 1000; }
  let ymax = Math.max(...pts.map((p) => p[1]), opts.ymin || 0);
  if (opts.ymax !== undefined) ymax = Math.max(ymax, opts.ymax);
  if (ymax <= 0) ymax = 1;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / ymax) * (H - T - B);
  const latest = series.map((sr) => {
    const last = sr.points.filter((p) => p[1] !== null).slice(-1)[0];
    return `${sr.name} ${last ? yFormat(last[1]) : "—"}`;
  }).join(", ");
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}. Latest: ${latest}.` });
  for (const f of [0, 0.5, 1]) {
    const v = ymax * f;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#d5dae1", "stroke-width": 1 }));
    svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#4a5563" }, yFormat(v)));
  }
  svg.append(s("text", { x: L, y: H - 6, "font-size": 11, fill: "#4a5563" }, fmtClock(t0)));
  svg.append(s("text", { x: W - R, y: H - 6, "text-anchor": "end", "font-size": 11, fill: "#4a5563" }, fmtClock(t1)));
  const colours = ["#0b5cad", "#b3460b", "#11652e", "#6b2fa0", "#8a6d00"];
  series.forEach((sr, i) => {
    let d = "", pen = false;
    for (const [t, v] of sr.points) {
      if (v === null || !isFinite(v)) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)} `;
      pen = true;
    }
    const c = colours[i % colours.length];
    svg.append(s("path", { d, fill: "none", stroke: c, "stroke-width": 2, "stroke-linejoin": "round" }));
    const single = sr.points.filter((p) => p[1] !== null && isFinite(p[1]));
    if (single.length === 1) svg.append(s("circle", { cx: x(single[0][0]), cy: y(single[0][1]), r: 3, fill: c }));
  });
  fig.append(svg);
  fig.append(h("ul", { class: "legend" }, series.map((sr, i) => h("li", {}, h("span", { class: "swatch sw" + ((i % 5) + 1) }), sr.name))));
  return fig;
}

const TIER_ORDER = ["high", "medium", "low"];
const TIER_FILL = { high: "#b3261e", medium: "#8a6d00", low: "#11652e" };

/**
 * Users per churn tier on each scoring day (`days`: [{day, tiers: {tier: users}}], oldest
 * first) as stacked bars, with the same numbers in a table for screen readers and copying.
 */
function tierHistoryChart(days) {
  const fig = h("figure", { class: "chart panel", "data-testid": "churn-history" }, h("figcaption", {}, "Users per tier by scoring day"));
  if (!days.length) {
    fig.append(h("p", { class: "muted" }, "No scoring day stored yet."));
    return fig;
  }
  const tiers = TIER_ORDER.concat([...new Set(days.flatMap((d) => Object.keys(d.tiers)))].filter((t) => !TIER_ORDER.includes(t)).sort());
  const totals = days.map((d) => tiers.reduce((a, t) => a + (d.tiers[t] || 0), 0));
  const W = 380, H = 190, L = 58, R = 10, T = 10, B = 24;
  const ymax = Math.max(1, ...totals);
  const y = (v) => T + (1 - v / ymax) * (H - T - B);
  const slot = (W - L - R) / days.length, bw = Math.max(2, Math.min(28, slot * 0.7));
  const last = days[days.length - 1];
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-testid": "churn-history-chart",
    "aria-label": `Users per churn tier on ${days.length} scoring days from ${days[0].day} to ${last.day}. Latest: ${tiers.map((t) => `${t} ${fmtInt(last.tiers[t] || 0)}`).join(", ")}.` });
  for (const f of [0, 0.5, 1]) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(ymax * f), y2: y(ymax * f), stroke: "#d5dae1", "stroke-width": 1 }));
    svg.append(s("text", { x: L - 6, y: y(ymax * f) + 4, "text-anchor": "end", "font-size": 11, fill: "#4a5563" }, fmtInt(ymax * f)));
  }
  const one = days.length === 1;
  svg.append(s("text", { x: one ? L + slot / 2 : L, y: H - 6, "text-anchor": one ? "middle" : "start", "font-size": 11, fill: "#4a5563" }, days[0].day));
  if (days.length > 1) svg.append(s("text", { x: W - R, y: H - 6, "text-anchor": "end", "font-size": 11, fill: "#4a5563" }, last.day));
  const colours = ["#0b5cad", "#b3460b", "#11652e"];
  days.forEach((d, i) => {
    let base = 0;
    const x = L + i * slot + (slot - bw) / 2;
    tiers.forEach((t, k) => {
      const n = d.tiers[t] || 0;
      if (!n) return;
      svg.append(s("rect", { x: x.toFixed(1), y: y(base + n).toFixed(1), width: bw.toFixed(1), height: (y(base) - y(base + n)).toFixed(1),
        fill: TIER_FILL[t] || colours[k % colours.length], "data-day": d.day, "data-tier": t, "data-count": n },
        s("title", {}, `${d.day}: ${t} ${fmtInt(n)}`)));
      base += n;
    });
  });
  fig.append(svg);
  fig.append(h("ul", { class: "legend" }, tiers.map((t, k) => h("li", {}, h("span", { class: "swatch " + (TIER_FILL[t] ? "tier-" + t : "sw" + ((k % 3) + 1)) }), t))));
  fig.append(h("details", {}, h("summary", {}, "Table"),
    table("Users per tier by scoring day", ["Day"].concat(tiers.map((t) => "#" + t), ["#Total"]),
      days.map((d, i) => [d.day].concat(tiers.map((t) => fmtInt(d.tiers[t] || 0)), [fmtInt(totals[i])])), "churn-history-table")));
  return fig;
}

/**
 * A reliability diagram: mean predicted probability (x) against the observed positive rate (y)
 * per non-empty bin, the diagonal being perfect calibration; the bins also as a table.
 */
function reliabilityDiagram(cal, title, testid) {
  const fig = h("figure", { class: "chart panel reliability", "data-testid": testid }, h("figcaption", {}, title));
  if (!cal) {
    fig.append(h("p", { class: "muted" }, "This version was trained before calibration was recorded."));
    return fig;
  }
  const W = 260, H = 260, L = 40, R = 10, T = 10, B = 34;
  const x = (v) => L + v * (W - L - R), y = (v) => T + (1 - v) * (H - T - B);
  const used = cal.bins.filter((b) => b.count > 0 && b.mean_predicted !== null && b.observed_rate !== null);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-testid": testid + "-svg",
    "aria-label": `${title}: ${used.map((b) => `predicted ${fmtPct(b.mean_predicted, 0)} observed ${fmtPct(b.observed_rate, 0)}`).join("; ")}. Brier score ${fmtNum(cal.brier, 4)}.` });
  for (const f of [0, 0.5, 1]) {
    svg.append(s("line", { x1: x(0), x2: x(1), y1: y(f), y2: y(f), stroke: "#d5dae1", "stroke-width": 1 }));
    svg.append(s("text", { x: L - 6, y: y(f) + 4, "text-anchor": "end", "font-size": 11, fill: "#4a5563" }, fmtNum(f, 1)));
    svg.append(s("text", { x: x(f), y: H - B + 14, "text-anchor": "middle", "font-size": 11, fill: "#4a5563" }, fmtNum(f, 1)));
  }
  svg.append(s("text", { x: x(0.5), y: H - 4, "text-anchor": "middle", "font-size": 11, fill: "#4a5563" }, "predicted"));
  svg.append(s("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), stroke: "#4a5563", "stroke-width": 1, "stroke-dasharray": "4 3", "data-testid": testid + "-diagonal" }));
  if (used.length) {
    svg.append(s("path", { d: used.map((b, i) => `${i ? "L" : "M"}${x(b.mean_predicted).toFixed(1)},${y(b.observed_rate).toFixed(1)}`).join(" "),
      fill: "none", stroke: "#0b5cad", "stroke-width": 2 }));
    for (const b of used) {
      svg.append(s("circle", { cx: x(b.mean_predicted).toFixed(1), cy: y(b.observed_rate).toFixed(1), r: 3.5, fill: "#0b5cad", "data-bin": "" },
        s("title", {}, `${fmtInt(b.count)} users: predicted ${fmtPct(b.mean_predicted)}, observed ${fmtPct(b.observed_rate)}`)));
    }
  }
  fig.append(svg);
  fig.append(h("p", {}, "Brier score ", h("strong", { "data-testid": testid + "-brier" }, fmtNum(cal.brier, 4)), " (0 is perfect, lower is better)."));
  fig.append(h("details", {}, h("summary", {}, "Table"),
    table(null, ["Bin", "#Users", "#Mean predicted", "#Observed"], cal.bins.map((b) => [
      `${fmtNum(b.lower, 1)}–${fmtNum(b.upper, 1)}`, fmtInt(b.count), fmtPct(b.mean_predicted), fmtPct(b.observed_rate),
    ]), testid + "-table")));
  return fig;
}

function sparkline(values, label) {
  const W = 240, H = 40;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? W / (values.length - 1) : W;
  const d = values.map((v, i) => `${i ? "L" : "M"}${(i * step).toFixed(1)},${(H - 2 - (v / max) * (H - 4)).toFixed(1)}`).join(" ");
  return s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": label },
    s("path", { d, fill: "none", stroke: "#0b5cad", "stroke-width": 2 }));
}

function bar(fraction) {
  const track = h("div", { class: "bar-track" });
  const b = h("div", { class: "bar" });
  b.style.width = Math.max(0, Math.min(1, fraction)) * 100 + "%";
  track.append(b);
  return track;
}

// ---------------------------------------------------------------- statistics

/** Wilson score interval for k successes in n trials (95 %). */
function wilson(k, n, z = 1.959964) {
  if (!n) return null;
  const p = k / n, z2 = z * z, den = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / den;
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / den;
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

/**
 * Impressions per variant for a two-sided two-proportion z-test (α = 0.05, power 0.8) to detect
 * a relative lift `mde` over the baseline rate `p1`.
 */
function sampleSize(p1, mde) {
  const za = 1.959964, zb = 0.841621;
  const p2 = Math.min(0.999999, p1 * (1 + mde));
  if (!(p1 > 0) || p2 === p1) return null;
  const pbar = (p1 + p2) / 2;
  const n = (za * Math.sqrt(2 * pbar * (1 - pbar)) + zb * Math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2;
  return Math.ceil(n);
}

function rateCell(k, n) {
  if (!n) return "—";
  const ci = wilson(k, n);
  return h("span", { class: "nowrap" }, `${fmtPct(k / n, 2)} [${fmtPct(ci[0], 2)}, ${fmtPct(ci[1], 2)}]`);
}

function pCell(p) {
  if (p === null || p === undefined) return "—";
  const txt = p < 0.0001 ? "< 0.0001" : p.toFixed(4);
  return p < 0.05 ? h("span", { class: "good" }, txt + " ✓") : txt;
}

// ---------------------------------------------------------------- pages

function page(title, lead) {
  main.replaceChildren(h("h1", {}, title), lead ? h("p", { class: "lead" }, lead) : null);
  document.title = title + " · Momentum console";
}

async function overviewPage() {
  const o = await api("/console/api/overview");
  page("Overview", `Live figures of this server; charts cover the last ${Math.round(o.window_secs / 60) || "<1"} min, sampled in-process every ${o.sample_every_secs} s.`);
  const now = o.now_ms;
  main.append(h("div", { class: "cards" },
    card("Users", fmtInt(o.users), "users"),
    card("Items", fmtInt(o.items), "items"),
    card("Interactions", fmtInt(o.interactions), "interactions"),
    card("Events/s", o.events_per_sec === null ? "—" : fmtNum(o.events_per_sec, 1), "events-per-sec", `${fmtInt(o.events_accepted_total)} accepted since start`),
    card("Cache hit rate", fmtPct(o.cache.window_hit_rate ?? o.cache.hit_rate), "cache-hit-rate", `${fmtInt(o.cache.hits)} hits, ${fmtInt(o.cache.misses)} misses since start`),
    card("In flight", `${fmtInt(o.inflight)} / ${fmtInt(o.max_inflight)}`, "inflight", "API requests being served"),
    card("Shed", fmtInt(o.shed_total), "shed", "503 overloaded since start"),
    card("Memory", fmtBytes(o.rss_bytes), "rss", "resident"),
  ));
  const st = o.store;
  main.append(h("div", { class: "grid2" },
    h("section", { class: "panel", "aria-labelledby": "h-store" },
      h("h2", { id: "h-store" }, "Store and snapshots"),
      h("ul", { class: "plain" },
        h("li", {}, "State: ", o.ready ? badge("ready", "good") : badge("restoring", "warn")),
        h("li", {}, `Store: ${st.kind}, durability ${st.durability}, ${fmtInt(st.unflushed_events)} events not yet flushed`),
        h("li", { "data-testid": "snapshot-last" }, "Last snapshot: ", st.snapshot_last_success_ms ? `${fmtTime(st.snapshot_last_success_ms)} (${fmtRelative(st.snapshot_last_success_ms, now)}), ${fmtBytes(st.snapshot_size_bytes)}, covers event ${fmtInt(st.snapshot_covers_seq)}` : "none since start"),
        h("li", {}, "Snapshot failures: ", st.snapshot_failures ? badge(fmtInt(st.snapshot_failures), "bad") : "0"))),
    h("section", { class: "panel", "aria-labelledby": "h-jobs" },
      h("h2", { id: "h-jobs" }, "Background jobs"),
      table(null, ["Job", "Every", "Last run", "Next run", "State"], o.jobs.map((j) => {
        const x = j.status || { interval_seconds: j.interval_seconds, last_finished_ms: j.last_finished_ms, next_due_ms: j.next_due_ms };
        const state = !j.status && j.name !== "snapshot" ? badge("not started", "muted")
          : x.running ? badge("running", "warn") : x.last_error ? badge("failed: " + x.last_error, "bad") : x.last_finished_ms ? badge("ok", "good") : badge("not run yet", "muted");
        return [j.name.replace("_", " "), fmtDuration(x.interval_seconds) || "on request", x.last_finished_ms ? fmtRelative(x.last_finished_ms, now) : "never", x.next_due_ms ? `${fmtTime(x.next_due_ms)} (${fmtRelative(x.next_due_ms, now)})` : "on request", state];
      }), "jobs"))));
  const ser = o.series;
  const line = (name, key) => ({ name, points: ser.map((p) => [p.t_ms, p[key]]) });
  main.append(h("h2", {}, "Last minutes"));
  main.append(h("div", { class: "grid2" },
    lineChart("Events accepted per second", [line("events/s", "events_per_sec")], (v) => fmtNum(v, v < 10 ? 1 : 0)),
    lineChart("Recommendations latency", [line("p50", "recommend_p50_ms"), line("p99", "recommend_p99_ms")], fmtMs),
    lineChart("Ingestion latency (POST /v1/events)", [line("p50", "ingest_p50_ms"), line("p99", "ingest_p99_ms")], fmtMs),
    lineChart("Recommendation cache hit rate", [line("hit rate", "cache_hit_rate")], (v) => fmtPct(v, 0), { ymax: 1 }),
    lineChart("In-flight requests and shed per second", [line("in flight", "inflight"), line("shed/s", "shed_per_sec")], (v) => fmtNum(v, v < 10 ? 1 : 0)),
    lineChart("Users and items", [line("users", "users"), line("items", "items")], fmtInt)));
  main.append(h("section", { class: "panel", "aria-labelledby": "h-routes" },
    h("h2", { id: "h-routes" }, "Latency by route"),
    h("p", { class: "help" }, "Requests in the sampled window; quantiles interpolated within the histogram's buckets."),
    table(null, ["Route", "Method", "#Requests", "#p50", "#p99"],
      o.routes.sort((a, b) => b.requests - a.requests).map((r) => [h("code", {}, r.route), r.method, fmtInt(r.requests), fmtMs(r.p50_ms), fmtMs(r.p99_ms)]), "routes")));
  refreshTimer = setTimeout(() => route(true), 5000);
}

async function experimentsPage() {
  page("Experiments", "A/B tests: rates with 95 % Wilson intervals, p-values of the pooled two-proportion z-test against the control.");
  const list = await api("/v1/experiments");
  main.append(h("div", { class: "notice", role: "note", "data-testid": "do-not-peek" },
    h("strong", {}, "Do not peek. "),
    "A p-value is only valid for a sample size fixed in advance. Decide the impressions per variant before you start (below: the minimum detectable effect), let every variant reach them — whole weeks if you can — and read the result once. Stopping the first time p < 0.05 inflates false positives far beyond 5 %."));
  main.append(startForm(list.experiments.some((e) => e.status === "running")));
  const exps = list.experiments.slice().sort((a, b) => (a.status === b.status ? b.created_ms - a.created_ms : a.status === "running" ? -1 : 1));
  if (!exps.length) main.append(h("p", { class: "muted" }, "No experiment yet."));
  for (const e of exps) main.append(await experimentSection(e));
}

function startForm(running) {
  const err = h("div", { class: "error", role: "alert", hidden: true });
  const form = h("form", { class: "panel", "aria-labelledby": "h-start" },
    h("h2", { id: "h-start" }, "Start an experiment"),
    running ? h("p", { class: "help" }, "One experiment runs at a time: stop the running one first.") : null,
    h("div", { class: "field" }, h("label", { for: "exp-id" }, "Experiment id"),
      h("input", { id: "exp-id", name: "id", required: true, pattern: "[A-Za-z0-9_.:@\\-]{1,128}", placeholder: "hybrid-2025-06" })),
    h("div", { class: "field" }, h("label", { for: "exp-variants" }, "Variants"),
      h("textarea", { id: "exp-variants", name: "variants", "aria-describedby": "exp-variants-help" }, "control 50\ncontent_heavy 50 0.3 0.7"),
      h("div", { id: "exp-variants-help", class: "help" }, "One per line: name weight [cf content] — the first line is the control; cf and content override the hybrid blend.")),
    err,
    h("button", { type: "submit" }, "Start"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const variants = [];
    for (const line of form.querySelector("textarea").value.split("\n").map((l) => l.trim()).filter(Boolean)) {
      const [name, weight, cf, content] = line.split(/\s+/);
      const v = { name, weight: Number(weight) };
      if (cf !== undefined) v.hybrid_weights = { cf: Number(cf), content: Number(content ?? 0) };
      variants.push(v);
    }
    try {
      await api("/v1/experiments", { method: "POST", body: { id: form.querySelector("#exp-id").value.trim(), variants } });
      route(true);
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    }
  });
  return form;
}

async function experimentSection(e) {
  const [r, series] = await Promise.all([
    api(`/v1/experiments/${encodeURIComponent(e.id)}/results`),
    soft(api(`/console/api/experiments/${encodeURIComponent(e.id)}/series`)),
  ]);
  const sec = h("section", { class: "panel", "data-testid": "experiment-" + e.id, "aria-labelledby": "h-exp-" + e.id });
  const control = r.variants.find((v) => v.name === r.control) || r.variants[0];
  sec.append(h("h2", { id: "h-exp-" + e.id }, e.id, " ", e.status === "running" ? badge("running", "good") : badge("stopped", "muted")));
  sec.append(h("p", { class: "help" }, `Control: ${r.control}. Started ${fmtTime(e.created_ms)}${e.stopped_ms ? ", stopped " + fmtTime(e.stopped_ms) : ""}. Salt ${e.salt}.`));
  sec.append(table(null, ["Variant", "#Assignments", "#Impressions", "#Clicks", "CTR [95 % CI]", "p (CTR)", "#Conversions", "Conversion [95 % CI]", "p (conv.)"],
    r.variants.map((v) => [
      v.name + (v.name === r.control ? " (control)" : ""), fmtInt(v.assignments), fmtInt(v.impressions), fmtInt(v.clicks),
      rateCell(v.clicks, v.impressions), pCell(v.ctr_p_value), fmtInt(v.conversions), rateCell(v.conversions, v.impressions), pCell(v.conversion_p_value),
    ]), "results-" + e.id));
  // Minimum detectable effect.
  const mdeIn = h("input", { id: "mde-" + e.id, type: "number", min: 1, max: 200, step: 1, value: 10, inputmode: "numeric" });
  const out = h("div", { "data-testid": "mde-" + e.id });
  const update = () => {
    const mde = Number(mdeIn.value) / 100;
    const base = control.impressions ? control.clicks / control.impressions : null;
    const n = base ? sampleSize(base, mde) : null;
    out.replaceChildren(n === null
      ? h("p", { class: "help" }, "Needs control impressions with clicks to estimate the baseline CTR.")
      : h("div", {},
        h("p", {}, `Baseline CTR ${fmtPct(base, 2)} (control). To detect a ${fmtNum(mde * 100, 0)} % relative lift (α = 0.05 two-sided, power 0.8) each variant needs `, h("strong", {}, fmtInt(n)), " impressions."),
        h("ul", { class: "plain" }, r.variants.map((v) => h("li", {}, `${v.name}: ${fmtInt(v.impressions)} of ${fmtInt(n)} — `,
          v.impressions >= n ? h("span", { class: "good" }, "enough") : h("span", {}, fmtInt(n - v.impressions) + " still needed"), " ", bar(v.impressions / n))))));
  };
  mdeIn.addEventListener("input", update);
  sec.append(h("h3", {}, "Sample size"), h("div", { class: "field" }, h("label", { for: "mde-" + e.id }, "Minimum detectable effect (relative lift of the CTR, %)"), mdeIn), out);
  update();
  // CTR over time, from the console's samples.
  if (!failed(series) && series.points.length) {
    const names = r.variants.map((v) => v.name);
    sec.append(lineChart("CTR over time (cumulative, sampled window)", names.map((n) => ({
      name: n,
      points: series.points.map((p) => {
        const v = p.variants.find((x) => x.name === n);
        return [p.t_ms, v && v.impressions ? v.clicks / v.impressions : null];
      }),
    })), (v) => fmtPct(v, 1)));
  } else {
    sec.append(h("p", { class: "help" }, "CTR over time: no samples while this experiment ran (the console samples every 5 s and keeps 15 minutes)."));
  }
  const actions = h("div", { class: "inline" });
  if (e.status === "running") {
    actions.append(h("button", { type: "button", class: "danger", onclick: async (ev) => {
      ev.target.disabled = true;
      try { await api(`/v1/experiments/${encodeURIComponent(e.id)}/stop`, { method: "POST" }); route(true); }
      catch (err) { sec.append(errorBox(err, "Stop failed")); ev.target.disabled = false; }
    } }, `Stop ${e.id}`));
  }
  sec.append(actions);
  return sec;
}

async function modelsPage() {
  page("Models", "Trained versions with their held-out evaluation, the live version and why, drift and the device fleet.");
  const [m, o] = await Promise.all([api("/v1/models"), api("/console/api/overview")]);
  const trainErr = h("div", { role: "status" });
  main.append(h("div", { class: "inline" }, h("button", { type: "button", onclick: async (ev) => {
    ev.target.disabled = true;
    trainErr.textContent = "Training…";
    try { await api("/v1/models/train?wait=true", { method: "POST" }); route(true); }
    catch (e) { trainErr.replaceChildren(errorBox(e, "Training failed")); ev.target.disabled = false; }
  } }, "Train now"), trainErr));
  for (const model of m.models) {
    const sec = h("section", { class: "panel", "data-testid": "model-" + model.name, "aria-labelledby": "h-m-" + model.name });
    sec.append(h("h2", { id: "h-m-" + model.name }, `${model.name} model`, " ", model.live_version ? badge("live: v" + model.live_version, "good") : badge("not trained", "muted")));
    const liveAcc = o.model_accuracy[model.name], online = o.model_online_accuracy[model.name], outcomes = o.model_online_outcomes[model.name];
    if (model.live_version) {
      sec.append(h("p", { class: "help" }, `Accuracy of the live version: held-out ${fmtPct(liveAcc)}, online ${outcomes ? fmtPct(online) + " over " + fmtInt(outcomes) + " outcomes" : "— (no outcomes yet)"}.`));
    }
    sec.append(table(null, ["Version", "Created", "Algorithm", "#AUC", "#F1", "#Threshold", "#Accuracy", "#Log loss", "#Brier", "#Rows", "Live?", "Decision"],
      model.versions.slice().reverse().map((v) => [
        "v" + v.version, fmtTime(v.created_ms), v.algorithm || "—", fmtNum(v.metrics.auc, 3), fmtNum(v.metrics.f1, 3), fmtNum(v.threshold, 2),
        fmtPct(v.metrics.accuracy), fmtNum(v.metrics.log_loss, 3), fmtNum(v.metrics.brier, 4), fmtInt(typeof v.rows === "object" && v.rows ? v.rows.train ?? v.rows.total ?? null : v.rows),
        v.version === model.live_version ? badge("live", "good") : v.promoted ? "was live" : "no",
        v.decision ? (v.decision.promoted ? "promoted: " : "kept out: ") + v.decision.reason : "—",
      ]), "versions-" + model.name));
    sec.append(h("p", { class: "help" }, "Calibration: log loss and Brier score on the held-out users (lower is better calibrated); F1 at the version's chosen threshold."));
    const shown = model.versions.find((v) => v.version === model.live_version) || model.versions[model.versions.length - 1];
    if (shown) sec.append(reliabilityDiagram(shown.calibration, `Reliability of v${shown.version} on held-out users`, "calibration-" + model.name));
    main.append(sec);
  }
  const drift = Object.entries(o.drift_psi);
  main.append(h("div", { class: "grid2" },
    h("section", { class: "panel", "aria-labelledby": "h-drift" }, h("h2", { id: "h-drift" }, "Feature drift (PSI)"),
      h("p", { class: "help" }, "Population stability index, training window vs the last 24 hours: < 0.1 stable, 0.1–0.25 moderate, > 0.25 significant."),
      table(null, ["Feature", "#PSI", ""], drift.map(([f, v]) => [f, fmtNum(v, 3), v > 0.25 ? badge("significant", "bad") : v > 0.1 ? badge("moderate", "warn") : badge("stable", "good")]), "drift")),
    h("section", { class: "panel", "aria-labelledby": "h-fleet" }, h("h2", { id: "h-fleet" }, "Devices and downloads"),
      table("Devices by model version (active in the window)", ["Version", "#Devices", ""], (() => {
        const e = Object.entries(o.device_versions);
        const total = e.reduce((a, [, n]) => a + n, 0) || 1;
        return e.map(([v, n]) => [v, fmtInt(n), bar(n / total)]);
      })(), "devices"),
      table("Downloads per version", ["Model", "Version", "Result", "#Count"], o.model_downloads.map((d) => [d.model, d.version, d.result, fmtInt(d.count)]), "downloads"))));
  const t = m.trainer;
  main.append(h("p", { class: "help" }, t ? `Trainer: every ${fmtDuration(t.interval_seconds)}, last run ${fmtRelative(t.last_finished_ms, o.now_ms)}, next ${t.next_due_ms ? fmtTime(t.next_due_ms) : "on request"}${t.last_error ? ", last error: " + t.last_error : ""}.` : "Trainer not started."));
}

function lookupForm(what, current, placeholder) {
  const input = h("input", { id: what + "-id", name: "id", value: current || "", placeholder, required: true, autocomplete: "off" });
  const form = h("form", { class: "inline panel", role: "search" },
    h("div", {}, h("label", { for: what + "-id" }, what === "user" ? "User id" : "Item id"), input),
    h("button", { type: "submit" }, "Look up"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = input.value.trim();
    if (id) location.hash = `#/${what}s/${encodeURIComponent(id)}`;
  });
  return form;
}

const userLink = (id) => h("a", { href: "#/users/" + encodeURIComponent(id) }, id);
const itemLink = (id) => h("a", { href: "#/items/" + encodeURIComponent(id) }, id);

async function usersPage(id) {
  page("Users", "Recommendations with their reasons, similar users, features and predictions for one user.");
  main.append(lookupForm("user", id, "alice"));
  if (!id) return;
  const enc = encodeURIComponent(id);
  const [user, recs, similar, features, churn, forecast] = await Promise.all([
    soft(api(`/v1/users/${enc}`)), soft(api(`/v1/users/${enc}/recommendations?n=10`)), soft(api(`/v1/users/${enc}/similar-users`)),
    soft(api(`/v1/users/${enc}/features`)), soft(api(`/v1/users/${enc}/churn`)), soft(api(`/v1/users/${enc}/forecast?days=7`)),
  ]);
  if (failed(user)) { main.append(errorBox(user, "User " + id)); return; }
  main.append(h("h2", { "data-testid": "user-title" }, "User ", h("code", {}, id)));
  main.append(h("div", { class: "cards" },
    card("Interactions", fmtInt(user.interactions), "user-interactions"),
    card("Last event", user.last_event_ms ? fmtTime(user.last_event_ms) : "—", "user-last-event"),
    card("Churn risk", failed(churn) ? "—" : fmtPct(churn.probability, 0), "user-churn", failed(churn) ? churn.code : "tier " + churn.tier)));
  const recSec = h("section", { class: "panel", "aria-labelledby": "h-recs" }, h("h2", { id: "h-recs" }, "Recommendations"));
  if (failed(recs)) recSec.append(errorBox(recs, "Recommendations"));
  else {
    recSec.append(h("p", { class: "help" }, `Strategy ${recs.strategy}${recs.cached ? " (cached)" : ""}${recs.experiment ? `, experiment ${recs.experiment} variant ${recs.variant}` : ""}.`));
    recSec.append(h("ol", { "data-testid": "recommendations" }, recs.items.map((it) => h("li", {},
      itemLink(it.item_id), ` — score ${fmtNum(it.score, 2)}, confidence ${fmtNum(it.confidence, 2)}`,
      h("ul", { class: "reasons" }, it.reasons.map((r) => h("li", {}, r)))))));
  }
  const simSec = h("section", { class: "panel", "aria-labelledby": "h-sim" }, h("h2", { id: "h-sim" }, "Similar users"));
  if (failed(similar)) simSec.append(errorBox(similar, "Similar users"));
  else simSec.append(table(null, ["User", "#Similarity"], similar.users.map((u) => [userLink(u.user_id), fmtNum(u.similarity, 3)]), "similar-users"));
  main.append(h("div", { class: "grid2" }, recSec, simSec));
  const featSec = h("section", { class: "panel", "aria-labelledby": "h-feat" }, h("h2", { id: "h-feat" }, "Features and activity"));
  if (failed(features)) featSec.append(errorBox(features, "Features"));
  else featSec.append(table(null, ["Feature", "#Value"], Object.entries(features.features).map(([k, v]) => [k, fmtNum(v, 3)]), "features"));
  if (!failed(forecast)) {
    const vals = forecast.forecast.map((p) => p.value);
    featSec.append(h("h3", {}, "Activity forecast, next 7 days"),
      sparkline(vals, `Forecast of daily activity (${forecast.method}): ${vals.map((v) => fmtNum(v, 1)).join(", ")}`),
      h("p", { class: "help" }, `${forecast.method}, from ${forecast.history_days} days of history.`));
  }
  const predSec = h("section", { class: "panel", "aria-labelledby": "h-pred" }, h("h2", { id: "h-pred" }, "Churn prediction"));
  if (failed(churn)) predSec.append(errorBox(churn, "Churn"));
  else {
    predSec.append(h("p", {}, `Probability ${fmtPct(churn.probability, 1)} (confidence ${fmtNum(churn.confidence, 2)}), tier `,
      badge(churn.tier, churn.tier === "high" ? "bad" : churn.tier === "medium" ? "warn" : "good"), `, model v${churn.model_version}.`));
    predSec.append(h("h3", {}, "Risk factors"), h("ul", {}, churn.risk_factors.map((r) => h("li", {}, r.message))));
    if (churn.interventions.length) predSec.append(h("p", {}, "Interventions: " + churn.interventions.join(", ")));
  }
  const goalErr = h("div");
  const goalIn = h("input", { id: "goal-id", placeholder: "an item the user started" });
  const goalForm = h("form", { class: "inline" }, h("div", {}, h("label", { for: "goal-id" }, "Goal success for goal"), goalIn), h("button", { type: "submit" }, "Predict"));
  goalForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const p = await api(`/v1/users/${enc}/predictions/success?goal_id=${encodeURIComponent(goalIn.value.trim())}`);
      goalErr.replaceChildren(h("p", { "data-testid": "success" }, `Success probability ${fmtPct(p.probability, 1)} (confidence ${fmtNum(p.confidence, 2)}, threshold ${fmtNum(p.threshold, 2)}). `,
        p.recommended_actions.map((a) => a.message).join(" ")));
    } catch (e) { goalErr.replaceChildren(errorBox(e, "Success prediction")); }
  });
  predSec.append(h("h3", {}, "Goal success"), goalForm, goalErr);
  main.append(h("div", { class: "grid2" }, featSec, predSec));
}

async function itemsPage(id) {
  page("Items", "Similar items and the users who engage with an item.");
  main.append(lookupForm("item", id, "run-5k"));
  if (!id) return;
  const enc = encodeURIComponent(id);
  const [item, similar, users] = await Promise.all([
    soft(api(`/v1/items/${enc}`)), soft(api(`/v1/items/${enc}/similar-items`)), soft(api(`/console/api/items/${enc}/users?n=20`)),
  ]);
  if (failed(item)) { main.append(errorBox(item, "Item " + id)); return; }
  main.append(h("h2", { "data-testid": "item-title" }, item.title || id, " ", h("code", {}, id)));
  main.append(h("p", {}, item.description || ""), h("p", { class: "help" }, [item.type ? "type " + item.type : null, item.tags && item.tags.length ? "tags " + item.tags.join(", ") : null, item.difficulty !== null && item.difficulty !== undefined ? "difficulty " + fmtNum(item.difficulty, 2) : null].filter(Boolean).join(" · ")));
  main.append(h("div", { class: "cards" }, card("Users engaged", fmtInt(item.users), "item-users")));
  const simSec = h("section", { class: "panel", "aria-labelledby": "h-isim" }, h("h2", { id: "h-isim" }, "Similar items"));
  if (failed(similar)) simSec.append(errorBox(similar, "Similar items"));
  else simSec.append(table(null, ["Item", "#Similarity"], similar.items.map((x) => [itemLink(x.item_id), fmtNum(x.similarity, 3)]), "similar-items"));
  const userSec = h("section", { class: "panel", "aria-labelledby": "h-iusers" }, h("h2", { id: "h-iusers" }, "Who engages with it"));
  if (failed(users)) userSec.append(errorBox(users, "Users"));
  else {
    const max = Math.max(1e-9, ...users.users.map((u) => u.weight));
    userSec.append(h("p", { class: "help" }, `The ${users.users.length} heaviest of ${fmtInt(users.total_users)} users, by interaction weight.`),
      table(null, ["User", "#Weight", ""], users.users.map((u) => [userLink(u.user_id), fmtNum(u.weight, 2), bar(u.weight / max)]), "item-engaged"));
  }
  main.append(h("div", { class: "grid2" }, simSec, userSec));
}

async function churnPage() {
  page("Churn", "Users per risk tier in the scoring runs, and the interventions written to the outbox.");
  const [o, m, hist] = await Promise.all([api("/console/api/overview"), soft(api("/v1/models")), soft(api("/console/api/churn/history?days=30"))]);
  // The outbox is paged oldest first: read up to 10 pages and show the newest.
  let since = 0, all = [];
  for (let i = 0; i < 10; i++) {
    const page = await api(`/v1/interventions?since=${since}&limit=1000`);
    all = all.concat(page.interventions);
    if (!page.interventions.length || page.next_since === since) break;
    since = page.next_since;
  }
  const tiers = o.churn_tiers;
  const total = Object.values(tiers).reduce((a, b) => a + b, 0);
  main.append(h("div", { class: "cards" },
    ["high", "medium", "low"].map((t) => card(`${t[0].toUpperCase() + t.slice(1)} risk`, fmtInt(tiers[t] || 0), "tier-" + t, total ? fmtPct((tiers[t] || 0) / total, 0) + " of scored users" : "no scoring run yet")),
    card("Interventions", fmtInt(all.length), "interventions-count", `${fmtInt(o.interventions_total)} appended since start`)));
  const cs = failed(m) ? null : m.churn_scheduler;
  const runMsg = h("div", { role: "status" });
  main.append(h("div", { class: "panel" },
    h("p", {}, cs ? `Scoring runs every ${fmtDuration(cs.interval_seconds)}; last ${fmtRelative(cs.last_finished_ms, o.now_ms)}, next ${cs.next_due_ms ? fmtTime(cs.next_due_ms) : "on request"}.` : "The churn scheduler has not started."),
    h("button", { type: "button", onclick: async (ev) => {
      ev.target.disabled = true;
      runMsg.textContent = "Scoring…";
      try { await api("/v1/churn/run?wait=true", { method: "POST" }); route(true); }
      catch (e) { runMsg.replaceChildren(errorBox(e, "Scoring failed")); ev.target.disabled = false; }
    } }, "Score now"), runMsg));
  main.append(lineChart("Users per tier (sampled window)", ["high", "medium", "low"].map((t) => ({
    name: t, points: o.series.map((p) => [p.t_ms, p.churn_tiers[t] ?? null]),
  })), fmtInt));
  main.append(failed(hist) ? errorBox(hist, "Scoring history") : tierHistoryChart(hist.days));
  const newest = all.slice(-50).reverse();
  main.append(h("section", { class: "panel", "aria-labelledby": "h-outbox" }, h("h2", { id: "h-outbox" }, "Intervention outbox"),
    h("p", { class: "help" }, `The newest ${newest.length} of ${fmtInt(all.length)} kept.`),
    table(null, ["#Id", "Day", "User", "Tier", "Channel", "#Churn p", "Delivery", "Created"], newest.map((i) => [
      fmtInt(i.id), i.day || "—", userLink(i.user_id), i.tier || "—", i.channel || "—",
      fmtNum(i.payload ? i.payload.churn_probability : null, 2), i.delivery_state || "—", fmtTime(i.created_ms),
    ]), "outbox")));
}

// ---------------------------------------------------------------- router

const PAGES = { overview: overviewPage, experiments: experimentsPage, models: modelsPage, users: usersPage, items: itemsPage, churn: churnPage };

async function route(refresh) {
  clearTimeout(refreshTimer);
  const [, name = "overview", arg] = (location.hash || "#/overview").split("/");
  const fn = PAGES[name] || overviewPage;
  for (const a of document.querySelectorAll(".top nav a")) {
    if (a.getAttribute("href") === "#/" + (PAGES[name] ? name : "overview")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const scroll = window.scrollY;
  const active = document.activeElement && document.activeElement.id;
  try {
    await fn(arg ? decodeURIComponent(arg) : undefined);
  } catch (e) {
    main.replaceChildren(h("h1", {}, "Something went wrong"), errorBox(e, "Loading the page"));
  }
  if (refresh) {
    window.scrollTo(0, scroll);
    if (active && document.getElementById(active)) document.getElementById(active).focus();
  } else {
    main.focus({ preventScroll: true });
  }
  main.setAttribute("data-loaded", name);
}

window.addEventListener("hashchange", () => route(false));
document.getElementById("logout").addEventListener("click", async () => {
  try { await api("/console/logout", { method: "POST" }); } catch (_) { /* leave anyway */ }
  window.location.assign("/console/login");
});
route(false);
