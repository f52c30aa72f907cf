//! Command line of `momentum-load`: one subcommand per scenario, flags validated into the
//! scenario's `Config` (so scenarios never see raw strings), and [`run`], which executes a
//! scenario, prints its report and writes it with its chart (recording the command line in it);
//! plus `compare`, `chart` and `markdown`, which read reports back. Scripts depend on these
//! flags: keep them stable.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::chart;
use crate::client::{ClientOptions, Target};
use crate::compare;
use crate::data::MAX_BATCH;
use crate::error::LoadError;
use crate::markdown::{self, MarkdownOptions};
use crate::report::{CheckStatus, Report};
use crate::scenario::ingest::IngestConfig;
use crate::scenario::mixed::MixedConfig;
use crate::scenario::overload::{self, OverloadConfig};
use crate::scenario::recommend::{RecommendConfig, UserSource};
use crate::scenario::soak::{self, SoakConfig, MAX_SOAK};
use crate::scenario::{self, Stop};
use crate::simulate::post::PostConfig;
use crate::simulate::{self as sim, SimConfig, SimulateConfig};
use crate::workload::{IdSource, Mix, MixOptions};

/// Longest `mixed` run and longest `overload` plan: the per-second series grow with it.
const MAX_RUN: Duration = MAX_SOAK;
/// Most outstanding requests an open-loop run may allow (one connection each at worst).
const MAX_INFLIGHT: usize = 100_000;
/// Shortest memory sampling interval.
const MIN_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Load generator for the Momentum server (talks HTTP only).
#[derive(Debug, Parser)]
#[command(name = "momentum-load", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The command line as started, program first (set by `main`, not a flag): every report
    /// records it as `command` so the run can be repeated. Empty: not recorded.
    #[arg(skip)]
    pub argv: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a ratings CSV through POST /v1/events as fast as the server accepts it.
    Ingest(IngestArgs),
    /// Ask for recommendations, open loop at --rate or closed loop without it.
    Recommend(RecommendArgs),
    /// Simulate a goal-app population (deterministic by seed): write CSV and/or post the events.
    Simulate(SimulateArgs),
    /// The production mix (70 % recommendations, 25 % event batches, 5 % predictions), open
    /// loop at --rate or closed loop without it.
    Mixed(MixedArgs),
    /// The mix at a modest fixed rate for a bounded duration, sampling latency and server memory
    /// to show drift.
    Soak(SoakArgs),
    /// Warm-up at --rate, --factor × rate, recovery at --rate: proves load shedding (--check
    /// makes violations fail the run with status 3).
    Overload(OverloadArgs),
    /// Two reports side by side per route, with ratios B/A.
    Compare(CompareArgs),
    /// (Re)draw the SVG chart of a report.
    Chart(ChartArgs),
    /// Render reports as one Markdown fragment (a README's performance section): per report the
    /// settings, the command, the route table, the scenario's own figures and its chart.
    Markdown(MarkdownArgs),
}

/// Flags every scenario has.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Whole-request timeout (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Wait this long for GET /readyz to answer 200 before starting; 0 skips the check.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
}

impl CommonArgs {
    fn client_options(&self) -> Result<ClientOptions, LoadError> {
        if self.timeout.is_zero() {
            return Err(invalid("--timeout must be positive"));
        }
        Ok(ClientOptions {
            timeout: self.timeout,
            ready_timeout: self.ready_timeout,
        })
    }
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Ratings CSV: user_id,item_id,rating,timestamp (unix seconds).
    #[arg(long, value_name = "PATH")]
    pub ratings: PathBuf,
    /// Events per request (at most 10000).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent connections, each sending its next batch when the previous one is answered.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Send only the first N events in time order.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Retries of a batch answered 503, each after its Retry-After.
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,
    /// Prefix of the deterministic event ids ({prefix}-{row}); change it to avoid duplicates.
    #[arg(long, default_value = "ml")]
    pub id_prefix: String,
    /// Shift all timestamps so the newest event is now.
    #[arg(long)]
    pub shift_to_now: bool,
}

impl IngestArgs {
    pub fn into_config(self) -> Result<IngestConfig, LoadError> {
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(invalid(format!("--batch must be 1..={MAX_BATCH}")));
        }
        if self.connections == 0 {
            return Err(invalid("--connections must be at least 1"));
        }
        if self.limit == Some(0) {
            return Err(invalid("--limit must be at least 1"));
        }
        Ok(IngestConfig {
            target: Target::parse(&self.common.target)?,
            client: self.common.client_options()?,
            ratings: self.ratings,
            batch: self.batch,
            connections: self.connections,
            limit: self.limit,
            max_retries: self.max_retries,
            id_prefix: self.id_prefix,
            shift_to_now: self.shift_to_now,
        })
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("user_source").required(true).args(["users", "user_count"])))]
pub struct RecommendArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Users to ask for: a ratings CSV (its distinct user_id column) or a range like 1..=943.
    #[arg(long, value_name = "PATH|A..=B")]
    pub users: Option<String>,
    /// Ask for users 1..=N.
    #[arg(long, value_name = "N")]
    pub user_count: Option<u64>,
    /// Requests per second, open loop (latency from the scheduled send time); closed loop if absent.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Concurrent connections (open loop: they share the schedule).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Length of the run (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Open loop: how long after --duration late requests may still be sent.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Recommendations per request (the n query parameter).
    #[arg(long, default_value_t = 10)]
    pub n: u32,
    /// Seed of the user choice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl RecommendArgs {
    pub fn into_config(self) -> Result<RecommendConfig, LoadError> {
        let users = match (self.users, self.user_count) {
            (Some(users), None) => UserSource::parse(&users),
            (None, Some(count)) if count > 0 => UserSource::Range {
                first: 1,
                last: count,
            },
            (None, Some(_)) => return Err(invalid("--user-count must be at least 1")),
            _ => return Err(invalid("give exactly one of --users and --user-count")),
        };
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(invalid("--rate must be a positive number"));
            }
        }
        if self.connections == 0 {
            return Err(invalid("--connections must be at least 1"));
        }
        if self.duration.is_zero() {
            return Err(invalid("--duration must be positive"));
        }
        if self.n == 0 {
            return Err(invalid("--n must be at least 1"));
        }
        Ok(RecommendConfig {
            target: Target::parse(&self.common.target)?,
            client: self.common.client_options()?,
            users,
            rate: self.rate,
            connections: self.connections,
            duration: self.duration,
            drain: self.drain,
            n: self.n,
            seed: self.seed,
        })
    }
}

/// Ids and request mix of `mixed`, `soak` and `overload`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("ids").required(true).args(["ratings", "user_count"])))]
pub struct MixArgs {
    /// Ratings CSV whose distinct user_id and item_id columns the requests draw from.
    #[arg(long, visible_alias = "users", value_name = "PATH")]
    pub ratings: Option<PathBuf>,
    /// Generated user ids 1..=N instead of --ratings.
    #[arg(long, value_name = "N")]
    pub user_count: Option<u64>,
    /// With --user-count: generated item ids 1..=M [default: 1000].
    #[arg(long, value_name = "M")]
    pub item_count: Option<u64>,
    /// Weights of the request kinds [default: recommend=70,events=25,success=2.5,churn=2.5].
    #[arg(long, value_name = "KIND=W,...", value_parser = Mix::parse)]
    pub mix: Option<Mix>,
    /// Recommendations per request (the n query parameter).
    #[arg(long, default_value_t = 10)]
    pub n: u32,
    /// Events per POST /v1/events.
    #[arg(long, default_value_t = 10)]
    pub event_batch: usize,
    /// Event ids are {prefix}-{request}-{event} [default: mix{unix ms of the start}, fresh per run].
    #[arg(long, value_name = "PREFIX")]
    pub id_prefix: Option<String>,
    /// Seed of every choice: the same seed sends the same request sequence.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl MixArgs {
    /// `forced` replaces `--mix` (e.g. `overload --route recommend`).
    fn into_options(self, forced: Option<Mix>) -> Result<MixOptions, LoadError> {
        let mix = forced.or(self.mix).unwrap_or_default();
        let ids = match (self.ratings, self.user_count, self.item_count) {
            (Some(path), None, None) => IdSource::Ratings(path),
            (Some(_), _, _) => {
                return Err(invalid(
                    "--user-count/--item-count generate ids: not with --ratings",
                ))
            }
            (None, Some(users), items) => {
                let items = items.unwrap_or(1000);
                if users == 0 || items == 0 {
                    return Err(invalid("--user-count and --item-count must be at least 1"));
                }
                IdSource::Generated { users, items }
            }
            (None, None, _) => return Err(invalid("give --ratings or --user-count")),
        };
        if self.n == 0 {
            return Err(invalid("--n must be at least 1"));
        }
        if !(1..=MAX_BATCH).contains(&self.event_batch) {
            return Err(invalid(format!("--event-batch must be 1..={MAX_BATCH}")));
        }
        let id_prefix = match self.id_prefix {
            Some(prefix) => prefix,
            None => {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                format!("mix{now_ms}")
            }
        };
        let id_chars = |c: char| c.is_ascii_alphanumeric() || "_.:@-".contains(c);
        if id_prefix.is_empty() || id_prefix.len() > 64 || !id_prefix.chars().all(id_chars) {
            return Err(invalid(
                "--id-prefix must be 1 to 64 characters of [A-Za-z0-9_.:@-]",
            ));
        }
        Ok(MixOptions {
            ids,
            mix,
            n: self.n,
            event_batch: self.event_batch,
            id_prefix,
            seed: self.seed,
        })
    }
}

fn check_rate(rate: f64) -> Result<(), LoadError> {
    if rate.is_finite() && rate > 0.0 {
        Ok(())
    } else {
        Err(invalid("--rate must be a positive number"))
    }
}

fn check_inflight(max_inflight: usize, connections: usize) -> Result<(), LoadError> {
    if !(1..=MAX_INFLIGHT).contains(&max_inflight) {
        return Err(invalid(format!(
            "--max-inflight must be 1..={MAX_INFLIGHT}"
        )));
    }
    if connections == 0 {
        return Err(invalid("--connections must be at least 1"));
    }
    Ok(())
}

fn check_length(flag: &str, duration: Duration, max: Duration) -> Result<(), LoadError> {
    if duration.is_zero() {
        return Err(invalid(format!("{flag} must be positive")));
    }
    if duration > max {
        return Err(invalid(format!(
            "{flag} is {duration:?}; at most {}h",
            max.as_secs() / 3600
        )));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub mix: MixArgs,
    /// Requests per second, open loop (latency from the scheduled send time); closed loop if absent.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Closed loop: concurrent connections; open loop: connections opened before the start.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Open loop: most outstanding requests; requests due beyond it are counted as client_dropped.
    #[arg(long, default_value_t = 2048)]
    pub max_inflight: usize,
    /// Length of the run (e.g. 30s, 2m; at most 24h).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
}

impl MixedArgs {
    pub fn into_config(self) -> Result<MixedConfig, LoadError> {
        if let Some(rate) = self.rate {
            check_rate(rate)?;
        }
        check_inflight(self.max_inflight, self.connections)?;
        check_length("--duration", self.duration, MAX_RUN)?;
        Ok(MixedConfig {
            target: Target::parse(&self.common.target)?,
            client: self.common.client_options()?,
            mix: self.mix.into_options(None)?,
            rate: self.rate,
            connections: self.connections,
            max_inflight: self.max_inflight,
            duration: self.duration,
        })
    }
}

#[derive(Debug, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub mix: MixArgs,
    /// Length of the soak (required; e.g. 2h, at most 24h).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests per second, open loop: a modest rate the server sustains.
    #[arg(long, value_name = "R", default_value_t = 100.0)]
    pub rate: f64,
    /// Interval of the drift series and of the /metrics memory samples (at least 1s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Most outstanding requests; requests due beyond it are counted as client_dropped.
    #[arg(long, default_value_t = 2048)]
    pub max_inflight: usize,
    /// Connections opened before the start.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
}

impl SoakArgs {
    pub fn into_config(self) -> Result<SoakConfig, LoadError> {
        check_rate(self.rate)?;
        check_inflight(self.max_inflight, self.connections)?;
        check_length("--duration", self.duration, MAX_SOAK)?;
        if self.sample_every < MIN_SAMPLE_EVERY {
            return Err(invalid("--sample-every must be at least 1s"));
        }
        Ok(SoakConfig {
            target: Target::parse(&self.common.target)?,
            client: self.common.client_options()?,
            mix: self.mix.into_options(None)?,
            rate: self.rate,
            duration: self.duration,
            sample_every: self.sample_every,
            max_inflight: self.max_inflight,
            connections: self.connections,
        })
    }
}

/// Requests of an `overload` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverloadRoute {
    /// The request mix (--mix).
    Mixed,
    /// GET /v1/users/{id}/recommendations only.
    Recommend,
}

#[derive(Debug, Args)]
pub struct OverloadArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub mix: MixArgs,
    /// The sustainable rate (req/s): warm-up and recovery run at it.
    #[arg(long, value_name = "R")]
    pub rate: f64,
    /// The overload phase runs at factor × rate.
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    /// Length of the warm-up phase.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Length of the overload phase.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub overload_duration: Duration,
    /// Length of the recovery phase.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub recovery: Duration,
    /// Start of the recovery phase not held against the server by the recovery check.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub recovery_grace: Duration,
    /// Requests to send: the mix, or recommendations only.
    #[arg(long, value_enum, default_value_t = OverloadRoute::Mixed)]
    pub route: OverloadRoute,
    /// Most outstanding requests; requests due beyond it are counted as client_dropped.
    #[arg(long, default_value_t = 2048)]
    pub max_inflight: usize,
    /// Connections opened before the start.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Interval of the /metrics memory samples (at least 1s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Exit with status 3 when a check fails (503 without Retry-After, overload p99 above
    /// --max-p99, memory growth above --max-rss-growth, more than 1 % non-2xx in recovery).
    #[arg(long)]
    pub check: bool,
    /// Most accepted p99 latency during the overload phase.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub max_p99: Duration,
    /// Most growth of the server's resident memory from the end of warm-up to the end.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    pub max_rss_growth: u64,
}

impl OverloadArgs {
    pub fn into_config(self) -> Result<OverloadConfig, LoadError> {
        check_rate(self.rate)?;
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(invalid("--factor must be at least 1"));
        }
        check_inflight(self.max_inflight, self.connections)?;
        check_length("--warmup", self.warmup, MAX_RUN)?;
        check_length("--overload-duration", self.overload_duration, MAX_RUN)?;
        check_length("--recovery", self.recovery, MAX_RUN)?;
        check_length(
            "--warmup + --overload-duration + --recovery",
            self.warmup + self.overload_duration + self.recovery,
            MAX_RUN,
        )?;
        if self.recovery <= self.recovery_grace {
            return Err(invalid("--recovery must be longer than --recovery-grace"));
        }
        if self.sample_every < MIN_SAMPLE_EVERY {
            return Err(invalid("--sample-every must be at least 1s"));
        }
        let (route, forced) = match (self.route, &self.mix.mix) {
            (OverloadRoute::Mixed, _) => ("mixed", None),
            (OverloadRoute::Recommend, None) => ("recommend", Some(Mix::recommend_only())),
            (OverloadRoute::Recommend, Some(_)) => {
                return Err(invalid("--route recommend and --mix exclude each other"))
            }
        };
        Ok(OverloadConfig {
            target: Target::parse(&self.common.target)?,
            client: self.common.client_options()?,
            route: route.to_owned(),
            mix: self.mix.into_options(forced)?,
            rate: self.rate,
            factor: self.factor,
            warmup: self.warmup,
            overload: self.overload_duration,
            recovery: self.recovery,
            recovery_grace: self.recovery_grace,
            max_inflight: self.max_inflight,
            connections: self.connections,
            sample_every: self.sample_every,
            check: self.check,
            max_p99: self.max_p99,
            max_rss_growth_bytes: self.max_rss_growth,
        })
    }
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline report.
    #[arg(value_name = "A.json")]
    pub a: PathBuf,
    /// The report compared with it (ratios are B/A).
    #[arg(value_name = "B.json")]
    pub b: PathBuf,
}

#[derive(Debug, Args)]
pub struct ChartArgs {
    /// A report written by --report.
    #[arg(value_name = "REPORT.json")]
    pub report: PathBuf,
    /// Where to write the chart [default: the report's path with .svg].
    #[arg(long, value_name = "FILE.svg")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MarkdownArgs {
    /// Reports written by --report, rendered in this order.
    #[arg(value_name = "REPORT.json", required = true)]
    pub reports: Vec<PathBuf>,
    /// Description of the machine the runs were measured on (Markdown, may be a `- ` list),
    /// printed first.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub machine: Option<String>,
    /// Directory the chart links point into, relative to where the Markdown will be read
    /// (`docs/perf`, or `.`) [default: each report's path as given, with .svg].
    #[arg(long, value_name = "REL_PATH")]
    pub chart_dir: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("output").required(true).multiple(true).args(["out_dir", "post"])))]
pub struct SimulateArgs {
    /// Users in the population (they sign up uniformly over the period).
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// Simulated days.
    #[arg(long, default_value_t = 180)]
    pub days: u32,
    /// Seed: the same seed and flags give identical files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Unix milliseconds of the start of day 0 (default 2025-01-01T00:00:00Z).
    #[arg(long, default_value_t = sim::DEFAULT_START_MS)]
    pub start_ms: i64,
    /// Write events.csv, items.csv, users.csv, goal_outcomes.csv and churn.csv into DIR.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Also send the events to this server's POST /v1/events.
    #[arg(long, value_name = "URL")]
    pub post: Option<String>,
    /// --post: events per request (at most 10000).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// --post: concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// --post: retries of a batch answered 503, each after its Retry-After.
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,
    /// --post: whole-request timeout (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// --post: wait this long for GET /readyz to answer 200 first; 0 skips the check.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// --post: also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

impl SimulateArgs {
    pub fn into_config(self) -> Result<SimulateConfig, LoadError> {
        let sim = SimConfig {
            users: self.users,
            days: self.days,
            seed: self.seed,
            start_ms: self.start_ms,
        };
        sim.validate()?;
        let post = match self.post {
            None if self.report.is_some() => {
                return Err(invalid("--report needs --post (it reports on posting)"))
            }
            None => None,
            Some(target) => {
                if !(1..=MAX_BATCH).contains(&self.batch) {
                    return Err(invalid(format!("--batch must be 1..={MAX_BATCH}")));
                }
                if self.connections == 0 {
                    return Err(invalid("--connections must be at least 1"));
                }
                let common = CommonArgs {
                    target,
                    report: self.report,
                    timeout: self.timeout,
                    ready_timeout: self.ready_timeout,
                };
                Some(PostConfig {
                    target: Target::parse(&common.target)?,
                    client: common.client_options()?,
                    batch: self.batch,
                    connections: self.connections,
                    max_retries: self.max_retries,
                    simulation: None,
                })
            }
        };
        Ok(SimulateConfig {
            sim,
            out_dir: self.out_dir,
            post,
        })
    }
}

fn invalid(message: impl Into<String>) -> LoadError {
    LoadError::InvalidConfig {
        message: message.into(),
    }
}

/// `250ms`, `30s`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// `256MiB`, `1GiB`, `512MB`, `100kB`, `4096` (bytes). Binary (KiB, MiB, GiB) and decimal
/// (kB, MB, GB) units.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 256MiB or 1GiB"))?;
    let scale: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "kB" | "KB" => 1e3,
        "KiB" | "Ki" => 1024.0,
        "M" | "MB" => 1e6,
        "MiB" | "Mi" => 1_048_576.0,
        "G" | "GB" => 1e9,
        "GiB" | "Gi" => 1_073_741_824.0,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, kB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    let bytes = (value * scale).round();
    if bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64 {
        // Range checked just above.
        Ok(bytes as u64)
    } else {
        Err(format!("{text:?} is out of range"))
    }
}

/// Runs the chosen scenario, prints a summary line and the JSON report to stdout, and writes the
/// report file (and its SVG chart) when asked to. `simulate` without `--post` has no report: it
/// prints its summary line and statistics (JSON) instead, and returns `None`; so does `compare`,
/// which prints its table, `chart`, and `markdown`, which prints the fragment. Reports record
/// `cli.argv` (when set) as their `command`. A completed `overload --check` whose checks failed
/// is [`LoadError::ChecksFailed`], after its report was printed and written.
pub async fn run(mut cli: Cli) -> Result<Option<Report>, LoadError> {
    let argv = std::mem::take(&mut cli.argv);
    match &cli.command {
        Command::Compare(args) => {
            print!("{}", compare::run(&args.a, &args.b)?);
            return Ok(None);
        }
        Command::Chart(args) => {
            let report = compare::load(&args.report)?;
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| chart::chart_path(&args.report));
            chart::write_svg(&report, &out)?;
            eprintln!("chart written to {}", out.display());
            return Ok(None);
        }
        Command::Markdown(args) => {
            let options = MarkdownOptions {
                machine: args.machine.clone(),
                chart_dir: args.chart_dir.clone(),
            };
            println!("{}", markdown::run(&args.reports, &options)?);
            return Ok(None);
        }
        _ => {}
    }
    let stop = Stop::on_ctrl_c();
    let (mut report, path) = match cli.command {
        Command::Ingest(args) => {
            let path = args.common.report.clone();
            (
                scenario::ingest::run(args.into_config()?, stop).await?,
                path,
            )
        }
        Command::Recommend(args) => {
            let path = args.common.report.clone();
            (
                scenario::recommend::run(args.into_config()?, stop).await?,
                path,
            )
        }
        Command::Mixed(args) => {
            let path = args.common.report.clone();
            (scenario::mixed::run(args.into_config()?, stop).await?, path)
        }
        Command::Soak(args) => {
            let path = args.common.report.clone();
            (scenario::soak::run(args.into_config()?, stop).await?, path)
        }
        Command::Overload(args) => {
            let path = args.common.report.clone();
            (
                scenario::overload::run(args.into_config()?, stop).await?,
                path,
            )
        }
        Command::Compare(_) | Command::Chart(_) | Command::Markdown(_) => return Ok(None),
        Command::Simulate(args) => {
            let path = args.report.clone();
            let outcome = sim::run(args.into_config()?, stop).await?;
            match outcome.report {
                Some(report) => (report, path),
                None => {
                    println!("{}", outcome.stats.summary_line());
                    let json = serde_json::to_string_pretty(&outcome.stats).map_err(|source| {
                        LoadError::Serialize {
                            what: "simulation statistics",
                            source,
                        }
                    })?;
                    println!("{json}");
                    return Ok(None);
                }
            }
        }
    };
    if !argv.is_empty() {
        report.command = Some(argv);
    }
    // Files first: a reader that closes stdout early (`| head -1`) must not cost the report.
    if let Some(path) = &path {
        report.write(path)?;
        eprintln!("report written to {}", path.display());
        let chart = chart::chart_path(path);
        chart::write_svg(&report, &chart)?;
        eprintln!("chart written to {}", chart.display());
    }
    let mut notes = Vec::new();
    if let Some(details) = &report.soak {
        notes.extend(soak::describe(details));
    }
    if let Some(details) = &report.overload {
        notes.extend(overload::describe(details));
    }
    for line in notes {
        eprintln!("{line}");
    }
    let json = report.to_json()?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // A closed stdout is the reader's choice, not a failed run.
        let _ = writeln!(out, "{}", report.summary_line()).and_then(|()| writeln!(out, "{json}"));
    }
    if let Some(details) = report.overload.as_ref().filter(|d| d.enforced && !d.passed) {
        let failed: Vec<String> = details
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect();
        return Err(LoadError::ChecksFailed {
            failed: failed.join("; "),
        });
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn recommend_flags_validate() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["momentum-load", "recommend"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv)
                .map_err(|e| e.to_string())?
                .command
            {
                Command::Recommend(args) => args.into_config().map_err(|e| e.to_string()),
                _ => Err("wrong subcommand".to_owned()),
            }
        };
        let config = parse(&["--user-count", "943", "--rate", "200"]).unwrap();
        assert_eq!(
            config.users,
            UserSource::Range {
                first: 1,
                last: 943
            }
        );
        assert_eq!(config.rate, Some(200.0));
        assert_eq!(config.duration, Duration::from_secs(30));
        assert!(config.connections >= 2);
        assert!(
            parse(&["--rate", "10"]).is_err(),
            "a user source is required"
        );
        assert!(parse(&["--users", "1..=5", "--user-count", "5"]).is_err());
        assert!(parse(&["--user-count", "5", "--rate", "0"]).is_err());
        assert!(parse(&["--user-count", "5", "--target", "https://x"]).is_err());
        let json = serde_json::to_value(parse(&["--users", "r.csv"]).unwrap()).unwrap();
        assert_eq!(json["users"]["csv"], "r.csv");
        assert_eq!(json["duration_s"], 30.0);
        assert_eq!(json["target"], "http://127.0.0.1:8080/");
        assert_eq!(json["rate"], serde_json::Value::Null);
    }

    fn parse_cmd(sub: &str, args: &[&str]) -> Result<Command, String> {
        let mut argv = vec!["momentum-load", sub];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map(|cli| cli.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn mixed_and_soak_flags_validate() {
        let mixed = |args: &[&str]| match parse_cmd("mixed", args)? {
            Command::Mixed(args) => args.into_config().map_err(|e| e.to_string()),
            _ => Err("wrong subcommand".to_owned()),
        };
        let config = mixed(&["--user-count", "50", "--rate", "300"]).unwrap();
        assert_eq!(
            config.mix.ids,
            IdSource::Generated {
                users: 50,
                items: 1000
            }
        );
        assert_eq!(config.mix.mix, Mix::default());
        assert!(config.mix.id_prefix.starts_with("mix"));
        assert_eq!((config.rate, config.max_inflight), (Some(300.0), 2048));
        let config = mixed(&[
            "--users",
            "r.csv",
            "--id-prefix",
            "run-1",
            "--mix",
            "events=1",
        ])
        .unwrap();
        assert_eq!(config.mix.ids, IdSource::Ratings(PathBuf::from("r.csv")));
        assert_eq!(config.mix.id_prefix, "run-1");
        assert_eq!(config.mix.mix.recommend, 0.0);
        assert!(mixed(&[]).is_err(), "ids are required");
        assert!(mixed(&["--ratings", "r.csv", "--item-count", "5"]).is_err());
        assert!(mixed(&["--user-count", "5", "--id-prefix", "a b"]).is_err());
        assert!(mixed(&["--user-count", "5", "--event-batch", "0"]).is_err());
        assert!(mixed(&["--user-count", "5", "--mix", "recommend=0"]).is_err());
        assert!(mixed(&["--user-count", "5", "--max-inflight", "0"]).is_err());
        assert!(mixed(&["--user-count", "5", "--duration", "25h"]).is_err());

        let soak = |args: &[&str]| match parse_cmd("soak", args)? {
            Command::Soak(args) => args.into_config().map_err(|e| e.to_string()),
            _ => Err("wrong subcommand".to_owned()),
        };
        let config = soak(&["--user-count", "5", "--duration", "2h"]).unwrap();
        assert_eq!(config.sample_every, Duration::from_secs(10));
        assert_eq!(config.rate, 100.0);
        assert!(
            soak(&["--user-count", "5"]).is_err(),
            "--duration is required"
        );
        assert!(soak(&["--user-count", "5", "--duration", "24h"]).is_ok());
        let refused = soak(&["--user-count", "5", "--duration", "24.5h"]).unwrap_err();
        assert!(refused.contains("at most 24h"), "{refused}");
        assert!(soak(&[
            "--user-count",
            "5",
            "--duration",
            "1h",
            "--sample-every",
            "0.5s"
        ])
        .is_err());
        let json = serde_json::to_value(soak(&["--user-count", "5", "--duration", "60"]).unwrap())
            .unwrap();
        assert_eq!(json["duration_s"], 60.0);
        assert_eq!(json["sample_every_s"], 10.0);
        assert_eq!(json["mix"]["events"], 25.0);
    }

    #[test]
    fn overload_flags_validate() {
        let overload = |args: &[&str]| match parse_cmd("overload", args)? {
            Command::Overload(args) => args.into_config().map_err(|e| e.to_string()),
            _ => Err("wrong subcommand".to_owned()),
        };
        let config = overload(&["--user-count", "5", "--rate", "500"]).unwrap();
        assert_eq!((config.factor, config.max_inflight), (2.0, 2048));
        assert_eq!(
            (config.warmup, config.overload, config.recovery),
            (
                Duration::from_secs(30),
                Duration::from_secs(60),
                Duration::from_secs(60)
            )
        );
        assert_eq!(config.max_p99, Duration::from_millis(250));
        assert_eq!(config.max_rss_growth_bytes, 256 << 20);
        assert!(!config.check);
        let config = overload(&[
            "--user-count",
            "5",
            "--rate",
            "500",
            "--route",
            "recommend",
            "--check",
            "--max-rss-growth",
            "1GiB",
            "--factor",
            "3",
        ])
        .unwrap();
        assert_eq!(config.mix.mix, Mix::recommend_only());
        assert_eq!((config.route.as_str(), config.check), ("recommend", true));
        assert_eq!((config.max_rss_growth_bytes, config.factor), (1 << 30, 3.0));
        assert!(
            overload(&["--user-count", "5"]).is_err(),
            "--rate is required"
        );
        assert!(overload(&[
            "--user-count",
            "5",
            "--rate",
            "5",
            "--route",
            "recommend",
            "--mix",
            "events=1"
        ])
        .is_err());
        assert!(overload(&["--user-count", "5", "--rate", "5", "--factor", "0.5"]).is_err());
        assert!(overload(&["--user-count", "5", "--rate", "5", "--recovery", "2s"]).is_err());
        assert!(overload(&[
            "--user-count",
            "5",
            "--rate",
            "5",
            "--warmup",
            "20h",
            "--recovery",
            "5h"
        ])
        .is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("512MB"), Ok(512_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5TB").is_err());
        let compare = parse_cmd("compare", &["a.json", "b.json"]).unwrap();
        assert!(
            matches!(compare, Command::Compare(CompareArgs { a, .. }) if a == Path::new("a.json"))
        );
        assert!(parse_cmd("compare", &["a.json"]).is_err());
    }

    #[test]
    fn markdown_flags() {
        let Command::Markdown(args) = parse_cmd(
            "markdown",
            &[
                "a.json",
                "b.json",
                "--machine",
                "2 CPUs",
                "--chart-dir",
                "docs/perf",
            ],
        )
        .unwrap() else {
            panic!("wrong subcommand");
        };
        assert_eq!(args.reports, [Path::new("a.json"), Path::new("b.json")]);
        assert_eq!(args.machine.as_deref(), Some("2 CPUs"));
        assert_eq!(args.chart_dir.as_deref(), Some("docs/perf"));
        let Command::Markdown(args) = parse_cmd("markdown", &["a.json"]).unwrap() else {
            panic!("wrong subcommand");
        };
        assert_eq!((args.machine, args.chart_dir), (None, None));
        // A Markdown list starts with a hyphen: still the value.
        let Command::Markdown(args) =
            parse_cmd("markdown", &["a.json", "--machine", "- 2 CPUs\n- 4 GiB"]).unwrap()
        else {
            panic!("wrong subcommand");
        };
        assert_eq!(args.machine.as_deref(), Some("- 2 CPUs\n- 4 GiB"));
        assert!(
            parse_cmd("markdown", &[]).is_err(),
            "at least one report is required"
        );
        // `argv` is not a flag.
        assert!(parse_cmd("markdown", &["a.json", "--argv", "x"]).is_err());
    }

    #[test]
    fn ingest_flags_validate() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["momentum-load", "ingest", "--ratings", "r.csv"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv)
                .map_err(|e| e.to_string())?
                .command
            {
                Command::Ingest(args) => args.into_config().map_err(|e| e.to_string()),
                _ => Err("wrong subcommand".to_owned()),
            }
        };
        let config = parse(&[]).unwrap();
        assert_eq!((config.batch, config.connections), (1000, 4));
        assert!(parse(&["--batch", "10001"]).is_err());
        assert!(parse(&["--connections", "0"]).is_err());
        let json = serde_json::to_value(parse(&["--limit", "5"]).unwrap()).unwrap();
        assert_eq!(json["limit"], 5);
        assert_eq!(json["timeout_s"], 30.0);
    }

    #[test]
    fn simulate_flags_validate() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["momentum-load", "simulate"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv)
                .map_err(|e| e.to_string())?
                .command
            {
                Command::Simulate(args) => args.into_config().map_err(|e| e.to_string()),
                _ => Err("wrong subcommand".to_owned()),
            }
        };
        let config = parse(&["--out-dir", "sim"]).unwrap();
        assert_eq!(
            (config.sim.users, config.sim.days, config.sim.seed),
            (10_000, 180, 42)
        );
        assert!(config.post.is_none());
        assert!(parse(&[]).is_err(), "an output is required");
        assert!(parse(&["--out-dir", "d", "--users", "0"]).is_err());
        assert!(parse(&["--out-dir", "d", "--report", "r.json"]).is_err());
        let config = parse(&["--post", "http://127.0.0.1:9", "--batch", "500"]).unwrap();
        let post = config.post.unwrap();
        assert_eq!((post.batch, post.connections), (500, 4));
        assert_eq!(post.target.as_str(), "http://127.0.0.1:9/");
        assert!(parse(&["--post", "http://h", "--batch", "10001"]).is_err());
        assert!(parse(&["--post", "https://h"]).is_err());
    }
}
