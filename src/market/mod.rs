//! The marketplace role: it accepts tasks (holding their reward in escrow), offers them to
//! workers, collects results, accepts an output when a quorum of independent workers
//! agrees on its hash, pays each agreeing worker (split by shares for guild tasks),
//! refunds what is left, keeps the ledger (the settlement authority for every payment),
//! and publishes each worker's record.
//!
//! - [`ledger`]: the key/value transaction the rules run in, accounts and payment rules.
//! - [`engine`]: tasks, offers, matching, quorum, reputation and guilds.
//! - [`agree`]: when two results count as the same answer (exact, or cosine for embeddings).
//! - `service` (with the store): reads new bundles addressed to the marketplace from the
//!   store, runs them through the rules, signs what the rules send, commits both at once.
//!
//! The rules are sans-IO: values and a clock in, state changes and payloads out.

pub mod agree;
pub mod engine;
pub mod ledger;
#[cfg(feature = "store")]
pub mod service;

pub use engine::Event;
pub use ledger::{Kv, MemKv, Outgoing, Txn};

/// Failures of the marketplace itself (not of a bundle it was given: those are events).
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error("ledger storage: {0}")]
    Storage(String),
    #[error("ledger entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    Refused(String),
}
