//! The actors of Momentum and the hot state they own.
//!
//! `UserShard`s own user rows (routed by `md5(user_id)`), the `ItemCatalog` owns item columns,
//! co-occurrence, metadata and popularity. Both publish what other threads must read through
//! the shared [`index::Index`]; only the owner writes. [`engine::Engine`] starts them and is the
//! API the HTTP layer and the offline evaluation call.

pub mod catalog;
pub mod config;
pub mod ease;
pub mod engine;
pub mod error;
pub mod index;
pub mod interner;
pub mod mailbox;
pub mod messages;
pub mod metrics;
pub mod recommend;
pub mod rows;
pub mod shard;
pub mod snapshot;

pub use config::EngineConfig;
pub use engine::Engine;
pub use error::ActorError;

#[cfg(test)]
mod replay_tests;
