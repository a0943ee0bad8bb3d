//! What peers hold and what they lack. Pure: no sockets, no files, no clock.
//!
//! - [`have`]: a node's signed, compact have-summary, carried on sticks so the next export
//!   towards that node skips what it already holds.

pub mod have;
