// Browser test of the web console: starts the real server on a free port with a fresh embedded
// store, loads a simulated population (`momentum-load simulate`), trains the models and scores
// churn, then drives Chromium (Debian's /usr/bin/chromium through playwright-core): logs in,
// opens every page, compares what the page shows with the JSON API, starts and stops an
// experiment from the page, checks a phone-width layout and the keyboard path, and saves
// screenshots under target/console-tests/.
//
//   node console-tests/run.mjs        (after `cargo build -p momentum -p momentum-load`)
//
// Environment: MOMENTUM_BIN, MOMENTUM_LOAD_BIN (default target/debug/…), CHROMIUM
// (default /usr/bin/chromium), OUT (default target/console-tests), TRAFFIC_SECS (default 0),
// DOCS_SHOTS (set: also write docs/console-overview.png and docs/console-experiments.png).

import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const BIN = process.env.MOMENTUM_BIN || join(ROOT, "target/debug/momentum");
const LOAD = process.env.MOMENTUM_LOAD_BIN || join(ROOT, "target/debug/momentum-load");
const OUT = resolve(process.env.OUT || join(ROOT, "target/console-tests"));
const KEY = "console-test-admin-key-" + process.pid;
const MODEL_KEY = "3f1c9a7e5b2d4f6081a3c5e7f9b1d3f5a7c9e1b3d5f7091b3d5f7a9c1e3b5d7f";
const DAY = 86_400_000;
const started = Date.now();

function log(...args) { console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args); }

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => { const { port } = srv.address(); srv.close(() => ok(port)); });
    srv.on("error", fail);
  });
}

/** Minimal CSV reader (quoted fields with "" escapes). */
function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n") { row.push(field); rows.push(row); row = []; field = ""; }
    else if (c !== "\r") field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  const [head, ...body] = rows;
  return body.map((r) => Object.fromEntries(head.map((h, i) => [h, r[i] ?? ""])));
}

let base;
async function call(method, path, body, headers = {}) {
  const res = await fetch(base + path, {
    method,
    headers: { "X-Admin-Key": KEY, ...(body !== undefined ? { "Content-Type": "application/json" } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = text; }
  if (!res.ok) throw new Error(`${method} ${path} → ${res.status} ${text.slice(0, 300)}`);
  return json;
}
const get = (p) => call("GET", p);

const fmt = (n) => new Intl.NumberFormat("en-US").format(Math.round(n));

async function main() {
  mkdirSync(OUT, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), "momentum-console-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;

  // ---- data: a simulated population whose last day is today.
  const days = 60;
  const startMs = Math.floor((Date.now() - days * DAY) / DAY) * DAY;
  execFileSync(LOAD, ["simulate", "--users", "300", "--days", String(days), "--seed", "7", "--start-ms", String(startMs), "--out-dir", join(work, "sim")], { stdio: ["ignore", "ignore", "inherit"] });
  const items = parseCsv(readFileSync(join(work, "sim/items.csv"), "utf8"));
  const events = parseCsv(readFileSync(join(work, "sim/events.csv"), "utf8"));
  log(`simulated ${items.length} items, ${events.length} events`);

  // ---- the real server.
  const server = spawn(BIN, ["serve", "--bind", `127.0.0.1:${port}`], {
    env: {
      ...process.env,
      MOMENTUM__SECURITY__ADMIN_KEY: KEY,
      MOMENTUM__SECURITY__MODEL_KEY: MODEL_KEY,
      MOMENTUM__SECURITY__DEVICE_KEY: MODEL_KEY.split("").reverse().join(""),
      MOMENTUM__STORE__PATH: join(work, "data"),
      MOMENTUM__LOGGING__FORMAT: "plain",
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  let browser;
  try {
    for (let i = 0; ; i++) {
      try { if ((await fetch(base + "/readyz")).ok) break; } catch (_) { /* not yet */ }
      if (i > 300) throw new Error("server not ready after 30 s");
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const it of items) {
      await call("PUT", `/v1/items/${it.item_id}`, {
        title: it.title, description: it.description, tags: it.tags ? it.tags.split("|") : [], type: it.type, difficulty: Number(it.difficulty),
      });
    }
    for (let i = 0; i < events.length; i += 1000) {
      const batch = events.slice(i, i + 1000).map((e) => {
        const ev = { event_id: e.event_id, user_id: e.user_id, kind: e.kind, ts: Number(e.ts) };
        if (e.item_id) ev.item_id = e.item_id;
        if (e.value) ev.value = Number(e.value);
        return ev;
      });
      const r = await call("POST", "/v1/events", batch);
      assert.equal(r.rejected.length, 0, JSON.stringify(r.rejected.slice(0, 3)));
    }
    log("data loaded");
    await call("POST", "/v1/models/train?wait=true");
    await call("POST", "/v1/churn/run?wait=true");
    // Served predictions feed the drift monitor; phones report their model version and
    // download the model.
    const everyone = [...new Set(events.map((e) => e.user_id))];
    for (const u of everyone) await get(`/v1/users/${u}/churn`);
    for (let d = 0; d < 3; d++) {
      await call("GET", "/v1/models/success/latest", undefined, { "X-Model-Version": "1", "X-Device-Id": "phone-" + d });
    }
    await call("GET", "/v1/models/success/versions/1/model.tflite", undefined, { "X-Device-Id": "phone-0", "X-Model-Version": "1" });
    log("models trained, churn scored, predictions served");
    // TRAFFIC_SECS=N: N seconds of recommendations and events first, so the overview's charts
    // have minutes to show (used for the screenshots in docs/; CI does not set it).
    const trafficEnd = Date.now() + 1000 * Number(process.env.TRAFFIC_SECS || 0);
    for (let i = 0; Date.now() < trafficEnd; i++) {
      const u = everyone[i % everyone.length];
      await get(`/v1/users/${u}/recommendations?n=10`);
      if (i % 5 === 0) await call("POST", "/v1/events", [{ user_id: u, item_id: items[i % items.length].item_id, kind: "view" }]);
      if (i % 20 === 0) await new Promise((r) => setTimeout(r, 50));
    }

    browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    const shot = (name, full = true) => page.screenshot({ path: join(OUT, name + ".png"), fullPage: full });
    const loaded = (name) => page.waitForSelector(`main[data-loaded="${name}"]`, { timeout: 20000 });
    const text = async (sel) => (await page.locator(sel).first().innerText()).trim();

    // ---- login: no session → login page; a wrong key is refused on the page.
    await page.goto(base + "/console");
    assert.match(page.url(), /\/console\/login$/);
    await page.getByLabel("Admin key").fill("not-the-key");
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByRole("alert").filter({ hasText: "Wrong admin key." }).waitFor();
    await shot("login", false);
    errors.length = 0; // the refused login's 401 is expected
    await page.getByLabel("Admin key").fill(KEY);
    await page.keyboard.press("Enter");
    await page.waitForURL(base + "/console");
    await loaded("overview");
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "momentum_console");
    assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));
    log("logged in");

    // ---- overview: the cards match the API.
    const o = await get("/console/api/overview");
    assert.equal(await text('[data-testid="users"]'), fmt(o.users));
    assert.equal(await text('[data-testid="items"]'), fmt(o.items));
    assert.ok(o.users > 100 && o.items === items.length, `users ${o.users}, items ${o.items}`);
    const routesTable = await text('[data-testid="routes"]');
    assert.match(routesTable, /\/v1\/events/);
    assert.match(await text('[data-testid="jobs"]'), /training/);
    await page.getByText("Recommendations latency").waitFor();
    await shot("overview");
    // DOCS_SHOTS=1: the README's pictures (viewport-sized, committed under docs/).
    const docsShot = (name) => process.env.DOCS_SHOTS
      ? page.screenshot({ path: join(ROOT, "docs", `console-${name}.png`), clip: { x: 0, y: 0, width: 1280, height: 980 } })
      : null;
    await docsShot("overview");

    // ---- experiments: start one from the page, serve traffic, compare, stop it.
    await page.getByRole("link", { name: "Experiments" }).click();
    await loaded("experiments");
    await page.getByTestId("do-not-peek").waitFor();
    await page.getByLabel("Experiment id").fill("console-ab");
    await page.getByRole("button", { name: "Start" }).click();
    await page.getByTestId("experiment-console-ab").getByText("running").waitFor();
    const users = [...new Set(events.map((e) => e.user_id))].slice(0, 200);
    const feedback = [];
    for (const u of users) {
      const r = await get(`/v1/users/${u}/recommendations?n=5`);
      r.items.forEach((it, i) => {
        feedback.push({ event_id: `imp-${u}-${i}`, user_id: u, item_id: it.item_id, kind: "impression", recommendation_id: r.recommendation_id });
        if ((u.length + i) % 4 === 0) feedback.push({ event_id: `clk-${u}-${i}`, user_id: u, item_id: it.item_id, kind: "click", recommendation_id: r.recommendation_id });
      });
    }
    await call("POST", "/v1/events", feedback);
    await page.reload();
    await loaded("experiments");
    const results = await get("/v1/experiments/console-ab/results");
    const table = await text('[data-testid="results-console-ab"]');
    for (const v of results.variants) {
      assert.ok(v.impressions > 0, JSON.stringify(v));
      const row = table.split("\n").find((l) => l.startsWith(v.name));
      assert.ok(row, `row for ${v.name} in ${table}`);
      const cells = row.split("\t");
      assert.equal(cells[1], fmt(v.assignments), row);
      assert.equal(cells[2], fmt(v.impressions), row);
      assert.equal(cells[3], fmt(v.clicks), row);
      assert.ok(cells[4].startsWith((100 * v.ctr).toFixed(2) + " %"), `${cells[4]} vs ${v.ctr}`);
    }
    assert.match(await text('[data-testid="mde-console-ab"]'), /impressions/);
    await shot("experiments");
    await page.getByTestId("experiment-console-ab").scrollIntoViewIfNeeded();
    await docsShot("experiments");
    await page.getByRole("button", { name: "Stop console-ab" }).click();
    await page.getByTestId("experiment-console-ab").getByText("stopped", { exact: true }).waitFor();
    assert.equal((await get("/v1/experiments/console-ab")).status, "stopped");
    log("experiment started and stopped from the page");

    // ---- models.
    await page.getByRole("link", { name: "Models" }).click();
    await loaded("models");
    const models = await get("/v1/models");
    for (const m of models.models) {
      const sec = await text(`[data-testid="model-${m.name}"]`);
      if (m.live_version) assert.match(sec, new RegExp(`live: v${m.live_version}`));
      const auc = m.versions.find((v) => v.version === m.live_version)?.metrics.auc;
      if (auc !== undefined && auc !== null) assert.ok(sec.includes(auc.toFixed(3)), `${m.name} AUC ${auc} in ${sec}`);
    }
    assert.ok(models.models.some((m) => m.live_version), "a model was trained");
    // Calibration: a reliability diagram with its diagonal and the API's Brier score.
    for (const m of models.models.filter((x) => x.live_version)) {
      const live = m.versions.find((v) => v.version === m.live_version);
      assert.ok(live.calibration, `${m.name} v${m.live_version} has calibration`);
      const id = `calibration-${m.name}`;
      await page.getByTestId(`${id}-svg`).waitFor();
      assert.equal(await page.getByTestId(`${id}-diagonal`).count(), 1, `${m.name} diagonal`);
      const used = live.calibration.bins.filter((b) => b.count > 0).length;
      assert.equal(await page.locator(`[data-testid="${id}-svg"] circle[data-bin]`).count(), used, `${m.name} one point per non-empty bin`);
      assert.equal(await text(`[data-testid="${id}-brier"]`), live.calibration.brier.toFixed(4));
      assert.equal(live.metrics.brier, live.calibration.brier);
    }
    const om = await get("/console/api/overview");
    const driftRows = await page.locator('[data-testid="drift"] tbody tr').count();
    assert.equal(driftRows, Object.keys(om.drift_psi).length);
    assert.equal(driftRows, 10, "PSI of the 10 features");
    assert.match(await text('[data-testid="devices"]'), new RegExp(`1\\s+${fmt(om.device_versions["1"])}`));
    assert.match(await text('[data-testid="downloads"]'), /success\s+1\s+200\s+1/);
    await shot("models");

    // ---- users: recommendations as the API gives them (cached list).
    const user = users[0];
    await page.goto(`${base}/console#/users/${user}`);
    await loaded("users");
    const recs = await get(`/v1/users/${user}/recommendations?n=10`);
    const shown = await page.locator('[data-testid="recommendations"] > li > a').allInnerTexts();
    assert.deepEqual(shown, recs.items.map((i) => i.item_id));
    const u = await get(`/v1/users/${user}`);
    assert.equal(await text('[data-testid="user-interactions"]'), fmt(u.interactions));
    await page.getByText("Risk factors").waitFor();
    await shot("users");

    // ---- items.
    const item = recs.items[0].item_id;
    await page.getByRole("link", { name: item }).first().click();
    await loaded("items");
    const iv = await get(`/v1/items/${item}`);
    assert.equal(await text('[data-testid="item-users"]'), fmt(iv.users));
    const engaged = await get(`/console/api/items/${item}/users?n=20`);
    const firstUser = await page.locator('[data-testid="item-engaged"] tbody tr td a').first().innerText();
    assert.equal(firstUser, engaged.users[0].user_id);
    await shot("items");

    // ---- churn.
    await page.getByRole("link", { name: "Churn" }).click();
    await loaded("churn");
    const o2 = await get("/console/api/overview");
    for (const t of ["high", "medium", "low"]) assert.equal(await text(`[data-testid="tier-${t}"]`), fmt(o2.churn_tiers[t] || 0));
    const outbox = await get("/v1/interventions?since=0&limit=1000");
    const last = outbox.interventions[outbox.interventions.length - 1];
    assert.ok(last, "scoring wrote interventions");
    const firstRow = (await page.locator('[data-testid="outbox"] tbody tr').first().innerText()).split("\t");
    assert.deepEqual([firstRow[0], firstRow[2], firstRow[4], firstRow[5]],
      [fmt(last.id), last.user_id, last.channel, last.payload.churn_probability.toFixed(2)]);
    // Tier distribution per scoring day: the bars and the table hold the API's counts.
    const hist = await get("/console/api/churn/history?days=30");
    assert.ok(hist.days.length >= 1, "scoring stored a day");
    await page.getByTestId("churn-history-chart").waitFor();
    const bars = await page.locator('[data-testid="churn-history-chart"] rect[data-tier]').evaluateAll((rs) =>
      rs.map((r) => [r.dataset.day, r.dataset.tier, Number(r.dataset.count)]));
    const expected = hist.days.flatMap((d) => Object.entries(d.tiers).filter(([, n]) => n > 0).map(([t, n]) => [d.day, t, n]));
    const key = (x) => x.join("|");
    assert.deepEqual(bars.map(key).sort(), expected.map(key).sort());
    const histRows = await page.locator('[data-testid="churn-history-table"] tbody tr').evaluateAll((trs) =>
      trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    assert.deepEqual(histRows.map((r) => r[0]), hist.days.map((d) => d.day));
    const lastDay = hist.days[hist.days.length - 1];
    const lastRow = histRows[histRows.length - 1];
    for (const [i, t] of ["high", "medium", "low"].entries()) assert.equal(lastRow[i + 1], fmt(lastDay.tiers[t] || 0), `${t} on ${lastDay.day}`);
    assert.equal(lastRow[4], fmt(Object.values(lastDay.tiers).reduce((a, b) => a + b, 0)));
    // The stored scores agree with the live tier gauges of the same run.
    for (const t of ["high", "medium", "low"]) assert.equal(lastDay.tiers[t] || 0, o2.churn_tiers[t] || 0, `stored ${t}`);
    await shot("churn");

    // ---- keyboard: the skip link comes first and moves focus to the content.
    await page.goto(`${base}/console#/overview`);
    await loaded("overview");
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
    // Every form control has a label.
    for (const name of ["experiments", "users", "items"]) {
      await page.goto(`${base}/console#/${name}`);
      await loaded(name);
      const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, textarea, select")]
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")).map((el) => el.outerHTML));
      assert.deepEqual(unlabelled, [], name);
    }

    // ---- phone width: no horizontal scrolling of the page.
    await page.setViewportSize({ width: 390, height: 844 });
    for (const name of ["overview", "experiments", "models", `users/${user}`, "churn"]) {
      await page.goto(`${base}/console#/${name}`);
      await loaded(name.split("/")[0]);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${name} overflows by ${overflow}px at 390px`);
    }
    await page.goto(`${base}/console#/overview`);
    await loaded("overview");
    await shot("overview-phone", false);

    // ---- logout.
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(base + "/console/login");
    assert.ok(!(await context.cookies()).some((c) => c.name === "momentum_console" && c.value), "cookie cleared");
    assert.deepEqual(errors, [], "no script errors");
    log(`all console checks passed; screenshots in ${OUT}`);
  } finally {
    if (browser) await browser.close();
    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
