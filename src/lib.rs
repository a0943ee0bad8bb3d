//! Mycelium: store-and-forward, delay-tolerant messaging for places where the internet is
//! cut or censored. Signed BPv7 bundles travel over USB sticks, broadcast feeds and QUIC.
//!
//! Crate map:
//! - [`bundle`]: the BPv7 wire format (RFC 9171), strict decoding, canonical encoding, and
//!   the BPSec Block Integrity Block (RFC 9172) that carries each bundle's Ed25519
//!   signature. Pure code, no I/O.
//! - [`adu`]: application data units, the versioned CBOR envelope in the payload block
//!   (`message` today; task, result, payment, receipt and blob later). Pure.
//! - [`identity`]: the node's Ed25519 key, its key file (0600) and the self-certifying
//!   node ID `dtn://<base32 public key>/`.
//! - [`seal`]: sealed bundles: a signed bundle encrypted for its recipient inside an
//!   anonymous outer bundle with a proof-of-work stamp. Pure.
//! - [`qr`]: QR frames: bundles fountain-coded into a sequence of QR codes for screens and
//!   paper, each frame proved to its sequence; drawing and finding codes in pictures. Pure.
//! - [`time`]: DTN time (ms since 2000-01-01); the core takes times as values.
//! - [`store`]: the RocksDB store in the node's home: bundles, indexes, metadata; durable
//!   (synced WAL) writes, dedup on BPv7 identity, expiry purge.
//! - [`node`]: a node's home directory, wiring identity and store together.
//! - [`release`]: releases of Mycelium as signed bundles: publish, judge (trusted, newer,
//!   complete, matching), `update` and `--rollback`, `spread` to a stick.
//! - [`guild`]: this node's guild charters and its consent to them (memberships).
//! - [`telegram`]: the Telegram bridge, a role of `serve` at a gateway: one mesh identity
//!   per linked chat, commands, messages pushed to chats as they arrive.
//! - [`daemon`]: `serve`, the node as one process: every role of a home as tasks over one
//!   node, woken by store commits; the local API on a Unix socket; the status page.
//! - [`cli`]: the `mycelium` command tree (clap); `anyhow` lives only here and in `main`.

pub mod adu;
pub mod bundle;
pub mod fec;
pub mod identity;
pub mod market;
pub mod qr;
pub mod route;
pub mod seal;
pub mod sim;
pub mod sync;
pub mod time;

#[cfg(feature = "store")]
pub mod cli;
#[cfg(feature = "store")]
pub mod daemon;
#[cfg(feature = "store")]
pub mod guild;
#[cfg(feature = "store")]
pub mod node;
#[cfg(feature = "store")]
pub mod release;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "store")]
pub mod telegram;
#[cfg(feature = "store")]
pub mod transport;
#[cfg(feature = "store")]
pub mod wallet;
#[cfg(feature = "store")]
pub mod worker;
