//! QUIC transport for sync sessions: quinn + rustls, ALPN `mycelium/1`, TLS 1.3 with raw
//! public keys (RFC 7250) on both sides. Each node presents its Ed25519 node key as its
//! TLS key; the handshake proves possession, and the peer's node ID is derived from the
//! key it presented (no CA, no certificates). A client may insist on a node ID; a server
//! may keep an allow-list.
//!
//! One sync session runs on one bidirectional stream: frames of [`crate::sync::wire`],
//! driven by [`crate::sync::session`]. Reading and writing run as separate tasks so
//! neither side can deadlock the other with full buffers; every frame must arrive within
//! `frame_timeout` (slow peers are cut off) and lengths are checked before allocation.

use crate::bundle::Eid;
use crate::identity::{node_id_for_key, Identity};
use crate::node::Node;
use crate::route::delivery::{self, Arrival};
use crate::sync::drive::{self, BundleIo, Output};
use crate::sync::session::{Limits, Session, Stats, SyncError};
use crate::sync::wire::{Frame, MAX_BUNDLE_FRAME};
use crate::time::DtnTime;
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const ALPN: &[u8] = b"mycelium/1";
/// Most spray-and-wait copies a peer may hand over with one bundle.
pub const MAX_COPIES: u32 = 1024;
/// Longest a handshake may take (a peer that starts one and stalls holds nothing longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("peer sent nothing for {0:?}: cut off")]
    Timeout(Duration),
    #[error("peer presented no Ed25519 key")]
    NoPeerKey,
    #[error("peer closed the stream before the sync finished")]
    PeerClosed,
    #[error("bad frame from peer: {0}")]
    Frame(String),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// Knobs of the transport.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// A connection with no packets for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive pings, well inside the idle timeout (NAT bindings, quiet links).
    pub keep_alive: Duration,
    /// Longest wait for the next frame (or the rest of one) before cutting the peer off.
    pub frame_timeout: Duration,
    /// Sessions a server runs at once; more connections wait.
    pub max_sessions: usize,
    /// Largest bundle frame accepted.
    pub max_frame: usize,
    /// Sealed bundles taken from one session (more are refused, not stored).
    pub sealed_quota: u64,
    /// Longest an arrival waits for its batch to fill before the batch is committed anyway.
    pub batch_wait: Duration,
    pub limits: Limits,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(60),
            max_sessions: 16,
            max_frame: MAX_BUNDLE_FRAME,
            sealed_quota: crate::seal::QUOTA_PER_CONTACT,
            batch_wait: FLUSH_AFTER,
            limits: Limits::default(),
        }
    }
}

/// The Ed25519 SubjectPublicKeyInfo (DER) of a node key.
pub fn spki_of(pk: &[u8; 32]) -> Vec<u8> {
    let mut v = ED25519_SPKI_PREFIX.to_vec();
    v.extend_from_slice(pk);
    v
}

/// The Ed25519 key in an SPKI, if that is exactly what it is.
pub fn key_of_spki(der: &[u8]) -> Option<[u8; 32]> {
    if der.len() != 44 || der[..12] != ED25519_SPKI_PREFIX {
        return None;
    }
    der[12..].try_into().ok()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(id: &Identity) -> Result<Arc<rustls::sign::CertifiedKey>, QuicError> {
    let der = id.pkcs8_der();
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_slice());
    let signer = rustls::crypto::ring::sign::any_eddsa_type(&pkcs8)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![CertificateDer::from(spki_of(&id.public_key()))],
        signer,
    )))
}

/// Checks the peer's raw public key: Ed25519, and allowed.
#[derive(Debug)]
struct PeerKeyVerifier {
    /// Client side: the one key the server must have. Server side: the allow-list.
    allowed: Option<HashSet<[u8; 32]>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PeerKeyVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = key_of_spki(end_entity.as_ref()).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        match &self.allowed {
            Some(set) if !set.contains(&key) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(()),
        }
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PeerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for PeerKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

fn transport(cfg: &QuicConfig) -> Result<quinn::TransportConfig, QuicError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|e| QuicError::Tls(e.to_string()))?,
    ));
    t.keep_alive_interval(Some(cfg.keep_alive));
    // Long fat links (satellite uplinks): windows above the default so one stream can
    // fill a high bandwidth-delay product (4 MiB: 50 Mbit/s at 600 ms). Not more: a
    // receiver busy committing (synced writes) leaves the window's packets queued, losses
    // then leave gaps, and quinn ends a connection whose stream buffer holds over 1,024
    // of them ("too many gaps in stream buffer": a 10,000-bundle sync died so with 32 MiB).
    // Congestion control stays quinn's Cubic: its BBR sent 3x the payload in
    // retransmissions on loopback (benches/sync.rs), and on a metered uplink every byte is
    // paid for.
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
    t.receive_window(quinn::VarInt::from_u32(8 << 20));
    t.send_window(8 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Ok(t)
}

/// Socket buffers asked for (the kernel grants up to its `net.core.rmem_max` /
/// `wmem_max`). The default (about 208 KiB on Linux) holds a few hundred datagrams: a
/// receiver busy verifying and committing a batch for a few milliseconds let it
/// overflow, and every drop is a loss to Cubic (a 100 x 1 MiB sync on loopback lost
/// 1,200 to 2,300 packets in 50 to 65 congestion events; with these buffers, none).
const SOCKET_BUFFER: usize = 8 << 20;

/// A UDP socket bound to `addr` (dual-stack where it is IPv6) with the larger buffers.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        if let Err(e) = s.set_only_v6(false) {
            tracing::debug!(error = %e, "socket is not dual-stack");
        }
    }
    // Best effort: a smaller buffer still works, as before.
    if let Err(e) = s.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "socket receive buffer left as it was");
    }
    if let Err(e) = s.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "socket send buffer left as it was");
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A server endpoint for `id` on `addr`; `allow` restricts which node keys may connect.
pub fn server_endpoint(
    id: &Identity,
    addr: SocketAddr,
    allow: Option<HashSet<[u8; 32]>>,
    cfg: &QuicConfig,
) -> Result<quinn::Endpoint, QuicError> {
    let provider = provider();
    let verifier = Arc::new(PeerKeyVerifier {
        allowed: allow,
        provider: provider.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(id)?),
        ));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let qsc = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qsc));
    sc.transport_config(Arc::new(transport(cfg)?));
    let socket = udp_socket(addr).map_err(|source| QuicError::Bind { addr, source })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(sc),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| QuicError::Bind { addr, source })
}

fn client_config(
    id: &Identity,
    expect: Option<[u8; 32]>,
    cfg: &QuicConfig,
) -> Result<quinn::ClientConfig, QuicError> {
    let provider = provider();
    let verifier = Arc::new(PeerKeyVerifier {
        allowed: expect.map(|k| HashSet::from([k])),
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(id)?),
        ));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let qcc = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(qcc));
    cc.transport_config(Arc::new(transport(cfg)?));
    Ok(cc)
}

/// A client endpoint bound to `bind` that authenticates as `id` and accepts only a
/// server holding `expect` (any Ed25519 key if `None`).
pub fn client_endpoint(
    id: &Identity,
    bind: SocketAddr,
    expect: Option<[u8; 32]>,
    cfg: &QuicConfig,
) -> Result<quinn::Endpoint, QuicError> {
    let socket = udp_socket(bind).map_err(|source| QuicError::Bind { addr: bind, source })?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| QuicError::Bind { addr: bind, source })?;
    ep.set_default_client_config(client_config(id, expect, cfg)?);
    Ok(ep)
}

/// The node ID behind a connection's raw public key.
pub fn peer_node(conn: &quinn::Connection) -> Result<Eid, QuicError> {
    let any = conn.peer_identity().ok_or(QuicError::NoPeerKey)?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| QuicError::NoPeerKey)?;
    let key = certs
        .first()
        .and_then(|c| key_of_spki(c.as_ref()))
        .ok_or(QuicError::NoPeerKey)?;
    Ok(node_id_for_key(&key))
}

/// What one session did, for summaries and peer records.
#[derive(Debug, Clone, Default)]
pub struct SessionReport {
    pub peer: Option<Eid>,
    pub stats: Stats,
    pub new: u64,
    pub duplicate: u64,
    pub delivered: u64,
    pub purged: u64,
    pub already_delivered: u64,
    pub expired: u64,
    /// Sealed bundles for this node that did not open, or beyond the contact's quota.
    pub refused: u64,
    /// UDP bytes sent and received, QUIC and TLS overhead included.
    pub wire_tx: u64,
    pub wire_rx: u64,
    pub elapsed: Duration,
}

/// Arrivals from one session are committed together once this many are waiting...
const FLUSH_COUNT: usize = 2048;
/// ...or this many bytes...
const FLUSH_BYTES: usize = 8 << 20;
/// ...or the oldest has waited this long (and always before this side says `Done`):
/// [`QuicConfig::batch_wait`]'s default.
const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// A session's view of the node's store. Arriving bundles are checked for structure at
/// once (their key tells the session what came) and verified, opened and committed in
/// batches: signatures and sealed bundles in parallel across the cores, one synced write
/// per batch, receipts in bulk. What a report counts is on disk.
pub struct NodeIo<'a> {
    pub node: &'a Node,
    pub now: DtnTime,
    pub report: SessionReport,
    /// Sealed bundles this session may still store.
    pub sealed_left: u64,
    /// The sealed bundles counted against it so far: a copy that arrives again before the
    /// first is written (pending, or in a staged batch) is not counted twice.
    sealed_counted: HashSet<[u8; 32]>,
    /// Arrived, not yet verified: bytes and the spray copies handed over.
    pending: Vec<(Vec<u8>, Option<u32>)>,
    pending_bytes: usize,
    pending_since: Option<Instant>,
    /// [`QuicConfig::batch_wait`].
    pub batch_wait: Duration,
    /// A full batch verified and opened, its durable write left to overlap the next
    /// batch's verification ([`BundleIo::flush_ahead`]); nothing in it is counted yet.
    staged: Option<(Staged<'a>, Instant)>,
    /// Deliveries written and owed a receipt: acknowledged at the session's end (or once
    /// [`delivery::RECEIPT_BATCH`] are owed), in bulk, not one receipt per batch.
    owed: delivery::Owed,
    /// Keys this session told the node it owes receipts for ([`Node::owed_live`]).
    live: HashSet<[u8; 32]>,
    /// The batch being staged is the session's last: it pays what is owed.
    last: bool,
}

/// Spray copies a batch took: (bundle key, copies).
type Sprayed = Vec<([u8; 32], u32)>;

/// A batch verified, opened and settled in memory, not yet written.
struct Staged<'a> {
    batch: delivery::Batch<'a, crate::store::Store>,
    counts: SessionReport,
    sprayed: Sprayed,
    /// Its write issues the receipts owed (else it marks its deliveries owed).
    pay: bool,
}

/// What a batch's write leaves to the session: its counts, spray copies, and either the
/// deliveries it left owed or the keys whose receipts it wrote.
struct Written {
    counts: SessionReport,
    sprayed: Sprayed,
    owed: delivery::Owed,
    paid: Vec<[u8; 32]>,
}

impl<'a> NodeIo<'a> {
    pub fn new(node: &'a Node, now: DtnTime, peer: Option<Eid>, sealed_quota: u64) -> NodeIo<'a> {
        NodeIo {
            node,
            now,
            report: SessionReport {
                peer,
                ..Default::default()
            },
            sealed_left: sealed_quota,
            sealed_counted: HashSet::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            batch_wait: FLUSH_AFTER,
            staged: None,
            owed: delivery::Owed::default(),
            live: HashSet::new(),
            last: false,
        }
    }

    fn take(&mut self, bytes: Vec<u8>, copies: Option<u32>) -> Result<[u8; 32], String> {
        // The primary block alone: the whole bundle is decoded and verified once, with
        // the others of its flush, in parallel.
        let p = crate::bundle::Bundle::decode_primary(&bytes).map_err(|e| e.to_string())?;
        let id = crate::bundle::BundleId {
            source: p.source.clone(),
            created: p.created,
            fragment: p.fragment,
        };
        // The quota counts what is new to this store; a bundle refused for it is not
        // remembered, so a later session may bring it.
        let key = id.key();
        if crate::seal::is_sealed_primary(&p) && !self.sealed_counted.contains(&key) {
            let known = self
                .node
                .store
                .contains(&id)
                .map_err(|e| format!("local store: {e}"))?;
            if !known {
                if self.sealed_left == 0 {
                    self.report.refused += 1;
                    return Ok(key);
                }
                self.sealed_left -= 1;
                self.sealed_counted.insert(key);
            }
        }
        self.pending_bytes += bytes.len();
        self.pending.push((bytes, copies));
        self.pending_since.get_or_insert_with(Instant::now);
        // A full batch is due at once (`flush_due`): the QUIC driver commits it off the
        // runtime's threads. A driver that never asks is bounded here, at twice that.
        if self.pending.len() >= 2 * FLUSH_COUNT || self.pending_bytes >= 2 * FLUSH_BYTES {
            self.commit_all(false)?;
        }
        Ok(key)
    }
}

impl Drop for NodeIo<'_> {
    /// Receipts this session still owes (it ended in an error) are left to the node: the
    /// marks are on disk, and [`Node::pay_owed`] issues them.
    fn drop(&mut self) {
        let keys: Vec<[u8; 32]> = self.live.drain().collect();
        self.node.owed_live(keys, false);
    }
}

impl BundleIo for NodeIo<'_> {
    fn outgoing(&mut self, key: &[u8; 32]) -> Option<Vec<u8>> {
        // The copy with its hop count raised, made straight from the store's own buffer.
        self.node
            .store
            .with_raw(key, delivery::forward_copy)
            .ok()??
            .ok()?
    }

    fn hand_over(&mut self, key: &[u8; 32]) -> Option<u32> {
        let c = self.node.store.copies(key).ok()??;
        let dest = self.node.store.record(key).ok()??.destination;
        let peer = self.report.peer.as_ref()?;
        if Eid::parse(&dest).ok()?.node_id() == *peer {
            return None;
        }
        // Binary spray: half the copies go, the rest stay for later contacts.
        let give = (c / 2).max(1);
        self.node
            .store
            .set_copies(key, c.saturating_sub(give).max(1))
            .ok()?;
        Some(give)
    }

    fn incoming_sprayed(&mut self, bytes: Vec<u8>, copies: u32) -> Result<[u8; 32], String> {
        // A peer cannot hand out more copies than anyone may ask for.
        self.take(bytes, Some(copies.min(MAX_COPIES)))
    }

    fn incoming(&mut self, bytes: Vec<u8>) -> Result<[u8; 32], String> {
        self.take(bytes, None)
    }

    fn flush_due(&self) -> Option<Instant> {
        if self.batch_full() {
            return self.pending_since;
        }
        let waiting = match (self.pending_since, &self.staged) {
            (Some(t), Some((_, u))) => Some(t.min(*u)),
            (t, s) => t.or(s.as_ref().map(|(_, u)| *u)),
        };
        waiting.map(|t| t + self.batch_wait)
    }

    fn flush(&mut self) -> Result<(), String> {
        self.commit_all(true)
    }

    fn flush_ahead(&mut self) -> Result<(), String> {
        if !self.batch_full() {
            return self.commit_all(false);
        }
        match self.stage_pending() {
            Ok(()) => Ok(()),
            Err(e) => {
                // A forged or malformed bundle ends the session: the good ones of its batch
                // are stored first.
                self.flush()?;
                Err(e)
            }
        }
    }
}

impl<'a> NodeIo<'a> {
    /// Verify and write everything taken. `last` (the peer said `Done`, or the session
    /// ends): the receipts the session owes go too, in the last batch's write where there
    /// is one, else in one of their own.
    fn commit_all(&mut self, last: bool) -> Result<(), String> {
        self.last = last;
        let r = self.stage_pending();
        self.last = false;
        let c = match self.staged.take() {
            Some((mut st, _)) => {
                if last && !st.pay {
                    st.batch.owe(std::mem::take(&mut self.owed));
                    st.pay = true;
                }
                self.commit_staged(st)
            }
            None => Ok(()),
        };
        let p = if last { self.pay_owed() } else { Ok(()) };
        c.and(r).and(p)
    }

    fn batch_full(&self) -> bool {
        self.pending.len() >= FLUSH_COUNT || self.pending_bytes >= FLUSH_BYTES
    }

    /// Verify, open and settle the waiting arrivals into a staged batch, while the batch
    /// staged before is written on a thread of its own (its synced write waits on the
    /// disk; verification keeps both cores busy meanwhile). `Err` names the first forged
    /// or malformed bundle (the rest are staged) or a failed write.
    fn stage_pending(&mut self) -> Result<(), String> {
        self.pending_since = None;
        self.pending_bytes = 0;
        if self.pending.is_empty() {
            return Ok(());
        }
        let (raws, copies): (Vec<Vec<u8>>, Vec<Option<u32>>) =
            std::mem::take(&mut self.pending).into_iter().unzip();
        let node = self.node;
        let before = self.staged.take();
        let (prepared, written) = std::thread::scope(|sc| {
            let writer = before.map(|(st, _)| sc.spawn(move || Self::write_staged(st)));
            let prepared = delivery::prepare(raws, &node.identity);
            let written = writer.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the batch writer failed".to_string()))
            });
            (prepared, written)
        });
        let written = match written {
            Some(r) => r.map(|w| self.count(w)),
            None => Ok(Ok(())),
        };
        // Sealed bundles are held for relaying on this peer's account (the store's bound
        // evicts from the peers holding the most first).
        let from = self
            .report
            .peer
            .as_ref()
            .map(|p| delivery::contact_tag(&p.to_string()));
        let mut batch = delivery::Batch::new(&node.store, &node.identity, self.now);
        let (mut bad, mut sprayed) = (None, Vec::new());
        let mut counts = SessionReport::default();
        for (p, c) in prepared.into_iter().zip(copies) {
            let a = match p {
                Ok(a) => a,
                Err(e) => {
                    bad.get_or_insert(e.to_string());
                    continue;
                }
            };
            let key = a.vb.id().key();
            match batch
                .add(a, from)
                .map_err(|e| format!("local store: {e}"))?
            {
                Arrival::New { delivered, purged } => {
                    counts.new += 1;
                    counts.delivered += delivered as u64;
                    counts.purged += purged as u64;
                    if let Some(c) = c {
                        sprayed.push((key, c));
                    }
                }
                Arrival::Duplicate => counts.duplicate += 1,
                Arrival::AlreadyDelivered => counts.already_delivered += 1,
                Arrival::Expired => counts.expired += 1,
                Arrival::Refused(_) => counts.refused += 1,
            }
        }
        // Receipts at the session's end, or once a receipt's worth is owed; until then
        // the node leaves the marks of these deliveries to this session.
        let pay = self.last || self.owed.len() >= delivery::RECEIPT_BATCH;
        if pay {
            batch.owe(std::mem::take(&mut self.owed));
        } else {
            let keys = batch.acked_keys();
            self.node.owed_live(keys.iter().copied(), true);
            self.live.extend(keys);
        }
        self.staged = Some((
            Staged {
                batch,
                counts,
                sprayed,
                pay,
            },
            Instant::now(),
        ));
        written??;
        match bad {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The synced write of a staged batch: with the receipts owed signed and sealed, or
    /// with its deliveries marked owed.
    fn write_staged(st: Staged<'_>) -> Result<Written, String> {
        let err = |e| format!("local store: {e}");
        let (owed, paid) = if st.pay {
            let paid = st.batch.acked_keys();
            st.batch.commit().map_err(err)?;
            (delivery::Owed::default(), paid)
        } else {
            (st.batch.commit_owing().map_err(err)?, Vec::new())
        };
        Ok(Written {
            counts: st.counts,
            sprayed: st.sprayed,
            owed,
            paid,
        })
    }

    fn commit_staged(&mut self, st: Staged<'_>) -> Result<(), String> {
        let w = Self::write_staged(st)?;
        self.count(w)
    }

    /// Issue the receipts owed in a write of their own.
    fn pay_owed(&mut self) -> Result<(), String> {
        if self.owed.is_empty() {
            return Ok(());
        }
        let owed = std::mem::take(&mut self.owed);
        let mut batch = delivery::Batch::new(&self.node.store, &self.node.identity, self.now);
        batch.owe(owed);
        let paid = batch.acked_keys();
        // Should it fail, the marks stay on disk for `Node::pay_owed`.
        batch.commit().map_err(|e| format!("local store: {e}"))?;
        self.unlive(paid);
        Ok(())
    }

    /// Keys whose receipts are written: the node no longer leaves them to this session.
    fn unlive(&mut self, keys: Vec<[u8; 32]>) {
        for k in &keys {
            self.live.remove(k);
        }
        self.node.owed_live(keys, false);
    }

    /// What a written batch adds to the report, the spray copies it took, and the
    /// receipts it left owed or wrote.
    fn count(&mut self, w: Written) -> Result<(), String> {
        let Written {
            counts,
            sprayed,
            owed,
            paid,
        } = w;
        self.owed.merge(owed);
        self.unlive(paid);
        let r = &mut self.report;
        r.new += counts.new;
        r.delivered += counts.delivered;
        r.purged += counts.purged;
        r.duplicate += counts.duplicate;
        r.already_delivered += counts.already_delivered;
        r.expired += counts.expired;
        r.refused += counts.refused;
        for (key, c) in sprayed {
            self.node
                .store
                .set_copies(&key, c)
                .map_err(|e| format!("local store: {e}"))?;
        }
        Ok(())
    }
}

/// Fill `buf` from the stream within `timeout`.
async fn read_exact_within(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<(), QuicError> {
    match tokio::time::timeout(timeout, recv.read_exact(buf)).await {
        Err(_) => Err(QuicError::Timeout(timeout)),
        Ok(Err(e)) => Err(QuicError::Connection(e.to_string())),
        Ok(Ok(())) => Ok(()),
    }
}

/// Read one frame, each part within `timeout`.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
    timeout: Duration,
) -> Result<Option<Frame>, QuicError> {
    let mut h = [0u8; 4];
    match tokio::time::timeout(timeout, recv.read_exact(&mut h)).await {
        Err(_) => return Err(QuicError::Timeout(timeout)),
        Ok(Err(quinn::ReadExactError::FinishedEarly(0))) => return Ok(None),
        Ok(Err(e)) => return Err(QuicError::Connection(e.to_string())),
        Ok(Ok(())) => {}
    }
    let len = Frame::body_len(h, max).map_err(|e| QuicError::Frame(e.to_string()))?;
    // The type byte first: only bundle frames may be large.
    let mut t = [0u8; 1];
    read_exact_within(recv, &mut t, timeout).await?;
    if !matches!(t[0], 4 | 7) && len > crate::sync::wire::MAX_CONTROL {
        return Err(QuicError::Frame(format!(
            "frame of type {} is {len} bytes, more than the {} a control frame may have",
            t[0],
            crate::sync::wire::MAX_CONTROL
        )));
    }
    let mut len = len - 1;
    // A Spray frame's copies field on its own, so its bundle is read as a bundle frame's.
    let mut copies = None;
    if t[0] == 7 && len > 4 {
        let mut c = [0u8; 4];
        read_exact_within(recv, &mut c, timeout).await?;
        copies = Some(c);
        len -= 4;
    }
    // The body straight into one buffer of its size (only pages the peer fills are
    // touched), copied once out of quinn's chunks: no zero fill, no shift of the type byte.
    let mut body = Vec::with_capacity(len);
    // Read in pieces so a peer that announces a large frame and stalls costs only what it
    // actually sent, and each piece must arrive within the timeout.
    let mut left = len;
    while left > 0 {
        let want = body.len() + left.min(1 << 20);
        let piece = async {
            while body.len() < want {
                match recv.read_chunk(want - body.len(), true).await {
                    Ok(Some(c)) => body.extend_from_slice(&c.bytes),
                    Ok(None) => return Err(QuicError::Frame("stream ended inside a frame".into())),
                    Err(e) => return Err(QuicError::Connection(e.to_string())),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, piece).await {
            Err(_) => return Err(QuicError::Timeout(timeout)),
            Ok(r) => r?,
        }
        left = len - body.len();
    }
    match copies {
        Some(c) => Frame::spray(c, body),
        None => Frame::decode_body(t[0], body),
    }
    .map(Some)
    .map_err(|e| QuicError::Frame(e.to_string()))
}

/// Run a session over one bidirectional stream until both sides are done.
pub async fn run_session(
    mut session: Session,
    io: &mut impl BundleIo,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    cfg: &QuicConfig,
) -> Result<Stats, QuicError> {
    // Frames read ahead while a batch is verified and written, bounded in bytes (with
    // 64 MiB bundle frames, depth is memory): [`READ_AHEAD`] and one frame beyond.
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Result<Ahead, QuicError>>();
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_KIB as usize));
    let (max, timeout) = (cfg.max_frame, cfg.frame_timeout);
    let reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut recv, max, timeout).await {
                Ok(Some(f)) => {
                    let kib = (held_bytes(&f) / 1024 + 1).min(READ_AHEAD_KIB as usize) as u32;
                    let Ok(permit) = budget.clone().acquire_many_owned(kib).await else {
                        break;
                    };
                    if in_tx.send(Ok((f, permit))).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = in_tx.send(Err(e));
                    break;
                }
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(4);
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let r = match out {
                // Handed to quinn as they are (`Bytes` from our vectors): no copy of a
                // megabyte bundle on its way into the stream.
                Output::Frame(f) => send.write_chunk(Bytes::from(f)).await,
                Output::Bundle(h, c, b) => {
                    let c = c.map_or_else(Bytes::new, |c| Bytes::copy_from_slice(&c.to_be_bytes()));
                    let mut parts = [Bytes::copy_from_slice(&h), c, Bytes::from(b)];
                    send.write_all_chunks(&mut parts).await
                }
            };
            if let Err(e) = r {
                return Err(QuicError::Connection(e.to_string()));
            }
        }
        let _ = send.finish();
        // Wait until the peer has everything (or has gone).
        let _ = send.stopped().await;
        Ok(())
    });
    let mut result = drive_loop(&mut session, io, &mut in_rx, &out_tx).await;
    // What arrived before the end (or the cut) is stored either way.
    if let Err(e) = flush_off_runtime(io, false) {
        if result.is_ok() {
            result = Err(e);
        }
    }
    if let Err(e) = &result {
        let reason = e.to_string();
        let _ = out_tx.try_send(Output::Frame(Frame::Error(reason).encode()));
    }
    drop(out_tx);
    reader.abort();
    let w = if result.is_ok() {
        tokio::time::timeout(cfg.frame_timeout, writer)
            .await
            .map_err(|_| QuicError::Timeout(cfg.frame_timeout))?
            .map_err(|e| QuicError::Connection(e.to_string()))?
    } else {
        writer.abort();
        Ok(())
    };
    result?;
    w?;
    Ok(session.stats())
}

/// Commit a session's waiting arrivals (verification, opening, a synced write) without
/// holding up the runtime: on a multi-threaded runtime the thread is handed over for the
/// duration, so quinn keeps taking packets, acknowledging them and reading the next
/// frames while the batch is written (a receiver that stalls its runtime loses packets
/// and, with large windows, its connection).
/// `MYCELIUM_QUIC_FLUSH=inline` commits on the runtime's thread instead, as before this
/// existed (so `benches/delivery.rs` can compare the two in one run).
fn flush_off_runtime(io: &mut impl BundleIo, ahead: bool) -> Result<(), QuicError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    static INLINE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let inline =
        *INLINE.get_or_init(|| std::env::var("MYCELIUM_QUIC_FLUSH").is_ok_and(|v| v == "inline"));
    let r = match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) if !inline => {
            tokio::task::block_in_place(|| if ahead { io.flush_ahead() } else { io.flush() })
        }
        _ if ahead => io.flush_ahead(),
        _ => io.flush(),
    };
    r.map_err(|e| QuicError::Sync(SyncError::BadBundle(e)))
}

/// Bytes of frames read ahead of the session (KiB).
const READ_AHEAD_KIB: u32 = 16 << 10;

/// The bytes a frame holds in memory (its variable-length part).
fn held_bytes(f: &Frame) -> usize {
    match f {
        Frame::Bundle(b) | Frame::Spray { bundle: b, .. } | Frame::Recon(b) => b.len(),
        Frame::Want(keys) => 32 * keys.len(),
        Frame::Error(e) => e.len(),
        Frame::Hello { .. } | Frame::Done => 0,
    }
}

/// A frame read ahead, holding its share of the read-ahead budget until handled.
type Ahead = (Frame, tokio::sync::OwnedSemaphorePermit);

async fn drive_loop(
    session: &mut Session,
    io: &mut impl BundleIo,
    in_rx: &mut mpsc::UnboundedReceiver<Result<Ahead, QuicError>>,
    out_tx: &mpsc::Sender<Output>,
) -> Result<(), QuicError> {
    let mut pending: Option<Output> = None;
    loop {
        if pending.is_none() {
            pending = drive::next_output(session, io);
        }
        if pending.is_none() && session.is_finished() {
            return Ok(());
        }
        let due = io.flush_due();
        tokio::select! {
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                flush_off_runtime(io, true)?;
            }
            permit = out_tx.reserve(), if pending.is_some() => {
                let permit = permit.map_err(|_| QuicError::PeerClosed)?;
                if let Some(out) = pending.take() {
                    permit.send(out);
                }
            }
            msg = in_rx.recv() => match msg {
                Some(Ok((frame, _permit))) => {
                    // A batch that is due (full, or waited its time), or the peer's `Done`
                    // (which waits for everything it sent to be on disk), is committed
                    // before the frame goes on.
                    let done = matches!(frame, Frame::Done);
                    let due_now = io.flush_due().is_some_and(|t| t <= Instant::now());
                    if due_now || done {
                        flush_off_runtime(io, !done)?;
                    }
                    drive::on_frame(session, io, frame)?
                }
                Some(Err(e)) => return Err(e),
                None => {
                    if session.is_finished() {
                        return Ok(());
                    }
                    return Err(QuicError::PeerClosed);
                }
            },
        }
    }
}

/// Sync once with the node at `addr` (which must be `expect`, if given).
pub async fn sync_with(
    node: &Node,
    addr: SocketAddr,
    expect: Option<&Eid>,
    cfg: &QuicConfig,
) -> Result<SessionReport, QuicError> {
    let started = Instant::now();
    let expect_key = match expect {
        Some(e) => Some(
            crate::identity::key_for_node_id(e)
                .map_err(|err| QuicError::Connect {
                    addr,
                    reason: err.to_string(),
                })?
                .to_bytes(),
        ),
        None => None,
    };
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().map_err(|_| QuicError::NoPeerKey)?
    } else {
        "0.0.0.0:0".parse().map_err(|_| QuicError::NoPeerKey)?
    };
    let ep = client_endpoint(&node.identity, bind, expect_key, cfg)?;
    let connecting = ep
        .connect(addr, "mycelium")
        .map_err(|e| QuicError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let conn = tokio::time::timeout(cfg.frame_timeout, connecting)
        .await
        .map_err(|_| QuicError::Timeout(cfg.frame_timeout))?
        .map_err(|e| QuicError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let peer = peer_node(&conn)?;
    let now = DtnTime::now();
    let items = node
        .store
        .sync_items(&node.node_id(), Some(&peer), now)
        .map_err(|e| QuicError::Connection(format!("local store: {e}")))?;
    let session = Session::initiator(items, cfg.limits)?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| QuicError::Connection(e.to_string()))?;
    let mut io = NodeIo::new(node, now, Some(peer.clone()), cfg.sealed_quota);
    io.batch_wait = cfg.batch_wait;
    let mut result = run_session(session, &mut io, send, recv, cfg).await;
    // A connection the server closed says why (a refused key, say): report that.
    if let (Err(QuicError::Connection(_) | QuicError::PeerClosed), Some(why)) =
        (&result, conn.close_reason())
    {
        result = Err(QuicError::Connection(why.to_string()));
    }
    let cs = conn.stats();
    conn.close(0u32.into(), b"done");
    // The close goes out at once; the rest of the draining period (3 PTO, ~90 ms even on
    // loopback) only absorbs stray packets, so it is not worth waiting for in full.
    let _ = tokio::time::timeout(Duration::from_millis(20), ep.wait_idle()).await;
    let mut report = std::mem::take(&mut io.report);
    report.wire_tx = cs.udp_tx.bytes;
    report.wire_rx = cs.udp_rx.bytes;
    report.elapsed = started.elapsed();
    record_peer(node, &peer, Some(addr), &result, &report);
    report.stats = result?;
    Ok(report)
}

fn record_peer(
    node: &Node,
    peer: &Eid,
    addr: Option<SocketAddr>,
    result: &Result<Stats, QuicError>,
    report: &SessionReport,
) {
    let now = DtnTime::now();
    let _ = node.store.update_peer(&peer.to_string(), |p| {
        if let Some(a) = addr {
            p.addr = Some(a.to_string());
        }
        p.last_attempt = now;
        p.sessions += 1;
        p.bundles_in += report.new;
        match result {
            Ok(s) => {
                p.last_success = now;
                p.bundles_out += s.bundles_out;
                p.bytes_out += s.payload_bytes_out;
                p.bytes_in += s.payload_bytes_in;
                p.last_error = None;
            }
            Err(e) => p.last_error = Some(e.to_string()),
        }
    });
}

/// Serve sync sessions on `ep` until `stop` resolves. Each finished session is reported
/// through `on_session` (peer, result); failures cut off only their own connection.
pub async fn serve(
    node: Arc<Node>,
    ep: quinn::Endpoint,
    cfg: QuicConfig,
    on_session: impl Fn(Option<Eid>, Result<SessionReport, QuicError>) + Send + Sync + 'static,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_sessions.max(1)));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(4 * cfg.max_sessions.max(1)));
    let cfg = Arc::new(cfg);
    let on_session = Arc::new(on_session);
    tokio::pin!(stop);
    loop {
        let incoming = tokio::select! {
            _ = &mut stop => break,
            i = ep.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        // Handshakes are bounded without blocking this loop: beyond the limit, refuse.
        let Ok(hs) = handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let (node, cfg, on_session, slots) =
            (node.clone(), cfg.clone(), on_session.clone(), slots.clone());
        tokio::spawn(async move {
            let (peer, result) = accept_one(&node, incoming, &cfg, hs, slots).await;
            on_session(peer, result);
        });
    }
    ep.close(0u32.into(), b"shutting down");
}

async fn accept_one(
    node: &Node,
    incoming: quinn::Incoming,
    cfg: &QuicConfig,
    handshake: tokio::sync::OwnedSemaphorePermit,
    slots: Arc<tokio::sync::Semaphore>,
) -> (Option<Eid>, Result<SessionReport, QuicError>) {
    let started = Instant::now();
    let addr = incoming.remote_address();
    let hs_limit = HANDSHAKE_TIMEOUT.min(cfg.frame_timeout);
    let conn = match tokio::time::timeout(hs_limit, incoming).await {
        Err(_) => return (None, Err(QuicError::Timeout(hs_limit))),
        Ok(Err(e)) => {
            return (
                None,
                Err(QuicError::Connect {
                    addr,
                    reason: e.to_string(),
                }),
            )
        }
        Ok(Ok(c)) => c,
    };
    drop(handshake);
    let peer = match peer_node(&conn) {
        Ok(p) => p,
        Err(e) => return (None, Err(e)),
    };
    // A session slot only for an authenticated peer.
    let Ok(_slot) = slots.acquire_owned().await else {
        return (Some(peer), Err(QuicError::PeerClosed));
    };
    let result: Result<SessionReport, QuicError> = async {
        let (send, recv) = tokio::time::timeout(cfg.frame_timeout, conn.accept_bi())
            .await
            .map_err(|_| QuicError::Timeout(cfg.frame_timeout))?
            .map_err(|e| QuicError::Connection(e.to_string()))?;
        let now = DtnTime::now();
        let items = node
            .store
            .sync_items(&node.node_id(), Some(&peer), now)
            .map_err(|e| QuicError::Connection(format!("local store: {e}")))?;
        let session = Session::responder(items, cfg.limits)?;
        let mut io = NodeIo::new(node, now, Some(peer.clone()), cfg.sealed_quota);
        io.batch_wait = cfg.batch_wait;
        let stats = run_session(session, &mut io, send, recv, cfg).await;
        // The initiator closes once it has our Done; wait for that (bounded).
        if stats.is_ok() {
            let _ = tokio::time::timeout(cfg.frame_timeout, conn.closed()).await;
        } else {
            conn.close(1u32.into(), b"sync failed");
        }
        let mut report = std::mem::take(&mut io.report);
        report.stats = stats?;
        Ok(report)
    }
    .await;
    let mut result = result;
    if let Ok(r) = &mut result {
        let cs = conn.stats();
        r.wire_tx = cs.udp_tx.bytes;
        r.wire_rx = cs.udp_rx.bytes;
        r.elapsed = started.elapsed();
    }
    let stats_for_record = match &result {
        Ok(r) => Ok(r.stats),
        Err(e) => Err(QuicError::Connection(e.to_string())),
    };
    let rep = result.as_ref().cloned().unwrap_or_default();
    record_peer(node, &peer, None, &stats_for_record, &rep);
    (Some(peer), result)
}

impl SessionReport {
    /// The report as JSON (what `sync --json` prints).
    pub fn to_json(&self) -> serde_json::Value {
        let r = self;
        let s = &r.stats;
        serde_json::json!({
            "peer": r.peer.as_ref().map(|p| p.to_string()),
            "sent": s.bundles_out,
            "received": s.bundles_in,
            "new": r.new,
            "duplicate": r.duplicate,
            "delivered_here": r.delivered,
            "purged_by_receipts": r.purged,
            "refused_already_delivered": r.already_delivered,
            "refused_sealed": r.refused,
            "over_budget": s.over_budget,
            "reconciliation": {
                "rounds": s.rounds,
                "bytes_out": s.recon_bytes_out,
                "bytes_in": s.recon_bytes_in,
                "we_lacked": s.we_lack,
                "peer_lacked": s.peer_lacks,
            },
            "payload_bytes": {"out": s.payload_bytes_out, "in": s.payload_bytes_in},
            "wire_bytes": {"out": r.wire_tx, "in": r.wire_rx},
            "seconds": r.elapsed.as_secs_f64(),
        })
    }

    /// The report as one line for a person.
    pub fn line(&self) -> String {
        let r = self;
        let s = &r.stats;
        format!(
        "sent {} bundles ({} B), received {} ({} new, {} B); reconciliation {} rounds, {} B out / {} B in; on the wire {} B out / {} B in; {:.2}s",
        s.bundles_out,
        s.payload_bytes_out,
        s.bundles_in,
        r.new,
        s.payload_bytes_in,
        s.rounds,
        s.recon_bytes_out,
        s.recon_bytes_in,
        r.wire_tx,
        r.wire_rx,
        r.elapsed.as_secs_f64()
    )
    }
}
