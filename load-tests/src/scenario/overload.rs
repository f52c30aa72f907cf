//! `overload`: proves load shedding. Three open-loop phases: warm-up at the sustainable rate the
//! operator gives, overload at `factor` times that rate, recovery at the rate again. Requests
//! keep being scheduled at the phase's rate whatever the server answers; at most `max_inflight`
//! are outstanding (beyond, due requests are `client_dropped`), so the generator stays bounded
//! while the server is not. Each phase reports what was accepted (2xx), shed (`503`, and whether
//! each carried `Retry-After`) and otherwise answered, the latency of accepted requests and the
//! server's memory. The [checks](evaluate) say whether the server shed properly: every `503` with
//! `Retry-After`, accepted p99 bounded during overload, memory not growing past a limit, and a
//! clean recovery; with `--check` a failed one fails the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::{ClientOptions, Target};
use crate::error::LoadError;
use crate::report::{
    self, CheckResult, CheckStatus, GraceCounts, OverloadDetails, PhaseReport, Report, RssSample,
};
use crate::scenario::engine::{self, EngineConfig, EngineOutput, Load, PhaseSpec, Plan};
use crate::scenario::mixed::base_report;
use crate::scenario::Stop;
use crate::workload::{MixOptions, Workload};

/// Phase names, in order.
pub const WARMUP: &str = "warmup";
pub const OVERLOAD: &str = "overload";
pub const RECOVERY: &str = "recovery";

/// Most non-2xx answers tolerated in the recovery phase after its grace period.
pub const MAX_RECOVERY_ERROR_SHARE: f64 = 0.01;

/// Settings of an `overload` run (all of them end up in the report).
#[derive(Debug, Clone, Serialize)]
pub struct OverloadConfig {
    pub target: Target,
    /// `mixed` (the request mix) or `recommend` (recommendations only).
    pub route: String,
    #[serde(flatten)]
    pub mix: MixOptions,
    /// The sustainable rate: warm-up and recovery.
    pub rate: f64,
    /// Overload rate = `factor × rate`.
    pub factor: f64,
    #[serde(rename = "warmup_s", serialize_with = "report::serialize_secs")]
    pub warmup: Duration,
    #[serde(rename = "overload_s", serialize_with = "report::serialize_secs")]
    pub overload: Duration,
    #[serde(rename = "recovery_s", serialize_with = "report::serialize_secs")]
    pub recovery: Duration,
    /// Start of the recovery that is not held against the server.
    #[serde(rename = "recovery_grace_s", serialize_with = "report::serialize_secs")]
    pub recovery_grace: Duration,
    pub max_inflight: usize,
    /// Connections opened before the clock starts.
    pub connections: usize,
    #[serde(rename = "sample_every_s", serialize_with = "report::serialize_secs")]
    pub sample_every: Duration,
    /// Fail the run (exit status 3) when a check fails.
    pub check: bool,
    /// Most accepted p99 during the overload phase.
    #[serde(rename = "max_p99_s", serialize_with = "report::serialize_secs")]
    pub max_p99: Duration,
    /// Most RSS growth from the end of the warm-up to the end of the run.
    pub max_rss_growth_bytes: u64,
    #[serde(flatten)]
    pub client: ClientOptions,
}

impl OverloadConfig {
    fn plan(&self) -> Plan {
        Plan::new(vec![
            PhaseSpec {
                name: WARMUP,
                rate: self.rate,
                duration: self.warmup,
            },
            PhaseSpec {
                name: OVERLOAD,
                rate: self.rate * self.factor,
                duration: self.overload,
            },
            PhaseSpec {
                name: RECOVERY,
                rate: self.rate,
                duration: self.recovery,
            },
        ])
    }
}

/// Runs the three phases and evaluates the checks (the caller enforces them).
pub async fn run(config: OverloadConfig, stop: Stop) -> Result<Report, LoadError> {
    let workload = Arc::new(Workload::load(config.target.clone(), config.mix.clone())?);
    let plan = config.plan();
    eprintln!(
        "overload: {} req/s for {:?}, {} req/s for {:?}, {} req/s for {:?} ({} mix, max {} in flight) -> {}",
        config.rate,
        config.warmup,
        config.rate * config.factor,
        config.overload,
        config.rate,
        config.recovery,
        config.route,
        config.max_inflight,
        config.target.as_str()
    );
    let engine = EngineConfig {
        target: config.target.clone(),
        client: config.client.clone(),
        load: Load::Open {
            plan: plan.clone(),
            max_inflight: config.max_inflight,
            warm_connections: config.connections,
        },
        grace: config.recovery_grace,
        sample_every: Some(config.sample_every),
        interval: None,
    };
    let output = engine::run(&engine, workload, stop).await?;
    let mut report = base_report(
        "overload",
        &config,
        &config.target,
        &output,
        Some(config.rate),
        config.max_inflight,
    )?;
    report.overload = Some(details(&config, &plan, &output));
    Ok(report)
}

/// The `overload` section: per-phase accounting, memory and the checks.
fn details(config: &OverloadConfig, plan: &Plan, output: &EngineOutput) -> OverloadDetails {
    let phases: Vec<PhaseReport> = output
        .phases
        .iter()
        .enumerate()
        .map(|(i, tally)| {
            let (name, rate, duration) = plan
                .spec(i)
                .map_or(("?", 0.0, Duration::ZERO), |s| (s.name, s.rate, s.duration));
            let start = plan.start(i);
            PhaseReport {
                name: name.to_owned(),
                rate_per_s: rate,
                start_s: start.as_secs_f64(),
                duration_s: duration.as_secs_f64(),
                scheduled: plan.phase_total(i),
                sent: tally.sent,
                accepted: tally.accepted,
                accepted_per_s: if duration.is_zero() {
                    0.0
                } else {
                    (tally.accepted as f64 / duration.as_secs_f64() * 10.0).round() / 10.0
                },
                shed: tally.shed,
                shed_with_retry_after: tally.shed_with_retry_after,
                shed_by_code: tally.shed_by_code.clone(),
                retry_after_share: (tally.shed > 0)
                    .then(|| tally.shed_with_retry_after as f64 / tally.shed as f64),
                other: tally.other.clone(),
                client_dropped: tally.client_dropped,
                unsent: tally.unsent,
                after_grace: GraceCounts {
                    grace_s: config.recovery_grace.as_secs_f64(),
                    requests: tally.grace_requests,
                    non_2xx: tally.grace_non_2xx,
                    excused: tally.grace_excused,
                },
                accepted_latency_us: tally.accepted_latency.percentiles(),
                rss_samples: output
                    .rss_samples
                    .iter()
                    .filter(|s| plan.phase_at(Duration::from_secs_f64(s.t_s.max(0.0))) == i)
                    .cloned()
                    .collect(),
            }
        })
        .collect();
    let rss_baseline_bytes = phases
        .iter()
        .find(|p| p.name == WARMUP)
        .and_then(|p| last_rss(&p.rss_samples));
    let rss_end_bytes = last_rss(&output.rss_samples);
    let rss_growth_bytes = match (rss_baseline_bytes, rss_end_bytes) {
        (Some(base), Some(end)) => {
            Some(i128::from(end) - i128::from(base)).and_then(|g| i64::try_from(g).ok())
        }
        _ => None,
    };
    let mut details = OverloadDetails {
        base_rate_per_s: config.rate,
        factor: config.factor,
        phases,
        rss_baseline_bytes,
        rss_end_bytes,
        rss_growth_bytes,
        checks: Vec::new(),
        passed: false,
        enforced: config.check,
    };
    details.checks = evaluate(&details, config, output.interrupted);
    details.passed = details.checks.iter().all(|c| c.status != CheckStatus::Fail);
    details
}

fn last_rss(samples: &[RssSample]) -> Option<u64> {
    samples.iter().rev().find_map(|s| s.rss_bytes)
}

fn check(name: &str, status: CheckStatus, detail: String) -> CheckResult {
    CheckResult {
        name: name.to_owned(),
        status,
        detail,
    }
}

fn pass_or_fail(ok: bool) -> CheckStatus {
    if ok {
        CheckStatus::Pass
    } else {
        CheckStatus::Fail
    }
}

/// The verdicts of a run: `retry_after`, `overload_p99`, `rss_growth`, `recovery`, `complete`.
pub fn evaluate(
    details: &OverloadDetails,
    config: &OverloadConfig,
    interrupted: bool,
) -> Vec<CheckResult> {
    let phase = |name: &str| details.phases.iter().find(|p| p.name == name);
    let mut checks = Vec::new();

    let shed: u64 = details.phases.iter().map(|p| p.shed).sum();
    let with: u64 = details.phases.iter().map(|p| p.shed_with_retry_after).sum();
    checks.push(if shed == 0 {
        check(
            "retry_after",
            CheckStatus::Pass,
            "no 503 answers (nothing was shed)".to_owned(),
        )
    } else {
        check(
            "retry_after",
            pass_or_fail(with == shed),
            format!(
                "{with} of {shed} 503 answers carried Retry-After ({:.2} %)",
                100.0 * with as f64 / shed as f64
            ),
        )
    });

    let max_p99_us = u64::try_from(config.max_p99.as_micros()).unwrap_or(u64::MAX);
    checks.push(match phase(OVERLOAD) {
        Some(p) if p.accepted_latency_us.count > 0 => {
            let p99 = p.accepted_latency_us.p99;
            check(
                "overload_p99",
                pass_or_fail(p99 <= max_p99_us),
                format!(
                    "accepted p99 {} during overload (limit {})",
                    report::fmt_us(p99),
                    report::fmt_us(max_p99_us)
                ),
            )
        }
        _ => check(
            "overload_p99",
            CheckStatus::Fail,
            "no request was accepted during overload".to_owned(),
        ),
    });

    checks.push(match details.rss_growth_bytes {
        Some(growth) => check(
            "rss_growth",
            pass_or_fail(growth <= i64::try_from(config.max_rss_growth_bytes).unwrap_or(i64::MAX)),
            format!(
                "resident memory grew {} from the end of warm-up to the end (limit {})",
                fmt_bytes(growth),
                fmt_bytes(i64::try_from(config.max_rss_growth_bytes).unwrap_or(i64::MAX))
            ),
        ),
        None => check(
            "rss_growth",
            CheckStatus::Skip,
            format!(
                "not measured: no {} samples from /metrics",
                crate::scrape::RSS_METRIC
            ),
        ),
    });

    checks.push(match phase(RECOVERY) {
        Some(p) if p.after_grace.requests > 0 => {
            let share = p.after_grace.non_2xx as f64 / p.after_grace.requests as f64;
            check(
                "recovery",
                pass_or_fail(share <= MAX_RECOVERY_ERROR_SHARE),
                format!(
                    "{} of {} recovery requests after the first {} s were not 2xx ({:.2} %, limit {} %; {} excused 404/model_not_ready answers not counted)",
                    p.after_grace.non_2xx,
                    p.after_grace.requests,
                    p.after_grace.grace_s,
                    100.0 * share,
                    100.0 * MAX_RECOVERY_ERROR_SHARE,
                    p.after_grace.excused
                ),
            )
        }
        _ => check(
            "recovery",
            CheckStatus::Fail,
            "no recovery request after the grace period".to_owned(),
        ),
    });

    if interrupted {
        checks.push(check(
            "complete",
            CheckStatus::Fail,
            "the run was interrupted".to_owned(),
        ));
    }
    checks
}

/// `268435456` → `256.0 MiB` (signed).
pub fn fmt_bytes(bytes: i64) -> String {
    let mib = bytes as f64 / 1048576.0;
    if mib.abs() >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// Human lines for stderr: one per phase, one per check.
pub fn describe(details: &OverloadDetails) -> Vec<String> {
    let mut lines = Vec::new();
    for p in &details.phases {
        let other: BTreeMap<&String, &u64> = p.other.iter().collect();
        let l = &p.accepted_latency_us;
        let by_code: BTreeMap<&String, &u64> = p.shed_by_code.iter().collect();
        lines.push(format!(
            "{:>8} {:>7.1} req/s: sent {}, accepted {} ({:.1}/s), shed {}{}{}, other {:?}, client_dropped {}; accepted p50 {} p99 {} p99.9 {}; rss {}",
            p.name,
            p.rate_per_s,
            p.sent,
            p.accepted,
            p.accepted_per_s,
            p.shed,
            if by_code.is_empty() { String::new() } else { format!(" {by_code:?}") },
            p.retry_after_share
                .map_or(String::new(), |s| format!(" ({:.1} % with Retry-After)", 100.0 * s)),
            other,
            p.client_dropped,
            report::fmt_us(l.p50),
            report::fmt_us(l.p99),
            report::fmt_us(l.p99_9),
            last_rss(&p.rss_samples).map_or("n/a".to_owned(), |b| fmt_bytes(i64::try_from(b).unwrap_or(i64::MAX))),
        ));
    }
    for c in &details.checks {
        let status = match c.status {
            CheckStatus::Pass => "PASS",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skip => "SKIP",
        };
        lines.push(format!("{status} {}: {}", c.name, c.detail));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;
    use crate::workload::{IdSource, Mix};

    pub(crate) fn config() -> OverloadConfig {
        OverloadConfig {
            target: Target::parse("http://h:1").unwrap(),
            route: "mixed".to_owned(),
            mix: MixOptions {
                ids: IdSource::Generated {
                    users: 10,
                    items: 10,
                },
                mix: Mix::default(),
                n: 10,
                event_batch: 10,
                id_prefix: "t".to_owned(),
                seed: 1,
            },
            rate: 100.0,
            factor: 2.0,
            warmup: Duration::from_secs(10),
            overload: Duration::from_secs(20),
            recovery: Duration::from_secs(30),
            recovery_grace: Duration::from_secs(2),
            max_inflight: 64,
            connections: 4,
            sample_every: Duration::from_secs(1),
            check: true,
            max_p99: Duration::from_millis(250),
            max_rss_growth_bytes: 256 << 20,
            client: ClientOptions {
                timeout: Duration::from_secs(1),
                ready_timeout: Duration::ZERO,
            },
        }
    }

    fn phase(name: &str, accepted: u64, shed: u64, with: u64, p99: u64) -> PhaseReport {
        PhaseReport {
            name: name.to_owned(),
            accepted,
            shed,
            shed_with_retry_after: with,
            accepted_latency_us: Percentiles {
                count: accepted,
                p99,
                ..Percentiles::default()
            },
            after_grace: GraceCounts {
                grace_s: 2.0,
                requests: 1000,
                non_2xx: 5,
                excused: 50,
            },
            ..PhaseReport::default()
        }
    }

    fn healthy() -> OverloadDetails {
        OverloadDetails {
            phases: vec![
                phase(WARMUP, 1000, 0, 0, 5_000),
                phase(OVERLOAD, 2000, 2000, 2000, 200_000),
                phase(RECOVERY, 3000, 0, 0, 6_000),
            ],
            rss_growth_bytes: Some(10 << 20),
            ..OverloadDetails::default()
        }
    }

    fn status(checks: &[CheckResult], name: &str) -> CheckStatus {
        checks.iter().find(|c| c.name == name).unwrap().status
    }

    #[test]
    fn healthy_shedding_passes_every_check() {
        let checks = evaluate(&healthy(), &config(), false);
        assert!(
            checks.iter().all(|c| c.status == CheckStatus::Pass),
            "{checks:?}"
        );
        assert_eq!(checks.len(), 4);
        assert!(describe(&OverloadDetails {
            checks,
            ..healthy()
        })
        .iter()
        .any(|l| l.starts_with("PASS retry_after: 2000 of 2000")));
    }

    #[test]
    fn each_violation_fails_its_own_check() {
        let cfg = config();
        let mut d = healthy();
        d.phases[1].shed_with_retry_after = 1999;
        assert_eq!(
            status(&evaluate(&d, &cfg, false), "retry_after"),
            CheckStatus::Fail
        );

        let mut d = healthy();
        d.phases[1].accepted_latency_us.p99 = 250_001;
        assert_eq!(
            status(&evaluate(&d, &cfg, false), "overload_p99"),
            CheckStatus::Fail
        );
        d.phases[1].accepted_latency_us.count = 0;
        assert_eq!(
            status(&evaluate(&d, &cfg, false), "overload_p99"),
            CheckStatus::Fail
        );

        let mut d = healthy();
        d.rss_growth_bytes = Some((256 << 20) + 1);
        assert_eq!(
            status(&evaluate(&d, &cfg, false), "rss_growth"),
            CheckStatus::Fail
        );
        d.rss_growth_bytes = None;
        assert_eq!(
            status(&evaluate(&d, &cfg, false), "rss_growth"),
            CheckStatus::Skip
        );

        let mut d = healthy();
        d.phases[2].after_grace.non_2xx = 11;
        assert_eq!(
            status(&evaluate(&d, &cfg, false), "recovery"),
            CheckStatus::Fail
        );
        d.phases[2].after_grace = GraceCounts::default();
        assert_eq!(
            status(&evaluate(&d, &cfg, false), "recovery"),
            CheckStatus::Fail
        );

        assert_eq!(
            status(&evaluate(&healthy(), &cfg, true), "complete"),
            CheckStatus::Fail
        );
    }

    #[test]
    fn plan_has_the_three_phases() {
        let plan = config().plan();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan.spec(1).unwrap().rate, 200.0);
        assert_eq!(plan.start(2), Duration::from_secs(30));
        assert_eq!(plan.total(), 1000 + 4000 + 3000);
        assert_eq!(fmt_bytes(256 << 20), "256.0 MiB");
        assert_eq!(fmt_bytes(-(3 << 30)), "-3.00 GiB");
    }
}
