//! Prometheus metrics of the HTTP layer, the journal, the experiments and the scheduled jobs. One registry per server instance; `/metrics` renders
//! it in the text format together with the actor metrics registered in it.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::jobs::JobStatus;

/// HTTP and ingestion metrics.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// Request latency by route template, method and status class.
    pub request_duration: HistogramVec,
    pub events_accepted: IntCounter,
    pub events_duplicate: IntCounter,
    /// Rejected events by reason code (a small fixed set).
    pub events_rejected: IntCounterVec,
    /// `/v1/` requests answered `503` at once because `server.max_inflight_requests` were
    /// being served.
    pub shed: IntCounter,
    /// Requests whose body did not arrive within `server.body_timeout_secs` (answered 408).
    pub body_timeouts: IntCounter,
    /// `/v1/` requests being served now.
    pub inflight: IntGauge,
    /// Resident set size of the process (read from `/proc/self/statm` on each scrape).
    pub resident_memory: IntGauge,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = HttpMetrics {
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "momentum_http_request_duration_seconds",
                    "HTTP request latency by route template",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]),
                &["route", "method", "status"],
            )?,
            events_accepted: IntCounter::new(
                "momentum_events_accepted_total",
                "Events applied to the hot state",
            )?,
            events_duplicate: IntCounter::new(
                "momentum_events_duplicate_total",
                "Events skipped because their event_id was already applied",
            )?,
            events_rejected: IntCounterVec::new(
                Opts::new(
                    "momentum_events_rejected_total",
                    "Events refused, by reason",
                ),
                &["reason"],
            )?,
            shed: IntCounter::new(
                "momentum_http_shed_total",
                "Requests refused with 503 because max_inflight_requests were being served",
            )?,
            body_timeouts: IntCounter::new(
                "momentum_http_body_timeouts_total",
                "Requests cut off with 408 because the body did not arrive within server.body_timeout_secs",
            )?,
            inflight: IntGauge::new(
                "momentum_http_inflight_requests",
                "API requests being served now",
            )?,
            resident_memory: IntGauge::new(
                "momentum_process_resident_memory_bytes",
                "Resident set size of the server process",
            )?,
        };
        registry.register(Box::new(m.shed.clone()))?;
        registry.register(Box::new(m.inflight.clone()))?;
        registry.register(Box::new(m.body_timeouts.clone()))?;
        registry.register(Box::new(m.resident_memory.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.events_accepted.clone()))?;
        registry.register(Box::new(m.events_duplicate.clone()))?;
        registry.register(Box::new(m.events_rejected.clone()))?;
        Ok(m)
    }
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`; `None` elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every Linux target this server is built for.
    Some(pages * 4096)
}

/// A/B experiment metrics. Labels are the experiment id and the variant name: both are bounded
/// (at most [`crate::experiments::MAX_EXPERIMENTS`] experiments of at most 10 variants, names
/// validated) and are removed when an experiment is deleted.
#[derive(Debug, Clone)]
pub struct AbMetrics {
    /// Recommendation responses served under a variant.
    pub assignments: IntCounterVec,
    /// `impression` events attributed to a variant.
    pub impressions: IntCounterVec,
    /// `click` events attributed to a variant.
    pub clicks: IntCounterVec,
    /// `complete` events attributed to a variant.
    pub conversions: IntCounterVec,
}

impl AbMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["experiment", "variant"])
        };
        let m = AbMetrics {
            assignments: vec(
                "momentum_ab_assignments_total",
                "Recommendation responses served under an experiment variant",
            )?,
            impressions: vec(
                "momentum_ab_impressions_total",
                "Impression events attributed to an experiment variant",
            )?,
            clicks: vec(
                "momentum_ab_clicks_total",
                "Click events attributed to an experiment variant",
            )?,
            conversions: vec(
                "momentum_ab_conversions_total",
                "Complete events attributed to an experiment variant",
            )?,
        };
        for v in [&m.assignments, &m.impressions, &m.clicks, &m.conversions] {
            registry.register(Box::new(v.clone()))?;
        }
        Ok(m)
    }
}

/// Metrics of the event log, snapshots and restore.
#[derive(Debug, Clone)]
pub struct JournalMetrics {
    pub append_duration: prometheus::Histogram,
    pub append_batch: prometheus::Histogram,
    /// `async` mode: accepted events not yet in the log.
    pub unflushed: prometheus::IntGauge,
    /// Batches refused because the unflushed window was full.
    pub log_backpressure: IntCounter,
    pub snapshot_duration: prometheus::Histogram,
    pub snapshot_bytes: prometheus::IntGauge,
    pub snapshot_covers_seq: prometheus::IntGauge,
    /// Unix seconds of the last successful snapshot (snapshot lag = now − this).
    pub snapshot_last_success: prometheus::Gauge,
    pub snapshot_failures: IntCounter,
    pub pruned_events: IntCounter,
    pub restore_duration: prometheus::Gauge,
}

impl JournalMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = JournalMetrics {
            append_duration: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "momentum_log_append_duration_seconds",
                    "Time to append one batch to the event log",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            )?,
            append_batch: prometheus::Histogram::with_opts(
                HistogramOpts::new("momentum_log_append_batch_events", "Events per log append")
                    .buckets(vec![1.0, 10.0, 100.0, 1000.0, 10000.0]),
            )?,
            unflushed: prometheus::IntGauge::new(
                "momentum_log_unflushed_events",
                "Accepted events not yet written to the event log (async durability)",
            )?,
            log_backpressure: IntCounter::new(
                "momentum_log_backpressure_total",
                "Batches refused with 503 because the unflushed window was full",
            )?,
            snapshot_duration: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "momentum_snapshot_duration_seconds",
                    "Time to write a snapshot",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0]),
            )?,
            snapshot_bytes: prometheus::IntGauge::new(
                "momentum_snapshot_size_bytes",
                "Size of the last snapshot",
            )?,
            snapshot_covers_seq: prometheus::IntGauge::new(
                "momentum_snapshot_covers_seq",
                "Log sequence number covered by the last snapshot",
            )?,
            snapshot_last_success: prometheus::Gauge::new(
                "momentum_snapshot_last_success_timestamp_seconds",
                "Unix time of the last successful snapshot",
            )?,
            snapshot_failures: IntCounter::new(
                "momentum_snapshot_failures_total",
                "Snapshots that failed",
            )?,
            pruned_events: IntCounter::new(
                "momentum_log_pruned_events_total",
                "Events deleted from the log by the retention rule",
            )?,
            restore_duration: prometheus::Gauge::new(
                "momentum_restore_duration_seconds",
                "Time the last start-up restore took",
            )?,
        };
        registry.register(Box::new(m.append_duration.clone()))?;
        registry.register(Box::new(m.append_batch.clone()))?;
        registry.register(Box::new(m.unflushed.clone()))?;
        registry.register(Box::new(m.log_backpressure.clone()))?;
        registry.register(Box::new(m.snapshot_duration.clone()))?;
        registry.register(Box::new(m.snapshot_bytes.clone()))?;
        registry.register(Box::new(m.snapshot_covers_seq.clone()))?;
        registry.register(Box::new(m.snapshot_last_success.clone()))?;
        registry.register(Box::new(m.snapshot_failures.clone()))?;
        registry.register(Box::new(m.pruned_events.clone()))?;
        registry.register(Box::new(m.restore_duration.clone()))?;
        Ok(m)
    }

    /// Records one append.
    pub fn observe_append(&self, took: std::time::Duration, events: usize) {
        self.append_duration.observe(took.as_secs_f64());
        self.append_batch.observe(events as f64);
    }
}

/// Metrics of the scheduled jobs (`crate::jobs`), labelled by the job's name: `training`,
/// `churn_scoring`, `snapshot`, `item_model`.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    /// Completed runs by job and result (`ok`, `error`).
    pub runs: IntCounterVec,
    /// 1 while a run is in flight.
    pub running: IntGaugeVec,
    /// Failed runs since the last successful one.
    pub consecutive_failures: IntGaugeVec,
    /// Unix time of the last successful run.
    pub last_success: GaugeVec,
    /// Wall time of the last run.
    pub duration: GaugeVec,
}

impl JobMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = JobMetrics {
            runs: IntCounterVec::new(
                Opts::new("momentum_job_runs_total", "Completed job runs by result"),
                &["job", "result"],
            )?,
            running: IntGaugeVec::new(
                Opts::new(
                    "momentum_job_running",
                    "1 while a run of the job is in flight",
                ),
                &["job"],
            )?,
            consecutive_failures: IntGaugeVec::new(
                Opts::new(
                    "momentum_job_consecutive_failures",
                    "Failed runs of the job since its last successful one",
                ),
                &["job"],
            )?,
            last_success: GaugeVec::new(
                Opts::new(
                    "momentum_job_last_success_timestamp_seconds",
                    "Unix time of the job's last successful run",
                ),
                &["job"],
            )?,
            duration: GaugeVec::new(
                Opts::new(
                    "momentum_job_duration_seconds",
                    "Wall time of the job's last run",
                ),
                &["job"],
            )?,
        };
        registry.register(Box::new(m.runs.clone()))?;
        registry.register(Box::new(m.running.clone()))?;
        registry.register(Box::new(m.consecutive_failures.clone()))?;
        registry.register(Box::new(m.last_success.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }

    /// Creates a job's series, so rates and alerts see them before its first run.
    pub fn register_job(&self, job: &str) {
        for result in ["ok", "error"] {
            self.runs.with_label_values(&[job, result]);
        }
        self.running.with_label_values(&[job]).set(0);
        self.consecutive_failures.with_label_values(&[job]).set(0);
    }

    /// Publishes a job's status after a run that took `seconds`.
    pub fn record_run(&self, job: &str, status: &JobStatus, seconds: f64) {
        let result = if status.last_error.is_none() {
            "ok"
        } else {
            "error"
        };
        self.runs.with_label_values(&[job, result]).inc();
        self.duration.with_label_values(&[job]).set(seconds);
        self.running
            .with_label_values(&[job])
            .set(i64::from(status.running));
        self.consecutive_failures
            .with_label_values(&[job])
            .set(i64::try_from(status.consecutive_failures).unwrap_or(i64::MAX));
        if let Some(ms) = status.last_success_ms {
            self.last_success
                .with_label_values(&[job])
                .set(ms as f64 / 1e3);
        }
    }
}

/// Cluster mode: the write path to the event log, partition ownership and hand-overs.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// `momentum_events_duplicate_total` (registered with the HTTP metrics): the owner of a
    /// partition counts the events it drops as duplicates of an applied `event_id`.
    pub events_duplicate: IntCounter,
    /// Events the broker confirmed (`POST /v1/events` on this node, and the bridge's).
    pub events_produced: IntCounter,
    /// Batches refused because the broker did not confirm them.
    pub produce_failures: IntCounter,
    /// Events of owned partitions applied to this node's actors (replays included).
    pub events_applied: IntCounter,
    /// Partitions assigned to this node, and of those the ones being served.
    pub partitions_owned: IntGauge,
    pub partitions_ready: IntGauge,
    /// Seconds from a partition's assignment to its first read being served.
    pub handover_seconds: prometheus::Histogram,
    /// Events in owned partitions not applied yet (sum over partitions).
    pub consumer_lag: IntGauge,
    /// Rows dropped because their partition was revoked.
    pub users_dropped: IntCounter,
    /// Item-deltas records published by this node (as an owner), applied here, and skipped
    /// here because their source offset was already applied.
    pub item_deltas_published: IntCounter,
    pub item_deltas_applied: IntCounter,
    pub item_deltas_skipped: IntCounter,
    /// Seconds from the broker logging an event to its item side reaching this node's
    /// catalogue (the oldest event of each applied item-deltas record).
    pub item_staleness_seconds: prometheus::Histogram,
    /// Partition snapshots written, refused because a newer one was there, and restored.
    pub snapshots_written: IntCounter,
    pub snapshots_fenced: IntCounter,
    pub snapshots_restored: IntCounter,
    /// Reads forwarded to the owner of the user's partition, by result (`ok`, `error`,
    /// `moved`: the owner answered `421`; `retried`: then sent to the next owner or answered
    /// here).
    pub forwarded: IntCounterVec,
    /// The bridge (`cluster.bridge_topic`): events it re-partitioned into the events topic
    /// (confirmed by the broker), events and records it refused by reason (the validation
    /// codes of `POST /v1/events`, and `malformed_json`, `empty_batch`, `batch_too_large` for
    /// a whole record), and the records of its source partitions not bridged yet.
    pub bridge_events: IntCounter,
    pub bridge_rejected: IntCounterVec,
    pub bridge_lag: IntGauge,
    /// Learned item models installed from the cluster's store, and models built here (as the
    /// leader) that the store refused because its model was built from as much data or more.
    pub item_model_installs: IntCounter,
    pub item_model_fenced: IntCounter,
    /// Predictive model versions copied from the cluster into the local store, and versions
    /// trained here (as the leader) that the cluster refused (`src/cluster/training.rs`).
    pub model_versions_copied: IntCounter,
    pub model_versions_fenced: IntCounter,
}

impl ClusterMetrics {
    pub fn new(registry: &Registry, events_duplicate: IntCounter) -> prometheus::Result<Self> {
        let m = ClusterMetrics {
            events_duplicate,
            events_produced: IntCounter::new(
                "momentum_cluster_events_produced_total",
                "Events written to the events topic and confirmed by the broker",
            )?,
            produce_failures: IntCounter::new(
                "momentum_cluster_produce_failures_total",
                "Batches refused because the broker did not confirm them",
            )?,
            events_applied: IntCounter::new(
                "momentum_cluster_events_applied_total",
                "Events of owned partitions applied by this node, replays included",
            )?,
            partitions_owned: IntGauge::new(
                "momentum_cluster_partitions_owned",
                "Partitions assigned to this node",
            )?,
            partitions_ready: IntGauge::new(
                "momentum_cluster_partitions_ready",
                "Partitions assigned to this node and caught up (served)",
            )?,
            handover_seconds: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "momentum_cluster_handover_seconds",
                    "Seconds from a partition's assignment to serving it",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                ]),
            )?,
            consumer_lag: IntGauge::new(
                "momentum_cluster_consumer_lag_events",
                "Events in owned partitions not applied yet",
            )?,
            users_dropped: IntCounter::new(
                "momentum_cluster_users_dropped_total",
                "User rows dropped because their partition was revoked",
            )?,
            item_deltas_published: IntCounter::new(
                "momentum_cluster_item_deltas_published_total",
                "Item-deltas records this node published as an owner",
            )?,
            item_deltas_applied: IntCounter::new(
                "momentum_cluster_item_deltas_applied_total",
                "Item-deltas records applied to this node's catalogue",
            )?,
            item_deltas_skipped: IntCounter::new(
                "momentum_cluster_item_deltas_skipped_total",
                "Item-deltas records skipped: their source offset was already applied",
            )?,
            item_staleness_seconds: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "momentum_cluster_item_staleness_seconds",
                    "Seconds from an event's logging to its item side being applied on this node",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )?,
            snapshots_written: IntCounter::new(
                "momentum_cluster_snapshots_written_total",
                "Partition snapshots written to PostgreSQL",
            )?,
            snapshots_fenced: IntCounter::new(
                "momentum_cluster_snapshots_fenced_total",
                "Partition snapshots refused because one at a higher offset was there",
            )?,
            snapshots_restored: IntCounter::new(
                "momentum_cluster_snapshots_restored_total",
                "Partition snapshots loaded by a new owner",
            )?,
            forwarded: IntCounterVec::new(
                Opts::new(
                    "momentum_cluster_forwarded_requests_total",
                    "Reads forwarded to the owner of the user's partition, by result",
                ),
                &["result"],
            )?,
            bridge_events: IntCounter::new(
                "momentum_cluster_bridge_events_total",
                "Events the bridge re-partitioned from the bridged topic into the events topic",
            )?,
            bridge_rejected: IntCounterVec::new(
                Opts::new(
                    "momentum_cluster_bridge_rejected_total",
                    "Events (or whole records) of the bridged topic refused, by reason",
                ),
                &["reason"],
            )?,
            bridge_lag: IntGauge::new(
                "momentum_cluster_bridge_lag_records",
                "Records of the bridged partitions this node has not bridged yet",
            )?,
            item_model_installs: IntCounter::new(
                "momentum_cluster_item_model_installs_total",
                "Learned item models installed from the cluster (built by the leader)",
            )?,
            item_model_fenced: IntCounter::new(
                "momentum_cluster_item_model_fenced_total",
                "Item models built here refused by the cluster: its model was built from as much data or more",
            )?,
            model_versions_copied: IntCounter::new(
                "momentum_cluster_model_versions_copied_total",
                "Predictive model versions copied from the cluster into this node's store",
            )?,
            model_versions_fenced: IntCounter::new(
                "momentum_cluster_model_versions_fenced_total",
                "Model versions trained here refused by the cluster: its number was taken, or a version trained from more of the log was stored",
            )?,
        };
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.bridge_events.clone()))?;
        registry.register(Box::new(m.bridge_rejected.clone()))?;
        registry.register(Box::new(m.bridge_lag.clone()))?;
        registry.register(Box::new(m.item_model_installs.clone()))?;
        registry.register(Box::new(m.item_model_fenced.clone()))?;
        registry.register(Box::new(m.model_versions_copied.clone()))?;
        registry.register(Box::new(m.model_versions_fenced.clone()))?;
        registry.register(Box::new(m.events_produced.clone()))?;
        registry.register(Box::new(m.snapshots_written.clone()))?;
        registry.register(Box::new(m.item_staleness_seconds.clone()))?;
        registry.register(Box::new(m.snapshots_fenced.clone()))?;
        registry.register(Box::new(m.snapshots_restored.clone()))?;
        registry.register(Box::new(m.produce_failures.clone()))?;
        registry.register(Box::new(m.events_applied.clone()))?;
        registry.register(Box::new(m.partitions_owned.clone()))?;
        registry.register(Box::new(m.partitions_ready.clone()))?;
        registry.register(Box::new(m.handover_seconds.clone()))?;
        registry.register(Box::new(m.consumer_lag.clone()))?;
        registry.register(Box::new(m.users_dropped.clone()))?;
        registry.register(Box::new(m.item_deltas_published.clone()))?;
        registry.register(Box::new(m.item_deltas_applied.clone()))?;
        registry.register(Box::new(m.item_deltas_skipped.clone()))?;
        Ok(m)
    }
}
