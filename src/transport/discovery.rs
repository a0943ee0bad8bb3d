//! LAN discovery: nodes announce themselves with signed UDP multicast beacons, and a
//! serving node syncs with the neighbours it hears, at most once per interval each.
//!
//! Beacon (111 bytes): `"MYCB1"` ‖ Ed25519 public key (32) ‖ QUIC port (u16 BE) ‖ DTN time
//! (u64 BE, ms) ‖ signature (64) over `"mycelium/beacon/v1"` ‖ the first 47 bytes. The
//! signature only stops strangers from putting words in a node's mouth; the QUIC
//! handshake is what proves the node is there. Encoding, checking and the rate limit are
//! pure; [`run`] is the socket driver.

use crate::bundle::Eid;
use crate::identity::{node_id_for_key, verify_by_node, Identity};
use crate::node::Node;
use crate::time::DtnTime;
use crate::transport::quic::{self, QuicConfig, QuicError, SessionReport};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_GROUP: &str = "239.255.70.77:47007";
const MAGIC: &[u8; 5] = b"MYCB1";
const DOMAIN: &[u8] = b"mycelium/beacon/v1";
pub const BEACON_LEN: usize = 5 + 32 + 2 + 8 + 64;
/// Beacons older or newer than this (by the sender's clock) are ignored.
pub const MAX_SKEW_MS: u64 = 10 * 60 * 1000;
/// Time between beacons.
pub const BEACON_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    #[error("not a beacon ({0} bytes)")]
    NotABeacon(usize),
    #[error("beacon signature does not verify")]
    BadSignature,
    #[error("beacon is {0} ms away from this node's clock")]
    Stale(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beacon {
    pub node: Eid,
    pub key: [u8; 32],
    pub port: u16,
    pub time: DtnTime,
}

pub fn encode(id: &Identity, port: u16, now: DtnTime) -> Vec<u8> {
    let mut v = Vec::with_capacity(BEACON_LEN);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&id.public_key());
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&now.0.to_be_bytes());
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(&v);
    v.extend_from_slice(&id.sign(&msg));
    v
}

/// Check a received beacon against `now` (0 = this node has no clock: skip the check).
pub fn decode(b: &[u8], now: DtnTime) -> Result<Beacon, BeaconError> {
    if b.len() != BEACON_LEN || &b[..5] != MAGIC {
        return Err(BeaconError::NotABeacon(b.len()));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&b[5..37]);
    let port = u16::from_be_bytes([b[37], b[38]]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&b[39..47]);
    let time = DtnTime(u64::from_be_bytes(t));
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&b[47..]);
    let node = node_id_for_key(&key);
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(&b[..47]);
    if !verify_by_node(&node, &msg, &sig) {
        return Err(BeaconError::BadSignature);
    }
    if now.0 != 0 && time.0 != 0 {
        let skew = now.0.abs_diff(time.0);
        if skew > MAX_SKEW_MS {
            return Err(BeaconError::Stale(skew));
        }
    }
    Ok(Beacon {
        node,
        key,
        port,
        time,
    })
}

/// Called with each finished discovery-started sync.
pub type OnSync = Arc<dyn Fn(Option<Eid>, Result<SessionReport, QuicError>) + Send + Sync>;

/// At most one sync per neighbour per interval (times are values, in ms).
#[derive(Debug, Default)]
pub struct RateLimit {
    every_ms: u64,
    last: HashMap<[u8; 32], u64>,
}

impl RateLimit {
    pub fn new(every: Duration) -> RateLimit {
        RateLimit {
            every_ms: every.as_millis() as u64,
            last: HashMap::new(),
        }
    }

    /// Whether to sync with `key` at `now_ms`; records the attempt if so.
    pub fn allow(&mut self, key: &[u8; 32], now_ms: u64) -> bool {
        match self.last.get(key) {
            Some(&t) if now_ms.saturating_sub(t) < self.every_ms => false,
            _ => {
                // Bound memory on a busy LAN: forget neighbours not heard for a while.
                if self.last.len() >= 4096 {
                    let every = self.every_ms;
                    self.last.retain(|_, t| now_ms.saturating_sub(*t) < every);
                    if self.last.len() >= 4096 {
                        // A flood of new keys: forget them all rather than grow.
                        self.last.clear();
                    }
                }
                self.last.insert(*key, now_ms);
                true
            }
        }
    }
}

/// A UDP socket joined to the multicast `group` (looped back, so nodes on one host see
/// each other), several processes sharing the port.
/// Beacons leave and are heard on the interface with address `iface` (unspecified: the
/// system's choice).
fn socket(group: SocketAddrV4, iface: Ipv4Addr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port())).into())?;
    s.join_multicast_v4(group.ip(), &iface)?;
    if !iface.is_unspecified() {
        s.set_multicast_if_v4(&iface)?;
    }
    s.set_multicast_loop_v4(true)?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// Announce this node (serving QUIC on `quic`) on `group`, and sync with each
/// neighbour heard, at most once per `every`. Runs until the task is dropped.
pub async fn run(
    node: Arc<Node>,
    quic: SocketAddr,
    group: SocketAddr,
    every: Duration,
    cfg: QuicConfig,
) -> std::io::Result<()> {
    let log = Arc::new(|peer: Option<Eid>, r: Result<SessionReport, QuicError>| {
        let who = peer.map(|p| p.to_string()).unwrap_or_default();
        match r {
            Ok(r) => tracing::info!(
                "[discovery] synced with neighbour {who}: sent {}, received {} ({} new)",
                r.stats.bundles_out,
                r.stats.bundles_in,
                r.new
            ),
            Err(e) => tracing::warn!("[discovery] sync with neighbour {who} failed: {e}"),
        }
    });
    run_with(node, quic, group, every, cfg, log).await
}

/// [`run`] with a callback for each sync it starts.
pub async fn run_with(
    node: Arc<Node>,
    quic: SocketAddr,
    group: SocketAddr,
    every: Duration,
    cfg: QuicConfig,
    on_sync: OnSync,
) -> std::io::Result<()> {
    let SocketAddr::V4(g4) = group else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "discovery group must be an IPv4 multicast address",
        ));
    };
    let iface = match quic.ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let sock = socket(g4, iface)?;
    let quic_port = quic.port();
    let me = node.identity.public_key();
    let mut limit = RateLimit::new(every);
    let running = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tick = tokio::time::interval(BEACON_EVERY);
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let b = encode(&node.identity, quic_port, DtnTime::now());
                if let Err(e) = sock.send_to(&b, group).await {
                    tracing::warn!("[discovery] cannot send beacon: {e}");
                }
            }
            r = sock.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("[discovery] receive failed: {e}");
                        continue;
                    }
                };
                let Ok(beacon) = decode(&buf[..n], DtnTime::now()) else { continue };
                let now_ms = DtnTime::now().0;
                if beacon.key == me || !limit.allow(&beacon.key, now_ms) {
                    continue;
                }
                let addr = SocketAddr::new(from.ip(), beacon.port);
                // A few discovery syncs at a time, whatever a busy (or hostile) LAN sends.
                let Ok(permit) = running.clone().try_acquire_owned() else { continue };
                let (node, cfg, on_sync) = (node.clone(), cfg.clone(), on_sync.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let r = quic::sync_with(&node, addr, Some(&beacon.node), &cfg).await;
                    on_sync(Some(beacon.node), r);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beacons_verify_and_forgeries_do_not() {
        let id = Identity::from_seed([3; 32]);
        let b = encode(&id, 4433, DtnTime(1_000_000));
        let got = decode(&b, DtnTime(1_000_500)).unwrap();
        assert_eq!((got.node, got.port), (id.node_id(), 4433));
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 1;
            assert!(decode(&x, DtnTime(1_000_500)).is_err(), "flip at {i}");
        }
        assert!(matches!(
            decode(&b, DtnTime(1_000_000 + MAX_SKEW_MS + 1)),
            Err(BeaconError::Stale(_))
        ));
        assert!(matches!(
            decode(&b[..50], DtnTime(0)),
            Err(BeaconError::NotABeacon(50))
        ));
    }

    #[test]
    fn each_neighbour_is_synced_at_most_once_per_interval() {
        let mut r = RateLimit::new(Duration::from_secs(60));
        assert!(r.allow(&[1; 32], 1000));
        assert!(!r.allow(&[1; 32], 30_000));
        assert!(r.allow(&[2; 32], 30_000));
        assert!(r.allow(&[1; 32], 61_000));
    }
}
