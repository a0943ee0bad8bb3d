//! The roles of a home, each a task over the shared node: the QUIC listener and LAN
//! discovery, the gateway's uplink, feed watch, stick watch, the worker and the
//! marketplace's rules. Roles wake on store commits ([`Store::subscribe`]) and on file
//! system events, not on polling; blocking work (RocksDB, inference, folders) runs on
//! blocking threads. Each reports through the [`Hub`] and carries on after an error.
//!
//! [`Store::subscribe`]: crate::store::Store::subscribe

use super::config::{GatewayRole, MarketRole, WorkerRole};
use super::events::{Event, Hub};
use super::Shared;
use crate::bundle::Eid;
use crate::node::Node;
use crate::time::DtnTime;
use crate::transport::quic::{self, QuicConfig, QuicError, SessionReport};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Resolves once the daemon is told to stop.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// A finished session as an event.
pub fn session_event(via: &str, peer: Option<Eid>, r: &Result<SessionReport, QuicError>) -> Event {
    Event::Session {
        via: via.into(),
        peer: peer.map(|p| p.to_string()),
        report: r.as_ref().ok().map(SessionReport::to_json),
        line: r.as_ref().ok().map(SessionReport::line),
        error: r.as_ref().err().map(|e| e.to_string()),
    }
}

/// Wait for the next commit that `wanted` accepts, then swallow whatever else is already
/// queued (one wake-up for a burst). `false` when the daemon stops.
async fn next_wake(
    rx: &mut broadcast::Receiver<crate::store::Stored>,
    stop: &watch::Receiver<bool>,
    wanted: &(dyn Fn(&crate::store::Stored) -> bool + Send + Sync),
) -> bool {
    loop {
        let got = tokio::select! {
            _ = stopped(stop.clone()) => return false,
            r = rx.recv() => r,
        };
        match got {
            Ok(s) if wanted(&s) => break,
            Ok(_) => continue,
            // Fell behind: something may have been missed; look at the store afresh.
            Err(broadcast::error::RecvError::Lagged(_)) => break,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
    while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = rx.try_recv() {}
    true
}

/// The worker: runs what is assigned as soon as an assignment (or a model part, or
/// anything for this node) is stored, and once at start.
pub async fn worker(node: Arc<Node>, role: WorkerRole, hub: Hub, stop: watch::Receiver<bool>) {
    let mut rx = node.store.subscribe();
    let me = node.node_id().to_string();
    let wanted =
        move |s: &crate::store::Stored| s.kind == "assignment" || s.destination.starts_with(&me);
    let opts = crate::worker::RunOptions {
        seal: role.seal,
        max_batch: role.max_batch.max(1),
        gpu: role.gpu,
    };
    if role.gpu {
        let (device, why) = crate::worker::devices::pick(true);
        match why {
            Some(w) => tracing::warn!("worker: {w}"),
            None => tracing::info!("worker: running on {device:?}"),
        }
    }
    loop {
        let (n, h) = (node.clone(), hub.clone());
        let r = tokio::task::spawn_blocking(move || {
            let mut told = false;
            crate::worker::run_progress(&n, DtnTime::now(), &opts, &mut |done, total, what| {
                if !told && done == 0 && total > 0 {
                    told = true;
                    h.emit(Event::Working {
                        total,
                        what: what.to_string(),
                    });
                }
            })
        })
        .await;
        match r {
            Ok(Ok(r)) => {
                for x in &r.ran {
                    hub.emit(Event::Ran {
                        task: hex::encode(x.task),
                        kind: x.job.as_str().into(),
                        ms: x.ms,
                        failed: x.failed.clone(),
                    });
                }
                for (k, w) in &r.skipped {
                    hub.emit(Event::Error {
                        role: "worker".into(),
                        message: format!("assignment {k} skipped: {w}"),
                    });
                }
            }
            // No marketplace chosen yet: nothing to run until one is.
            Ok(Err(crate::worker::WorkerError::NoMarket)) => {}
            Ok(Err(e)) => hub.emit(Event::Error {
                role: "worker".into(),
                message: e.to_string(),
            }),
            Err(e) => hub.emit(Event::Error {
                role: "worker".into(),
                message: format!("stopped unexpectedly: {e}"),
            }),
        }
        if !next_wake(&mut rx, &stop, &wanted).await {
            return;
        }
    }
}

/// The marketplace's rules: applied at start, whenever a bundle is stored, and once a
/// minute (deadlines pass without anything arriving). With the ledger in etcd: `ledger` is
/// the connection made at start, or `None` to keep trying; a step that fails (etcd without
/// a quorum, unreachable) is tried again within seconds, and what arrived meanwhile is
/// stored and settled then.
pub async fn market(
    node: Arc<Node>,
    role: MarketRole,
    mut ledger: Option<crate::market::service::Ledger>,
    hub: Hub,
    stop: watch::Receiver<bool>,
) {
    use crate::market::service::Ledger;
    let mut rx = node.store.subscribe();
    let any = |_: &crate::store::Stored| true;
    if role.ledger.is_none() {
        ledger = Some(Ledger::Local);
    }
    // The models this node holds judge `generate` answers; loaded once, kept between runs.
    let judge = Arc::new(std::sync::Mutex::new(crate::worker::judge(&node.home)));
    loop {
        let mut failed = false;
        if ledger.is_none() {
            let (n, addr) = (node.clone(), role.ledger.clone());
            match tokio::task::spawn_blocking(move || Ledger::open(&n, addr.as_deref())).await {
                Ok(Ok(l)) => {
                    hub.emit(Event::Market {
                        text: "the ledger in etcd answers".into(),
                    });
                    ledger = Some(l);
                }
                Ok(Err(e)) => {
                    failed = true;
                    hub.emit(Event::Error {
                        role: "market".into(),
                        message: e.to_string(),
                    })
                }
                Err(e) => {
                    failed = true;
                    hub.emit(Event::Error {
                        role: "market".into(),
                        message: format!("stopped unexpectedly: {e}"),
                    })
                }
            }
        }
        if let Some(l) = ledger.clone() {
            let (n, seal, judge) = (node.clone(), role.seal, judge.clone());
            let r = tokio::task::spawn_blocking(move || {
                let mut judge = judge.lock().unwrap_or_else(|p| p.into_inner());
                crate::market::service::process_on(&n, &l, DtnTime::now(), seal, &mut *judge)
            })
            .await;
            failed = !matches!(r, Ok(Ok(_)));
            match r {
                Ok(Ok(r)) => {
                    for e in &r.events {
                        hub.emit(Event::Market {
                            text: crate::market::describe(e),
                        });
                    }
                }
                Ok(Err(e)) => hub.emit(Event::Error {
                    role: "market".into(),
                    message: e.to_string(),
                }),
                Err(e) => hub.emit(Event::Error {
                    role: "market".into(),
                    message: format!("stopped unexpectedly: {e}"),
                }),
            }
        }
        let wait = Duration::from_secs(if failed { 2 } else { 60 });
        tokio::select! {
            w = next_wake(&mut rx, &stop, &any) => if !w { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The Telegram bridge, its reports as events.
pub async fn telegram(
    node: Arc<Node>,
    role: crate::telegram::TelegramRole,
    shared: Arc<super::Shared>,
    hub: Hub,
    stop: watch::Receiver<bool>,
) {
    use crate::telegram::Report;
    shared.set_telegram(None, "starting");
    let report: crate::telegram::OnReport = Arc::new(move |r| {
        let e = match r {
            Report::Note { chat, text } => Event::Telegram {
                chat,
                text,
                up: None,
            },
            Report::Down(e) => Event::Telegram {
                chat: None,
                text: format!("the Bot API cannot be reached: {e}"),
                up: Some(false),
            },
            Report::Up => Event::Telegram {
                chat: None,
                text: "the Bot API answers".into(),
                up: Some(true),
            },
        };
        if let Event::Telegram { text, up, .. } = &e {
            shared.set_telegram(*up, text);
        }
        hub.emit(e);
    });
    crate::telegram::run(node, role, report, stop).await;
}

/// The gateway: sync with the upstream every `interval`, and soon after something is
/// composed here (a message sent, a result made), within the daily byte budget.
pub async fn gateway(
    node: Arc<Node>,
    role: GatewayRole,
    shared: Arc<Shared>,
    hub: Hub,
    stop: watch::Receiver<bool>,
    once: bool,
) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let mut rx = node.store.subscribe();
    let me = node.node_id().to_string();
    let local = move |s: &crate::store::Stored| s.source.starts_with(&me);
    let every = role.interval.max(Duration::from_secs(1));
    loop {
        let now = DtnTime::now();
        let n = node.clone();
        let used = tokio::task::spawn_blocking(move || {
            n.store.purge_expired(now)?;
            n.store.gateway_used_today(now)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let used = match used {
            Ok(u) => u,
            Err(e) => {
                hub.emit(Event::Error {
                    role: "gateway".into(),
                    message: e.clone(),
                });
                if once {
                    return Err(e);
                }
                0
            }
        };
        let left = role.budget.map(|b| b.saturating_sub(used));
        let mut cfg = QuicConfig::default();
        let mut failed = None;
        if left == Some(0) {
            let msg = format!(
                "daily budget of {} MB spent; waiting for tomorrow",
                role.budget.unwrap_or(0) / 1_000_000
            );
            shared.set_gateway(&role, used);
            hub.emit(Event::Gateway {
                upstream: role.upstream.clone(),
                used_today: used,
                budget: role.budget,
                skipped: Some(msg),
                report: None,
                line: None,
            });
        } else {
            if let Some(l) = left {
                cfg.limits.byte_budget = l;
            }
            let addr = role
                .upstream
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next());
            match addr {
                None => failed = Some(format!("{:?} is not a reachable host:port", role.upstream)),
                Some(addr) => {
                    let r = quic::sync_with(&node, addr, role.expect.as_ref(), &cfg).await;
                    let peer = r.as_ref().ok().and_then(|r| r.peer.clone());
                    if let Ok(rep) = &r {
                        let n = node.clone();
                        let bytes = rep.wire_tx + rep.wire_rx;
                        let used = tokio::task::spawn_blocking(move || {
                            n.store.add_gateway_used(now, bytes)
                        })
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(used);
                        shared.set_gateway(&role, used);
                        hub.emit(session_event("gateway", peer, &r));
                        hub.emit(Event::Gateway {
                            upstream: role.upstream.clone(),
                            used_today: used,
                            budget: role.budget,
                            skipped: None,
                            report: Some(rep.to_json()),
                            line: Some(rep.line()),
                        });
                    } else if let Err(e) = &r {
                        failed = Some(format!("sync with upstream {addr} failed: {e}"));
                    }
                }
            }
        }
        if let Some(f) = failed {
            hub.emit(Event::Error {
                role: "gateway".into(),
                message: format!("{f}; retrying in {}", humantime::format_duration(every)),
            });
            if once {
                return Err(f);
            }
        }
        if once {
            return Ok(());
        }
        // The next sync: at the interval, or a little after something is composed here.
        let wait = tokio::time::sleep(every);
        tokio::pin!(wait);
        tokio::select! {
            _ = &mut wait => {}
            w = next_wake(&mut rx, &stop, &local) => {
                if !w { return Ok(()) }
            }
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
}

/// Watch one broadcast feed folder: ingest at start and whenever its files change.
/// Blocks its thread until `stop`.
pub fn feed(
    node: Arc<Node>,
    dir: PathBuf,
    any_signer: bool,
    shared: Arc<Shared>,
    hub: Hub,
    rx: std::sync::mpsc::Receiver<Signal>,
    wake: std::sync::mpsc::Sender<Signal>,
) {
    let Some(_watcher) = watch(&dir, &wake, &hub, "feed") else {
        return;
    };
    let mut seen = crate::transport::broadcast::SeenFiles::default();
    let mut total_new = 0usize;
    loop {
        let opts = crate::transport::broadcast::IngestOptions {
            any_signer,
            now: DtnTime::now(),
        };
        match crate::transport::broadcast::ingest_with(
            &node,
            &dir,
            &opts,
            &ProgressBar::hidden(),
            &mut seen,
        ) {
            Ok(r) => {
                let partial = node.store.partial_summary().map(|p| p.objects).unwrap_or(0);
                total_new += r.new;
                let mut summary = r.to_json(partial);
                summary["total_new"] = serde_json::json!(total_new);
                shared.set_feed(&dir, &summary);
                hub.emit(Event::Feed {
                    dir: dir.display().to_string(),
                    total_new,
                    summary,
                });
            }
            Err(e) => hub.emit(Event::Error {
                role: "feed".into(),
                message: format!("{}: {e}", dir.display()),
            }),
        }
        // The next change in the folder, or the stop.
        if wait(&rx) {
            return;
        }
    }
}

/// A watch on `dir` (not its sub-folders) that sends [`Signal::Wake`] on every change;
/// `None`, said as the `role`'s error, when it cannot be had.
fn watch(
    dir: &Path,
    wake: &std::sync::mpsc::Sender<Signal>,
    hub: &Hub,
    role: &str,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let tx = wake.clone();
    let w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Opening and reading (our own passes list the folder and read its files) change
        // nothing: waking on them would loop forever.
        use notify::event::{AccessKind, AccessMode, EventKind};
        if let Ok(e) = &ev {
            if matches!(e.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) {
                return;
            }
        }
        let _ = tx.send(Signal::Wake);
    })
    .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|_| w));
    match w {
        Ok(w) => Some(w),
        Err(e) => {
            hub.emit(Event::Error {
                role: role.into(),
                message: format!("cannot watch {}: {e}", dir.display()),
            });
            None
        }
    }
}

/// What wakes a role that runs on its own thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Something changed: look again.
    Wake,
    Stop,
}

/// Block until the next signal, then take every one already queued (one look for a
/// burst). `true` when the role is to stop.
fn wait(rx: &std::sync::mpsc::Receiver<Signal>) -> bool {
    match rx.recv() {
        Ok(Signal::Wake) => {}
        Ok(Signal::Stop) | Err(_) => return true,
    }
    loop {
        match rx.try_recv() {
            Ok(Signal::Wake) => {}
            Ok(Signal::Stop) | Err(std::sync::mpsc::TryRecvError::Disconnected) => return true,
            Err(std::sync::mpsc::TryRecvError::Empty) => return false,
        }
    }
}

/// Sticks already handled under a mount folder, by path, with the identity of the
/// `mycelium/` folder seen (device and inode), so a stick taken out and put back is
/// handled again.
type Handled = std::collections::HashMap<PathBuf, (u64, u64)>;

fn drive_identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p.join(crate::transport::folder::ROOT)).ok()?;
    m.is_dir().then(|| (m.dev(), m.ino()))
}

/// One look at a mount folder: import, then export, every stick newly there.
pub fn scan_sticks(node: &Node, mount: &Path, handled: &mut Handled, hub: &Hub) {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return;
    };
    let mut present = std::collections::HashSet::new();
    for e in entries.flatten() {
        let dir = e.path();
        let Some(id) = drive_identity(&dir) else {
            continue;
        };
        present.insert(dir.clone());
        if handled.get(&dir) == Some(&id) {
            continue;
        }
        handled.insert(dir.clone(), id);
        let now = DtnTime::now();
        let pb = ProgressBar::hidden();
        let imported = crate::transport::folder::import(
            node,
            &dir,
            &crate::transport::folder::ImportOptions { clean: false, now },
            &pb,
        );
        let (imported, mut error) = match imported {
            Ok(r) => (r.new, None),
            Err(e) => (0, Some(format!("import: {e}"))),
        };
        let exported = crate::transport::folder::export(
            node,
            &dir,
            &crate::transport::folder::ExportOptions {
                for_node: None,
                max_bytes: None,
                policy: crate::fec::Policy::folder(0.25),
                now,
                have_summary: false,
                node_records: false,
                only: None,
            },
            &pb,
        );
        let exported = match exported {
            Ok(r) => {
                if let Some(e) = r.error {
                    error.get_or_insert(format!("export stopped early: {e}"));
                }
                r.bundles
            }
            Err(e) => {
                error.get_or_insert(format!("export: {e}"));
                0
            }
        };
        hub.emit(Event::Stick {
            dir: dir.display().to_string(),
            imported,
            exported,
            error,
        });
    }
    handled.retain(|p, _| present.contains(p));
}

/// Watch a mount folder for sticks: on any change in it or in its direct sub-folders,
/// and on any mount or unmount on this machine. Blocks its thread until `stop`.
pub fn sticks(
    node: Arc<Node>,
    mount: PathBuf,
    hub: Hub,
    rx: std::sync::mpsc::Receiver<Signal>,
    wake: std::sync::mpsc::Sender<Signal>,
) {
    use notify::{RecursiveMode, Watcher};
    let Some(mut watcher) = watch(&mount, &wake, &hub, "stick") else {
        return;
    };
    notify_on_mount_changes(wake);
    let mut handled = Handled::new();
    let mut watched = std::collections::HashSet::new();
    loop {
        // Sub-folders too: a drive's folder can appear before its `mycelium/` does.
        if let Ok(entries) = std::fs::read_dir(&mount) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() && watched.insert(p.clone()) {
                    let _ = watcher.watch(&p, RecursiveMode::NonRecursive);
                }
            }
        }
        watched.retain(|p: &PathBuf| p.exists());
        scan_sticks(&node, &mount, &mut handled, &hub);
        if wait(&rx) {
            return;
        }
    }
}

/// Send [`Signal::Wake`] whenever anything is mounted or unmounted on this machine:
/// Linux marks `/proc/self/mountinfo` with POLLPRI on every change. Ends when the receiver
/// is gone. Where that file does not exist, nothing is sent (the folder watch remains).
fn notify_on_mount_changes(tx: std::sync::mpsc::Sender<Signal>) {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open("/proc/self/mountinfo") else {
        return;
    };
    {
        use std::io::Read;
        let mut first = Vec::new();
        let _ = (&f).read_to_end(&mut first);
    }
    std::thread::spawn(move || loop {
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLPRI | libc::POLLERR,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a file this closure owns. Waits for the next
        // change however long it takes; the thread ends at the first change after the
        // role is gone.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n < 0 {
            return;
        }
        // Re-arm: the mark is cleared by reading from the start.
        use std::io::{Read, Seek};
        let mut f2 = &f;
        let _ = f2.seek(std::io::SeekFrom::Start(0));
        let mut sink = Vec::new();
        let _ = f2.read_to_end(&mut sink);
        if tx.send(Signal::Wake).is_err() {
            return;
        }
    });
}
