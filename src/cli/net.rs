//! `serve`, `sync`, `gateway`, `peers` and `peer add`: the QUIC side of a node.

use super::safe::{esay, say};
use super::sneakernet::parse_bytes;
use super::{home, print_json, Cli};
use crate::bundle::Eid;
use crate::node::Node;
use crate::sync::session::Limits;
use crate::time::DtnTime;
use crate::transport::discovery;
use crate::transport::quic::{self, QuicConfig, QuicError, SessionReport};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (UDP)
    #[arg(long, default_value = "0.0.0.0:4433")]
    pub listen: SocketAddr,
    /// Accept only peers added with `peer add`
    #[arg(long)]
    pub allowlist: bool,
    /// LAN discovery beacons (multicast group:port); `off` to disable
    #[arg(long, default_value = discovery::DEFAULT_GROUP)]
    pub discovery: String,
    /// Least time between two syncs with the same discovered neighbour
    #[arg(long, default_value = "1m")]
    pub discovery_interval: String,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// host:port of the peer, or the node ID of a peer added with `peer add`
    pub peer: String,
    /// Refuse the peer unless it proves this node ID
    #[arg(long)]
    pub expect: Option<String>,
    /// Most payload bytes to send in this sync, e.g. 50MiB
    #[arg(long)]
    pub max_bytes: Option<String>,
}

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// host:port of the upstream marketplace node
    #[arg(long)]
    pub upstream: String,
    /// The upstream's node ID (recommended: the link is refused if anyone else answers)
    #[arg(long)]
    pub expect: Option<String>,
    /// Time between syncs
    #[arg(long, default_value = "5m")]
    pub interval: String,
    /// Daily byte budget for the uplink, in MB (both directions, QUIC overhead included)
    #[arg(long)]
    pub budget_mb: Option<u64>,
    /// Sync once and exit
    #[arg(long)]
    pub once: bool,
}

#[derive(Subcommand, Debug)]
pub enum PeerCommand {
    /// Remember a peer's address and put it on the allow-list
    Add { node_id: String, addr: String },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("{addr:?} is not host:port"))?
        .next()
        .ok_or_else(|| anyhow!("{addr:?} resolves to no address"))
}

pub(crate) fn parse_node(s: &str) -> Result<Eid> {
    let e = Eid::parse(s).map_err(|e| anyhow!("{s:?} is not a node ID: {e}"))?;
    crate::identity::key_for_node_id(&e).map_err(|e| anyhow!("{s:?}: {e}"))?;
    Ok(e.node_id())
}

pub fn report_json(r: &SessionReport) -> Value {
    let s = &r.stats;
    json!({
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

pub fn report_line(r: &SessionReport) -> String {
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

/// Where to reach `peer` (an address, or an added peer's node ID) and whom to expect.
fn target(node: &Node, peer: &str, expect: Option<&str>) -> Result<(SocketAddr, Option<Eid>)> {
    let mut expect = expect.map(parse_node).transpose()?;
    let addr = if peer.starts_with("dtn:") {
        let id = parse_node(peer)?;
        let rec = node.store.peer_record(&id.to_string())?.ok_or_else(|| {
            anyhow!("no address known for {id}: `mycelium peer add {id} HOST:PORT`")
        })?;
        let a = rec
            .addr
            .ok_or_else(|| anyhow!("no address known for {id}"))?;
        expect.get_or_insert(id);
        resolve(&a)?
    } else {
        resolve(peer)?
    };
    Ok((addr, expect))
}

pub fn sync(cli: &Cli, a: &SyncArgs) -> Result<()> {
    let node = Node::open(&home(cli))?;
    let (addr, expect) = target(&node, &a.peer, a.expect.as_deref())?;
    let mut cfg = QuicConfig::default();
    if let Some(m) = &a.max_bytes {
        cfg.limits = Limits {
            byte_budget: parse_bytes(m)?,
            ..cfg.limits
        };
    }
    node.store.purge_expired(DtnTime::now())?;
    let rt = runtime()?;
    let r = rt
        .block_on(quic::sync_with(&node, addr, expect.as_ref(), &cfg))
        .with_context(|| format!("sync with {addr} failed"))?;
    if cli.json {
        print_json(&report_json(&r));
    } else {
        let peer = r.peer.as_ref().map(|p| p.to_string()).unwrap_or_default();
        println!("synced with {peer} at {addr}");
        println!("{}", report_line(&r));
    }
    Ok(())
}

pub fn serve(cli: &Cli, a: &ServeArgs) -> Result<()> {
    serve_with(cli, a, None)
}

/// Work a role does on its store after each sync and once a minute (the marketplace's
/// rules); runs on a blocking thread, one at a time.
pub type Duty = Arc<dyn Fn(&Node) + Send + Sync>;

/// `serve`, running `duty` after every session and every minute.
pub fn serve_with(cli: &Cli, a: &ServeArgs, duty: Option<Duty>) -> Result<()> {
    let node = Arc::new(Node::open(&home(cli))?);
    node.store.purge_expired(DtnTime::now())?;
    let allow: Option<HashSet<[u8; 32]>> = if a.allowlist {
        let mut set = HashSet::new();
        for (id, rec) in node.store.peers()? {
            if rec.allowed {
                if let Ok(k) = Eid::parse(&id)
                    .map_err(|e| e.to_string())
                    .and_then(|e| crate::identity::key_for_node_id(&e).map_err(|e| e.to_string()))
                {
                    set.insert(k.to_bytes());
                }
            }
        }
        Some(set)
    } else {
        None
    };
    let disc_every = humantime::parse_duration(&a.discovery_interval)
        .with_context(|| format!("bad --discovery-interval {:?}", a.discovery_interval))?;
    let cfg = QuicConfig::default();
    let rt = runtime()?;
    let json = cli.json;
    rt.block_on(async move {
        let ep = quic::server_endpoint(&node.identity, a.listen, allow, &cfg)?;
        let local = ep.local_addr().context("no local address")?;
        if json {
            println!(
                "{}",
                json!({"listening": local.to_string(), "node": node.node_id().to_string()})
            );
        } else {
            println!("listening on {local} as {}", node.node_id());
        }
        if a.discovery != "off" {
            let group: SocketAddr = a
                .discovery
                .parse()
                .with_context(|| format!("bad --discovery {:?}", a.discovery))?;
            let n = node.clone();
            let qcfg = cfg.clone();
            tokio::spawn(async move {
                if let Err(e) = discovery::run(n, local, group, disc_every, qcfg).await {
                    esay!("discovery stopped: {e}");
                }
            });
        }
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let kick = Arc::new(tokio::sync::Notify::new());
        if let Some(duty) = duty {
            let (n, k) = (node.clone(), kick.clone());
            duty(&n);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = k.notified() => {}
                        _ = every.tick() => {}
                    }
                    let (n, d) = (n.clone(), duty.clone());
                    let _ = tokio::task::spawn_blocking(move || d(&n)).await;
                }
            });
        }
        let k = kick.clone();
        let on_session = move |peer, r| {
            log_session(peer, r);
            k.notify_one();
        };
        quic::serve(node.clone(), ep, cfg, on_session, stop).await;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// One line per finished session on stderr (the daemon's log).
pub fn log_session(peer: Option<Eid>, r: Result<SessionReport, QuicError>) {
    let who = peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown peer".into());
    match r {
        Ok(r) => eprintln!("[sync] {who}: {}", report_line(&r)),
        Err(e) => esay!("[sync] {who}: cut off: {e}"),
    }
}

pub fn gateway(cli: &Cli, a: &GatewayArgs) -> Result<()> {
    let node = Node::open(&home(cli))?;
    let addr = resolve(&a.upstream)?;
    let expect = a.expect.as_deref().map(parse_node).transpose()?;
    let every = humantime::parse_duration(&a.interval)
        .with_context(|| format!("bad --interval {:?}", a.interval))?;
    let budget = a.budget_mb.map(|m| m.saturating_mul(1_000_000));
    let rt = runtime()?;
    rt.block_on(async {
        let mut ticker = tokio::time::interval(every.max(Duration::from_secs(1)));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            let now = DtnTime::now();
            node.store.purge_expired(now)?;
            let used = node.store.gateway_used_today(now)?;
            let left = budget.map(|b| b.saturating_sub(used));
            let mut cfg = QuicConfig::default();
            if let Some(l) = left {
                if l == 0 {
                    let msg = format!(
                        "daily budget of {} MB spent; waiting for tomorrow",
                        a.budget_mb.unwrap_or(0)
                    );
                    if cli.json {
                        println!("{}", json!({"skipped": msg, "used_today": used}));
                    } else {
                        println!("{msg}");
                    }
                    if a.once {
                        return Ok(());
                    }
                    continue;
                }
                cfg.limits.byte_budget = l;
            }
            match quic::sync_with(&node, addr, expect.as_ref(), &cfg).await {
                Ok(r) => {
                    let used = node.store.add_gateway_used(now, r.wire_tx + r.wire_rx)?;
                    if cli.json {
                        let mut v = report_json(&r);
                        v["used_today"] = json!(used);
                        println!("{}", serde_json::to_string(&v)?);
                    } else {
                        println!("{} | used today {used} B", report_line(&r));
                    }
                }
                Err(e) => {
                    if a.once {
                        bail!("sync with upstream {addr} failed: {e}");
                    }
                    esay!(
                        "sync with upstream {addr} failed: {e}; retrying in {}",
                        humantime::format_duration(every)
                    );
                }
            }
            if a.once {
                return Ok(());
            }
        }
    })
}

pub fn peers(cli: &Cli) -> Result<()> {
    let node = Node::open(&home(cli))?;
    let peers = node.store.peers()?;
    if cli.json {
        let v: Vec<Value> = peers
            .iter()
            .map(|(id, p)| {
                json!({
                    "node": id,
                    "addr": p.addr,
                    "allowed": p.allowed,
                    "sessions": p.sessions,
                    "last_success": (p.last_success.0 != 0).then(|| p.last_success.to_rfc3339()),
                    "last_attempt": (p.last_attempt.0 != 0).then(|| p.last_attempt.to_rfc3339()),
                    "bundles_in": p.bundles_in,
                    "bundles_out": p.bundles_out,
                    "bytes_in": p.bytes_in,
                    "bytes_out": p.bytes_out,
                    "last_error": p.last_error,
                })
            })
            .collect();
        print_json(&json!(v));
        return Ok(());
    }
    if peers.is_empty() {
        println!(
            "no peers yet: `mycelium peer add NODE_ID HOST:PORT` or `mycelium sync HOST:PORT`"
        );
    }
    for (id, p) in &peers {
        say!(
            "{id}  {}  {}{} sessions, last ok {}, in {} / out {} bundles{}",
            p.addr.as_deref().unwrap_or("-"),
            if p.allowed { "allowed, " } else { "" },
            p.sessions,
            if p.last_success.0 == 0 {
                "never".into()
            } else {
                p.last_success.to_rfc3339()
            },
            p.bundles_in,
            p.bundles_out,
            p.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub fn peer(cli: &Cli, c: &PeerCommand) -> Result<()> {
    let node = Node::open(&home(cli))?;
    match c {
        PeerCommand::Add { node_id, addr } => {
            let id = parse_node(node_id)?;
            resolve(addr)?;
            node.store.update_peer(&id.to_string(), |p| {
                p.addr = Some(addr.clone());
                p.allowed = true;
            })?;
            if cli.json {
                print_json(&json!({"added": id.to_string(), "addr": addr}));
            } else {
                println!("added {id} at {addr} (allowed)");
            }
        }
    }
    Ok(())
}
