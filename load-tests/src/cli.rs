//! Command line of `momentum-load`: one subcommand per scenario, flags validated into the
//! scenario's `Config` (so scenarios never see raw strings), and [`run`], which executes a
//! scenario and prints and writes its report. Scripts depend on these flags: keep them stable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{ClientOptions, Target};
use crate::data::MAX_BATCH;
use crate::error::LoadError;
use crate::report::Report;
use crate::scenario::ingest::IngestConfig;
use crate::scenario::recommend::{RecommendConfig, UserSource};
use crate::scenario::{self, Stop};
use crate::simulate::post::PostConfig;
use crate::simulate::{self as sim, SimConfig, SimulateConfig};

/// Load generator for the Momentum server (talks HTTP only).
#[derive(Debug, Parser)]
#[command(name = "momentum-load", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a ratings CSV through POST /v1/events as fast as the server accepts it.
    Ingest(IngestArgs),
    /// Ask for recommendations, open loop at --rate or closed loop without it.
    Recommend(RecommendArgs),
    /// Simulate a goal-app population (deterministic by seed): write CSV and/or post the events.
    Simulate(SimulateArgs),
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

/// Runs the chosen scenario, prints a summary line and the JSON report to stdout, and writes the
/// report file when asked to. `simulate` without `--post` has no report: it prints its summary
/// line and statistics (JSON) instead, and returns `None`.
pub async fn run(cli: Cli) -> Result<Option<Report>, LoadError> {
    let stop = Stop::on_ctrl_c();
    let (report, path) = match cli.command {
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
    println!("{}", report.summary_line());
    println!("{}", report.to_json()?);
    if let Some(path) = path {
        report.write(&path)?;
        eprintln!("report written to {}", path.display());
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

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
