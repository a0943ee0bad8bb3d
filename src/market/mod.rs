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
//! - `etcd` (with the store): the ledger in an etcd cluster that several front nodes share
//!   (a driver: the rules above do not know where their state lives).
//!
//! The rules are sans-IO: values and a clock in, state changes and payloads out.

pub mod agree;
pub mod engine;
#[cfg(feature = "store")]
pub mod etcd;
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

fn short(k: &[u8]) -> String {
    hex::encode(k).chars().take(12).collect()
}

/// One line for a person about what the rules did.
pub fn describe(e: &Event) -> String {
    match e {
        Event::TaskAccepted { task, escrow } => {
            format!("task {} accepted, {escrow} credits in escrow", short(task))
        }
        Event::TaskRejected { task, reason } => format!("task {} refused: {reason}", short(task)),
        Event::Assigned { task, worker } => format!("task {} assigned to {worker}", short(task)),
        Event::ResultRecorded { task, worker } => {
            format!("result for task {} from {worker}", short(task))
        }
        Event::ResultRejected { result, reason } => {
            format!("result {} refused: {reason}", short(result))
        }
        Event::Accepted {
            task,
            output_hash,
            agreeing,
        } => format!(
            "task {}: output {} accepted by {} agreeing workers",
            short(task),
            short(output_hash),
            agreeing.len()
        ),
        Event::Disagreed { task, worker } => {
            format!(
                "task {}: {worker} disagreed with the quorum (not paid)",
                short(task)
            )
        }
        Event::Rescored {
            task,
            worker,
            refused,
        } => match refused {
            None => format!(
                "task {}: {worker}'s generation re-scored with the model: every token the greedy choice or within the margin",
                short(task)
            ),
            Some(why) => format!(
                "task {}: {worker}'s generation refused by the model: {why}",
                short(task)
            ),
        },
        Event::Late { task, worker } => format!("task {}: {worker} is late", short(task)),
        Event::TaskFailed { task, reason } => format!("task {} failed: {reason}", short(task)),
        Event::Paid {
            payee,
            amount,
            payment,
        } => format!(
            "paid {amount} credits to {payee} (payment {})",
            short(payment)
        ),
        Event::Refunded { task, amount } => {
            format!("refunded {amount} credits of task {}'s escrow", short(task))
        }
        Event::PaymentConfirmed { payment, seq } => {
            format!("payment {} confirmed (ledger #{seq})", short(payment))
        }
        Event::PaymentRejected { payment, reason } => {
            format!("payment {} rejected: {reason}", short(payment))
        }
        Event::PaymentReplayed { payment } => {
            format!(
                "payment {} seen again: already settled, nothing changed",
                short(payment)
            )
        }
        Event::OfferRecorded { worker } => format!("offer from {worker}"),
        Event::GuildRecorded { guild } => format!("guild {guild} recorded"),
        Event::MembershipRecorded { guild, member } => {
            format!("{member} joined guild {guild}")
        }
        Event::Refused { what, reason } => format!("{what} refused: {reason}"),
    }
}
