//! The web console at `/console`: a few static pages embedded in the binary, a login that turns
//! the admin key into a session cookie, and a small read-only JSON surface for the figures no
//! `/v1/` route gives (live time series, job schedules, who engages with an item).
//!
//! | route | does |
//! |---|---|
//! | `GET /console` | the console (a session is required, else `303` to the login page) |
//! | `GET /console/login`, `POST /console/login` | the login page; `{"key": …}` → session cookie |
//! | `POST /console/logout` | drops the cookie (needs the CSRF token) |
//! | `GET /console/assets/{name}` | the embedded CSS, JavaScript and icon |
//! | `GET /console/api/overview` | admin: live figures, the sampled series, jobs, store |
//! | `GET /console/api/experiments/{id}/series` | admin: an experiment's counts over time |
//! | `GET /console/api/items/{id}/users` | admin: the users with the most weight on an item |
//!
//! **Sessions.** The cookie is `expiry.nonce.mac`: `mac` is HMAC-SHA256 under a random key
//! drawn when the server starts, so a restart logs everyone out and nobody without the key
//! can forge or extend a session. It is `HttpOnly`, `SameSite=Strict`, `Path=/` (it also
//! authenticates the `/v1/` admin routes, see [`session_admin`]) and `Secure` when the server
//! runs HTTPS. The CSRF token is an HMAC of the nonce under the same key: the console page
//! carries it in a `<meta>` tag and sends it as `X-CSRF-Token` on every state-changing request.
//!
//! **Samples.** [`start`] samples the server's own metrics every [`SAMPLE_EVERY`] into a ring
//! of [`SAMPLES`] entries (15 minutes); the overview's charts are drawn from it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use momentum_models::bounded::BoundedFifo;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use momentum_models::clock::now_ms;

use super::{constant_time_eq, path_id, read_json_body, require_admin};
use crate::error::Error;
use crate::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "momentum_console";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Time between two samples of the live figures.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept (15 minutes at [`SAMPLE_EVERY`]).
pub const SAMPLES: usize = 180;
/// Time between two points of an experiment's long history (its CTR chart beyond the last
/// 15 minutes).
pub const HISTORY_EVERY: Duration = Duration::from_secs(300);
/// Points of experiment history kept (14 days at [`HISTORY_EVERY`]; about 2 MB at most).
pub const HISTORY_POINTS: usize = 4032;

const INDEX_HTML: &str = include_str!("../../console/index.html");
const LOGIN_HTML: &str = include_str!("../../console/login.html");
const APP_JS: &str = include_str!("../../console/app.js");
const LOGIN_JS: &str = include_str!("../../console/login.js");
const APP_CSS: &str = include_str!("../../console/app.css");
const ICON_SVG: &str = include_str!("../../console/icon.svg");

/// Every page is same-origin only: no inline script or style, no framing, no external fetch.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's state: the session key and the sampled figures.
pub struct Console {
    key: [u8; 32],
    samples: Mutex<BoundedFifo<Sample>>,
    /// The running experiment's counts every [`HISTORY_EVERY`], oldest first.
    history: Mutex<BoundedFifo<HistoryPoint>>,
    started_ms: i64,
}

/// One point of an experiment's long history.
#[derive(Clone, Debug)]
struct HistoryPoint {
    t_ms: i64,
    experiment: String,
    counts: Vec<AbCounts>,
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    /// A console with a fresh random session key.
    pub fn new() -> Console {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Console {
            key,
            samples: Mutex::new(BoundedFifo::new(SAMPLES)),
            history: Mutex::new(BoundedFifo::new(HISTORY_POINTS)),
            started_ms: now_ms(),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac_sha256(&self.key, parts)
    }

    /// A new session cookie value, valid until `now_ms + SESSION_TTL`.
    fn issue(&self, now_ms: i64) -> String {
        use rand::RngCore;
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let expiry = now_ms + SESSION_TTL.as_millis() as i64;
        let nonce = hex(&nonce);
        let mac = self.mac(&[b"session", expiry.to_string().as_bytes(), nonce.as_bytes()]);
        format!("{expiry}.{nonce}.{}", hex(&mac))
    }

    /// The session's nonce if `value` is a cookie this server issued and it has not expired.
    fn verify(&self, value: &str, now_ms: i64) -> Option<String> {
        let mut parts = value.split('.');
        let (expiry, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || nonce.len() != 32 || mac.len() != 64 {
            return None;
        }
        let want = hex(&self.mac(&[b"session", expiry.as_bytes(), nonce.as_bytes()]));
        if !constant_time_eq(mac.as_bytes(), want.as_bytes()) {
            return None;
        }
        (expiry.parse::<i64>().ok()? > now_ms).then(|| nonce.to_string())
    }

    /// The CSRF token of a session.
    fn csrf(&self, nonce: &str) -> String {
        hex(&self.mac(&[b"csrf", nonce.as_bytes()]))
    }

    fn push(&self, sample: Sample) {
        if let Some((experiment, counts)) = &sample.experiment {
            let mut history = self.history.lock();
            let due = history.back().is_none_or(|last| {
                last.experiment != *experiment
                    || sample.t_ms - last.t_ms >= HISTORY_EVERY.as_millis() as i64
            });
            if due {
                history.push(HistoryPoint {
                    t_ms: sample.t_ms,
                    experiment: experiment.clone(),
                    counts: counts.clone(),
                });
            }
        }
        let mut samples = self.samples.lock();
        samples.push(sample);
    }
}

impl Console {
    /// An experiment's counts over time: the long history (one point every
    /// [`HISTORY_EVERY`], up to 14 days) before the 15-minute ring, then every sample of the
    /// ring, oldest first.
    fn experiment_points(&self, id: &str) -> Vec<Value> {
        let json_of = |t_ms: i64, counts: &[AbCounts]| {
            json!({
                "t_ms": t_ms,
                "variants": counts.iter().map(|c| json!({
                    "name": c.variant,
                    "impressions": c.impressions,
                    "clicks": c.clicks,
                    "conversions": c.conversions,
                })).collect::<Vec<_>>(),
            })
        };
        let samples = self.samples.lock();
        let fine_from = samples.front().map_or(i64::MAX, |s| s.t_ms);
        let mut points: Vec<Value> = self
            .history
            .lock()
            .iter()
            .filter(|p| p.experiment == id && p.t_ms < fine_from)
            .map(|p| json_of(p.t_ms, &p.counts))
            .collect();
        points.extend(samples.iter().filter_map(|s| {
            let (exp, counts) = s.experiment.as_ref()?;
            (exp == id).then(|| json_of(s.t_ms, counts))
        }));
        points
    }
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`, each prefixed with its length so
/// that no two different part lists give the same input.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for part in parts {
        inner.update((part.len() as u64).to_be_bytes());
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The nonce of the request's valid session, if it has one.
fn session(req: &HttpRequest, state: &AppState) -> Option<String> {
    if state.settings.security.admin_key.is_empty() {
        return None;
    }
    state
        .console
        .verify(cookie(req, COOKIE)?, state.clock.now_ms())
}

/// Whether the request carries the CSRF token of session `nonce`.
fn csrf_ok(req: &HttpRequest, state: &AppState, nonce: &str) -> bool {
    let given = req
        .headers()
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    constant_time_eq(given, state.console.csrf(nonce).as_bytes())
}

/// The console session as admin credentials (called by [`require_admin`] when the request has
/// no `X-Admin-Key`): `None` without a valid session; reading requests (`GET`, `HEAD`) pass;
/// any other method also needs the session's CSRF token, else `403 csrf_failed`.
pub fn session_admin(req: &HttpRequest, state: &AppState) -> Option<Result<(), Error>> {
    let nonce = session(req, state)?;
    let safe = matches!(
        *req.method(),
        actix_web::http::Method::GET | actix_web::http::Method::HEAD
    );
    Some(if safe || csrf_ok(req, state, &nonce) {
        Ok(())
    } else {
        Err(csrf_error())
    })
}

fn csrf_error() -> Error {
    Error::Forbidden {
        code: "csrf_failed",
        message: format!(
            "a console session needs its CSRF token in the {CSRF_HEADER} header on this request"
        ),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // One resource per path, so another method on a known path answers 405, not 404.
    cfg.service(web::resource("/console").route(web::get().to(index)))
        .service(
            web::resource("/console/login")
                .route(web::get().to(login_page))
                .route(web::post().to(login)),
        )
        .service(web::resource("/console/logout").route(web::post().to(logout)))
        .service(web::resource("/console/assets/{name}").route(web::get().to(asset)))
        .service(web::resource("/console/api/overview").route(web::get().to(overview)))
        .service(
            web::resource("/console/api/experiments/{id}/series")
                .route(web::get().to(experiment_series)),
        )
        .service(web::resource("/console/api/items/{id}/users").route(web::get().to(item_users)))
        .service(web::resource("/console/api/churn/history").route(web::get().to(churn_history)));
}

fn page(html: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(html)
}

/// `GET /console`: the console with the session's CSRF token, or a redirect to the login.
async fn index(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match session(&req, &state) {
        Some(nonce) => page(INDEX_HTML.replace("{{csrf_token}}", &state.console.csrf(&nonce))),
        None => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/console/login"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
    }
}

/// `GET /console/login`.
async fn login_page() -> HttpResponse {
    page(LOGIN_HTML.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    key: String,
}

fn session_cookie(state: &AppState, value: &str, max_age: u64) -> String {
    cookie_header(value, max_age, state.settings.server.tls_enabled())
}

/// The `Set-Cookie` value of the session cookie; `Secure` when the server runs HTTPS.
fn cookie_header(value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// `POST /console/login` with `{"key": "…"}` (JSON only, so a cross-site form cannot post it):
/// `204` and the session cookie, `401 unauthorized` for a wrong key, `403 admin_disabled`
/// without a configured key.
async fn login(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let expected = state.settings.security.admin_key.as_bytes();
    if expected.is_empty() {
        return Err(Error::AdminDisabled);
    }
    let body = read_json_body(&req, payload, 4096).await?;
    let login: Login =
        serde_json::from_slice(&body).map_err(|e| Error::bad("malformed_json", e.to_string()))?;
    if !constant_time_eq(login.key.as_bytes(), expected) {
        tracing::warn!(peer = ?req.peer_addr(), "console login with a wrong key");
        return Err(Error::Unauthorized);
    }
    let value = state.console.issue(state.clock.now_ms());
    Ok(HttpResponse::NoContent()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::SET_COOKIE,
            session_cookie(&state, &value, SESSION_TTL.as_secs()),
        ))
        .finish())
}

/// `POST /console/logout` (session and CSRF token): `204` and an expired cookie.
async fn logout(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let nonce = session(&req, &state).ok_or(Error::Unauthorized)?;
    if !csrf_ok(&req, &state, &nonce) {
        return Err(csrf_error());
    }
    Ok(HttpResponse::NoContent()
        .insert_header((header::SET_COOKIE, session_cookie(&state, "", 0)))
        .finish())
}

/// `GET /console/assets/{name}`: public (they hold no data), cached for an hour.
async fn asset(name: web::Path<String>) -> Result<HttpResponse, Error> {
    let (body, content_type) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "login.js" => (LOGIN_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "icon.svg" => (ICON_SVG, "image/svg+xml"),
        other => {
            return Err(Error::NotFound {
                message: format!("unknown console asset {other:?}"),
            })
        }
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "private, max-age=3600"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body))
}

// ---------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------

/// Cumulative histogram of one route: `(upper bound, cumulative count)` and the total.
#[derive(Clone, Debug, Default)]
struct Hist {
    buckets: Vec<(f64, u64)>,
    count: u64,
}

impl Hist {
    fn add(&mut self, h: &prometheus::proto::Histogram) {
        if self.buckets.is_empty() {
            self.buckets = h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), 0))
                .collect();
        }
        for (mine, b) in self.buckets.iter_mut().zip(h.get_bucket()) {
            mine.1 += b.cumulative_count();
        }
        self.count += h.get_sample_count();
    }

    /// The `q` quantile of the requests between `earlier` and `self`, in milliseconds
    /// (linear interpolation within the bucket, as Prometheus' `histogram_quantile`).
    fn quantile_since(&self, earlier: Option<&Hist>, q: f64) -> Option<f64> {
        let before = |i: usize| earlier.and_then(|e| e.buckets.get(i)).map_or(0, |b| b.1);
        let total = self.count - earlier.map_or(0, |e| e.count.min(self.count));
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for (i, &(bound, cum)) in self.buckets.iter().enumerate() {
            let cum = cum.saturating_sub(before(i));
            if cum as f64 >= rank {
                let in_bucket = (cum - below) as f64;
                let frac = if in_bucket > 0.0 {
                    (rank - below as f64) / in_bucket
                } else {
                    0.0
                };
                return Some((lower + (bound - lower) * frac) * 1000.0);
            }
            lower = bound;
            below = cum;
        }
        // Beyond the last finite bucket: report its bound.
        Some(lower * 1000.0)
    }
}

/// One experiment variant's cumulative counts.
#[derive(Clone, Debug)]
struct AbCounts {
    variant: String,
    impressions: u64,
    clicks: u64,
    conversions: u64,
}

/// The live figures at one moment.
#[derive(Clone, Debug, Default)]
struct Sample {
    t_ms: i64,
    users: f64,
    items: f64,
    interactions: f64,
    events_accepted: f64,
    cache_hits: f64,
    cache_misses: f64,
    shed: f64,
    inflight: f64,
    rss_bytes: f64,
    /// Per `(route, method)`, `/v1/` routes only, summed over statuses.
    routes: BTreeMap<(String, String), Hist>,
    churn_tiers: BTreeMap<String, f64>,
    /// The running experiment's counts (at most one experiment runs at a time).
    experiment: Option<(String, Vec<AbCounts>)>,
}

/// Metric values by name and label set, read from the server's registry.
struct Gathered(Vec<prometheus::proto::MetricFamily>);

impl Gathered {
    fn read(state: &AppState) -> Gathered {
        if let Some(rss) = crate::metrics::resident_memory_bytes() {
            state
                .http_metrics
                .resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        Gathered(state.registry.gather())
    }

    fn family(&self, name: &str) -> &[prometheus::proto::Metric] {
        self.0
            .iter()
            .find(|f| f.name() == name)
            .map_or(&[], |f| f.get_metric())
    }

    fn value(m: &prometheus::proto::Metric) -> f64 {
        // A metric holds one kind; the other fields are zero.
        m.get_counter().get_value() + m.get_gauge().get_value()
    }

    fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
        m.get_label()
            .iter()
            .find(|l| l.name() == name)
            .map_or("", |l| l.value())
    }

    /// Sum over every label set, or 0 (`+ 0.0`: an empty float sum is −0).
    fn sum(&self, name: &str) -> f64 {
        self.family(name).iter().map(Self::value).sum::<f64>() + 0.0
    }

    /// Sum over the label sets where `label` is `value`.
    fn sum_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.family(name)
            .iter()
            .filter(|m| Self::label(m, label) == value)
            .map(Self::value)
            .sum::<f64>()
            + 0.0
    }

    /// `label value → value` for a one-label family.
    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for m in self.family(name) {
            *out.entry(Self::label(m, label).to_string()).or_insert(0.0) += Self::value(m);
        }
        out
    }

    fn routes(&self) -> BTreeMap<(String, String), Hist> {
        let mut out: BTreeMap<(String, String), Hist> = BTreeMap::new();
        for m in self.family("momentum_http_request_duration_seconds") {
            let route = Self::label(m, "route");
            if !route.starts_with("/v1/") {
                continue;
            }
            out.entry((route.to_string(), Self::label(m, "method").to_string()))
                .or_default()
                .add(m.get_histogram());
        }
        out
    }
}

fn take_sample(state: &AppState) -> Sample {
    sample_of(state, &Gathered::read(state))
}

/// The sample that the gathered metrics `g` (and the experiments registry) describe.
fn sample_of(state: &AppState, g: &Gathered) -> Sample {
    let experiment = state
        .experiments
        .list()
        .into_iter()
        .find(|e| matches!(e.status, crate::experiments::Status::Running))
        .and_then(|e| state.experiments.results(&e.id).ok())
        .map(|r| {
            let counts = r
                .variants
                .iter()
                .map(|v| AbCounts {
                    variant: v.name.clone(),
                    impressions: v.impressions,
                    clicks: v.clicks,
                    conversions: v.conversions,
                })
                .collect();
            (r.experiment, counts)
        });
    Sample {
        t_ms: now_ms(),
        users: g.sum("momentum_users"),
        items: g.sum("momentum_items"),
        interactions: g.sum("momentum_interactions"),
        events_accepted: g.sum("momentum_events_accepted_total"),
        cache_hits: g.sum_where(
            "momentum_recommendation_cache_requests_total",
            "result",
            "hit",
        ),
        cache_misses: g.sum_where(
            "momentum_recommendation_cache_requests_total",
            "result",
            "miss",
        ),
        shed: g.sum("momentum_http_shed_total"),
        inflight: state.load.inflight.load(Ordering::Acquire) as f64,
        rss_bytes: g.sum("momentum_process_resident_memory_bytes"),
        routes: g.routes(),
        churn_tiers: g.by_label("momentum_churn_tier_users", "tier"),
        experiment,
    }
}

/// Starts sampling the live figures into the console's ring (one call in `crate::start`).
pub fn start(state: &Arc<AppState>) {
    let weak: Weak<AppState> = Arc::downgrade(state);
    actix::spawn(async move {
        let mut tick = actix_web::rt::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { break };
            let sample = take_sample(&state);
            state.console.push(sample);
        }
    });
}

const REC_ROUTE: (&str, &str) = ("/v1/users/{id}/recommendations", "GET");
const INGEST_ROUTE: (&str, &str) = ("/v1/events", "POST");

fn route_key((route, method): (&str, &str)) -> (String, String) {
    (route.to_string(), method.to_string())
}

fn rate(delta: f64, secs: f64) -> Option<f64> {
    (secs > 0.0).then(|| (delta / secs).max(0.0))
}

fn ratio(hits: f64, misses: f64) -> Option<f64> {
    (hits + misses > 0.0).then(|| hits / (hits + misses))
}

/// A point of the overview's series: what happened between `a` and `b`.
fn point(a: &Sample, b: &Sample) -> Value {
    let secs = (b.t_ms - a.t_ms) as f64 / 1000.0;
    let q = |key: (&str, &str), q: f64| {
        let key = route_key(key);
        b.routes
            .get(&key)
            .and_then(|h| h.quantile_since(a.routes.get(&key), q))
    };
    json!({
        "t_ms": b.t_ms,
        "users": b.users,
        "items": b.items,
        "interactions": b.interactions,
        "inflight": b.inflight,
        "rss_bytes": b.rss_bytes,
        "events_per_sec": rate(b.events_accepted - a.events_accepted, secs),
        "shed_per_sec": rate(b.shed - a.shed, secs),
        "cache_hit_rate": ratio(b.cache_hits - a.cache_hits, b.cache_misses - a.cache_misses),
        "recommend_p50_ms": q(REC_ROUTE, 0.5),
        "recommend_p99_ms": q(REC_ROUTE, 0.99),
        "ingest_p50_ms": q(INGEST_ROUTE, 0.5),
        "ingest_p99_ms": q(INGEST_ROUTE, 0.99),
        "churn_tiers": b.churn_tiers,
    })
}

/// `GET /console/api/overview` (admin): the live figures now, the sampled series, latency per
/// route over the sampled window, the background jobs and the store.
async fn overview(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    // Devices that left the activity window drop out of the version gauge before the read.
    state.fleet.refresh(state.clock.now_ms());
    let g = Gathered::read(&state);
    let now = sample_of(&state, &g);
    let samples: Vec<Sample> = state.console.samples.lock().iter().cloned().collect();
    let series: Vec<Value> = samples.windows(2).map(|w| point(&w[0], &w[1])).collect();
    // The window: from the oldest sample to now (everything since the start before the first).
    let oldest = samples.first();
    let window_secs = oldest.map_or(0.0, |s| (now.t_ms - s.t_ms) as f64 / 1000.0);
    let routes: Vec<Value> = now
        .routes
        .iter()
        .filter_map(|(key, hist)| {
            let before = oldest.and_then(|s| s.routes.get(key));
            let count = hist.count - before.map_or(0, |b| b.count.min(hist.count));
            (count > 0).then(|| {
                json!({
                    "route": key.0,
                    "method": key.1,
                    "requests": count,
                    "p50_ms": hist.quantile_since(before, 0.5),
                    "p99_ms": hist.quantile_since(before, 0.99),
                })
            })
        })
        .collect();
    let last = samples.last();
    let secs = last.map_or(0.0, |s| (now.t_ms - s.t_ms) as f64 / 1000.0);
    let recent = |f: fn(&Sample) -> f64| last.and_then(|s| rate(f(&now) - f(s), secs));
    let (trainer, churn) = state.analytics.statuses().await;
    let snapshot_last = g.sum("momentum_snapshot_last_success_timestamp_seconds");
    let snapshot_last_ms = (snapshot_last > 0.0).then_some((snapshot_last * 1000.0) as i64);
    let snapshot_every = state.settings.snapshot.interval_secs;
    let snapshot_next_ms = (snapshot_every > 0).then(|| {
        snapshot_last_ms.unwrap_or(state.console.started_ms) + snapshot_every as i64 * 1000
    });
    let store = &state.settings.store;
    let downloads: Vec<Value> = g
        .family("momentum_model_downloads_total")
        .iter()
        .map(|m| {
            json!({
                "model": Gathered::label(m, "model"),
                "version": Gathered::label(m, "version"),
                "result": Gathered::label(m, "result"),
                "count": Gathered::value(m),
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "now_ms": now.t_ms,
            "started_ms": state.console.started_ms,
            "ready": state.ready.load(Ordering::Acquire),
            "users": now.users,
            "items": now.items,
            "interactions": now.interactions,
            "events_accepted_total": now.events_accepted,
            "events_per_sec": recent(|s| s.events_accepted),
            "inflight": now.inflight,
            "max_inflight": state.settings.server.max_inflight_requests,
            "shed_total": now.shed,
            "shed_per_sec": recent(|s| s.shed),
            "rss_bytes": now.rss_bytes,
            "cache": {
                "hits": now.cache_hits,
                "misses": now.cache_misses,
                "hit_rate": ratio(now.cache_hits, now.cache_misses),
                "window_hit_rate": oldest.and_then(|s| ratio(
                    now.cache_hits - s.cache_hits, now.cache_misses - s.cache_misses)),
            },
            "window_secs": window_secs,
            "sample_every_secs": SAMPLE_EVERY.as_secs(),
            "series": series,
            "routes": routes,
            "store": {
                "kind": format!("{:?}", store.kind).to_lowercase(),
                "durability": format!("{:?}", store.durability).to_lowercase(),
                "unflushed_events": g.sum("momentum_log_unflushed_events"),
                "snapshot_last_success_ms": snapshot_last_ms,
                "snapshot_size_bytes": g.sum("momentum_snapshot_size_bytes"),
                "snapshot_covers_seq": g.sum("momentum_snapshot_covers_seq"),
                "snapshot_failures": g.sum("momentum_snapshot_failures_total"),
            },
            "jobs": [
                {"name": "snapshot", "interval_seconds": snapshot_every,
                 "last_finished_ms": snapshot_last_ms, "next_due_ms": snapshot_next_ms},
                {"name": "training", "status": trainer},
                {"name": "churn_scoring", "status": churn},
            ],
            "churn_tiers": now.churn_tiers,
            "interventions_total": g.sum("momentum_interventions_total"),
            "drift_psi": drift_psi(&state),
            "model_accuracy": g.by_label("momentum_model_accuracy", "model"),
            "model_online_accuracy": g.by_label("momentum_model_online_accuracy", "model"),
            "model_online_outcomes": g.by_label("momentum_model_online_outcomes", "model"),
            "device_versions": g.by_label("momentum_model_version_active", "version"),
            "model_downloads": downloads,
        })))
}

/// PSI per feature now (training window vs the last 24 hours of served vectors), computed like
/// `momentum_feature_drift_psi`; empty below `models.drift_min_samples` vectors.
fn drift_psi(state: &AppState) -> BTreeMap<&'static str, f64> {
    state
        .analytics
        .drift_now()
        .map(|values| {
            momentum_models::features::FEATURE_NAMES
                .iter()
                .copied()
                .zip(values)
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /console/api/experiments/{id}/series` (admin): the experiment's cumulative counts per
/// variant over time, as [`Console::experiment_points`] keeps them.
async fn experiment_series(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    state.experiments.get(&id)?;
    let points = state.console.experiment_points(&id);
    Ok(HttpResponse::Ok().json(json!({"experiment": id.as_str(), "points": points})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Top {
    n: Option<usize>,
}

/// `GET /console/api/items/{id}/users?n=` (admin): the `n` (default 20, at most 100) users with
/// the most interaction weight on the item, heaviest first (ties by user id), and how many
/// users engage with it in all.
async fn item_users(
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<Top>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("item id", &id)?;
    let n = query.n.unwrap_or(20);
    if n == 0 || n > 100 {
        return Err(Error::bad("invalid_query", "n must be in 1..=100"));
    }
    let index = state.engine.index();
    let unknown = || Error::UnknownItem { id: id.to_string() };
    let item = index.items.get(&id).ok_or_else(unknown)?;
    if !index.is_live_item(item) {
        return Err(unknown());
    }
    let mut users: Vec<(Arc<str>, f32)> = index
        .item_table
        .read()
        .get(item)
        .column
        .entries()
        .iter()
        .filter(|(_, w)| *w > 0.0)
        .filter_map(|&(u, w)| Some((state.engine.user_name(u)?, w)))
        .collect();
    let total = users.len();
    users.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    users.truncate(n);
    let users: Vec<Value> = users
        .iter()
        .map(|(u, w)| json!({"user_id": &**u, "weight": w}))
        .collect();
    Ok(HttpResponse::Ok()
        .json(json!({"item_id": id.as_str(), "total_users": total, "users": users})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    days: Option<usize>,
}

/// The most scoring days `GET /console/api/churn/history` returns.
const MAX_HISTORY_DAYS: usize = 366;

/// `GET /console/api/churn/history?days=` (admin): users per churn tier on each of the newest
/// `days` (default 30, 1..=366) scoring days that have scores in the store, oldest first.
async fn churn_history(
    req: HttpRequest,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    let days = query.days.unwrap_or(30);
    if days == 0 || days > MAX_HISTORY_DAYS {
        return Err(Error::bad(
            "invalid_query",
            format!("days must be in 1..={MAX_HISTORY_DAYS}"),
        ));
    }
    let history = state.analytics.churn_tier_history(days).await?;
    Ok(HttpResponse::Ok().json(json!({"days": history})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment_sample(t_ms: i64, impressions: u64) -> Sample {
        Sample {
            t_ms,
            experiment: Some((
                "exp".to_string(),
                vec![AbCounts {
                    variant: "control".into(),
                    impressions,
                    clicks: impressions / 10,
                    conversions: 0,
                }],
            )),
            ..Sample::default()
        }
    }

    #[test]
    fn experiment_series_reach_back_beyond_the_fifteen_minute_ring() {
        let c = Console::new();
        let start = 1_700_000_000_000i64;
        let step = SAMPLE_EVERY.as_millis() as i64;
        // Two hours of samples every 5 s: the ring keeps the last 15 minutes.
        let n = 2 * 3600 * 1000 / step;
        for i in 0..n {
            c.push(experiment_sample(start + i * step, i as u64));
        }
        let points = c.experiment_points("exp");
        let times: Vec<i64> = points
            .iter()
            .map(|p| p["t_ms"].as_i64().expect("t"))
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first");
        assert_eq!(times[0], start, "the history starts with the first sample");
        let fine = SAMPLES;
        let coarse = times.len() - fine;
        // One point every 5 minutes before the ring, then every sample of the ring.
        assert_eq!(
            coarse as i64,
            (n * step - SAMPLES as i64 * step) / HISTORY_EVERY.as_millis() as i64
        );
        assert!(times[..coarse]
            .windows(2)
            .all(|w| w[1] - w[0] == HISTORY_EVERY.as_millis() as i64));
        assert_eq!(
            points.last().expect("point")["variants"][0]["impressions"],
            (n - 1) as u64
        );
        assert!(c.experiment_points("other").is_empty());
        // The history is bounded.
        for i in n..n + (HISTORY_POINTS as i64 + 10) * 60 {
            c.push(experiment_sample(start + i * step, i as u64));
        }
        assert_eq!(c.history.lock().len(), HISTORY_POINTS);
    }

    #[test]
    fn sessions_verify_only_untampered_unexpired_cookies_of_this_server() {
        let c = Console::new();
        let now = 1_700_000_000_000;
        let v = c.issue(now);
        let nonce = c.verify(&v, now).expect("valid");
        assert_eq!(nonce.len(), 32);
        // Expired, tampered expiry, tampered mac, another server's cookie.
        assert!(c.verify(&v, now + SESSION_TTL.as_millis() as i64).is_none());
        let (expiry, rest) = v.split_once('.').expect("dot");
        let later = format!("{}.{rest}", expiry.parse::<i64>().expect("num") + 1);
        assert!(c.verify(&later, now).is_none());
        let mut bad = v.clone();
        bad.pop();
        bad.push(if v.ends_with('0') { '1' } else { '0' });
        assert!(c.verify(&bad, now).is_none());
        assert!(Console::new().verify(&v, now).is_none());
        assert_ne!(c.csrf(&nonce), c.csrf("0".repeat(32).as_str()));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let plain = cookie_header("v", 60, false);
        assert_eq!(
            plain,
            "momentum_console=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        assert_eq!(cookie_header("v", 60, true), format!("{plain}; Secure"));
    }

    #[test]
    fn hmac_sha256_of_one_part_is_standard() {
        // Python: hmac.new(b"k"*32, (5).to_bytes(8,"big") + b"hello", "sha256").hexdigest()
        let got = hex(&hmac_sha256(&[b'k'; 32], &[b"hello"]));
        assert_eq!(
            got,
            "d74b9132249d673fa3dcb674e969bbe8ee6ed2609a4c20dbb1b51c365f1fb3c7"
        );
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Hist {
            buckets: vec![(0.001, 50), (0.01, 99), (0.1, 100)],
            count: 100,
        };
        assert_eq!(h.quantile_since(None, 0.5), Some(1.0));
        let p99 = h.quantile_since(None, 0.99).expect("some");
        assert!((p99 - 10.0).abs() < 1e-9, "{p99}");
        let earlier = Hist {
            buckets: vec![(0.001, 50), (0.01, 50), (0.1, 50)],
            count: 50,
        };
        // Only the 50 later requests, all in (1 ms, 10 ms].
        let p50 = h.quantile_since(Some(&earlier), 0.5).expect("some");
        assert!(p50 > 1.0 && p50 < 10.0, "{p50}");
        assert_eq!(h.quantile_since(Some(&h), 0.5), None);
    }
}
