//! Errors of the actor layer. The HTTP layer maps each variant to a status code.

/// Why a request to the actors failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActorError {
    /// A mailbox is at capacity; the caller should retry later.
    #[error("the {actor} mailbox is full")]
    Overloaded { actor: &'static str },
    /// The actor system is shutting down.
    #[error("the {actor} actor has stopped")]
    Stopped { actor: &'static str },
    /// No such user.
    #[error("unknown user {id:?}")]
    UnknownUser { id: String },
    /// No such item (or it was deleted).
    #[error("unknown item {id:?}")]
    UnknownItem { id: String },
    /// A configured bound on the number of users or items was reached.
    #[error("the {what} table is full ({capacity} entries)")]
    CapacityReached { what: &'static str, capacity: usize },
}
