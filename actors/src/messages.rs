//! Messages between the HTTP layer, the shards and the catalogue. Request messages carry a
//! `oneshot` reply channel so they can go through a bounded [`crate::mailbox::Mailbox`].

use std::sync::Arc;

use actix::Message;
use tokio::sync::oneshot;

use crate::index::{ItemMeta, UserProfile, UserVector};
use crate::recommend::{Blend, Recommendations};
use crate::snapshot::{DedupeEntry, UserChunks, UserRecord};
use momentum_models::events::EventKind;
use momentum_models::similarity::Neighbour;

/// An event whose ids are interned, routed to the shard of its user.
#[derive(Debug, Clone)]
pub struct InternedEvent {
    /// Position in the client's batch, for the report.
    pub index: usize,
    pub event_id: Option<Box<str>>,
    pub user: u32,
    pub item: Option<u32>,
    pub kind: EventKind,
    pub value: Option<f32>,
    pub ts_ms: i64,
}

/// What a shard did with its part of a batch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ShardOutcome {
    pub accepted: usize,
    /// Batch positions of events whose `event_id` was already applied.
    pub duplicates: Vec<usize>,
}

/// The change of one user's row caused by a batch: every cell whose weight moved.
#[derive(Debug, Clone)]
pub struct RowDelta {
    pub user: u32,
    /// (item, old weight, new weight), old ≠ new.
    pub changes: Vec<(u32, f32, f32)>,
    /// The user's vector after the batch.
    pub after: Arc<UserVector>,
}

/// Apply events to the shard that owns their users.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RecordEvents {
    pub events: Vec<InternedEvent>,
    pub reply: oneshot::Sender<ShardOutcome>,
}

/// Apply events to their users' rows only, and hand the item side back to the caller instead
/// of the catalogue (cluster mode: the item side travels through the cluster's log, and every
/// node applies it with [`ApplyItemDeltas`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RecordEventsDetached {
    pub events: Vec<InternedEvent>,
    pub reply: oneshot::Sender<(ShardOutcome, Vec<RowDelta>)>,
}

/// Forget users' rows, recent event ids and caches, leaving their published vectors and
/// their weights in the catalogue as they are (cluster mode: the users moved to another
/// node, which now keeps them). `accepted` of the outcome counts the rows dropped.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DropRows {
    pub users: Vec<u32>,
    pub reply: oneshot::Sender<ShardOutcome>,
}

/// What [`ExportRows`] answers: the rows, their recent event ids, and the profiles of those
/// who have one (by user id).
pub type ExportedRows = (
    Vec<UserRecord>,
    Vec<DedupeEntry>,
    Vec<(Arc<str>, UserProfile)>,
);

/// The rows and recent event ids of some users (a partition snapshot in cluster mode).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ExportRows {
    pub users: Vec<u32>,
    pub reply: oneshot::Sender<ExportedRows>,
}

/// Take over rows written by another node (cluster mode: a partition snapshot). The records
/// are already in this node's dense ids; the catalogue is not touched (it already holds these
/// users' weights). `accepted` of the outcome counts the rows taken.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AdoptRows {
    pub users: Vec<UserRecord>,
    pub event_ids: Vec<DedupeEntry>,
    /// Profiles of some of `users` (in this node's dense ids).
    pub profiles: Vec<(u32, UserProfile)>,
    pub reply: oneshot::Sender<ShardOutcome>,
}

/// Apply the item side of a batch (shard → catalogue); the catalogue answers the client.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ApplyItemDeltas {
    pub deltas: Vec<RowDelta>,
    pub outcome: ShardOutcome,
    pub reply: Option<oneshot::Sender<ShardOutcome>>,
}

/// Ranked recommendations for a user.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetRecommendations {
    pub user: u32,
    pub n: usize,
    /// Per-request weights and diversity (an experiment variant); `None` = configured.
    pub blend: Option<Blend>,
    pub reply: oneshot::Sender<Recommendations>,
}

/// The cached top-k similar users.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetSimilarUsers {
    pub user: u32,
    pub reply: oneshot::Sender<Arc<Vec<Neighbour>>>,
}

/// The cached top-k similar items.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetSimilarItems {
    pub item: u32,
    pub reply: oneshot::Sender<Arc<Vec<Neighbour>>>,
}

/// Create or replace a user's profile.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PutUser {
    pub user: u32,
    pub profile: UserProfile,
    pub reply: oneshot::Sender<()>,
}

/// Read a user's profile and activity summary.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetUser {
    pub user: u32,
    pub reply: oneshot::Sender<Option<UserSummary>>,
}

/// A user as `GET /v1/users/{id}` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserSummary {
    pub profile: UserProfile,
    pub interactions: usize,
    pub last_event_ms: Option<i64>,
}

/// Create or replace an item's metadata.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PutItem {
    pub item: u32,
    pub meta: ItemMeta,
    pub reply: oneshot::Sender<()>,
}

/// Delete an item: never recommended again, later events refused.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeleteItem {
    pub item: u32,
    pub reply: oneshot::Sender<()>,
}

/// Export the shard's rows and recent event ids (for a snapshot).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ExportShard {
    pub reply: oneshot::Sender<(UserChunks, Vec<DedupeEntry>)>,
}

/// Load snapshot records into an empty shard; answered (by the catalogue) once the item side
/// is rebuilt. `accepted` of the outcome counts records or cells refused by the id bounds.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ImportShard {
    pub users: Vec<UserRecord>,
    pub event_ids: Vec<DedupeEntry>,
    pub reply: oneshot::Sender<ShardOutcome>,
}

/// Forget a user (GDPR erasure); answered once the catalogue dropped their weights.
/// `accepted` of the outcome is 1 if the user had a row.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EraseUser {
    pub user: u32,
    pub reply: oneshot::Sender<ShardOutcome>,
}

/// Forget a user's row, recent event ids and caches, leaving the catalogue as it is (cluster
/// mode: the item side goes through the item-deltas topic).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EraseRow {
    pub user: u32,
    pub reply: oneshot::Sender<()>,
}

/// Which of `users` have a row in the shard (answered in the same order).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HasRows {
    pub users: Vec<u32>,
    pub reply: oneshot::Sender<Vec<bool>>,
}

/// A user's recent activity log (time order), for the features; `None` for unknown users.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetActivity {
    pub user: u32,
    pub reply: oneshot::Sender<Option<Vec<momentum_models::features::Activity>>>,
}

/// Stop the actor; its actix supervisor restarts it at once with the same state (counted in
/// `momentum_actor_restarts_total`). Operators never need it; tests use it to check supervision.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Restart;
