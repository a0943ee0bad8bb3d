//! Deterministic simulation of sync and routing over an in-memory network.
//!
//! For each seed, 20–24 nodes with in-memory stores (implementing `RouteStore` and
//! `BundleIo`, mirroring the RocksDB store's `sync_items`) run the real sync core
//! (`Session` driven by `run_pair`) and the real delivery rules (`delivery::accept`,
//! `forward_copy`, receipts and tombstones) over a seeded schedule of simulated contacts:
//! full bidirectional sessions, sessions cut after a few frames (a lossy link), sessions
//! that complete under a small byte budget, one-way pushes (a broadcast-like link) and
//! periods of partition into 2–3 groups. Bundles are originated at random nodes and
//! times, for random destinations, with random lifetimes (some too short to make it) and
//! hop limits (mostly the default 32, some 1–3, some none).
//! Time is simulated (`DtnTime` values); nothing sleeps or reads the clock.
//!
//! An independent oracle floods each bundle over the schedule (epidemic routing):
//! - a *guaranteed* flood over completed contacts only (bidirectional sessions both
//!   ways, one-way pushes a→b), with a pessimistic bound on each holder's hop count;
//! - a *possible* flood that also counts cut and byte-limited sessions, with an
//!   optimistic hop count.
//!
//! Asserted, over hundreds of seeds:
//! - a bundle with a live path (guaranteed flood reaches its destination before it
//!   expires) is delivered, no later than the flood gets there;
//! - a delivered bundle had a possible path there by its delivery time (nothing is
//!   delivered out of thin air), and is delivered exactly once, at its destination,
//!   with exactly one receipt;
//! - after a heal phase of full-mesh sessions, the receipt of every delivered, still
//!   live bundle has reached every node: no node but the destination holds a copy, all
//!   hold a tombstone;
//! - at every contact each store holds only originated bundles and issued receipts, and
//!   tombstones only for delivered bundles, never alongside a copy; once time passes every
//!   expiry, every store is empty.
//!
//! `SIM_SYNC_SEEDS=n` runs more seeds; `SIM_SYNC_SEED=s` runs only seed `s`.

use mycelium::adu::{self, Adu, Message};
use mycelium::bundle::{BundleBuilder, CreationTimestamp, Eid, VerifiedBundle, DEFAULT_HOP_LIMIT};
use mycelium::identity::Identity;
use mycelium::route::delivery::{
    self, Arrival, Change, RouteStore, Tombstone, MIN_RECEIPT_LIFETIME_MS,
};
use mycelium::route::priority;
use mycelium::sim::Rng;
use mycelium::sync::drive::{run_pair, BundleIo};
use mycelium::sync::session::{Item, Limits, Session};
use mycelium::time::DtnTime;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

type Key = [u8; 32];

/// Seeds run by default (a debug run takes about 13 s on two cores).
const SEEDS: u64 = 200;
/// Start of simulated time (DTN ms, 2025): creation times must not be 0 ("no clock").
const T0: u64 = 800_000_000_000;
/// Length of the random schedule; the heal phase starts right after it.
const SPAN: u64 = 100_000;
const MIN_LIFETIME: u64 = 1_000;
const MAX_LIFETIME: u64 = 160_000;
/// Full-mesh rounds in the heal phase.
const HEAL_ROUNDS: usize = 2;

fn short(k: &Key) -> String {
    hex::encode(&k[..6])
}

// ---------------------------------------------------------------------------------------
// In-memory store and node
// ---------------------------------------------------------------------------------------

struct Stored {
    raw: Vec<u8>,
    /// Destination node ID (text).
    dest: String,
    created_ms: u64,
    expires: DtnTime,
    class: u8,
}

#[derive(Default)]
struct MemStore {
    bundles: RefCell<BTreeMap<Key, Stored>>,
    tombs: RefCell<BTreeMap<Key, Tombstone>>,
    seq: Cell<u64>,
    /// Keys newly stored by the last commit.
    last_puts: RefCell<Vec<Key>>,
}

impl RouteStore for MemStore {
    type Error = Infallible;

    fn has(&self, key: &Key) -> Result<bool, Infallible> {
        Ok(self.bundles.borrow().contains_key(key))
    }

    fn destination_node(&self, key: &Key) -> Result<Option<String>, Infallible> {
        Ok(self.bundles.borrow().get(key).map(|s| s.dest.clone()))
    }

    fn created_ms(&self, key: &Key) -> Result<Option<u64>, Infallible> {
        Ok(self.bundles.borrow().get(key).map(|s| s.created_ms))
    }

    fn tombstone(&self, key: &Key, signer: &str) -> Result<Option<Tombstone>, Infallible> {
        Ok(self
            .tombs
            .borrow()
            .get(key)
            .filter(|t| t.signer == signer)
            .cloned())
    }

    fn next_creation_timestamp(&self, now: DtnTime) -> Result<CreationTimestamp, Infallible> {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        Ok(CreationTimestamp { time: now, seq })
    }

    fn commit(&self, change: Change, now: DtnTime) -> Result<(), Infallible> {
        let mut bundles = self.bundles.borrow_mut();
        let mut puts = Vec::new();
        for vb in change.put {
            let key = vb.id().key();
            if bundles.contains_key(&key) {
                continue;
            }
            let b = vb.bundle();
            let (dest, created_ms, expires, class) = (
                b.primary.destination.node_id().to_string(),
                b.primary.created.time.0,
                b.expires_at(now),
                priority(&adu::kind_label(b.payload())),
            );
            let raw = vb.into_raw();
            bundles.insert(
                key,
                Stored {
                    raw,
                    dest,
                    created_ms,
                    expires,
                    class,
                },
            );
            puts.push(key);
        }
        let mut tombs = self.tombs.borrow_mut();
        for (key, t) in change.tombstones {
            tombs.insert(key, t);
        }
        for key in change.delete {
            bundles.remove(&key);
        }
        *self.last_puts.borrow_mut() = puts;
        Ok(())
    }
}

struct Node {
    id: Identity,
    /// Node ID (text), as stores compare destinations.
    name: String,
    store: MemStore,
}

impl Node {
    /// Mirror of the RocksDB store's `sync_items`: every stored bundle (sendable when live,
    /// not delivered and not addressed here) and every tombstone without a stored bundle.
    fn items(&self, peer: &str, now: DtnTime) -> Vec<Item> {
        let bundles = self.store.bundles.borrow();
        let tombs = self.store.tombs.borrow();
        let mut out: Vec<Item> = bundles
            .iter()
            .map(|(k, s)| Item {
                key: *k,
                created_ms: s.created_ms,
                class: s.class,
                for_peer: s.dest == peer,
                expires_ms: s.expires.0,
                size: s.raw.len() as u64,
                sendable: self.sendable(k, s, &tombs, now),
            })
            .collect();
        // Like the real store, only verified tombstones are reconciled: an unverified one
        // (a receipt for a bundle this node never held) may name a wrong creation time.
        out.extend(
            tombs
                .iter()
                .filter(|(k, t)| t.verified && !bundles.contains_key(*k))
                .map(|(k, t)| Item {
                    key: *k,
                    created_ms: t.created,
                    class: 0,
                    for_peer: false,
                    expires_ms: t.expires.0,
                    size: 0,
                    sendable: false,
                }),
        );
        out
    }

    fn sendable(
        &self,
        key: &Key,
        s: &Stored,
        tombs: &BTreeMap<Key, Tombstone>,
        now: DtnTime,
    ) -> bool {
        !tombs.contains_key(key) && s.expires > now && s.dest != self.name
    }

    /// Raw bytes of every bundle this node would send, in key order.
    fn sendable_raw(&self, now: DtnTime) -> Vec<Vec<u8>> {
        let bundles = self.store.bundles.borrow();
        let tombs = self.store.tombs.borrow();
        bundles
            .iter()
            .filter(|(k, s)| self.sendable(k, s, &tombs, now))
            .map(|(_, s)| s.raw.clone())
            .collect()
    }

    /// Drop bundles and tombstones whose expiry is at or before `now`.
    fn purge(&self, now: DtnTime) {
        self.store
            .bundles
            .borrow_mut()
            .retain(|_, s| s.expires > now);
        self.store.tombs.borrow_mut().retain(|_, t| t.expires > now);
    }

    fn is_empty(&self) -> bool {
        self.store.bundles.borrow().is_empty() && self.store.tombs.borrow().is_empty()
    }
}

/// What happened at one node during one contact.
#[derive(Default)]
struct Log {
    /// Originals delivered here, with the keys that commit stored (original and receipt).
    delivered: Vec<(Key, Vec<Key>)>,
    new: usize,
    purged: usize,
    duplicate: usize,
    already_delivered: usize,
    /// Copies refused by an unverified tombstone, which they then confirmed.
    confirmed: usize,
    expired: usize,
}

struct NodeIo<'a> {
    seed: u64,
    node: &'a Node,
    now: DtnTime,
    log: Log,
}

impl<'a> NodeIo<'a> {
    fn new(seed: u64, node: &'a Node, now: DtnTime) -> Self {
        NodeIo {
            seed,
            node,
            now,
            log: Log::default(),
        }
    }
}

impl BundleIo for NodeIo<'_> {
    fn outgoing(&mut self, key: &Key) -> Option<Vec<u8>> {
        let raw = {
            let bundles = self.node.store.bundles.borrow();
            let s = bundles.get(key)?;
            // The session only asks for what was offered as sendable; a bundle still
            // stored stays sendable for the whole session (a receipt deletes the copy).
            assert!(
                self.node
                    .sendable(key, s, &self.node.store.tombs.borrow(), self.now),
                "seed {}: session asked for unsendable bundle {}",
                self.seed,
                short(key)
            );
            s.raw.clone()
        };
        delivery::forward_copy(&raw).expect("stored bundle decodes")
    }

    fn incoming(&mut self, bytes: Vec<u8>) -> Result<Key, String> {
        let vb = VerifiedBundle::decode(&bytes).map_err(|e| e.to_string())?;
        let key = vb.id().key();
        // A receipt for a bundle this node never held leaves an unverified tombstone,
        // not reconciled: the first copy offered afterwards comes, is refused, and
        // confirms (verifies) the tombstone.
        let unconfirmed = self
            .node
            .store
            .tombs
            .borrow()
            .get(&key)
            .is_some_and(|t| !t.verified);
        let arrival = delivery::accept(&self.node.store, &self.node.id, vb, self.now)
            .map_err(|e| e.to_string())?;
        if unconfirmed && arrival == Arrival::AlreadyDelivered {
            assert!(
                self.node.store.tombs.borrow()[&key].verified,
                "seed {}: a refused copy did not confirm its tombstone",
                self.seed
            );
            self.log.confirmed += 1;
            return Ok(key);
        }
        match arrival {
            Arrival::New { delivered, purged } => {
                self.log.new += 1;
                self.log.purged += purged;
                if delivered {
                    let puts = self.node.store.last_puts.borrow().clone();
                    self.log.delivered.push((key, puts));
                }
            }
            Arrival::Duplicate => self.log.duplicate += 1,
            Arrival::AlreadyDelivered => self.log.already_delivered += 1,
            Arrival::Expired => self.log.expired += 1,
            Arrival::Refused(reason) => return Err(format!("refused: {reason}")),
        }
        Ok(key)
    }
}

// ---------------------------------------------------------------------------------------
// Schedule
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Full bidirectional sync session.
    Sync,
    /// Session whose link drops after this many frames.
    Cut(usize),
    /// Session that completes, each side sending at most this many bundle bytes.
    Budget(u64),
    /// `a` pushes everything sendable to `b`, no reconciliation.
    OneWay,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Originate(usize),
    Contact { a: usize, b: usize, kind: Kind },
}

struct Orig {
    src: usize,
    dst: usize,
    created: u64,
    lifetime: u64,
    /// `None`: no hop count block.
    hop_limit: Option<u64>,
}

impl Orig {
    fn expires(&self) -> u64 {
        self.created + self.lifetime
    }
}

struct Plan {
    nodes: usize,
    origs: Vec<Orig>,
    /// Sorted by time; ties keep list order.
    events: Vec<(u64, Ev)>,
    /// Index in `events` of the first contact of the last heal round.
    last_round_start: usize,
}

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

fn range(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + below(rng, hi - lo + 1)
}

fn plan(rng: &mut Rng) -> Plan {
    let n = range(rng, 20, 24) as usize;
    let mut events = Vec::new();

    let origs: Vec<Orig> = (0..range(rng, 20, 40))
        .map(|_| {
            let src = below(rng, n as u64) as usize;
            let dst = (src + 1 + below(rng, n as u64 - 1) as usize) % n;
            let r = rng.unit();
            let hop_limit = if r < 0.7 {
                Some(DEFAULT_HOP_LIMIT)
            } else if r < 0.9 {
                Some(range(rng, 1, 3))
            } else {
                None
            };
            // Skewed towards short lives, so many bundles cannot make it.
            let u = rng.unit();
            let lifetime = MIN_LIFETIME + ((MAX_LIFETIME - MIN_LIFETIME) as f64 * u * u) as u64;
            Orig {
                src,
                dst,
                created: T0 + below(rng, SPAN * 9 / 10),
                lifetime,
                hop_limit,
            }
        })
        .collect();
    for (i, o) in origs.iter().enumerate() {
        events.push((o.created, Ev::Originate(i)));
    }

    // Partitions: periods during which only nodes of the same group meet.
    let parts: Vec<(u64, u64, Vec<u64>)> = (0..range(rng, 1, 2))
        .map(|_| {
            let start = T0 + below(rng, SPAN);
            let end = start + range(rng, 10_000, 40_000);
            let groups = range(rng, 2, 3);
            (start, end, (0..n).map(|_| below(rng, groups)).collect())
        })
        .collect();

    for _ in 0..range(rng, 120, 200) {
        let t = T0 + below(rng, SPAN);
        let a = below(rng, n as u64) as usize;
        let peers: Vec<usize> = match parts.iter().find(|(s, e, _)| (*s..*e).contains(&t)) {
            Some((_, _, g)) => (0..n).filter(|&b| b != a && g[b] == g[a]).collect(),
            None => (0..n).filter(|&b| b != a).collect(),
        };
        if peers.is_empty() {
            continue;
        }
        let b = peers[below(rng, peers.len() as u64) as usize];
        let r = rng.unit();
        let kind = if r < 0.55 {
            Kind::Sync
        } else if r < 0.75 {
            Kind::Cut(range(rng, 1, 10) as usize)
        } else if r < 0.85 {
            Kind::Budget(below(rng, 2_000))
        } else {
            Kind::OneWay
        };
        events.push((t, Ev::Contact { a, b, kind }));
    }
    events.sort_by_key(|e| e.0);

    // Heal: full-mesh sessions, each round in a random order, 1 ms apart.
    let mut last_round_start = events.len();
    let mut t = T0 + SPAN;
    for round in 0..HEAL_ROUNDS {
        let mut pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .collect();
        for i in (1..pairs.len()).rev() {
            pairs.swap(i, below(rng, i as u64 + 1) as usize);
        }
        if round == HEAL_ROUNDS - 1 {
            last_round_start = events.len();
        }
        for (a, b) in pairs {
            let (a, b) = if rng.unit() < 0.5 { (a, b) } else { (b, a) };
            events.push((
                t,
                Ev::Contact {
                    a,
                    b,
                    kind: Kind::Sync,
                },
            ));
            t += 1;
        }
    }
    Plan {
        nodes: n,
        origs,
        events,
        last_round_start,
    }
}

// ---------------------------------------------------------------------------------------
// Oracle: epidemic flood over the schedule, independent of the implementation
// ---------------------------------------------------------------------------------------

/// When the flood reaches the destination: `possible` counting cut sessions (and those
/// cut short by their byte budget) and taking the most favourable hop counts,
/// `guaranteed` over completed contacts only, with hop counts bounded pessimistically (a
/// node keeps the first copy it gets, which may have come over a cut session by a longer
/// path).
#[derive(Debug, Default, Clone, Copy)]
struct Reach {
    possible: Option<u64>,
    guaranteed: Option<u64>,
}

fn flood(p: &Plan, i: usize) -> Reach {
    let o = &p.origs[i];
    let limit = o.hop_limit.unwrap_or(u64::MAX);
    // (min, max) hop count of a copy a node may hold; `sure`: it surely holds one (bounds
    // frozen: its copy is the one it had then).
    let mut poss: Vec<Option<(u64, u64)>> = vec![None; p.nodes];
    let mut sure = vec![false; p.nodes];
    let mut reach = Reach::default();
    let mut born = false;
    for &(t, ev) in &p.events {
        let (a, b, kind) = match ev {
            Ev::Originate(j) if j == i => {
                poss[o.src] = Some((0, 0));
                sure[o.src] = true;
                born = true;
                continue;
            }
            Ev::Originate(_) => continue,
            Ev::Contact { a, b, kind } => (a, b, kind),
        };
        if !born {
            continue;
        }
        if t >= o.expires() {
            break;
        }
        let dirs: &[(usize, usize)] = match kind {
            Kind::OneWay => &[(a, b)],
            _ => &[(a, b), (b, a)],
        };
        // Both directions of a session move what each side held when it began.
        let (poss0, sure0) = (poss.clone(), sure.clone());
        for &(m, n) in dirs {
            // The destination keeps what it received: it never forwards it.
            if m == o.dst {
                continue;
            }
            let Some((lo, hi)) = poss0[m] else { continue };
            if lo >= limit {
                continue;
            }
            if !sure[n] {
                let (lo, hi) = (lo + 1, (hi + 1).min(limit));
                poss[n] = Some(match poss[n] {
                    Some((l, h)) => (l.min(lo), h.max(hi)),
                    None => (lo, hi),
                });
            }
            if n == o.dst && reach.possible.is_none() {
                reach.possible = Some(t);
            }
            let completed = matches!(kind, Kind::Sync | Kind::OneWay);
            if completed && sure0[m] && hi < limit {
                sure[n] = true;
                if n == o.dst {
                    reach.guaranteed = Some(t);
                    return reach;
                }
            }
        }
    }
    reach
}

// ---------------------------------------------------------------------------------------
// One seed
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    seeds: u64,
    nodes: usize,
    bundles: usize,
    /// Sessions: full, cut, byte-limited; one-way pushes.
    contacts: [usize; 4],
    over_budget: usize,
    delivered: usize,
    live: usize,
    possible: usize,
    transfers: usize,
    duplicates: usize,
    already_delivered: usize,
    expired: usize,
    purged: usize,
    /// Delivered bundles still live after the heal, and the nodes checked clean of them.
    healed: usize,
    clean: usize,
    max_store: usize,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.seeds += o.seeds;
        self.nodes += o.nodes;
        self.bundles += o.bundles;
        for k in 0..4 {
            self.contacts[k] += o.contacts[k];
        }
        self.over_budget += o.over_budget;
        self.delivered += o.delivered;
        self.live += o.live;
        self.possible += o.possible;
        self.transfers += o.transfers;
        self.duplicates += o.duplicates;
        self.already_delivered += o.already_delivered;
        self.expired += o.expired;
        self.purged += o.purged;
        self.healed += o.healed;
        self.clean += o.clean;
        self.max_store = self.max_store.max(o.max_store);
    }
}

struct World {
    seed: u64,
    nodes: Vec<Node>,
    /// Key of each original, once originated.
    keys: Vec<Option<Key>>,
    by_key: BTreeMap<Key, usize>,
    /// Receipt key → original.
    receipts: BTreeMap<Key, usize>,
    delivered_at: Vec<Option<u64>>,
    deliveries: Vec<usize>,
    tally: Tally,
}

impl World {
    fn absorb(&mut self, at: usize, log: Log, t: u64, p: &Plan) {
        let seed = self.seed;
        self.tally.transfers += log.new;
        self.tally.duplicates += log.duplicate;
        self.tally.already_delivered += log.already_delivered;
        self.tally.expired += log.expired;
        self.tally.purged += log.purged;
        for (key, puts) in log.delivered {
            let Some(&i) = self.by_key.get(&key) else {
                panic!(
                    "seed {seed}: node {at} delivered {} which nobody originated",
                    short(&key)
                );
            };
            let o = &p.origs[i];
            assert_eq!(
                at, o.dst,
                "seed {seed}: bundle {i} delivered at node {at}, not its destination"
            );
            self.deliveries[i] += 1;
            assert_eq!(
                self.deliveries[i],
                1,
                "seed {seed}: bundle {i} ({}) delivered twice (at t+{} and t+{})",
                short(&key),
                self.delivered_at[i].map_or(0, |d| d - T0),
                t - T0
            );
            self.delivered_at[i] = Some(t);
            // The delivering commit stored the original and exactly one receipt for it,
            // signed by the destination and addressed to the source.
            assert_eq!(
                puts.len(),
                2,
                "seed {seed}: delivery of bundle {i} stored {} bundles",
                puts.len()
            );
            assert_eq!(puts[0], key);
            let rk = puts[1];
            let raw = self.nodes[at].store.bundles.borrow()[&rk].raw.clone();
            let rb = VerifiedBundle::decode(&raw).expect("receipt verifies");
            let prim = &rb.bundle().primary;
            assert_eq!(prim.source.to_string(), self.nodes[o.dst].name);
            assert_eq!(prim.destination.to_string(), self.nodes[o.src].name);
            match adu::decode(rb.bundle().payload()) {
                Ok(Adu::Receipts(r)) => {
                    let keys: Vec<Key> = r.keys().collect();
                    assert_eq!(keys, [key], "seed {seed}: receipt for the wrong bundle");
                    assert_eq!(r.expires, o.expires());
                }
                other => {
                    panic!("seed {seed}: delivery of bundle {i} stored {other:?}, not a receipt")
                }
            }
            assert!(self.receipts.insert(rk, i).is_none());
        }
    }

    /// Store invariants of one node at time `t`.
    fn check_store(&mut self, k: usize, t: u64, p: &Plan) {
        let seed = self.seed;
        let node = &self.nodes[k];
        let bundles = node.store.bundles.borrow();
        let tombs = node.store.tombs.borrow();
        let originated = self.keys.iter().flatten().count();
        let receipts = self.receipts.len();
        assert!(
            bundles.len() <= originated + receipts && tombs.len() <= originated,
            "seed {seed}: node {k} holds {} bundles and {} tombstones at t+{} \
             ({originated} originated, {receipts} receipts issued)",
            bundles.len(),
            tombs.len(),
            t - T0
        );
        self.tally.max_store = self.tally.max_store.max(bundles.len() + tombs.len());
        for key in bundles.keys() {
            assert!(
                self.by_key.contains_key(key) || self.receipts.contains_key(key),
                "seed {seed}: node {k} stores unknown bundle {}",
                short(key)
            );
        }
        for (key, stone) in tombs.iter() {
            let Some(&i) = self.by_key.get(key) else {
                panic!(
                    "seed {seed}: node {k} has a tombstone for unknown key {}",
                    short(key)
                );
            };
            let o = &p.origs[i];
            assert!(
                self.delivered_at[i].is_some(),
                "seed {seed}: node {k} has a tombstone for undelivered bundle {i}"
            );
            assert_eq!(
                stone.signer, self.nodes[o.dst].name,
                "seed {seed}: tombstone signer"
            );
            assert_eq!(
                stone.expires,
                DtnTime(o.expires()),
                "seed {seed}: tombstone expiry"
            );
            assert!(
                k == o.dst || !bundles.contains_key(key),
                "seed {seed}: node {k} keeps a copy of delivered bundle {i} beside its tombstone"
            );
        }
    }
}

fn run_seed(seed: u64) -> Tally {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5151_5eed);
    let p = plan(&mut rng);
    let nodes: Vec<Node> = (0..p.nodes)
        .map(|_| {
            let mut s = [0u8; 32];
            for c in s.chunks_mut(8) {
                c.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let id = Identity::from_seed(s);
            Node {
                name: id.node_id().to_string(),
                id,
                store: MemStore::default(),
            }
        })
        .collect();
    let m = p.origs.len();
    let mut w = World {
        seed,
        nodes,
        keys: vec![None; m],
        by_key: BTreeMap::new(),
        receipts: BTreeMap::new(),
        delivered_at: vec![None; m],
        deliveries: vec![0; m],
        tally: Tally {
            seeds: 1,
            nodes: p.nodes,
            bundles: m,
            ..Tally::default()
        },
    };
    // Nodes purge expired entries now and then, not at every contact.
    let mut purge_rng = Rng::new(seed ^ 0x9e37_79b9);

    for (e, &(t, ev)) in p.events.iter().enumerate() {
        let now = DtnTime(t);
        match ev {
            Ev::Originate(i) => {
                let o = &p.origs[i];
                let node = &w.nodes[o.src];
                let ts = node.store.next_creation_timestamp(now).unwrap();
                let vb =
                    BundleBuilder::new(Eid::parse(&w.nodes[o.dst].name).unwrap(), ts, o.lifetime)
                        .payload(adu::encode_message(&Message::Text(format!(
                            "seed {seed} bundle {i}"
                        ))))
                        .hop_limit(o.hop_limit)
                        .sign(&node.id)
                        .expect("sign");
                let key = vb.id().key();
                node.store
                    .commit(
                        Change {
                            put: vec![vb],
                            ..Change::default()
                        },
                        now,
                    )
                    .unwrap();
                w.keys[i] = Some(key);
                w.by_key.insert(key, i);
            }
            Ev::Contact { a, b, kind } => {
                for k in [a, b] {
                    if purge_rng.unit() < 0.5 {
                        w.nodes[k].purge(now);
                    }
                }
                let (la, lb) = {
                    let (na, nb) = (&w.nodes[a], &w.nodes[b]);
                    let mut ia = NodeIo::new(seed, na, now);
                    let mut ib = NodeIo::new(seed, nb, now);
                    match kind {
                        Kind::OneWay => {
                            w.tally.contacts[3] += 1;
                            for raw in na.sendable_raw(now) {
                                if let Some(copy) = delivery::forward_copy(&raw).unwrap() {
                                    ib.incoming(copy).unwrap_or_else(|e| {
                                        panic!("seed {seed}: push {a}->{b} refused: {e}")
                                    });
                                }
                            }
                        }
                        Kind::Sync | Kind::Cut(_) | Kind::Budget(_) => {
                            let mut limits = Limits::default();
                            let cut = match kind {
                                Kind::Cut(c) => {
                                    w.tally.contacts[1] += 1;
                                    Some(c)
                                }
                                Kind::Budget(bytes) => {
                                    w.tally.contacts[2] += 1;
                                    limits.byte_budget = bytes;
                                    None
                                }
                                _ => {
                                    w.tally.contacts[0] += 1;
                                    None
                                }
                            };
                            let mut sa = Session::initiator(na.items(&nb.name, now), limits)
                                .expect("initiator");
                            let mut sb = Session::responder(nb.items(&na.name, now), limits)
                                .expect("responder");
                            match run_pair(&mut sa, &mut ia, &mut sb, &mut ib, cut) {
                                Ok(ex) => assert!(
                                    ex.finished || cut.is_some(),
                                    "seed {seed}: session {a}<->{b} at t+{} did not finish",
                                    t - T0
                                ),
                                Err((side_a, err)) => panic!(
                                    "seed {seed}: session {a}<->{b} at t+{} (event {e}) failed on {}: {err}",
                                    t - T0,
                                    if side_a { "the initiator" } else { "the responder" }
                                ),
                            }
                            for st in [sa.stats(), sb.stats()] {
                                // A stored bundle's forwarded copy may be one byte longer
                                // (its hop count crossing 23 takes a second CBOR byte).
                                assert!(
                                    st.payload_bytes_out <= limits.byte_budget.saturating_add(st.bundles_out),
                                    "seed {seed}: session {a}<->{b} at t+{} sent {} bytes over a budget of {}",
                                    t - T0,
                                    st.payload_bytes_out,
                                    limits.byte_budget
                                );
                                w.tally.over_budget += st.over_budget as usize;
                            }
                        }
                    }
                    (ia.log, ib.log)
                };
                if kind != Kind::OneWay {
                    // Reconciliation moves only what the receiver lacks and may take.
                    assert_eq!(
                        la.duplicate + lb.duplicate + la.already_delivered + lb.already_delivered,
                        0,
                        "seed {seed}: session {a}<->{b} at t+{} moved bundles the receiver \
                         already had or had seen delivered",
                        t - T0
                    );
                }
                w.absorb(a, la, t, &p);
                w.absorb(b, lb, t, &p);
                w.check_store(a, t, &p);
                w.check_store(b, t, &p);
            }
        }
    }
    let end = p.events.last().expect("events").0;
    for k in 0..p.nodes {
        w.check_store(k, end, &p);
    }

    // Oracle against what happened.
    for (i, o) in p.origs.iter().enumerate() {
        let reach = flood(&p, i);
        let key = short(&w.keys[i].expect("originated"));
        let what = format!(
            "seed {seed}, bundle {i} ({key}: node {} -> {}, t+{}, lifetime {} ms, hop limit {:?})",
            o.src,
            o.dst,
            o.created - T0,
            o.lifetime,
            o.hop_limit
        );
        w.tally.live += reach.guaranteed.is_some() as usize;
        w.tally.possible += reach.possible.is_some() as usize;
        w.tally.delivered += w.delivered_at[i].is_some() as usize;
        if let Some(g) = reach.guaranteed {
            let Some(d) = w.delivered_at[i] else {
                panic!(
                    "{what}: had a live path to its destination at t+{} but was never delivered",
                    g - T0
                );
            };
            assert!(
                d <= g,
                "{what}: delivered at t+{}, after the live path reached it at t+{}",
                d - T0,
                g - T0
            );
        }
        if let Some(d) = w.delivered_at[i] {
            let Some(q) = reach.possible else {
                panic!("{what}: delivered at t+{} with no possible path", d - T0);
            };
            assert!(
                q <= d,
                "{what}: delivered at t+{} before any path could reach it (t+{})",
                d - T0,
                q - T0
            );
        }
    }

    // Receipts purge copies: every bundle delivered before the last heal round and still
    // live is held only by its destination, and every node has its tombstone.
    let last_round = p.events[p.last_round_start].0;
    for (i, o) in p.origs.iter().enumerate() {
        let (Some(d), Some(key)) = (w.delivered_at[i], w.keys[i]) else {
            continue;
        };
        if d >= last_round || o.expires() <= end {
            continue;
        }
        w.tally.healed += 1;
        for (k, node) in w.nodes.iter().enumerate() {
            let holds = node.store.bundles.borrow().contains_key(&key);
            let stone = node.store.tombs.borrow().contains_key(&key);
            if k == o.dst {
                assert!(
                    holds && stone,
                    "seed {seed}: destination {k} lost delivered bundle {i}"
                );
            } else {
                assert!(
                    !holds && stone,
                    "seed {seed}: after the heal, node {k} {} bundle {i} delivered at t+{} \
                     (receipt did not purge it)",
                    if holds {
                        "still holds a copy of"
                    } else {
                        "has no tombstone for"
                    },
                    d - T0
                );
                w.tally.clean += 1;
            }
        }
    }

    // Bounded: every entry expires by a bound known in advance, after which stores are empty.
    let horizon = (T0 + SPAN + MAX_LIFETIME).max(end + MIN_RECEIPT_LIFETIME_MS);
    for (k, node) in w.nodes.iter().enumerate() {
        let latest = node
            .store
            .bundles
            .borrow()
            .values()
            .map(|s| s.expires.0)
            .chain(node.store.tombs.borrow().values().map(|t| t.expires.0))
            .max()
            .unwrap_or(0);
        assert!(
            latest <= horizon,
            "seed {seed}: node {k} keeps an entry until t+{}",
            latest - T0
        );
        node.purge(DtnTime(horizon));
        assert!(
            node.is_empty(),
            "seed {seed}: node {k} not empty after every expiry"
        );
    }
    w.tally
}

#[test]
fn epidemic_sync_delivers_once_and_receipts_purge() {
    let seeds: Vec<u64> = match std::env::var("SIM_SYNC_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SYNC_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SIM_SYNC_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SEEDS);
            (0..n).collect()
        }
    };
    let next = AtomicU64::new(0);
    let total = Mutex::new(Tally::default());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { break };
                let t = run_seed(seed);
                total.lock().unwrap().add(&t);
            });
        }
    });
    let t = total.into_inner().unwrap();
    eprintln!(
        "sim_sync: {} seeds, {} nodes, {} bundles; contacts {} sync / {} cut / {} budget / {} one-way; \
         {} bundles left over budget; \
         delivered {} (live path {}, possible path {}); {} transfers, {} duplicates, \
         {} refused as delivered, {} expired; {} copies purged by receipts; \
         after heal {} delivered bundles clean on {} node stores; largest store {}",
        t.seeds,
        t.nodes,
        t.bundles,
        t.contacts[0],
        t.contacts[1],
        t.contacts[2],
        t.contacts[3],
        t.over_budget,
        t.delivered,
        t.live,
        t.possible,
        t.transfers,
        t.duplicates,
        t.already_delivered,
        t.expired,
        t.purged,
        t.healed,
        t.clean,
        t.max_store
    );
    assert_eq!(t.seeds, seeds.len() as u64);
    if seeds.len() >= 50 {
        // The schedule must exercise what it claims to, or the test proves little.
        assert!(t.live > 0 && t.delivered >= t.live && t.purged > 0 && t.healed > 0);
        assert!(
            t.over_budget > 0,
            "byte budgets should leave bundles behind"
        );
        assert!(
            t.possible < t.bundles,
            "some bundles should be unable to make it"
        );
        assert!(t.live < t.possible, "cut sessions should matter");
    }
}
