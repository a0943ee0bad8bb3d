//! What peers hold and what they lack, and how they trade bundles. Pure: no sockets, no
//! files, no clock.
//!
//! - [`have`]: a node's signed, compact have-summary, carried on sticks so the next export
//!   towards that node skips what it already holds.
//! - [`wire`]: sync frames and their byte format.
//! - [`session`]: one sync session as a sans-IO state machine (negentropy reconciliation,
//!   then bundles both ways in priority order within a budget).
//! - [`drive`]: the glue every driver shares, and an in-memory runner for two sessions.

pub mod drive;
pub mod have;
pub mod session;
pub mod wire;
