//! `serve`: the node as one always-on process. The daemon owns the home's store and runs
//! the roles this home is configured for ([`Roles`]: QUIC listener and LAN discovery,
//! gateway, feed watch, stick watch, worker, marketplace rules) as tasks over one shared
//! [`Node`], woken by store commits and file system events rather than polling. It serves
//! the local API on `<home>/daemon.sock` (mode 0600: only the home's owner) and, when
//! asked, the status page over HTTP ([`api`]).
//!
//! Depends on the store, the transports, the worker and the marketplace; none of them
//! depends on it. The CLI hands it a [`Runner`] that runs CLI commands for the API, so the
//! daemon never imports the CLI.

pub mod api;
pub mod client;
pub mod config;
pub mod events;
pub mod roles;

pub use config::{GatewayRole, HttpRole, MarketRole, Roles, WorkerRole};
pub use events::{Event, Hub};

use crate::node::Node;
use crate::time::DtnTime;
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How long a stop waits for the roles' tasks to end.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The control socket's file name in the home.
pub const SOCKET: &str = "daemon.sock";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot open the control socket {path}: {reason}")]
    Socket { path: String, reason: String },
    #[error("a mycelium daemon already runs on this home (its socket {0} answers)")]
    Running(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Quic(#[from] crate::transport::quic::QuicError),
}

/// Runs one CLI command (its arguments, without the program name) inside the daemon on
/// the daemon's node, from the caller's working directory, writing output to the sink;
/// returns the exit code. Provided by the CLI.
pub type Runner =
    Arc<dyn Fn(Arc<Node>, Vec<String>, PathBuf, Box<dyn FnMut(Output, &str)>) -> i32 + Send + Sync>;

/// Which stream a piece of a command's output belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Out,
    Err,
}

/// What the roles report for the status page, beyond the store.
#[derive(Default)]
pub struct Shared {
    pub roles: Vec<String>,
    pub listen: Option<String>,
    feeds: Mutex<std::collections::BTreeMap<String, serde_json::Value>>,
    gateway: Mutex<Option<serde_json::Value>>,
    update: Mutex<Option<serde_json::Value>>,
    telegram: Mutex<Option<serde_json::Value>>,
}

impl Shared {
    pub fn set_feed(&self, dir: &Path, summary: &serde_json::Value) {
        let mut f = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let v = serde_json::json!({
            "dir": dir.display().to_string(),
            "files_read": summary["files_read"],
            "new": summary["total_new"],
            "segments_completed": summary["segments_completed"],
            "partial": summary["segments_partial"],
            "loss_estimate": summary["loss_estimate"],
        });
        f.insert(dir.display().to_string(), v);
    }

    pub fn set_gateway(&self, role: &GatewayRole, used: u64) {
        *self.gateway.lock().unwrap_or_else(|p| p.into_inner()) = Some(serde_json::json!({
            "upstream": role.upstream, "used_today": used, "budget": role.budget,
        }));
    }

    /// The release waiting to be installed (`None`: none).
    pub fn set_update(&self, v: Option<serde_json::Value>) {
        *self.update.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    pub fn update(&self) -> Option<serde_json::Value> {
        self.update
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The Telegram bridge: whether the Bot API answers, and its last word.
    pub fn set_telegram(&self, up: Option<bool>, last: &str) {
        let mut t = self.telegram.lock().unwrap_or_else(|p| p.into_inner());
        let was = t.as_ref().and_then(|v| v["up"].as_bool());
        *t = Some(serde_json::json!({"up": up.or(was), "last": last}));
    }

    pub fn telegram(&self) -> Option<serde_json::Value> {
        self.telegram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn feeds(&self) -> Vec<serde_json::Value> {
        let f = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        f.values().cloned().collect()
    }

    pub fn gateway(&self) -> Option<serde_json::Value> {
        self.gateway
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Whether a release waits to be installed over the running binary: set on the status
/// page, and said (event and log) when it is not the one `told` already. Returns the
/// release now told.
fn check_update(
    node: &Node,
    shared: &Shared,
    hub: &Hub,
    told: Option<[u8; 32]>,
) -> Option<[u8; 32]> {
    let seen = match crate::release::waiting(node) {
        Ok(s) => s,
        Err(e) => {
            hub.emit(Event::Error {
                role: "update check".into(),
                message: e.to_string(),
            });
            return told;
        }
    };
    let Some((s, installed)) = seen else {
        shared.set_update(None);
        return None;
    };
    let installed = installed.to_string();
    shared.set_update(Some(serde_json::json!({
        "version": s.version, "installed": installed, "signer": s.signer, "notes": s.notes,
    })));
    if told != Some(s.key) {
        hub.emit(Event::UpdateWaiting {
            version: s.version.clone(),
            installed,
            signer: s.signer.clone(),
        });
    }
    Some(s.key)
}

/// The control socket of `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET)
}

/// Bind the control socket: refuse when a daemon answers on it, replace a stale one
/// (left by a daemon that was killed), and make it reachable by this user only.
fn bind_socket(home: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(home);
    let err = |reason: String| DaemonError::Socket {
        path: path.display().to_string(),
        reason,
    };
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(DaemonError::Running(path.display().to_string()));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    // Bound under a private name and renamed into place once it is 0600, so the socket
    // is never reachable with looser permissions, and a client that sees it can connect.
    let tmp = home.join(format!(".{SOCKET}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
    l.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
    tokio::net::UnixListener::from_std(l).map_err(|e| err(e.to_string()))
}

fn allow_list(node: &Node) -> Result<HashSet<[u8; 32]>, DaemonError> {
    let mut set = HashSet::new();
    for (id, rec) in node.store.peers()? {
        if rec.allowed {
            if let Some(k) = crate::bundle::Eid::parse(&id)
                .ok()
                .and_then(|e| crate::identity::key_for_node_id(&e).ok())
            {
                set.insert(k.to_bytes());
            }
        }
    }
    Ok(set)
}

/// Run the node until `stop` resolves: bind what the roles need (errors here are
/// returned before anything runs), announce [`Event::Started`], run the roles, then on
/// `stop` close the QUIC sessions, stop the roles and remove the control socket. Every
/// write the roles make is synced before it is reported, so stopping at any point (or
/// being killed) loses nothing that was reported stored.
pub async fn run(
    node: Arc<Node>,
    roles: Roles,
    hub: Hub,
    runner: Option<Runner>,
    stop: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    roles.check()?;
    // A client that goes away mid-answer must cost its connection, not the daemon.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // A front node of a replicated marketplace claims its own block of creation sequence
    // numbers before it signs anything (it signs as the marketplace, like the others).
    let mut ledger = None;
    if let Some(addr) = roles.market.as_ref().and_then(|m| m.ledger.clone()) {
        let n = node.clone();
        let opened = tokio::task::spawn_blocking(move || {
            crate::market::service::Ledger::open(&n, Some(&addr))
        })
        .await
        .map_err(|e| DaemonError::Config(e.to_string()))?;
        match opened {
            Ok(l) => ledger = Some(l),
            Err(e)
                if node.store.next_creation_seq()? < 1 << crate::market::etcd::SEQ_BLOCK_BITS =>
            {
                return Err(DaemonError::Config(format!(
                    "the marketplace's ledger: {e} (a new front node needs etcd once, to claim \
                     its block of sequence numbers)"
                )))
            }
            // Its block is claimed: run, and keep trying to reach the ledger.
            Err(e) => tracing::warn!(error = %e, "the marketplace's ledger cannot be reached yet"),
        }
    }
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.store.purge_expired(DtnTime::now()))
        .await
        .map_err(|e| DaemonError::Config(e.to_string()))??;
    // What an import stopped by a crash stored and did not settle: delivered now, with its
    // receipts, not at the next stick.
    let n = node.clone();
    let settled = tokio::task::spawn_blocking(move || n.settle_unsettled(DtnTime::now()))
        .await
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    if let Err(e) = settled {
        tracing::warn!(error = %e, "could not settle what an interrupted import stored");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shared = Shared {
        roles: roles.names(),
        ..Default::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut threads: Vec<std::sync::mpsc::Sender<roles::Signal>> = Vec::new();
    // Each thread role drops its end when it returns: all gone = all stopped.
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<()>();

    // Bind first, so that a bad address fails the start and nothing half runs.
    let quic_cfg = crate::transport::quic::QuicConfig::default();
    let endpoint = match roles.listen {
        Some(addr) => {
            let allow = if roles.allowlist {
                Some(allow_list(&node)?)
            } else {
                None
            };
            let ep =
                crate::transport::quic::server_endpoint(&node.identity, addr, allow, &quic_cfg)?;
            let local = ep.local_addr().map_err(|e| DaemonError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
            shared.listen = Some(local.to_string());
            Some((ep, local))
        }
        None => None,
    };
    let http = match &roles.http {
        Some(h) => Some((
            tokio::net::TcpListener::bind(h.addr)
                .await
                .map_err(|e| DaemonError::Listen {
                    addr: h.addr.to_string(),
                    reason: e.to_string(),
                })?,
            h.token.clone(),
        )),
        None => None,
    };
    let http_addr = match &http {
        Some((l, _)) => Some(l.local_addr().map_err(|e| DaemonError::Listen {
            addr: "http".into(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let socket = if roles.socket {
        Some(bind_socket(&node.home)?)
    } else {
        None
    };
    let shared = Arc::new(shared);

    // Every durable store commit, as an event.
    {
        let mut rx = node.store.subscribe();
        let (hub, stop) = (hub.clone(), stop_rx.clone());
        tasks.spawn(async move {
            loop {
                let s = tokio::select! {
                    _ = roles::stopped(stop.clone()) => return,
                    r = rx.recv() => r,
                };
                match s {
                    Ok(s) => hub.emit(Event::Stored {
                        key: hex::encode(s.key),
                        kind: s.kind,
                        source: s.source,
                        destination: s.destination,
                        size: s.size,
                    }),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        });
    }

    // A release that `update` would install: said once in the log and on the status page,
    // at start and after release bundles arrive (when they stop arriving for a moment).
    {
        let mut rx = node.store.subscribe();
        let (n, s, hub, stop) = (node.clone(), shared.clone(), hub.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let mut told: Option<[u8; 32]> = None;
            loop {
                let (n2, s2, hub2) = (n.clone(), s.clone(), hub.clone());
                let prev = told;
                told = tokio::task::spawn_blocking(move || check_update(&n2, &s2, &hub2, prev))
                    .await
                    .unwrap_or(prev);
                // Wait for a release bundle, then for a quiet second.
                loop {
                    let r = tokio::select! {
                        _ = roles::stopped(stop.clone()) => return,
                        r = rx.recv() => r,
                    };
                    match r {
                        Ok(s) if s.kind.starts_with("release") => break,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
                while let Ok(Ok(_)) =
                    tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv()).await
                {
                }
            }
        });
    }

    let api_state = api::State {
        node: node.clone(),
        hub: hub.clone(),
        shared: shared.clone(),
        runner: runner.clone(),
        tcp: false,
        token: None,
    };
    if let Some(l) = socket {
        let app = api::router(api_state.clone());
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(roles::stopped(stop))
                .await;
        });
    }
    if let Some((l, token)) = http {
        let app = api::router(api::State {
            tcp: true,
            token,
            ..api_state.clone()
        });
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(roles::stopped(stop))
                .await;
        });
    }

    if let Some((ep, local)) = endpoint {
        let (n, h, cfg) = (node.clone(), hub.clone(), quic_cfg.clone());
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let on_session = move |peer, r| h.emit(roles::session_event("listener", peer, &r));
            crate::transport::quic::serve(n, ep, cfg, on_session, roles::stopped(stop)).await;
        });
        if let Some(group) = roles.discovery {
            let (n, h, cfg, every) = (
                node.clone(),
                hub.clone(),
                quic_cfg.clone(),
                roles.discovery_interval,
            );
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                let h2 = h.clone();
                let on_sync: crate::transport::discovery::OnSync =
                    Arc::new(move |peer, r| h2.emit(roles::session_event("discovery", peer, &r)));
                tokio::select! {
                    _ = roles::stopped(stop) => {}
                    r = crate::transport::discovery::run_with(n, local, group, every, cfg, on_sync) => {
                        if let Err(e) = r {
                            h.emit(Event::Error { role: "discovery".into(), message: e.to_string() });
                        }
                    }
                }
            });
        }
    }
    if let Some(g) = roles.gateway.clone() {
        let (n, s, h, stop) = (node.clone(), shared.clone(), hub.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let _ = roles::gateway(n, g, s, h, stop, false).await;
        });
    }
    if let Some(w) = roles.worker {
        let (n, h, stop) = (node.clone(), hub.clone(), stop_rx.clone());
        tasks.spawn(roles::worker(n, w, h, stop));
    }
    if let Some(m) = roles.market.clone() {
        let (n, h, stop) = (node.clone(), hub.clone(), stop_rx.clone());
        tasks.spawn(roles::market(n, m, ledger, h, stop));
    }
    if let Some(t) = roles.telegram.clone() {
        let (n, s, h, stop) = (node.clone(), shared.clone(), hub.clone(), stop_rx.clone());
        tasks.spawn(roles::telegram(n, t, s, h, stop));
    }
    for dir in &roles.feeds {
        let (tx, rx) = std::sync::mpsc::channel();
        threads.push(tx.clone());
        let (n, d, s, h, any) = (
            node.clone(),
            dir.clone(),
            shared.clone(),
            hub.clone(),
            roles.feed_any_signer,
        );
        let ended = ended_tx.clone();
        std::thread::spawn(move || {
            roles::feed(n, d, any, s, h, rx, tx);
            drop(ended);
        });
    }
    for mount in &roles.sticks {
        let (tx, rx) = std::sync::mpsc::channel();
        threads.push(tx.clone());
        let (n, m, h) = (node.clone(), mount.clone(), hub.clone());
        let ended = ended_tx.clone();
        std::thread::spawn(move || {
            roles::sticks(n, m, h, rx, tx);
            drop(ended);
        });
    }

    hub.emit(Event::Started {
        node: node.node_id().to_string(),
        roles: shared.roles.clone(),
        listen: shared.listen.clone(),
        http: http_addr.map(|a| a.to_string()),
        socket: roles
            .socket
            .then(|| socket_path(&node.home).display().to_string()),
    });

    stop.await;
    hub.emit(Event::Stopping);
    // The socket goes first: a CLI that comes now opens the store itself once it is free.
    if roles.socket {
        let _ = std::fs::remove_file(socket_path(&node.home));
    }
    let _ = stop_tx.send(true);
    for t in threads {
        let _ = t.send(roles::Signal::Stop);
    }
    // Roles end at their next await; bounded, so a stuck peer cannot hold the stop.
    let _ = tokio::time::timeout(STOP_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    // Thread roles finish the pass they are in (a feed file, a stick) before the store
    // closes under them.
    drop(ended_tx);
    let _ = tokio::task::spawn_blocking(move || ended_rx.recv_timeout(STOP_WAIT * 6)).await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signals() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
