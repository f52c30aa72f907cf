//! Store benchmark: sustained event-log ingest, then a restore-style read of the whole log.
//!
//! ```sh
//! cargo run --release --example store_bench -- --kind postgres --events 1000000 --batch 1000
//! cargo run --release --example store_bench -- --kind embedded --events 1000000 --batch 1000
//! ```
//!
//! Ingest appends `--events` synthetic events in `--batch`-sized batches, one batch at a time
//! (every append is durable before the next starts: the `sync` durability pattern), and
//! reports events/s and the append latency. The read pages through the log with
//! `events_after(seq, --page)` as the restore does and reports events/s and the time
//! extrapolated to 10M events. PostgreSQL runs in a scratch schema (`--schema`, dropped
//! first and, without `--keep`, afterwards); the embedded store in a scratch directory
//! (`--path`, emptied first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use momentum::store::{EventRecord, Store, StoreConfig, StoreKind};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Embedded,
    Postgres,
}

#[derive(Parser, Debug)]
#[command(about = "Benchmark the Momentum event store")]
struct Args {
    #[arg(long, value_enum, default_value = "embedded")]
    kind: Kind,
    /// Events to append.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per append.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent appenders (each appends whole batches and waits for each; concurrent
    /// batches are group-committed).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Events per page when reading back.
    #[arg(long, default_value_t = 50_000)]
    page: usize,
    /// Distinct users in the synthetic stream.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Distinct items in the synthetic stream.
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    /// PostgreSQL URL (default: DATABASE_URL, then postgres://postgres@127.0.0.1:5432/test).
    #[arg(long)]
    url: Option<String>,
    /// PostgreSQL scratch schema.
    #[arg(long, default_value = "momentum_bench")]
    schema: String,
    /// Embedded scratch directory.
    #[arg(long, default_value = "/tmp/momentum-store-bench")]
    path: PathBuf,
    /// Keep the data afterwards.
    #[arg(long)]
    keep: bool,
}

const KINDS: [&str; 6] = ["view", "click", "start", "checkin", "complete", "rate"];

fn synthetic(i: usize, args: &Args) -> EventRecord {
    // A cheap deterministic scramble so users and items are not in lockstep.
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let kind = KINDS[(h >> 7) as usize % KINDS.len()];
    EventRecord {
        event_id: Some(format!("ev-{i}")),
        user_id: format!("user-{}", (h >> 17) as usize % args.users),
        item_id: Some(format!("item-{}", (h >> 37) as usize % args.items)),
        kind: kind.into(),
        value: (kind == "rate").then_some(((h >> 3) % 5) as f32 + 1.0),
        ts_ms: 1_700_000_000_000 + i as i64 * 10,
        recommendation_id: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let cfg = match args.kind {
        Kind::Embedded => {
            if args.path.exists() {
                std::fs::remove_dir_all(&args.path)?;
            }
            StoreConfig {
                kind: StoreKind::Embedded,
                path: args.path.clone(),
                ..StoreConfig::default()
            }
        }
        Kind::Postgres => {
            drop_schema(&url, &args.schema).await?;
            StoreConfig {
                kind: StoreKind::Postgres,
                url: Some(url.clone()),
                schema: Some(args.schema.clone()),
                ..StoreConfig::default()
            }
        }
    };
    let store = Store::open(&cfg).await?;
    println!(
        "store_bench: kind={:?} events={} batch={} page={}",
        args.kind, args.events, args.batch, args.page
    );

    // Ingest: batches built ahead of the clock, appended one after another.
    let batches: Vec<Vec<EventRecord>> = (0..args.events)
        .step_by(args.batch.max(1))
        .map(|start| {
            (start..(start + args.batch).min(args.events))
                .map(|i| synthetic(i, &args))
                .collect()
        })
        .collect();
    let concurrency = args.concurrency.max(1);
    let mut lanes: Vec<Vec<Vec<EventRecord>>> = (0..concurrency).map(|_| Vec::new()).collect();
    for (i, batch) in batches.into_iter().enumerate() {
        lanes[i % concurrency].push(batch);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in lanes {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(lane.len());
            for batch in &lane {
                let t = Instant::now();
                store.append_events(batch).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, momentum::store::StoreError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let ingest = started.elapsed();
    latencies.sort();
    let pct = |p: f64| -> Duration {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "ingest ({concurrency} appender(s)): {} events in {:.2} s = {:.0} events/s; append latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.events,
        ingest.as_secs_f64(),
        args.events as f64 / ingest.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
    );

    // Restore-style read of the whole log: `read_log` (read-ahead), then `events_after` paging.
    let started = Instant::now();
    let mut reader = store.read_log(0, args.page);
    let mut read = 0usize;
    let mut checksum = 0u64;
    while let Some(page) = reader.next_page().await {
        let page = page?;
        read += page.len();
        checksum = checksum.wrapping_add(page.iter().map(|e| e.event.ts_ms as u64).sum());
    }
    report("read_log", read, started.elapsed(), checksum, args.events)?;

    let started = Instant::now();
    let mut after = 0;
    let mut read = 0usize;
    let mut checksum = 0u64;
    loop {
        let page = store.events_after(after, args.page).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        read += page.len();
        checksum = checksum.wrapping_add(page.iter().map(|e| e.event.ts_ms as u64).sum());
    }
    report(
        "events_after paging",
        read,
        started.elapsed(),
        checksum,
        args.events,
    )?;

    drop(store);
    if !args.keep {
        match args.kind {
            Kind::Embedded => std::fs::remove_dir_all(&args.path)?,
            Kind::Postgres => drop_schema(&url, &args.schema).await?,
        }
    }
    Ok(())
}

fn report(
    how: &str,
    read: usize,
    took: Duration,
    checksum: u64,
    expected: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let rate = read as f64 / took.as_secs_f64();
    println!(
        "restore read ({how}): {read} events in {:.2} s = {rate:.0} events/s; \
         10M events at this rate: {:.1} s (checksum {checksum})",
        took.as_secs_f64(),
        10_000_000.0 / rate,
    );
    if read != expected {
        return Err(format!("read {read} events, appended {expected}").into());
    }
    Ok(())
}

async fn drop_schema(url: &str, schema: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await?;
    Ok(())
}
