//! Partition snapshots in PostgreSQL: one row per partition holding the rows and recent event
//! ids of its users as of an offset of its log. The upsert only lets a higher offset replace
//! the row — that is the fencing: a stalled former owner, whose state is older, can never
//! overwrite its successor's snapshot (and a state at a higher offset is the same function of
//! the same log prefix, whoever computed it). A new owner loads the snapshot and replays from
//! its offset + 1.

use std::sync::Arc;

use momentum_actors::engine::EngineExport;
use momentum_actors::index::UserProfile;
use momentum_actors::snapshot::{
    decode_dedupe, decode_item_slots, decode_user_chunk, encode_dedupe, encode_item_slots,
    encode_user_chunk, DecodeError,
};

use crate::error::Error;

/// The table, created if missing.
const TABLE: &str = "momentum_partition_snapshots";

/// A connection to the snapshot table.
#[derive(Debug)]
pub struct SnapshotStore {
    client: tokio_postgres::Client,
    table: String,
}

/// A failure of `context` on `table`.
pub(super) fn pg<'a>(
    table: &'a str,
    context: &'a str,
) -> impl FnOnce(tokio_postgres::Error) -> Error + 'a {
    move |e| Error::failed(format!("{table}: {context}"), e)
}

/// A connection to one of the cluster's tables in PostgreSQL.
pub trait Table: Sized {
    /// Connects (the connection runs on the current runtime) and creates the table if needed.
    fn connect(
        url: &str,
        schema: &str,
    ) -> impl std::future::Future<Output = Result<Self, Error>> + Send;

    /// Whether the connection is gone (the next use reconnects).
    fn is_closed(&self) -> bool;
}

/// A [`Table`]'s connection, made on first use (at `cluster.snapshot_url`, schema
/// `cluster.snapshot_schema`) and again once it closed.
#[derive(Debug)]
pub struct Lazy<T> {
    store: parking_lot::Mutex<Option<std::sync::Arc<T>>>,
}

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy {
            store: parking_lot::Mutex::new(None),
        }
    }
}

impl<T: Table> Lazy<T> {
    pub async fn get(&self, cluster: &super::Cluster) -> Result<std::sync::Arc<T>, Error> {
        if let Some(store) = self.store.lock().clone().filter(|s| !s.is_closed()) {
            return Ok(store);
        }
        let settings = cluster.settings();
        let url = settings.snapshot_url().ok_or_else(|| Error::Config {
            message: "cluster.snapshot_url (or DATABASE_URL) is not set".into(),
        })?;
        let store = std::sync::Arc::new(T::connect(&url, &settings.snapshot_schema).await?);
        *self.store.lock() = Some(store.clone());
        Ok(store)
    }
}

/// `table` in `schema` as an SQL name (`[A-Za-z0-9_]`, checked by the settings).
pub(super) fn qualified(schema: &str, table: &str) -> String {
    if schema.is_empty() {
        table.to_owned()
    } else {
        format!("\"{schema}\".{table}")
    }
}

/// Connects to the cluster's PostgreSQL (the connection runs on the current runtime) and
/// runs `ddl` (given the qualified table name) after creating `schema` if it is named;
/// returns the client and the qualified name.
pub(super) async fn connect(
    url: &str,
    schema: &str,
    table: &str,
    ddl: impl FnOnce(&str) -> String,
) -> Result<(tokio_postgres::Client, String), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "cluster PostgreSQL connection closed");
        }
    });
    let table = qualified(schema, table);
    // Nodes start together: two concurrent `CREATE … IF NOT EXISTS` of one name can both find
    // it missing, and the second fails on PostgreSQL's catalogue (`pg_type_typname_nsp_index`).
    // The set-up runs in one transaction under the advisory lock of the store's migrations
    // for the same schema (`store::postgres`), one process at a time. The schema is checked
    // to be `[A-Za-z0-9_]` by the settings, so it can stand in the SQL text.
    let mut sql = format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('momentum.migrations:' || \
         coalesce(nullif('{schema}', ''), current_schema())));"
    );
    if !schema.is_empty() {
        sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";"));
    }
    sql.push_str(&ddl(&table));
    sql.push_str(";COMMIT;");
    client.batch_execute(&sql).await?;
    Ok((client, table))
}

impl SnapshotStore {
    /// Connects (the connection runs on the current runtime) and creates the table if needed.
    pub async fn connect(url: &str, schema: &str) -> Result<SnapshotStore, Error> {
        let (client, table) = connect(url, schema, TABLE, |table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    partition integer PRIMARY KEY,
                    log_offset bigint NOT NULL,
                    node_id text NOT NULL,
                    written_ms bigint NOT NULL,
                    body bytea NOT NULL)"
            )
        })
        .await
        .map_err(pg(TABLE, "connect"))?;
        Ok(SnapshotStore { client, table })
    }

    /// The snapshot of `partition`: its offset and body.
    pub async fn load(&self, partition: u32) -> Result<Option<(i64, Vec<u8>)>, Error> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT log_offset, body FROM {} WHERE partition = $1",
                    self.table
                ),
                &[&(partition as i32)],
            )
            .await
            .map_err(pg(TABLE, "load"))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Writes the snapshot of `partition` as of `offset` unless one at this or a higher
    /// offset is there; true if written.
    pub async fn save(
        &self,
        partition: u32,
        offset: i64,
        node_id: &str,
        written_ms: i64,
        body: &[u8],
    ) -> Result<bool, Error> {
        let written = self
            .client
            .execute(
                &format!(
                    "INSERT INTO {t} (partition, log_offset, node_id, written_ms, body)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (partition) DO UPDATE
                       SET log_offset = EXCLUDED.log_offset, node_id = EXCLUDED.node_id,
                           written_ms = EXCLUDED.written_ms, body = EXCLUDED.body
                       WHERE {t}.log_offset < EXCLUDED.log_offset",
                    t = self.table
                ),
                &[&(partition as i32), &offset, &node_id, &written_ms, &body],
            )
            .await
            .map_err(pg(TABLE, "save"))?;
        Ok(written == 1)
    }

    /// Whether the connection is gone (the caller reconnects).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// A partition's rows as bytes: four length-prefixed parts (item id table, user records,
/// recent event ids in the snapshot record formats of `actors/src/snapshot.rs`, then the
/// profiles as JSON `[[user_id, profile], …]`). Snapshots of older versions end after the
/// third part: they hold no profile.
pub fn encode(export: &EngineExport) -> Vec<u8> {
    let ids: Vec<_> = export.event_ids.iter().flatten().copied().collect();
    let profiles: Vec<(&str, _)> = export.profiles.iter().map(|(u, p)| (&**u, p)).collect();
    let profiles = serde_json::to_vec(&profiles).expect("profiles are JSON values");
    let parts = [
        encode_item_slots(&export.items),
        encode_user_chunk(&export.users),
        encode_dedupe(&ids),
        profiles,
    ];
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(&part);
    }
    out
}

/// The inverse of [`encode`].
pub fn decode(bytes: &[u8]) -> Result<EngineExport, DecodeError> {
    let mut rest = bytes;
    let items = decode_item_slots(take_part(&mut rest)?)?;
    let users = decode_user_chunk(take_part(&mut rest)?)?;
    let ids = decode_dedupe(take_part(&mut rest)?)?;
    let profiles = if rest.is_empty() {
        Vec::new()
    } else {
        let profiles: Vec<(String, UserProfile)> = serde_json::from_slice(take_part(&mut rest)?)
            .map_err(|_| DecodeError {
                reason: "partition snapshot profiles",
            })?;
        profiles
            .into_iter()
            .map(|(user_id, profile)| (Arc::from(user_id), profile))
            .collect()
    };
    Ok(EngineExport {
        items,
        users,
        event_ids: vec![ids],
        profiles,
    })
}

/// The next length-prefixed part of `rest`.
fn take_part<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let corrupt = DecodeError {
        reason: "partition snapshot framing",
    };
    let (len, tail) = rest.split_first_chunk::<8>().ok_or(corrupt.clone())?;
    let len = usize::try_from(u64::from_be_bytes(*len)).map_err(|_| corrupt.clone())?;
    if tail.len() < len {
        return Err(corrupt);
    }
    let (part, tail) = tail.split_at(len);
    *rest = tail;
    Ok(part)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_partition_round_trips_and_truncation_is_refused() {
        let export = EngineExport {
            items: vec![Some(Arc::from("run")), None, Some(Arc::from("read"))],
            users: vec![momentum_actors::snapshot::UserRecord {
                user_id: Arc::from("alice"),
                dense_id: 7,
                last_event_ms: Some(1_700_000_000_000),
                cells: Vec::new(),
                activity: Vec::new(),
            }],
            event_ids: vec![vec![(7, 42), (7, 43)]],
            profiles: vec![(
                Arc::from("alice"),
                momentum_actors::index::UserProfile {
                    locale: Some("en-GB".into()),
                    ..Default::default()
                },
            )],
        };
        let bytes = encode(&export);
        assert_eq!(decode(&bytes).expect("decodes"), export);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
        // A snapshot of an older version (three parts) decodes, with no profile.
        let profiles_len =
            br#"[["alice",{"preferences":{},"signup_date":null,"locale":"en-GB"}]]"#.len();
        let older = decode(&bytes[..bytes.len() - 8 - profiles_len]).expect("decodes");
        assert_eq!(older.users, export.users);
        assert!(older.profiles.is_empty());
    }

    /// The test database, and a fresh schema name in it.
    pub(in crate::cluster) fn test_schema() -> (String, String) {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        (url, format!("momentum_test_{:016x}", rand::random::<u64>()))
    }

    /// Runs `check` on `T`'s table in a fresh schema of the test database, and drops the
    /// schema whether `check` passes or panics.
    pub(in crate::cluster) async fn in_test_schema<T: Table>(check: impl AsyncFnOnce(&T)) {
        let (url, schema) = test_schema();
        let store = T::connect(&url, &schema)
            .await
            .expect("PostgreSQL at DATABASE_URL is required");
        let outcome =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(check(&store)))
                .await;
        drop_test_schema(&url, &schema).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// Drops a schema [`test_schema`] named.
    pub(in crate::cluster) async fn drop_test_schema(url: &str, schema: &str) {
        let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL at DATABASE_URL is required");
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await
            .expect("drop the test schema");
    }

    /// Nodes that start together set the tables up one at a time: every connect succeeds.
    #[tokio::test]
    async fn concurrent_connects_to_a_new_schema_all_succeed() {
        let (url, schema) = test_schema();
        let connects = (0..8).map(|_| SnapshotStore::connect(&url, &schema));
        let results = futures_util::future::join_all(connects).await;
        drop_test_schema(&url, &schema).await;
        for result in results {
            result.expect("connects");
        }
    }
}
