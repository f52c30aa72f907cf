//! `momentum store check` and `momentum store recover`: what an operator runs when the server
//! refuses a damaged store (docs/operations.md, "Store damage"). Both need the server stopped.
//!
//! **Embedded.** `check` works on a scratch copy of the file (redb's integrity check repairs in
//! place, and the original must stay as it is) and reports what is readable: the integrity
//! check, the event log, the snapshots and whether the newest matches its checksum, the other
//! tables. It exits non-zero unless everything is. `recover` moves the damaged file aside
//! (`momentum.redb.damaged-<unix ms>`, kept for forensics), salvages from a scratch copy into a
//! new file and puts that in place: the newest snapshot that matches its checksum, every event
//! of the log that can still be read and decoded, and the readable rows of the other tables.
//! The log keeps its sequence numbers (the new file's `last_seq` is the largest known), so
//! nothing is numbered twice. A file redb cannot open at all yields an empty store.
//!
//! **PostgreSQL.** `check` reads the newest snapshot against its checksum and the whole log;
//! `recover` deletes the snapshots that fail their checksum, so the next start restores the
//! newest intact one and replays the log after it.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

use super::codec::decode_event;
use super::embedded::{
    catch, read_meta, read_snapshot, CHURN_SCORES, DAMAGED_KEY, EVENTS, FILE_NAME, INTERVENTIONS,
    ITEMS, META, MODELS, SNAPSHOTS, SNAPSHOT_DIGESTS, SNAPSHOT_PARTS, SNAPSHOT_PART_USERS,
    TRAINING_ROWS, USERS, USER_SNAPSHOT_PARTS,
};
use super::{
    check_snapshot_digest, now_ms, snapshot_digest, SnapshotMeta, SnapshotPart, Store, StoreConfig,
    StoreError, StoreKind,
};

/// What `check` or `recover` found, for the operator.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per finding.
    pub lines: Vec<String>,
    /// `check`: the store is intact. `recover`: the rebuilt store is in place.
    pub ok: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

/// redb's page size (its default, which the store uses).
const PAGE: u64 = 4096;

/// Events read per chunk while salvaging the log.
const CHUNK: usize = 10_000;

/// `momentum store check`.
pub async fn check(cfg: &StoreConfig) -> Result<Report, StoreError> {
    match cfg.kind {
        StoreKind::Embedded => {
            let dir = cfg.path.clone();
            tokio::task::spawn_blocking(move || embedded(&dir, false))
                .await
                .map_err(|e| StoreError::Db {
                    message: format!("check task failed: {e}"),
                })?
        }
        StoreKind::Postgres => postgres(cfg, false).await,
    }
}

/// `momentum store recover`.
pub async fn recover(cfg: &StoreConfig) -> Result<Report, StoreError> {
    match cfg.kind {
        StoreKind::Embedded => {
            let dir = cfg.path.clone();
            tokio::task::spawn_blocking(move || embedded(&dir, true))
                .await
                .map_err(|e| StoreError::Db {
                    message: format!("recover task failed: {e}"),
                })?
        }
        StoreKind::Postgres => postgres(cfg, true).await,
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

fn redb_err(e: impl Into<redb::Error>) -> StoreError {
    super::embedded::db_err(e)
}

fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Checks (`write = false`) or recovers (`write = true`) the embedded store in `dir`.
fn embedded(dir: &Path, write: bool) -> Result<Report, StoreError> {
    let file = dir.join(FILE_NAME);
    let meta = std::fs::metadata(&file).map_err(io(format!("no store at {}", file.display())))?;
    let stamp = now_ms();
    let mut report = Report::default();
    report
        .lines
        .push(format!("store: {} ({} bytes)", file.display(), meta.len()));
    // The original is never opened: a scratch copy takes redb's in-place repair.
    let scratch = sibling(&file, &format!(".scratch-{stamp}"));
    let source = if write {
        let kept = sibling(&file, &format!(".damaged-{stamp}"));
        std::fs::rename(&file, &kept).map_err(io(format!("cannot move {}", file.display())))?;
        report
            .lines
            .push(format!("the damaged file is kept as {}", kept.display()));
        kept
    } else {
        file.clone()
    };
    std::fs::copy(&source, &scratch).map_err(io(format!(
        "cannot copy {} to {}",
        source.display(),
        scratch.display()
    )))?;
    let target = sibling(&file, &format!(".recovering-{stamp}"));
    let outcome = (|| {
        let dst = if write {
            Some(Database::create(&target).map_err(redb_err)?)
        } else {
            None
        };
        let intact = salvage(&scratch, meta.len(), dst.as_ref(), &mut report)?;
        drop(dst);
        Ok::<bool, StoreError>(intact)
    })();
    std::fs::remove_file(&scratch).ok();
    let intact = match outcome {
        Ok(intact) => intact,
        Err(e) => {
            std::fs::remove_file(&target).ok();
            if write {
                // Put the original back where it was: nothing was recovered.
                std::fs::rename(&source, &file).ok();
            }
            return Err(e);
        }
    };
    if write {
        std::fs::rename(&target, &file).map_err(io(format!(
            "cannot move the recovered store to {}",
            file.display()
        )))?;
        report.lines.push(format!(
            "recovered: {} is rebuilt; start the server",
            file.display()
        ));
        report.ok = true;
    } else {
        report.ok = intact;
        report.lines.push(if intact {
            "the store is intact".to_string()
        } else {
            "the store is damaged: stop the server if it runs, then `momentum store recover`"
                .to_string()
        });
    }
    Ok(report)
}

/// Reads everything readable from `src` (a scratch copy), copies it into `dst` if given, and
/// says whether the store was intact.
fn salvage(
    src: &Path,
    len: u64,
    dst: Option<&Database>,
    report: &mut Report,
) -> Result<bool, StoreError> {
    if len == 0 {
        report
            .lines
            .push("the file is empty: there is nothing to read".into());
        if let Some(dst) = dst {
            write_meta(dst, 0)?;
        }
        return Ok(false);
    }
    let mut opened = catch(|| Database::builder().open(src));
    let aligned = len / PAGE * PAGE;
    if !matches!(opened, Ok(Ok(_))) && aligned != len && aligned > 0 {
        // Bytes appended after the last page stop redb from opening the file: without them
        // (on the scratch copy) it may open.
        let cut = std::fs::OpenOptions::new()
            .write(true)
            .open(src)
            .and_then(|f| f.set_len(aligned));
        if cut.is_ok() {
            report.lines.push(format!(
                "{} bytes after the last whole page are ignored",
                len - aligned
            ));
            opened = catch(|| Database::builder().open(src));
        }
    }
    let mut db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => {
            report.lines.push(format!(
                "redb cannot open the file ({e}): nothing is readable"
            ));
            if let Some(dst) = dst {
                write_meta(dst, 0)?;
            }
            return Ok(false);
        }
        Err(_) => {
            report
                .lines
                .push("redb fails opening the file: nothing is readable".into());
            if let Some(dst) = dst {
                write_meta(dst, 0)?;
            }
            return Ok(false);
        }
    };
    let mut intact = true;
    match catch(|| db.check_integrity()) {
        Ok(Ok(true)) => report.lines.push("integrity check: passed".into()),
        Ok(Ok(false)) => {
            intact = false;
            report.lines.push(
                "integrity check: failed; redb rolled the copy back to its last intact commit"
                    .into(),
            );
        }
        Ok(Err(e)) => {
            intact = false;
            report.lines.push(format!(
                "integrity check: failed ({e}); reading what is left"
            ));
        }
        Err(_) => {
            intact = false;
            report
                .lines
                .push("integrity check: redb failed; reading what is left".into());
        }
    }
    if !matches!(catch(|| read_meta(&db, DAMAGED_KEY)), Ok(Ok(None))) {
        intact = false;
        report
            .lines
            .push("the server marked this store damaged at an earlier start".into());
    }
    let last_seq = match catch(|| read_meta(&db, "last_seq")) {
        Ok(Ok(seq)) => seq,
        _ => {
            intact = false;
            report.lines.push("last_seq: unreadable".into());
            None
        }
    };

    // The event log, chunk by chunk; past an unreadable place, key by key.
    let (events, max_seq, lost) = salvage_events(&db, last_seq, dst)?;
    if lost > 0 {
        intact = false;
    }
    report.lines.push(format!(
        "event log: {events} events readable, {lost} unreadable, last sequence number {}",
        last_seq.map_or_else(|| "unknown".to_string(), |s| s.to_string())
    ));

    // Snapshots: the newest that matches its checksum.
    let mut ids = Vec::new();
    let listed = catch(|| -> Result<(), StoreError> {
        let txn = db.begin_read().map_err(redb_err)?;
        let snapshots = match txn.open_table(SNAPSHOTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(redb_err(e)),
        };
        for entry in snapshots.iter().map_err(redb_err)? {
            ids.push(entry.map_err(redb_err)?.0.value());
        }
        Ok(())
    });
    if !matches!(listed, Ok(Ok(()))) {
        intact = false;
        report
            .lines
            .push("snapshots: the list is partly unreadable".into());
    }
    let mut chosen: Option<(SnapshotMeta, Vec<SnapshotPart>)> = None;
    for (rank, &id) in ids.iter().rev().enumerate() {
        let read = catch(|| -> Result<_, StoreError> {
            let txn = db.begin_read().map_err(redb_err)?;
            read_snapshot(&txn, Some(id))
        });
        let verdict = match read {
            Ok(Ok(Some((meta, parts, digest)))) => {
                match check_snapshot_digest(id, &parts, digest.as_deref(), "the store") {
                    Ok(()) => Ok((meta, parts)),
                    Err(_) => Err("does not match its checksum"),
                }
            }
            Ok(Ok(None)) => Err("is missing"),
            _ => Err("is unreadable"),
        };
        match verdict {
            Ok((meta, parts)) => {
                report.lines.push(format!(
                    "snapshot {id}: intact ({} parts, covers the log up to {})",
                    parts.len(),
                    meta.covers_seq
                ));
                chosen = Some((meta, parts));
                break;
            }
            Err(why) => {
                if rank == 0 {
                    intact = false;
                }
                report.lines.push(format!("snapshot {id}: {why}"));
            }
        }
    }
    if ids.is_empty() {
        report.lines.push("snapshots: none".into());
    } else if chosen.is_none() {
        report.lines.push(
            "no intact snapshot: a recovered store replays the readable log from the start".into(),
        );
    }

    // The other tables.
    let mut rows = Vec::new();
    for (name, result) in [
        ("users", copy_table(&db, dst, USERS)),
        ("items", copy_table(&db, dst, ITEMS)),
        ("training_rows", copy_table(&db, dst, TRAINING_ROWS)),
        ("models", copy_table(&db, dst, MODELS)),
        ("interventions", copy_table(&db, dst, INTERVENTIONS)),
        ("churn_scores", copy_table(&db, dst, CHURN_SCORES)),
    ] {
        let (n, complete) = result?;
        if !complete {
            intact = false;
        }
        rows.push(format!(
            "{name} {n}{}",
            if complete { "" } else { " (rest unreadable)" }
        ));
    }
    report.lines.push(format!("rows: {}", rows.join(", ")));

    if let Some(dst) = dst {
        let covers = chosen.as_ref().map_or(0, |(m, _)| m.covers_seq);
        if let Some((meta, parts)) = &chosen {
            write_snapshot(dst, meta, parts)?;
        }
        write_meta(dst, last_seq.unwrap_or(0).max(max_seq).max(covers))?;
    }
    Ok(intact)
}

/// Copies the readable events into `dst`; returns (events, largest seq, unreadable entries).
fn salvage_events(
    db: &Database,
    last_seq: Option<u64>,
    dst: Option<&Database>,
) -> Result<(u64, u64, u64), StoreError> {
    let (mut count, mut max_seq, mut lost) = (0u64, 0u64, 0u64);
    let mut from = 1u64;
    let mut keep = |chunk: Vec<(u64, Vec<u8>)>, lost: &mut u64| -> Result<(), StoreError> {
        let good: Vec<_> = chunk
            .into_iter()
            .filter(|(_, bytes)| {
                let ok = decode_event(bytes).is_ok();
                if !ok {
                    *lost += 1;
                }
                ok
            })
            .collect();
        count += good.len() as u64;
        if let Some(last) = good.last() {
            max_seq = max_seq.max(last.0);
        }
        if let Some(dst) = dst {
            let txn = dst.begin_write().map_err(redb_err)?;
            {
                let mut events = txn.open_table(EVENTS).map_err(redb_err)?;
                for (seq, bytes) in &good {
                    events.insert(*seq, bytes.as_slice()).map_err(redb_err)?;
                }
            }
            txn.commit().map_err(redb_err)?;
        }
        Ok(())
    };
    loop {
        let mut chunk: Vec<(u64, Vec<u8>)> = Vec::new();
        let read = catch(|| -> Result<(), StoreError> {
            let txn = db.begin_read().map_err(redb_err)?;
            let events = txn.open_table(EVENTS).map_err(redb_err)?;
            for entry in events.range(from..).map_err(redb_err)?.take(CHUNK) {
                let (seq, bytes) = entry.map_err(redb_err)?;
                chunk.push((seq.value(), bytes.value().to_vec()));
            }
            Ok(())
        });
        let failed = !matches!(read, Ok(Ok(())));
        let next = chunk.last().map_or(from, |(seq, _)| seq + 1);
        let full = chunk.len() == CHUNK;
        keep(chunk, &mut lost)?;
        if !failed {
            if !full {
                return Ok((count, max_seq, lost));
            }
            from = next;
            continue;
        }
        // Unreadable from `next` on: probe key by key up to the last known sequence number
        // until one reads again, then go on in chunks from there.
        lost += 1;
        let end = last_seq.unwrap_or(0).max(next);
        let mut seq = next + 1;
        let mut resumed = false;
        while seq <= end {
            let got = catch(|| -> Result<Option<Vec<u8>>, StoreError> {
                let txn = db.begin_read().map_err(redb_err)?;
                let events = txn.open_table(EVENTS).map_err(redb_err)?;
                let value = events.get(seq).map_err(redb_err)?;
                Ok(value.map(|v| v.value().to_vec()))
            });
            match got {
                Ok(Ok(Some(bytes))) => {
                    keep(vec![(seq, bytes)], &mut lost)?;
                    from = seq + 1;
                    resumed = true;
                    break;
                }
                Ok(Ok(None)) => {}
                _ => lost += 1,
            }
            seq += 1;
        }
        if !resumed {
            return Ok((count, max_seq, lost));
        }
    }
}

/// Copies the readable rows of one table (in key order, up to the first unreadable one);
/// returns (rows, whether the table was read to its end).
fn copy_table<K, V>(
    db: &Database,
    dst: Option<&Database>,
    def: TableDefinition<K, V>,
) -> Result<(u64, bool), StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    // First count what reads (a panic stops the count), then copy exactly that many.
    let mut readable = 0u64;
    let counted = catch(|| -> Result<(), StoreError> {
        let txn = db.begin_read().map_err(redb_err)?;
        let table = match txn.open_table(def) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(redb_err(e)),
        };
        for entry in table.iter().map_err(redb_err)? {
            entry.map_err(redb_err)?;
            readable += 1;
        }
        Ok(())
    });
    let complete = matches!(counted, Ok(Ok(())));
    if let (Some(dst), true) = (dst, readable > 0) {
        let txn = dst.begin_write().map_err(redb_err)?;
        {
            let src = db.begin_read().map_err(redb_err)?;
            let table = src.open_table(def).map_err(redb_err)?;
            let mut out = txn.open_table(def).map_err(redb_err)?;
            let take = usize::try_from(readable).unwrap_or(usize::MAX);
            for entry in table.iter().map_err(redb_err)?.take(take) {
                let (k, v) = entry.map_err(redb_err)?;
                out.insert(k.value(), v.value()).map_err(redb_err)?;
            }
        }
        txn.commit().map_err(redb_err)?;
    }
    Ok((readable, complete))
}

fn write_snapshot(
    dst: &Database,
    meta: &SnapshotMeta,
    parts: &[SnapshotPart],
) -> Result<(), StoreError> {
    let digest = snapshot_digest(parts);
    let txn = dst.begin_write().map_err(redb_err)?;
    {
        txn.open_table(SNAPSHOTS)
            .map_err(redb_err)?
            .insert(meta.id, (meta.covers_seq, meta.created_ms))
            .map_err(redb_err)?;
        txn.open_table(SNAPSHOT_DIGESTS)
            .map_err(redb_err)?
            .insert(meta.id, digest.as_slice())
            .map_err(redb_err)?;
        let mut stored = txn.open_table(SNAPSHOT_PARTS).map_err(redb_err)?;
        let mut owners = txn.open_table(SNAPSHOT_PART_USERS).map_err(redb_err)?;
        let mut by_user = txn.open_table(USER_SNAPSHOT_PARTS).map_err(redb_err)?;
        for part in parts {
            let key = part.key.as_str();
            stored
                .insert((meta.id, key), part.bytes.as_slice())
                .map_err(redb_err)?;
            if let Some(user) = &part.user_id {
                owners
                    .insert((meta.id, key), user.as_str())
                    .map_err(redb_err)?;
                by_user
                    .insert((user.as_str(), meta.id, key), ())
                    .map_err(redb_err)?;
            }
        }
    }
    txn.commit().map_err(redb_err)
}

/// The `meta` rows and every table of a rebuilt store.
fn write_meta(dst: &Database, last_seq: u64) -> Result<(), StoreError> {
    let txn = dst.begin_write().map_err(redb_err)?;
    txn.open_table(META)
        .map_err(redb_err)?
        .insert("last_seq", last_seq)
        .map_err(redb_err)?;
    txn.commit().map_err(redb_err)?;
    super::embedded::migrate(dst)
}

/// PostgreSQL: checks the newest snapshot and the log; `recover` deletes the snapshots that
/// fail their checksum, newest first, until the newest left is intact.
async fn postgres(cfg: &StoreConfig, write: bool) -> Result<Report, StoreError> {
    let cfg = StoreConfig {
        lock_wait_secs: 0,
        ..cfg.clone()
    };
    let store = Store::open(&cfg).await?;
    let Store::Postgres(pg) = &store else {
        unreachable!("opened as PostgreSQL");
    };
    let mut report = Report {
        lines: vec![format!(
            "store: postgres schema {:?}",
            cfg.schema.as_deref().unwrap_or("public")
        )],
        ok: true,
    };
    let last = store.last_seq().await?;
    let mut reader = store.read_log(0, CHUNK);
    let mut events = 0u64;
    while let Some(page) = reader.next_page().await {
        events += page?.len() as u64;
    }
    report.lines.push(format!(
        "event log: {events} events readable, last sequence number {last}"
    ));
    loop {
        match store.latest_snapshot().await {
            Ok(None) => {
                report.lines.push("snapshots: none intact left".into());
                break;
            }
            Ok(Some((meta, parts))) => {
                report.lines.push(format!(
                    "snapshot {}: intact ({} parts, covers the log up to {})",
                    meta.id,
                    parts.len(),
                    meta.covers_seq
                ));
                break;
            }
            Err(StoreError::Damaged { .. }) => {
                report.ok = false;
                let id = pg.newest_snapshot_id().await?.unwrap_or(0);
                report
                    .lines
                    .push(format!("snapshot {id}: does not match its checksum"));
                if !write {
                    break;
                }
                pg.delete_snapshot(id).await?;
                report.lines.push(format!("snapshot {id}: deleted"));
            }
            Err(e) => return Err(e),
        }
    }
    if write {
        report.ok = true;
        report
            .lines
            .push("recovered: start the server (it restores the newest intact snapshot)".into());
    } else {
        report.lines.push(if report.ok {
            "the store is intact".to_string()
        } else {
            "the store is damaged: stop the server, then `momentum store recover`".to_string()
        });
    }
    Ok(report)
}
