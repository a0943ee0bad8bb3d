//! Drivers that move bundles over a medium. Each is thin: the decisions live in `route`,
//! `sync` and `fec`; a driver reads and writes the medium and reports.
//!
//! - [`folder`]: USB sticks and any folder (sneakernet): shard packs, catalogs,
//!   have-summaries.

pub mod broadcast;
pub mod folder;
