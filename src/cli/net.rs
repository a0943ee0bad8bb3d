//! `serve`, `sync`, `gateway`, `peers` and `peer add`: the QUIC side of a node.

use super::out::outln;
use super::safe::say;
use super::sneakernet::parse_bytes;
use super::{home, print_json, Cli};
use crate::bundle::Eid;
use crate::daemon::{
    self, config, Event, GatewayRole, HttpRole, Hub, MarketRole, Roles, WorkerRole,
};
use crate::node::Node;
use crate::sync::session::Limits;
use crate::time::DtnTime;
use crate::transport::discovery;
use crate::transport::quic::{self, QuicConfig};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (UDP), or `off` [default: 0.0.0.0:4433, or `listen` in
    /// <home>/config.toml]
    #[arg(long)]
    pub listen: Option<String>,
    /// Accept only peers added with `peer add`
    #[arg(long)]
    pub allowlist: bool,
    /// LAN discovery beacons (multicast group:port); `off` to disable [default:
    /// 239.255.70.77:4434]
    #[arg(long)]
    pub discovery: Option<String>,
    /// Least time between two syncs with the same discovered neighbour [default: 1m]
    #[arg(long)]
    pub discovery_interval: Option<String>,
    /// Serve the status page (and the API) on this address, e.g. 127.0.0.1:8080
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Token the status page's API requires (needed beyond loopback)
    #[arg(long, env = "MYCELIUM_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// Gateway role: keep in sync with this upstream node (host:port)
    #[arg(long, value_name = "ADDR")]
    pub upstream: Option<String>,
    /// The upstream's node ID
    #[arg(long, requires = "upstream")]
    pub upstream_expect: Option<String>,
    /// Time between upstream syncs [default: 5m]
    #[arg(long, requires = "upstream")]
    pub upstream_interval: Option<String>,
    /// Daily byte budget for the uplink, in MB
    #[arg(long, requires = "upstream")]
    pub budget_mb: Option<u64>,
    /// Feed watch: ingest this broadcast folder as files appear (repeatable)
    #[arg(long = "feed", value_name = "DIR")]
    pub feeds: Vec<PathBuf>,
    /// Accept feed bundles signed by any valid key, not only trusted ones
    #[arg(long)]
    pub any_signer: bool,
    /// Stick watch: import, then export, each drive holding `mycelium/` that appears in
    /// this mount folder (repeatable), e.g. /media/$USER
    #[arg(long = "stick", value_name = "DIR")]
    pub sticks: Vec<PathBuf>,
    /// Worker role: run assigned tasks as soon as they are stored
    #[arg(long)]
    pub worker: bool,
    /// The worker's engines on a GPU when there is one
    #[arg(long)]
    pub gpu: bool,
    /// Send results and payments in clear instead of sealed
    #[arg(long)]
    pub no_seal: bool,
    /// Run the Telegram bridge; the bot token comes from --telegram-token-file, the
    /// config's token_file or MYCELIUM_TELEGRAM_TOKEN (never a flag)
    #[arg(long)]
    pub telegram: bool,
    /// File holding the bot token
    #[arg(long, value_name = "FILE")]
    pub telegram_token_file: Option<PathBuf>,
    /// The Bot API's base URL (default https://api.telegram.org)
    #[arg(long, value_name = "URL")]
    pub telegram_api: Option<String>,
    /// Proxy for the Bot API, e.g. socks5://127.0.0.1:9050 (default: HTTPS_PROXY/ALL_PROXY)
    #[arg(long, value_name = "URL")]
    pub telegram_proxy: Option<String>,
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
    let node = super::open(cli)?;
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
        print_json(&r.to_json());
    } else {
        let peer = r.peer.as_ref().map(|p| p.to_string()).unwrap_or_default();
        outln!("synced with {peer} at {addr}");
        outln!("{}", r.line());
    }
    Ok(())
}

pub fn serve(cli: &Cli, a: &ServeArgs) -> Result<()> {
    let roles = serve_roles(cli, a)?;
    run_daemon(cli, roles, serve_printer(cli.json))
}

/// The roles `serve` runs: its flags over `<home>/config.toml` over the defaults.
pub fn serve_roles(cli: &Cli, a: &ServeArgs) -> Result<Roles> {
    let h = home(cli);
    let c = config::load(&h)?;
    let off = |s: &str| s.eq_ignore_ascii_case("off");
    let listen = a
        .listen
        .clone()
        .or(c.listen)
        .unwrap_or_else(|| "0.0.0.0:4433".into());
    let listen: Option<SocketAddr> = if off(&listen) {
        None
    } else {
        Some(resolve(&listen).context("--listen")?)
    };
    let discovery = a
        .discovery
        .clone()
        .or(c.discovery)
        .unwrap_or_else(|| discovery::DEFAULT_GROUP.into());
    let discovery: Option<SocketAddr> = if off(&discovery) {
        None
    } else {
        Some(
            discovery
                .parse()
                .with_context(|| format!("bad --discovery {discovery:?}"))?,
        )
    };
    let di = a
        .discovery_interval
        .clone()
        .or(c.discovery_interval)
        .unwrap_or_else(|| "1m".into());
    let discovery_interval = humantime::parse_duration(&di)
        .with_context(|| format!("bad --discovery-interval {di:?}"))?;
    let gateway = match (&a.upstream, c.gateway) {
        (Some(up), g) => Some(GatewayRole {
            upstream: up.clone(),
            expect: a
                .upstream_expect
                .as_deref()
                .or(g.as_ref().and_then(|g| g.expect.as_deref()))
                .map(parse_node)
                .transpose()?,
            interval: parse_interval(
                a.upstream_interval
                    .as_deref()
                    .or(g.as_ref().and_then(|g| g.interval.as_deref())),
            )?,
            budget: a
                .budget_mb
                .or(g.as_ref().and_then(|g| g.budget_mb))
                .map(|m| m.saturating_mul(1_000_000)),
        }),
        (None, Some(g)) => Some(GatewayRole {
            expect: g.expect.as_deref().map(parse_node).transpose()?,
            interval: parse_interval(g.interval.as_deref())?,
            budget: g.budget_mb.map(|m| m.saturating_mul(1_000_000)),
            upstream: g.upstream,
        }),
        (None, None) => None,
    };
    let mut feeds = a.feeds.clone();
    let feed_any_signer =
        a.any_signer || c.feed.as_ref().and_then(|f| f.any_signer).unwrap_or(false);
    if feeds.is_empty() {
        feeds = c.feed.map(|f| f.dirs).unwrap_or_default();
    }
    for d in &feeds {
        if !d.is_dir() {
            bail!("feed folder {} is not a folder", d.display());
        }
    }
    let mut sticks = a.sticks.clone();
    if sticks.is_empty() {
        sticks = c.stick.map(|s| s.mounts).unwrap_or_default();
    }
    for d in &sticks {
        if !d.is_dir() {
            bail!("stick mount folder {} is not a folder", d.display());
        }
    }
    let wf = c.worker.unwrap_or_default();
    let worker = (a.worker || wf.enabled.unwrap_or(false)).then(|| WorkerRole {
        seal: !a.no_seal && wf.seal.unwrap_or(true),
        max_batch: wf.max_batch.unwrap_or(32).max(1),
        gpu: a.gpu || wf.gpu.unwrap_or(false),
    });
    let mf = c.market.unwrap_or_default();
    let market = mf.enabled.unwrap_or(false).then(|| MarketRole {
        seal: !a.no_seal && mf.seal.unwrap_or(true),
        ledger: mf.ledger.clone(),
    });
    let http = a.http.or(c
        .http
        .as_deref()
        .map(|s| s.parse::<SocketAddr>())
        .transpose()
        .context("http in config.toml")?);
    let telegram = telegram_role(a, c.telegram)?;
    let roles = Roles {
        telegram,
        listen,
        allowlist: a.allowlist || c.allowlist.unwrap_or(false),
        discovery,
        discovery_interval,
        gateway,
        feeds,
        feed_any_signer,
        sticks,
        worker,
        market,
        http: http.map(|addr| HttpRole {
            addr,
            token: a.http_token.clone().or(c.http_token),
        }),
        socket: true,
    };
    roles.check()?;
    Ok(roles)
}

/// The Telegram bridge from `serve`'s flags over `[telegram]`: on with `--telegram` or
/// `enabled = true`; the token from a file (flag, then config) or the environment.
fn telegram_role(
    a: &ServeArgs,
    f: Option<config::TelegramFile>,
) -> Result<Option<crate::telegram::TelegramRole>> {
    let f = f.unwrap_or_default();
    if !(a.telegram || f.enabled.unwrap_or(false)) {
        return Ok(None);
    }
    let token = match a.telegram_token_file.as_ref().or(f.token_file.as_ref()) {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the bot token file {}", p.display()))?,
        None => std::env::var(crate::telegram::TOKEN_ENV).map_err(|_| {
            anyhow!(
                "the Telegram bridge needs the bot token: --telegram-token-file FILE, token_file in config.toml, or {}",
                crate::telegram::TOKEN_ENV
            )
        })?,
    };
    let token = token.trim().to_string();
    crate::telegram::bot::check_token(&token)?;
    Ok(Some(crate::telegram::TelegramRole {
        api_url: a
            .telegram_api
            .clone()
            .or(f.api_url)
            .unwrap_or_else(|| crate::telegram::DEFAULT_API.into()),
        token,
        proxy: a.telegram_proxy.clone().or(f.proxy),
        allow: f.allow,
        per_minute: f.per_minute.unwrap_or(20).max(1),
        poll: Duration::from_secs(25),
        task_reward: f.task_reward.unwrap_or(10),
        task_workers: f.task_workers.unwrap_or(3).max(1),
    }))
}

fn parse_interval(s: Option<&str>) -> Result<Duration> {
    let s = s.unwrap_or("5m");
    humantime::parse_duration(s).with_context(|| format!("bad interval {s:?}"))
}

/// What `serve` prints on stdout: where it listens (the log has the rest).
pub fn serve_printer(json: bool) -> impl FnMut(&Event) + Send + 'static {
    move |e| {
        if let Event::Started {
            node,
            roles,
            listen,
            http,
            socket,
        } = e
        {
            if json {
                outln!(
                    "{}",
                    json!({"listening": listen, "node": node, "roles": roles, "http": http, "socket": socket})
                );
            } else {
                outln!(
                    "listening on {} as {node}",
                    listen.as_deref().unwrap_or("(no QUIC listener)")
                );
                outln!("roles: {}", roles.join(", "));
                if let Some(h) = http {
                    outln!("status page: http://{h}/");
                }
                if let Some(s) = socket {
                    outln!("control socket: {s}");
                }
            }
        }
    }
}

/// Run this home's daemon with `roles` until SIGINT or SIGTERM, handing each event to
/// `print` (the one-role shortcuts print what they always printed).
pub fn run_daemon(
    cli: &Cli,
    roles: Roles,
    mut print: impl FnMut(&Event) + Send + 'static,
) -> Result<()> {
    let node = super::open(cli).map_err(|e| {
        if super::is_locked(&e) {
            e.context("another mycelium process holds this home's store")
        } else {
            e
        }
    })?;
    let rt = runtime()?;
    let hub = Hub::default();
    let mut rx = hub.subscribe();
    let r = rt.block_on(async move {
        let printer = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => print(&e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        });
        let r = daemon::run(node, roles, hub, Some(super::runner()), daemon::signals()).await;
        printer.abort();
        r
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(r?)
}

pub fn gateway(cli: &Cli, a: &GatewayArgs) -> Result<()> {
    let role = GatewayRole {
        upstream: a.upstream.clone(),
        expect: a.expect.as_deref().map(parse_node).transpose()?,
        interval: humantime::parse_duration(&a.interval)
            .with_context(|| format!("bad --interval {:?}", a.interval))?,
        budget: a.budget_mb.map(|m| m.saturating_mul(1_000_000)),
    };
    resolve(&a.upstream)?;
    let json = cli.json;
    let print = move |e: &Event| {
        if let Event::Gateway {
            used_today,
            skipped,
            report,
            line,
            ..
        } = e
        {
            match (json, skipped) {
                (true, Some(s)) => outln!("{}", json!({"skipped": s, "used_today": used_today})),
                (false, Some(s)) => outln!("{s}"),
                (true, None) => {
                    let mut v = report.clone().unwrap_or(json!({}));
                    v["used_today"] = json!(used_today);
                    outln!("{}", v);
                }
                (false, None) => outln!(
                    "{} | used today {used_today} B",
                    line.as_deref().unwrap_or("")
                ),
            }
        }
    };
    if !a.once {
        let roles = Roles {
            gateway: Some(role),
            ..Roles::default()
        };
        return run_daemon(cli, roles, print);
    }
    // Once: the role's one round, here (or inside the daemon, when one runs).
    let node = super::open(cli)?;
    let hub = Hub::default();
    let mut rx = hub.subscribe();
    let rt = runtime()?;
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let shared = Arc::new(daemon::Shared::default());
    let r = rt.block_on(daemon::roles::gateway(node, role, shared, hub, stop, true));
    while let Ok(e) = rx.try_recv() {
        print(&e);
    }
    r.map_err(|e| anyhow!(e))
}

pub fn peers(cli: &Cli) -> Result<()> {
    let node = super::open(cli)?;
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
        outln!("no peers yet: `mycelium peer add NODE_ID HOST:PORT` or `mycelium sync HOST:PORT`");
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
    let node = super::open(cli)?;
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
                outln!("added {id} at {addr} (allowed)");
            }
        }
    }
    Ok(())
}
