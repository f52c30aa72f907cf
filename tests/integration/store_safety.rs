//! Store safety over the real binary: one writer per PostgreSQL schema (a second server fails to
//! start with one clear line, waits for the first with `store.lock_wait_secs`, and a server
//! that lost its lock can no longer write), and damaged embedded store files (the server
//! refuses them with one line and a non-zero exit; `momentum store recover` brings them back).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ADMIN_KEY: &str = "store-safety-key";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn fresh_schema() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("momentum_safety_{:016x}", h.finish())
}

async fn pg() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at DATABASE_URL is required");
    actix_web::rt::spawn(connection);
    client
}

/// The `momentum` binary as a child process, its stderr collected.
struct Server {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    addr: std::sync::mpsc::Receiver<String>,
    base: Option<String>,
}

/// Environment of a server on an embedded store in `dir`.
fn embedded_env(dir: &Path) -> Vec<(&'static str, String)> {
    vec![("MOMENTUM__STORE__PATH", dir.display().to_string())]
}

/// Environment of a server on PostgreSQL `schema`.
fn postgres_env(schema: &str, lock_wait_secs: u64) -> Vec<(&'static str, String)> {
    vec![
        ("MOMENTUM__STORE__KIND", "postgres".into()),
        ("MOMENTUM__STORE__URL", database_url()),
        ("MOMENTUM__STORE__SCHEMA", schema.into()),
        ("MOMENTUM__STORE__POOL_SIZE", "2".into()),
        (
            "MOMENTUM__STORE__LOCK_WAIT_SECS",
            lock_wait_secs.to_string(),
        ),
    ]
}

fn spawn(env: &[(&'static str, String)], args: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_momentum"));
    cmd.args(args)
        .env("MOMENTUM__SERVER__BIND", "127.0.0.1:0")
        .env("MOMENTUM__SERVER__WORKERS", "1")
        .env("MOMENTUM__ACTORS__SHARDS", "2")
        .env("MOMENTUM__ACTORS__THREADS", "1")
        .env("MOMENTUM__SNAPSHOT__INTERVAL_SECS", "0")
        .env("MOMENTUM__SECURITY__ADMIN_KEY", ADMIN_KEY)
        .env("MOMENTUM__LOGGING__FORMAT", "plain")
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn momentum");
    let pipe = child.stderr.take().expect("stderr");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let lines = stderr.clone();
    let (tx, addr) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(a) = line.split("addr=").nth(1) {
                let _ = tx.send(a.split_whitespace().next().unwrap_or("").to_string());
            }
            lines.lock().expect("stderr lines").push(line);
        }
    });
    Server {
        child,
        stderr,
        addr,
        base: None,
    }
}

impl Server {
    /// Waits until the server listens and is ready.
    async fn ready(&mut self, within: Duration) -> String {
        let addr = self
            .addr
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("server did not listen: {:?}", self.lines()));
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        for _ in 0..1000 {
            if let Ok(res) = client.get(format!("{base}/readyz")).send().await {
                if res.status().as_u16() == 200 {
                    self.base = Some(base.clone());
                    return base;
                }
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server not ready: {:?}", self.lines());
    }

    /// Waits (bounded) for the process to exit by itself.
    fn exits(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status.
    fn stop(&mut self) -> ExitStatus {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        self.exits(Duration::from_secs(30))
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lines").clone()
    }

    fn last_line(&self) -> String {
        self.lines().last().cloned().unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post_events(base: &str, events: &Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .json(events)
        .send()
        .await
        .expect("post");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("get");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn batch(prefix: &str, n: usize) -> Value {
    json!((0..n)
        .map(|k| json!({"event_id": format!("{prefix}{k}"), "user_id": format!("{prefix}u{}", k % 20), "item_id": format!("i{}", k % 15), "kind": "complete"}))
        .collect::<Vec<_>>())
}

/// The PostgreSQL backend holding `schema`'s writer lock.
async fn lock_holder(client: &tokio_postgres::Client, schema: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = 1297042757::int8::oid AND objsubid = 2 \
             AND objid = (hashtext('momentum.writer:' || $1::text)::int8 & 4294967295)::oid",
            &[&schema],
        )
        .await
        .expect("pg_locks")
        .map(|r| r.get(0))
}

#[actix_web::test]
async fn a_second_server_on_a_postgres_schema_fails_to_start_then_takes_over() {
    let schema = fresh_schema();
    let mut first = spawn(&postgres_env(&schema, 0), &[]);
    let base = first.ready(Duration::from_secs(30)).await;
    assert_eq!(post_events(&base, &batch("a", 10)).await.0, 200);

    // A second server on the same schema: one line naming the schema, non-zero exit.
    let mut second = spawn(&postgres_env(&schema, 1), &[]);
    let status = second.exits(Duration::from_secs(30));
    assert!(!status.success(), "{:?}", second.lines());
    let line = second.last_line();
    assert!(
        line.starts_with("momentum: another Momentum server holds the store postgres schema")
            && line.contains(&format!("{schema:?}"))
            && line.contains("held by PostgreSQL backend")
            && line.contains("stop it first"),
        "{line}"
    );
    assert!(
        second.addr.try_recv().is_err(),
        "the second server listened"
    );

    // A rolling deploy: the next server waits for the lock while the first still runs...
    let mut third = spawn(&postgres_env(&schema, 60), &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(third.child.try_wait().expect("wait").is_none());
    assert!(
        third.addr.try_recv().is_err(),
        "took the store while it was held"
    );
    // ...and takes over once the first stopped (after its final snapshot).
    assert!(first.stop().success(), "{:?}", first.lines());
    let base = third.ready(Duration::from_secs(30)).await;
    let (status, body) = post_events(&base, &batch("a", 10)).await;
    assert_eq!(
        (status, body["duplicates"].clone()),
        (200, json!(10)),
        "{body}"
    );
    assert!(third.stop().success());

    pg().await
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop schema");
}

#[actix_web::test]
async fn a_server_that_lost_its_lock_cannot_write() {
    let schema = fresh_schema();
    let admin = pg().await;
    let mut old = spawn(&postgres_env(&schema, 0), &[]);
    let old_base = old.ready(Duration::from_secs(30)).await;
    assert_eq!(post_events(&old_base, &batch("a", 10)).await.0, 200);

    // The old server's lock connection dies (a network cut, an idle timeout)...
    let pid = lock_holder(&admin, &schema)
        .await
        .expect("the lock is held");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    // ...and a new server takes the schema.
    let mut new = spawn(&postgres_env(&schema, 10), &[]);
    let new_base = new.ready(Duration::from_secs(30)).await;
    assert_eq!(post_events(&new_base, &batch("b", 10)).await.0, 200);

    // The old server's next append is refused, not acknowledged.
    let (status, body) = post_events(&old_base, &batch("c", 10)).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal", "{body}");
    // Nor can it write a snapshot.
    let res = reqwest::Client::new()
        .post(format!("{old_base}/v1/admin/snapshot"))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await
        .expect("snapshot");
    assert_eq!(res.status().as_u16(), 500);
    // Its final snapshot fails too, and the exit status says so.
    let status = old.stop();
    assert!(!status.success(), "{:?}", old.lines());
    let lines = old.lines().join("\n");
    assert!(lines.contains("no longer the writer"), "{lines}");
    assert!(lines.contains("final snapshot failed"), "{lines}");

    // Restart on the schema: what the new server acknowledged is there, the refused batch is
    // not.
    assert!(new.stop().success(), "{:?}", new.lines());
    let mut next = spawn(&postgres_env(&schema, 10), &[]);
    let base = next.ready(Duration::from_secs(30)).await;
    for prefix in ["a", "b"] {
        let (status, body) = post_events(&base, &batch(prefix, 10)).await;
        assert_eq!(
            (status, body["duplicates"].clone()),
            (200, json!(10)),
            "{body}"
        );
    }
    assert_eq!(get(&base, "/v1/users/cu0").await.0, 404);
    let refused: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM {schema}.events WHERE event_id LIKE 'c%'"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(refused, 0);
    assert!(next.stop().success());
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop schema");
}

/// A real store written by a real server: 600 events and the snapshot of its clean stop.
async fn written_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut server = spawn(&embedded_env(&data), &[]);
    let base = server.ready(Duration::from_secs(30)).await;
    for b in 0..6 {
        assert_eq!(
            post_events(&base, &batch(&format!("s{b}-"), 100)).await.0,
            200
        );
    }
    assert!(server.stop().success(), "{:?}", server.lines());
    (dir, data)
}

/// Offsets of the pages (4 KiB) holding `needle`: the live one among them, whichever it is
/// (copy-on-write leaves stale copies in free pages).
fn pages_of(bytes: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut pages: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at / 4096 * 4096)
        .collect();
    pages.dedup();
    assert!(!pages.is_empty(), "needle in the file");
    pages
}

fn damage(kind: &str, file: &Path) {
    let mut bytes = std::fs::read(file).expect("read store");
    let len = bytes.len();
    match kind {
        "zero-length" => bytes.clear(),
        "truncated" => bytes.truncate(len / 2),
        "appended junk" => {
            bytes.extend((0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8))
        }
        "flipped bits" => {
            // In live data: the pages holding one user's events and snapshot part.
            for page in pages_of(&bytes, b"s3-u7") {
                for i in 0..16 {
                    bytes[page + 64 + i * 211] ^= 1 << (i % 8);
                }
            }
        }
        "random bytes in the middle" => {
            let mut x = 0x9e37_79b9_u32;
            for page in pages_of(&bytes, b"s2-u5") {
                for b in &mut bytes[page + 16..page + 2064] {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *b = x as u8;
                }
            }
        }
        other => panic!("unknown damage {other}"),
    }
    std::fs::write(file, bytes).expect("write damaged store");
}

fn run(args: &[&str], env: &[(&'static str, String)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_momentum"));
    cmd.args(args).env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run momentum");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn damaged_store_is_refused_and_recovered(kind: &str) {
    let (_dir, data) = written_store().await;
    let file = data.join("momentum.redb");
    damage(kind, &file);

    // The server refuses it: non-zero exit, one line naming the file and the command.
    let mut server = spawn(&embedded_env(&data), &[]);
    let status = server.exits(Duration::from_secs(30));
    assert!(!status.success(), "{kind}: {:?}", server.lines());
    let line = server.last_line();
    assert!(
        line.starts_with("momentum: the embedded store file ")
            && line.contains(&file.display().to_string())
            && line.contains("momentum store recover"),
        "{kind}: {line}"
    );
    assert!(server.addr.try_recv().is_err(), "{kind}: it listened");
    drop(server);

    // `store check` says it is damaged; `store recover` rebuilds it; the server starts.
    let env = embedded_env(&data);
    let (ok, out) = run(&["store", "check"], &env);
    assert!(!ok, "{kind}: {out}");
    let (ok, out) = run(&["store", "recover"], &env);
    assert!(ok, "{kind}: {out}");
    let kept = std::fs::read_dir(&data)
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("momentum.redb.damaged-")
        });
    assert!(kept, "{kind}: the damaged file is kept");
    let (ok, out) = run(&["store", "check"], &env);
    assert!(ok, "{kind}: {out}");
    let mut server = spawn(&env, &[]);
    let base = server.ready(Duration::from_secs(30)).await;
    if kind == "appended junk" {
        // Nothing was lost: every event is still there.
        for b in 0..6 {
            let (_, body) = post_events(&base, &batch(&format!("s{b}-"), 100)).await;
            assert_eq!(body["duplicates"], 100, "{kind}: {body}");
        }
    }
    // It takes writes and stops cleanly.
    assert_eq!(post_events(&base, &batch("after-", 5)).await.0, 200);
    assert!(server.stop().success(), "{kind}: {:?}", server.lines());
}

#[actix_web::test]
async fn zero_length_store_file_is_refused_and_recovered() {
    damaged_store_is_refused_and_recovered("zero-length").await;
}

#[actix_web::test]
async fn truncated_store_file_is_refused_and_recovered() {
    damaged_store_is_refused_and_recovered("truncated").await;
}

#[actix_web::test]
async fn store_file_with_appended_junk_is_refused_and_recovered() {
    damaged_store_is_refused_and_recovered("appended junk").await;
}

#[actix_web::test]
async fn store_file_with_flipped_bits_is_refused_and_recovered() {
    damaged_store_is_refused_and_recovered("flipped bits").await;
}

#[actix_web::test]
async fn store_file_with_random_bytes_in_the_middle_is_refused_and_recovered() {
    damaged_store_is_refused_and_recovered("random bytes in the middle").await;
}
