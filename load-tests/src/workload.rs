//! The mixed workload of `mixed`, `soak` and `overload`: which request number `k` of a run is
//! (recommendations, an event batch, a success or a churn prediction), for which user and items,
//! and the HTTP request it becomes. Every choice is a stateless hash of the seed and `k`, so the
//! same seed gives the same request sequence whatever the timing, the number of connections or
//! which task sends what.

use std::path::PathBuf;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, Request};
use serde::Serialize;

use crate::client::Target;
use crate::data;
use crate::error::LoadError;

/// What one request of the mix asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `GET /v1/users/{id}/recommendations?n=`.
    Recommend,
    /// `POST /v1/events` with a small batch.
    Events,
    /// `GET /v1/users/{id}/predictions/success?goal_id=`.
    Success,
    /// `GET /v1/users/{id}/churn`.
    Churn,
}

impl RequestKind {
    pub const ALL: [RequestKind; 4] = [
        RequestKind::Recommend,
        RequestKind::Events,
        RequestKind::Success,
        RequestKind::Churn,
    ];

    /// Route template the measurements are recorded under (the report's `routes` keys).
    pub fn route(self) -> &'static str {
        match self {
            RequestKind::Recommend => "GET /v1/users/{id}/recommendations",
            RequestKind::Events => "POST /v1/events",
            RequestKind::Success => "GET /v1/users/{id}/predictions/success",
            RequestKind::Churn => "GET /v1/users/{id}/churn",
        }
    }

    /// Name in `--mix`.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Recommend => "recommend",
            RequestKind::Events => "events",
            RequestKind::Success => "success",
            RequestKind::Churn => "churn",
        }
    }
}

/// Relative weights of the request kinds (percentages by convention; normalised by their sum).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mix {
    pub recommend: f64,
    pub events: f64,
    pub success: f64,
    pub churn: f64,
}

impl Default for Mix {
    /// 70 % recommendations, 25 % event batches, 5 % predictions split evenly.
    fn default() -> Self {
        Self {
            recommend: 70.0,
            events: 25.0,
            success: 2.5,
            churn: 2.5,
        }
    }
}

impl Mix {
    /// Recommendations only (`overload --route recommend`).
    pub fn recommend_only() -> Self {
        Self {
            recommend: 100.0,
            events: 0.0,
            success: 0.0,
            churn: 0.0,
        }
    }

    /// `recommend=70,events=25,success=2.5,churn=2.5`; kinds left out weigh 0.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut mix = Self {
            recommend: 0.0,
            events: 0.0,
            success: 0.0,
            churn: 0.0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not kind=weight"))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| format!("weight of {name:?} must be a number >= 0"))?;
            let slot = match name.trim() {
                "recommend" => &mut mix.recommend,
                "events" => &mut mix.events,
                "success" => &mut mix.success,
                "churn" => &mut mix.churn,
                other => {
                    return Err(format!(
                        "unknown kind {other:?} (recommend, events, success, churn)"
                    ))
                }
            };
            *slot = weight;
        }
        if mix.total() <= 0.0 {
            return Err("the weights add up to 0".to_owned());
        }
        Ok(mix)
    }

    fn weight(&self, kind: RequestKind) -> f64 {
        match kind {
            RequestKind::Recommend => self.recommend,
            RequestKind::Events => self.events,
            RequestKind::Success => self.success,
            RequestKind::Churn => self.churn,
        }
    }

    fn total(&self) -> f64 {
        RequestKind::ALL.iter().map(|&k| self.weight(k)).sum()
    }

    /// The kind whose cumulative share covers `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> RequestKind {
        let mut threshold = 0.0;
        let total = self.total();
        let mut last = RequestKind::Recommend;
        for kind in RequestKind::ALL {
            let weight = self.weight(kind);
            if weight <= 0.0 {
                continue;
            }
            threshold += weight / total;
            last = kind;
            if u < threshold {
                return kind;
            }
        }
        // Rounding left `u` just above the last threshold.
        last
    }
}

/// Event kinds of the generated batches and their weights (a browsing-heavy goal app).
const EVENT_KINDS: [(&str, u64); 6] = [
    ("view", 40),
    ("click", 25),
    ("checkin", 20),
    ("like", 5),
    ("start", 5),
    ("complete", 5),
];

/// Where user and item ids come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdSource {
    /// Distinct `user_id`s and `item_id`s of a ratings CSV.
    Ratings(PathBuf),
    /// Decimal ids `1..=users` and `1..=items`.
    Generated { users: u64, items: u64 },
}

impl IdSource {
    /// Users and items, each distinct, in a stable order.
    pub fn load(&self) -> Result<(Vec<String>, Vec<String>), LoadError> {
        match self {
            Self::Ratings(path) => {
                let ratings = data::read_ratings(path)?;
                Ok((
                    data::distinct_users(&ratings),
                    data::distinct_items(&ratings),
                ))
            }
            Self::Generated { users, items } => Ok((
                (1..=*users).map(|id| id.to_string()).collect(),
                (1..=*items).map(|id| id.to_string()).collect(),
            )),
        }
    }
}

/// Settings of the request mix (part of the scenarios' configs and so of the report).
#[derive(Debug, Clone, Serialize)]
pub struct MixOptions {
    pub ids: IdSource,
    pub mix: Mix,
    /// `n` of the recommendation requests.
    pub n: u32,
    /// Events per `POST /v1/events`.
    pub event_batch: usize,
    /// Event ids are `{id_prefix}-{k}-{j}` (request `k`, event `j`).
    pub id_prefix: String,
    /// Seed of every choice.
    pub seed: u64,
}

/// One event of a generated batch, as `POST /v1/events` expects it (no `ts`: the server's clock).
#[derive(Debug, Serialize)]
struct MixEvent<'a> {
    event_id: String,
    user_id: &'a str,
    item_id: &'a str,
    kind: &'static str,
}

/// The loaded workload: ids, target and options; builds request `k` on demand.
#[derive(Debug)]
pub struct Workload {
    target: Target,
    users: Vec<String>,
    items: Vec<String>,
    options: MixOptions,
}

/// Independent random streams of one request number.
const STREAM_KIND: u64 = 0;
const STREAM_USER: u64 = 1;
const STREAM_ITEM: u64 = 2;
const STREAM_EVENT_ITEM: u64 = 1_000;
const STREAM_EVENT_KIND: u64 = 2_000;

impl Workload {
    /// Loads the ids; fails when there are none.
    pub fn load(target: Target, options: MixOptions) -> Result<Self, LoadError> {
        let (users, items) = options.ids.load()?;
        Self::new(target, users, items, options)
    }

    pub fn new(
        target: Target,
        users: Vec<String>,
        items: Vec<String>,
        options: MixOptions,
    ) -> Result<Self, LoadError> {
        if users.is_empty() || items.is_empty() {
            return Err(LoadError::InvalidConfig {
                message: "the workload needs at least one user and one item".to_owned(),
            });
        }
        let workload = Self {
            target,
            users,
            items,
            options,
        };
        // Every URL shape once, so a bad target fails before the clock starts.
        for kind in RequestKind::ALL {
            workload.build(kind, 0)?;
        }
        Ok(workload)
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn items(&self) -> usize {
        self.items.len()
    }

    /// Kind of request `k`.
    pub fn kind(&self, k: u64) -> RequestKind {
        self.options
            .mix
            .pick(unit(hash(self.options.seed, k, STREAM_KIND)))
    }

    fn user(&self, k: u64) -> &str {
        &self.users[index(hash(self.options.seed, k, STREAM_USER), self.users.len())]
    }

    fn item(&self, k: u64, stream: u64) -> &str {
        &self.items[index(hash(self.options.seed, k, stream), self.items.len())]
    }

    /// Request `k`: its kind and the ready HTTP request.
    pub fn request(&self, k: u64) -> Result<(RequestKind, Request), LoadError> {
        let kind = self.kind(k);
        Ok((kind, self.build(kind, k)?))
    }

    fn build(&self, kind: RequestKind, k: u64) -> Result<Request, LoadError> {
        let user = self.user(k);
        let url = match kind {
            RequestKind::Recommend => self.target.recommendations_url(user, self.options.n)?,
            RequestKind::Events => self.target.events_url()?,
            RequestKind::Success => self
                .target
                .success_prediction_url(user, self.item(k, STREAM_ITEM))?,
            RequestKind::Churn => self.target.churn_url(user)?,
        };
        if kind != RequestKind::Events {
            return Ok(Request::new(Method::GET, url));
        }
        let mut request = Request::new(Method::POST, url);
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        *request.body_mut() = Some(self.events_body(k)?.into());
        Ok(request)
    }

    /// The event batch of request `k`: one user's session of `event_batch` events on items
    /// drawn uniformly, kinds drawn by their weights (`EVENT_KINDS`), ids `{prefix}-{k}-{j}`.
    pub fn events_body(&self, k: u64) -> Result<Vec<u8>, LoadError> {
        let user = self.user(k);
        let events: Vec<MixEvent<'_>> = (0..self.options.event_batch as u64)
            .map(|j| MixEvent {
                event_id: format!("{}-{k}-{j}", self.options.id_prefix),
                user_id: user,
                item_id: self.item(k, STREAM_EVENT_ITEM + j),
                kind: event_kind(hash(self.options.seed, k, STREAM_EVENT_KIND + j)),
            })
            .collect();
        serde_json::to_vec(&events).map_err(|source| LoadError::Serialize {
            what: "event batch",
            source,
        })
    }

    /// Events in each `POST /v1/events` body.
    pub fn event_batch(&self) -> usize {
        self.options.event_batch
    }
}

fn event_kind(h: u64) -> &'static str {
    let total: u64 = EVENT_KINDS.iter().map(|(_, w)| w).sum();
    let mut pick = h % total;
    for (kind, weight) in EVENT_KINDS {
        if pick < weight {
            return kind;
        }
        pick -= weight;
    }
    EVENT_KINDS[0].0
}

/// splitmix64 of the seed, the request number and a stream number.
pub fn hash(seed: u64, k: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash as a uniform number in `[0, 1)` (its top 53 bits).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn index(h: u64, len: usize) -> usize {
    // The remainder is below `len`, so it fits back into usize.
    (h % len.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn options(seed: u64) -> MixOptions {
        MixOptions {
            ids: IdSource::Generated {
                users: 100,
                items: 50,
            },
            mix: Mix::default(),
            n: 10,
            event_batch: 10,
            id_prefix: "t".to_owned(),
            seed,
        }
    }

    fn workload(seed: u64) -> Workload {
        let target = Target::parse("http://h:1").unwrap();
        let options = options(seed);
        let (users, items) = options.ids.load().unwrap();
        Workload::new(target, users, items, options).unwrap()
    }

    #[test]
    fn mix_proportions_hold_over_100k_draws() {
        let w = workload(42);
        let draws = 100_000u64;
        let mut counts: BTreeMap<RequestKind, u64> = BTreeMap::new();
        for k in 0..draws {
            *counts.entry(w.kind(k)).or_default() += 1;
        }
        let share = |kind| counts.get(&kind).copied().unwrap_or(0) as f64 / draws as f64;
        for (kind, want) in [
            (RequestKind::Recommend, 0.70),
            (RequestKind::Events, 0.25),
            (RequestKind::Success, 0.025),
            (RequestKind::Churn, 0.025),
        ] {
            assert!(
                (share(kind) - want).abs() < 0.01,
                "{kind:?}: {} vs {want}",
                share(kind)
            );
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let render = |w: &Workload| -> Vec<String> {
            (0..200)
                .map(|k| {
                    let (_, r) = w.request(k).unwrap();
                    let body = r
                        .body()
                        .and_then(|b| b.as_bytes())
                        .map(|b| String::from_utf8_lossy(b).to_string())
                        .unwrap_or_default();
                    format!("{} {} {body}", r.method(), r.url())
                })
                .collect()
        };
        let a = render(&workload(7));
        assert_eq!(a, render(&workload(7)));
        assert_ne!(a, render(&workload(8)));
        assert!(a.iter().any(|r| r.starts_with("POST http://h:1/v1/events")));
        assert!(a
            .iter()
            .any(|r| r.contains("/predictions/success?goal_id=")));
        assert!(a.iter().any(|r| r.ends_with("/churn ")));
        assert!(a.iter().any(|r| r.ends_with("/recommendations?n=10 ")));
    }

    #[test]
    fn event_batches_are_valid_and_fresh() {
        let w = workload(1);
        let k = (0..100)
            .find(|&k| w.kind(k) == RequestKind::Events)
            .unwrap();
        let events: Vec<serde_json::Value> =
            serde_json::from_slice(&w.events_body(k).unwrap()).unwrap();
        assert_eq!(events.len(), 10);
        let user = events[0]["user_id"].as_str().unwrap();
        for (j, e) in events.iter().enumerate() {
            assert_eq!(e["event_id"], format!("t-{k}-{j}"));
            assert_eq!(e["user_id"], user, "one user per batch");
            let item: u64 = e["item_id"].as_str().unwrap().parse().unwrap();
            assert!((1..=50).contains(&item));
            assert!(EVENT_KINDS.iter().any(|(kind, _)| e["kind"] == *kind));
            assert!(e.get("ts").is_none() && e.get("value").is_none());
        }
        // Kinds follow their weights.
        let views = (0..10_000)
            .filter(|&j| event_kind(hash(1, 0, j)) == "view")
            .count();
        assert!((3_700..4_300).contains(&views), "{views}");
    }

    #[test]
    fn mix_flag_parses_and_rejects() {
        assert_eq!(
            Mix::parse("recommend=70,events=25,success=2.5,churn=2.5").unwrap(),
            Mix::default()
        );
        let only = Mix::parse("recommend=1").unwrap();
        assert_eq!((only.recommend, only.events, only.churn), (1.0, 0.0, 0.0));
        assert!((0..1000).all(|i| only.pick(i as f64 / 1000.0) == RequestKind::Recommend));
        assert_eq!(only.pick(0.999_999_999_999), RequestKind::Recommend);
        let churn = Mix::parse("events=0,churn=3").unwrap();
        assert_eq!(churn.pick(0.0), RequestKind::Churn);
        assert!(Mix::parse("recommend=0").is_err());
        assert!(Mix::parse("search=1").is_err());
        assert!(Mix::parse("recommend=-1").is_err());
        assert!(Mix::parse("recommend").is_err());
    }
}
