//! What happens in a running node, as a stream: bundles stored, sessions, jobs run, the
//! marketplace's decisions, feed and stick passes, errors. The API serves it as
//! server-sent events; the CLI's one-role shortcuts print from it; every event is also
//! logged through `tracing`.

use serde::Serialize;
use std::sync::Arc;

/// One thing that happened in the node. Serialised with a `type` field.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The daemon is up: roles running, addresses bound.
    Started {
        node: String,
        roles: Vec<String>,
        listen: Option<String>,
        http: Option<String>,
        socket: Option<String>,
    },
    /// A bundle was durably stored (whatever brought it).
    Stored {
        key: String,
        kind: String,
        source: String,
        destination: String,
        size: u64,
    },
    /// A QUIC sync finished: `via` is `listener`, `discovery` or `gateway`.
    Session {
        via: String,
        peer: Option<String>,
        report: Option<serde_json::Value>,
        line: Option<String>,
        error: Option<String>,
    },
    /// The gateway's uplink: a sync's byte count against the daily budget, or why none ran.
    Gateway {
        upstream: String,
        used_today: u64,
        budget: Option<u64>,
        skipped: Option<String>,
        /// The sync's report (as `sync --json` prints it) and one line of it.
        report: Option<serde_json::Value>,
        line: Option<String>,
    },
    /// The worker started on what is assigned (`total` tasks).
    Working { total: usize, what: String },
    /// The worker finished one task.
    Ran {
        task: String,
        kind: String,
        ms: u64,
        failed: Option<String>,
    },
    /// The marketplace's rules decided something.
    Market { text: String },
    /// The Telegram bridge: a chat linked, a message sent or pushed, a refusal; `up`
    /// false when the Bot API cannot be reached, true when it answers again.
    Telegram {
        chat: Option<i64>,
        text: String,
        up: Option<bool>,
    },
    /// A pass over a broadcast feed folder.
    Feed {
        dir: String,
        total_new: usize,
        summary: serde_json::Value,
    },
    /// A stick under a watched mount folder was imported, then written for the next hop.
    Stick {
        dir: String,
        imported: usize,
        exported: usize,
        error: Option<String>,
    },
    /// A trusted, newer release for this machine is complete here: `mycelium update`
    /// installs it (the daemon never does by itself).
    UpdateWaiting {
        version: String,
        installed: String,
        signer: String,
    },
    /// A role failed at something; it carries on.
    Error { role: String, message: String },
    /// The daemon is stopping.
    Stopping,
}

/// How many events a slow subscriber (a status page) may fall behind before it misses some.
const BACKLOG: usize = 1024;

/// The node's event stream: cheap to clone, sending never blocks.
#[derive(Clone)]
pub struct Hub {
    tx: tokio::sync::broadcast::Sender<Arc<Event>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: tokio::sync::broadcast::channel(BACKLOG).0,
        }
    }
}

impl Hub {
    /// Log `e` and hand it to every subscriber.
    pub fn emit(&self, e: Event) {
        log(&e);
        let _ = self.tx.send(Arc::new(e));
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// How many are listening (status pages, CLI shortcuts).
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

fn log(e: &Event) {
    use tracing::{debug, info, warn};
    match e {
        Event::Started {
            node,
            roles,
            listen,
            ..
        } => info!(
            "node {node} running: {} (QUIC {})",
            roles.join(", "),
            listen.as_deref().unwrap_or("off")
        ),
        Event::Stored {
            key, kind, source, ..
        } => debug!("stored {kind} {} from {source}", &key[..16.min(key.len())]),
        Event::Session {
            via,
            peer,
            line,
            error,
            ..
        } => {
            let who = peer.as_deref().unwrap_or("unknown peer");
            let tag = if via == "discovery" {
                "[discovery]"
            } else {
                "[sync]"
            };
            match (line, error) {
                (Some(l), _) if via == "discovery" => {
                    info!("{tag} synced with neighbour {who}: {l}")
                }
                (Some(l), _) => info!("{tag} {who}: {l}"),
                (None, Some(e)) => warn!("{tag} {who}: cut off: {e}"),
                (None, None) => {}
            }
        }
        Event::Gateway {
            upstream,
            used_today,
            skipped,
            ..
        } => match skipped {
            Some(s) => info!("gateway {upstream}: {s}"),
            None => info!("gateway {upstream}: used today {used_today} B"),
        },
        Event::Working { total, what } => info!("worker: {total} tasks ({what})"),
        Event::Ran {
            task,
            kind,
            ms,
            failed,
        } => match failed {
            None => info!("worker: ran {kind} task {task} in {ms} ms"),
            Some(w) => warn!("worker: task {task} failed: {w}"),
        },
        Event::Market { text } => info!("market: {text}"),
        Event::Telegram { chat, text, up } => match (chat, up) {
            (_, Some(false)) => warn!("telegram: {text}"),
            (Some(c), _) => info!("telegram: chat {c}: {text}"),
            (None, _) => info!("telegram: {text}"),
        },
        Event::Feed { dir, summary, .. } => {
            if summary["files_read"].as_u64().unwrap_or(0) > 0 {
                info!(
                    "feed {dir}: {} new bundles, {} segments complete",
                    summary["new"], summary["segments_completed"]
                )
            }
        }
        Event::Stick {
            dir,
            imported,
            exported,
            error,
        } => match error {
            None => info!("stick {dir}: imported {imported} bundles, exported {exported}"),
            Some(e) => warn!("stick {dir}: {e}"),
        },
        Event::UpdateWaiting {
            version,
            installed,
            signer,
        } => warn!(
            "update waiting: Mycelium {version} (this is {installed}), signed by {signer}: \
             run `mycelium update` to install it, then restart"
        ),
        Event::Error { role, message } => warn!("{role}: {message}"),
        Event::Stopping => info!("stopping"),
    }
}
