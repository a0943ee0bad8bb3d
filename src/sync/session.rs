//! One sync session between two nodes, as a sans-IO state machine: frames in, frames and
//! "send this bundle" requests out. No sockets, no runtime, no clock: the driver (QUIC, or
//! the in-memory simulation) moves frames, reads bundle bytes from its store, verifies and
//! stores what arrives, and keeps time.
//!
//! Protocol (`bundles/README.md` §10):
//! 1. both sides send `Hello`; the initiator also sends the first negentropy message;
//! 2. `Recon` frames go back and forth (range-based set reconciliation over bundle keys
//!    ordered by creation time) until the initiator knows what each side lacks;
//! 3. the initiator sends `Want` (keys it lacks), then pushes the bundles the responder
//!    lacks, then `Done`; the responder sends the wanted bundles, then `Done` once it has
//!    the initiator's `Done`. Bundles go in priority order and within a byte budget.
//!
//! Interrupted sessions resume by reconciling again: what already arrived is stored, so
//! only the remainder moves.

use super::wire::Frame;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use std::collections::{HashMap, HashSet};

/// Protocol version in `Hello`.
pub const VERSION: u64 = 1;

/// What the driver tells the session about one bundle it holds (or has a tombstone for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub key: [u8; 32],
    /// Creation time (DTN ms): the reconciliation order.
    pub created_ms: u64,
    /// Priority class (`route::priority`), lower first.
    pub class: u8,
    /// Addressed to the peer of this session: goes first within its class.
    pub for_peer: bool,
    pub expires_ms: u64,
    pub size: u64,
    /// False for keys we only know as delivered (tombstones) or must not forward: they
    /// stop the peer from sending them to us, but we never send them.
    pub sendable: bool,
}

/// Limits that bound a session's memory and work, whatever the peer sends.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest negentropy message we produce (bytes; 0 = unlimited, else ≥ 4096).
    pub recon_frame: u64,
    /// Most reconciliation rounds before the peer is cut off.
    pub max_rounds: u32,
    /// Payload bytes this side may send in the session.
    pub byte_budget: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            recon_frame: 60_000,
            max_rounds: 64,
            byte_budget: u64::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("peer broke the sync protocol: {0}")]
    Protocol(String),
    #[error("peer speaks sync protocol version {0}, this node speaks {VERSION}")]
    Version(u64),
    #[error("reconciliation did not finish within {0} rounds")]
    TooManyRounds(u32),
    #[error("reconciliation failed: {0}")]
    Recon(String),
    #[error("peer sent bundle {0} it was not asked for")]
    Unsolicited(String),
    #[error("peer sent an invalid bundle: {0}")]
    BadBundle(String),
    #[error("peer reported an error: {0}")]
    Peer(String),
}

/// Counters for the summary a user sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rounds: u32,
    pub recon_bytes_out: u64,
    pub recon_bytes_in: u64,
    /// Keys the peer lacks that we hold (initiator only knows this).
    pub peer_lacks: u64,
    /// Keys we lack that the peer holds.
    pub we_lack: u64,
    pub bundles_out: u64,
    pub payload_bytes_out: u64,
    pub bundles_in: u64,
    pub payload_bytes_in: u64,
    /// Left behind because the byte budget ran out.
    pub over_budget: u64,
}

/// A bundle the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub bundle: Vec<u8>,
    /// Spray-and-wait copies handed over with it (`None`: no copy limit).
    pub copies: Option<u32>,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Frame(Frame),
    /// Send the bundle with this key (the driver reads and frames it). The driver reports
    /// back with [`Session::bundle_sent`] or [`Session::bundle_unavailable`].
    Bundle([u8; 32]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for / exchanging reconciliation frames.
    Reconciling,
    /// Moving bundles.
    Transfer,
}

pub struct Session {
    initiator: bool,
    neg: Negentropy<'static, NegentropyStorageVector>,
    items: HashMap<[u8; 32], Item>,
    limits: Limits,
    phase: Phase,
    hello_seen: bool,
    outbox: std::collections::VecDeque<Frame>,
    /// Bundles to send, best last (popped).
    queue: Vec<[u8; 32]>,
    budget_left: u64,
    /// Keys the initiator asked for and has not yet received.
    wanted: HashSet<[u8; 32]>,
    /// Keys the peer asked for (responder): each may be asked for once.
    asked: HashSet<[u8; 32]>,
    have: Vec<Id>,
    need: Vec<Id>,
    sent_done: bool,
    peer_done: bool,
    stats: Stats,
}

/// Most keys in one `Want` frame (32 bytes each: 128 KiB).
pub const WANT_CHUNK: usize = 4096;

impl Session {
    /// Start as the side that opened the connection.
    pub fn initiator(items: Vec<Item>, limits: Limits) -> Result<Session, SyncError> {
        let mut s = Session::new(true, items, limits)?;
        let first = s.neg.initiate().map_err(recon_err)?;
        s.stats.recon_bytes_out += first.len() as u64;
        s.outbox.push_back(Frame::Hello {
            version: VERSION,
            items: s.items.len() as u64,
        });
        s.outbox.push_back(Frame::Recon(first));
        Ok(s)
    }

    /// Start as the side that accepted the connection.
    pub fn responder(items: Vec<Item>, limits: Limits) -> Result<Session, SyncError> {
        Session::new(false, items, limits)
    }

    fn new(initiator: bool, items: Vec<Item>, limits: Limits) -> Result<Session, SyncError> {
        let mut storage = NegentropyStorageVector::with_capacity(items.len());
        let mut map = HashMap::with_capacity(items.len());
        for it in items {
            if map.insert(it.key, it).is_none() {
                storage
                    .insert(it.created_ms, Id::from_byte_array(it.key))
                    .map_err(recon_err)?;
            }
        }
        storage.seal().map_err(recon_err)?;
        let neg = Negentropy::owned(storage, limits.recon_frame).map_err(recon_err)?;
        Ok(Session {
            initiator,
            neg,
            items: map,
            limits,
            phase: Phase::Reconciling,
            hello_seen: false,
            outbox: Default::default(),
            queue: Vec::new(),
            budget_left: limits.byte_budget,
            wanted: HashSet::new(),
            asked: HashSet::new(),
            have: Vec::new(),
            need: Vec::new(),
            sent_done: false,
            peer_done: false,
            stats: Stats::default(),
        })
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Both sides have said `Done`: nothing more will move.
    pub fn is_finished(&self) -> bool {
        self.sent_done && self.peer_done
    }

    /// Handle one frame from the peer. Returns bundle bytes (and, for a spray-and-wait
    /// bundle, the copies handed over) for the driver to verify and store, then report
    /// the key with [`Session::bundle_received`].
    pub fn on_frame(&mut self, frame: Frame) -> Result<Option<Incoming>, SyncError> {
        match frame {
            Frame::Hello { version, .. } => {
                if self.hello_seen {
                    return Err(proto("second Hello"));
                }
                if version != VERSION {
                    return Err(SyncError::Version(version));
                }
                self.hello_seen = true;
                if !self.initiator {
                    self.outbox.push_back(Frame::Hello {
                        version: VERSION,
                        items: self.items.len() as u64,
                    });
                }
                Ok(None)
            }
            Frame::Recon(msg) => {
                self.need_hello()?;
                if self.phase != Phase::Reconciling {
                    return Err(proto("reconciliation frame after reconciliation ended"));
                }
                self.stats.rounds += 1;
                if self.stats.rounds > self.limits.max_rounds {
                    return Err(SyncError::TooManyRounds(self.limits.max_rounds));
                }
                self.stats.recon_bytes_in += msg.len() as u64;
                if self.initiator {
                    let out = self
                        .neg
                        .reconcile_with_ids(&msg, &mut self.have, &mut self.need)
                        .map_err(recon_err)?;
                    match out {
                        Some(next) => {
                            self.stats.recon_bytes_out += next.len() as u64;
                            self.outbox.push_back(Frame::Recon(next));
                        }
                        None => self.reconciled(),
                    }
                } else {
                    let next = self.neg.reconcile(&msg).map_err(recon_err)?;
                    self.stats.recon_bytes_out += next.len() as u64;
                    self.outbox.push_back(Frame::Recon(next));
                }
                Ok(None)
            }
            Frame::Want(keys) => {
                self.need_hello()?;
                if self.initiator {
                    return Err(proto("Want sent to the initiator"));
                }
                if self.peer_done {
                    return Err(proto("Want after Done"));
                }
                // A peer may want at most what we hold, once.
                let mut asked = Vec::with_capacity(keys.len());
                for k in keys {
                    if !self.asked.insert(k) {
                        return Err(proto(&format!("wanted {} twice", hex::encode(&k[..8]))));
                    }
                    match self.items.get(&k) {
                        Some(it) if it.sendable => asked.push(k),
                        Some(_) => {}
                        None => {
                            return Err(proto(&format!(
                                "wanted {} which this node never offered",
                                hex::encode(&k[..8])
                            )))
                        }
                    }
                }
                self.phase = Phase::Transfer;
                self.enqueue(asked);
                Ok(None)
            }
            Frame::Spray { copies, bundle } => {
                let got = self.on_frame(Frame::Bundle(bundle))?;
                Ok(got.map(|i| Incoming {
                    copies: Some(copies),
                    ..i
                }))
            }
            Frame::Bundle(bytes) => {
                self.need_hello()?;
                if self.initiator && self.phase != Phase::Transfer {
                    return Err(proto("bundle before reconciliation ended"));
                }
                if self.peer_done {
                    return Err(proto("bundle after Done"));
                }
                self.stats.bundles_in += 1;
                self.stats.payload_bytes_in += bytes.len() as u64;
                Ok(Some(Incoming {
                    bundle: bytes,
                    copies: None,
                }))
            }
            Frame::Done => {
                self.need_hello()?;
                if self.peer_done {
                    return Err(proto("second Done"));
                }
                if self.initiator && self.phase != Phase::Transfer {
                    return Err(proto("Done before reconciliation ended"));
                }
                self.peer_done = true;
                if !self.initiator {
                    self.phase = Phase::Transfer;
                }
                Ok(None)
            }
            Frame::Error(reason) => Err(SyncError::Peer(reason)),
        }
    }

    /// The driver verified and stored (or refused as already known) a bundle with `key`.
    /// The initiator only accepts bundles it asked for.
    pub fn bundle_received(&mut self, key: &[u8; 32]) -> Result<(), SyncError> {
        if self.initiator && !self.wanted.remove(key) {
            return Err(SyncError::Unsolicited(hex::encode(&key[..8])));
        }
        Ok(())
    }

    /// Next thing to send, or `None` if nothing is due until the peer says more.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(f) = self.outbox.pop_front() {
            return Some(Transmit::Frame(f));
        }
        if self.phase != Phase::Transfer || self.sent_done {
            return None;
        }
        while let Some(key) = self.queue.pop() {
            let size = self.items.get(&key).map_or(0, |i| i.size);
            if size > self.budget_left {
                self.stats.over_budget += 1;
                continue;
            }
            self.budget_left -= size;
            return Some(Transmit::Bundle(key));
        }
        // Queue empty: the initiator is done pushing; the responder waits for the
        // initiator's Done (after which no more Wants can come).
        if self.initiator || self.peer_done {
            self.sent_done = true;
            return Some(Transmit::Frame(Frame::Done));
        }
        None
    }

    /// The driver sent the bundle: `wire_len` bytes of it.
    pub fn bundle_sent(&mut self, wire_len: u64) {
        self.stats.bundles_out += 1;
        self.stats.payload_bytes_out += wire_len;
    }

    /// The driver could not send a bundle it was asked for (gone since the session
    /// started, or at its hop limit): give its budget back.
    pub fn bundle_unavailable(&mut self, key: &[u8; 32]) {
        let size = self.items.get(key).map_or(0, |i| i.size);
        self.budget_left = self.budget_left.saturating_add(size);
    }

    /// Account for a frame written by the driver (recon bytes are counted already).
    fn need_hello(&self) -> Result<(), SyncError> {
        if self.hello_seen {
            Ok(())
        } else {
            Err(proto("frame before Hello"))
        }
    }

    fn reconciled(&mut self) {
        self.phase = Phase::Transfer;
        let need: Vec<[u8; 32]> = self.need.drain(..).map(|id| id.to_bytes()).collect();
        let have: Vec<[u8; 32]> = self.have.drain(..).map(|id| id.to_bytes()).collect();
        self.stats.we_lack = need.len() as u64;
        self.stats.peer_lacks = have.len() as u64;
        for chunk in need.chunks(WANT_CHUNK) {
            self.outbox.push_back(Frame::Want(chunk.to_vec()));
        }
        self.wanted = need.into_iter().collect();
        let sendable: Vec<[u8; 32]> = have
            .into_iter()
            .filter(|k| self.items.get(k).is_some_and(|i| i.sendable))
            .collect();
        self.enqueue(sendable);
    }

    /// Add keys to the send queue and re-sort it: by class, then bundles for the peer,
    /// then what expires first (the best is popped last).
    fn enqueue(&mut self, keys: Vec<[u8; 32]>) {
        self.queue.extend(keys);
        let items = &self.items;
        self.queue.sort_by_cached_key(|k| {
            let it = items.get(k);
            std::cmp::Reverse(it.map(|i| (i.class, !i.for_peer, i.expires_ms, i.key)))
        });
        self.queue.dedup();
    }
}

fn proto(s: &str) -> SyncError {
    SyncError::Protocol(s.to_string())
}

fn recon_err(e: negentropy::Error) -> SyncError {
    SyncError::Recon(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: u8) -> Item {
        Item {
            key: [i; 32],
            created_ms: u64::from(i),
            class: 2,
            for_peer: false,
            expires_ms: u64::MAX,
            size: 10,
            sendable: true,
        }
    }

    #[test]
    fn a_key_may_be_wanted_once_and_only_if_offered() {
        let mut r = Session::responder(vec![item(1), item(2)], Limits::default()).unwrap();
        r.on_frame(Frame::Hello {
            version: VERSION,
            items: 0,
        })
        .unwrap();
        r.on_frame(Frame::Want(vec![[1; 32]])).unwrap();
        assert!(matches!(
            r.on_frame(Frame::Want(vec![[1; 32]])),
            Err(SyncError::Protocol(m)) if m.contains("twice")
        ));
        let mut r = Session::responder(vec![item(1)], Limits::default()).unwrap();
        r.on_frame(Frame::Hello {
            version: VERSION,
            items: 0,
        })
        .unwrap();
        assert!(r.on_frame(Frame::Want(vec![[7; 32]])).is_err());
    }

    #[test]
    fn frames_before_hello_and_after_done_are_refused() {
        let mut r = Session::responder(vec![item(1)], Limits::default()).unwrap();
        assert!(r.on_frame(Frame::Done).is_err());
        let mut r = Session::responder(vec![item(1)], Limits::default()).unwrap();
        r.on_frame(Frame::Hello {
            version: VERSION,
            items: 0,
        })
        .unwrap();
        r.on_frame(Frame::Done).unwrap();
        assert!(r.on_frame(Frame::Bundle(vec![0x9f])).is_err());
        assert!(matches!(
            Session::responder(vec![], Limits::default())
                .unwrap()
                .on_frame(Frame::Hello {
                    version: 9,
                    items: 0
                }),
            Err(SyncError::Version(9))
        ));
    }
}
