//! The `mycelium` command tree (clap) and its dispatch. Each command group has its own
//! file; all of them print human text, or JSON with `--json`. Errors are `anyhow` here
//! (the binary's edge) and become a message on stderr and exit code 1. Text that came from
//! outside (other nodes, sticks, feeds, peers) is printed for a person only through
//! [`safe`], which escapes what a terminal would act on.

mod broadcast;
mod bundle_cmds;
mod demo;
mod demo_market;
mod guild_cmds;
mod market_cmds;
mod messages;
mod model_cmds;
mod net;
mod node_cmds;
pub mod out;
mod qr_cmds;
mod release_cmds;
pub mod safe;
mod sneakernet;
mod task_cmds;
mod telegram_cmds;
mod wallet_cmds;
mod worker_cmds;

use anyhow::Result;
use clap::{Parser, Subcommand};
use out::outln;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "mycelium",
    version,
    about = "Store-and-forward, delay-tolerant messaging over sticks, broadcast feeds and QUIC"
)]
pub struct Cli {
    /// Node home directory [default: $MYCELIUM_HOME, else $XDG_DATA_HOME/mycelium, else
    /// ~/.local/share/mycelium]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create this node's identity and store
    Init(node_cmds::InitArgs),
    /// Print this node's ID (--qr: also as a QR code, on the terminal and as PNG)
    Id(node_cmds::IdArgs),
    /// Create a signed message bundle for EID and store it for the next contact
    Send(messages::SendArgs),
    /// List stored bundles
    List,
    /// Show one stored bundle (any unique prefix of its id)
    Show { id: String },
    /// Messages addressed to this node
    Inbox,
    /// Write or read single bundle files
    #[command(subcommand)]
    Bundle(bundle_cmds::BundleCommand),
    /// Write the bundles that should travel to a USB stick or folder, as shards
    Export(sneakernet::ExportArgs),
    /// Read what a USB stick or folder brought: verify, rebuild, store
    Import(sneakernet::ImportArgs),
    /// The one-way broadcast feed: publish (uplink side) and ingest (receivers)
    #[command(subcommand)]
    Broadcast(broadcast::BroadcastCommand),
    /// Which nodes this node trusts, and for what
    #[command(subcommand)]
    Trust(broadcast::TrustCommand),
    /// Bundles as QR frames for screens and paper, and photos of them read back
    #[command(subcommand)]
    Qr(qr_cmds::QrCommand),
    /// Sealing keys of other nodes
    #[command(subcommand)]
    Contact(node_cmds::ContactCommand),
    /// Run the node: one daemon with every role this home is configured for (QUIC and LAN
    /// discovery, gateway, feed and stick watch, worker), its control socket and status page
    Serve(net::ServeArgs),
    /// Sync once with a peer over QUIC, then print what moved
    Sync(net::SyncArgs),
    /// Keep the local cell in sync with an upstream node, within a daily byte budget
    Gateway(net::GatewayArgs),
    /// Peers this node has synced with or knows
    Peers,
    /// Manage known peers (and the allow-list)
    #[command(subcommand)]
    Peer(net::PeerCommand),
    /// Check a bundle file's structure and signature (needs no home)
    Verify { file: PathBuf },
    /// Inference tasks: submit, list, read results
    #[command(subcommand)]
    Task(task_cmds::TaskCommand),
    /// The marketplace: choose one, run one, grant credits, workers' records
    #[command(subcommand)]
    Market(market_cmds::MarketCommand),
    /// Balance and payments; `wallet send` pays a node
    Wallet(wallet_cmds::WalletArgs),
    /// Models this node holds for its engines, and their travel as bundles
    #[command(subcommand)]
    Model(model_cmds::ModelCommand),
    /// Run assigned tasks and answer the marketplace; `worker offer` announces this node
    Worker(worker_cmds::WorkerArgs),
    /// Guilds: groups of workers sharing tasks and payments
    #[command(subcommand)]
    Guild(guild_cmds::GuildCommand),
    /// Releases of Mycelium as signed bundles: publish one, list those held
    #[command(subcommand)]
    Release(release_cmds::ReleaseCommand),
    /// Install the newest trusted release for this machine (--check: only say; --rollback:
    /// put the previous binary back)
    Update(release_cmds::UpdateArgs),
    /// Write what a person without Mycelium needs to a stick or folder: binaries for every
    /// target, a guide (English, Persian), checksums, and the release for nodes to import
    Spread(release_cmds::SpreadArgs),
    /// The Telegram bridge (`serve --telegram`): invite codes, allowed chats, linked chats
    #[command(subcommand)]
    Telegram(telegram_cmds::TelegramCommand),
    /// Run the end-to-end demo on temporary homes
    Demo(demo::DemoArgs),
}

/// Where the node lives, from `--home` or the defaults.
pub fn home(cli: &Cli) -> PathBuf {
    cli.home.clone().unwrap_or_else(crate::node::default_home)
}

/// The node of this command's home: the daemon's, when the command runs inside it;
/// otherwise opened here.
pub(crate) fn open(cli: &Cli) -> Result<Arc<crate::node::Node>> {
    if let Some(n) = out::shared_node() {
        return Ok(n);
    }
    Ok(Arc::new(crate::node::Node::open(&home(cli))?))
}

/// The binary's whole life: parse, log setup, then run the command here or in the
/// daemon that holds this home; the exit code.
pub fn main(argv: Vec<std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    init_logging();
    let h = home(&cli);
    match route(&cli) {
        Route::Here => finish(run(&cli)),
        Route::Role(what) => {
            if crate::daemon::client::connect(&h).is_some() {
                return finish(Err(anyhow::anyhow!(
                    "a mycelium daemon already runs on {} and owns its store; {what} is one of the roles it can run: add it to {} (or `serve`'s flags) and restart it, or stop it first",
                    h.display(),
                    h.join(crate::daemon::config::CONFIG_FILE).display()
                )));
            }
            finish(run(&cli))
        }
        Route::Anywhere => {
            let args: Option<Vec<String>> = argv
                .iter()
                .skip(1)
                .map(|a| a.to_str().map(str::to_string))
                .collect();
            let Some(args) = args else {
                // Not passable as text: run here (fails clearly if the store is held).
                return finish(run(&cli));
            };
            let wait = lock_wait();
            let deadline = std::time::Instant::now() + wait;
            loop {
                if let Some(s) = crate::daemon::client::connect(&h) {
                    return forward(s, &args);
                }
                match run(&cli) {
                    Err(e) if is_locked(&e) && std::time::Instant::now() < deadline => {
                        // Held by a daemon starting or stopping, or by another command:
                        // wait for it to answer on its socket or let go of the store.
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    Err(e) if is_locked(&e) => {
                        return finish(Err(e.context(format!(
                            "the store stayed in use for {} s and no daemon answers on {}: a daemon may be starting or stopping, or another command is running; try again",
                            wait.as_secs(),
                            crate::daemon::socket_path(&h).display()
                        ))))
                    }
                    r => return finish(r),
                }
            }
        }
    }
}

/// How long a command waits for a store held by another process (a daemon starting or
/// stopping, another command) before it gives up with a clear answer: 15 s, or
/// `MYCELIUM_LOCK_WAIT` seconds.
fn lock_wait() -> std::time::Duration {
    let secs = std::env::var("MYCELIUM_LOCK_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    std::time::Duration::from_secs(secs)
}

fn is_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::store::StoreError>(),
            Some(crate::store::StoreError::Locked { .. })
        ) || matches!(
            c.downcast_ref::<crate::node::NodeError>(),
            Some(crate::node::NodeError::Store(
                crate::store::StoreError::Locked { .. }
            ))
        )
    })
}

/// Run the command in the daemon, relaying its output; its exit code.
fn forward(s: std::os::unix::net::UnixStream, args: &[String]) -> i32 {
    let cwd = match std::env::current_dir() {
        Ok(c) => c,
        Err(e) => return finish(Err(anyhow::anyhow!("no working directory: {e}"))),
    };
    let r = crate::daemon::client::run(s, args, &cwd, &mut |o, t| out::write(o, t));
    match r {
        Ok(code) => code,
        Err(e) => finish(Err(anyhow::Error::new(e).context("through the daemon"))),
    }
}

/// Print an error the way every command does; the exit code.
fn finish(r: Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            // Errors quote outside text (a refusal's reason, a peer's words): escaped, and
            // any line breaks in them indented under the first line.
            out::errln!("error: {}", safe::block(&format!("{e:#}"), "  "));
            1
        }
    }
}

/// Logs (the daemon's roles, transports) go to stderr through `tracing`; `RUST_LOG`
/// chooses what (default: this crate's info and above, others' warnings).
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("mycelium=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Where a command runs.
enum Route {
    /// Here, always: it needs no home, or makes one.
    Here,
    /// A role loop: here, and only when no daemon holds the home.
    Role(&'static str),
    /// In the daemon when one runs on the home, else here.
    Anywhere,
}

fn route(cli: &Cli) -> Route {
    use broadcast::BroadcastCommand as B;
    use market_cmds::MarketCommand as M;
    match &cli.command {
        Command::Init(_) | Command::Demo(_) | Command::Verify { .. } => Route::Here,
        Command::Worker(a) if matches!(a.cmd, Some(worker_cmds::WorkerCommand::Devices)) => {
            Route::Here
        }
        Command::Serve(_) => Route::Role("serve"),
        Command::Gateway(a) if !a.once => Route::Role("the gateway"),
        Command::Worker(a) if a.cmd.is_none() && !a.once => Route::Role("the worker"),
        Command::Broadcast(B::Ingest(a)) if a.watch => Route::Role("feed watch"),
        Command::Market(M::Serve { .. }) => Route::Role("the marketplace"),
        _ => Route::Anywhere,
    }
}

/// Runs CLI commands inside the daemon (handed to [`crate::daemon::run`]): on its node,
/// from the caller's working directory, output to the caller.
pub fn runner() -> crate::daemon::Runner {
    Arc::new(|node, argv, cwd, mut sink| {
        let full = std::iter::once("mycelium".to_string()).chain(argv);
        let mut cli = match Cli::try_parse_from(full) {
            Ok(c) => c,
            Err(e) => {
                sink(out::Stream::Err, &e.render().to_string());
                return e.exit_code();
            }
        };
        if !matches!(route(&cli), Route::Anywhere) {
            sink(
                out::Stream::Err,
                "error: this command is not run through the daemon (it is a role, or needs no home)\n",
            );
            return 2;
        }
        cli.home = Some(node.home.clone());
        absolutize(&mut cli, &cwd);
        out::borrowed(out::Borrowed { node, sink }, || finish(run(&cli)))
    })
}

/// Relative paths in `cli` taken from `cwd` (the calling CLI's, not the daemon's).
fn absolutize(cli: &mut Cli, cwd: &Path) {
    let abs = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = cwd.join(&*p);
        }
    };
    match &mut cli.command {
        Command::Send(a) => {
            if let Some(f) = &mut a.file {
                abs(f)
            }
        }
        Command::Bundle(bundle_cmds::BundleCommand::Dump { output, .. }) => abs(output),
        Command::Bundle(bundle_cmds::BundleCommand::Load { file }) => abs(file),
        Command::Export(a) => abs(&mut a.dir),
        Command::Qr(qr_cmds::QrCommand::Export(a)) => abs(&mut a.out_dir),
        Command::Qr(qr_cmds::QrCommand::Import(a)) => a.images.iter_mut().for_each(abs),
        Command::Id(node_cmds::IdArgs { png: Some(p), .. }) => abs(p),
        Command::Import(a) => abs(&mut a.dir),
        Command::Broadcast(broadcast::BroadcastCommand::Publish(a)) => abs(&mut a.out_dir),
        Command::Broadcast(broadcast::BroadcastCommand::Ingest(a)) => abs(&mut a.dir),
        Command::Task(task_cmds::TaskCommand::Submit(a)) => abs(&mut a.input),
        Command::Model(model_cmds::ModelCommand::Add { path, .. }) => abs(path),
        Command::Verify { file } => abs(file),
        Command::Release(release_cmds::ReleaseCommand::Publish(a)) => {
            a.paths.iter_mut().for_each(abs)
        }
        Command::Release(release_cmds::ReleaseCommand::List(a)) => {
            if let Some(b) = &mut a.binary {
                abs(b)
            }
        }
        Command::Update(a) => {
            if let Some(b) = &mut a.machine.binary {
                abs(b)
            }
        }
        Command::Spread(a) => abs(&mut a.dir),
        _ => {}
    }
}

/// Run the command here (on this process's node, or the daemon's inside it).
pub fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Init(a) => node_cmds::init(cli, a),
        Command::Id(a) => node_cmds::id(cli, a),
        Command::Qr(c) => qr_cmds::run(cli, c),
        Command::Send(a) => messages::send(cli, a),
        Command::List => messages::list(cli),
        Command::Show { id } => messages::show(cli, id),
        Command::Inbox => messages::inbox(cli),
        Command::Bundle(c) => bundle_cmds::run(cli, c),
        Command::Export(a) => sneakernet::export(cli, a),
        Command::Import(a) => sneakernet::import(cli, a),
        Command::Broadcast(c) => broadcast::run(cli, c),
        Command::Trust(c) => broadcast::trust(cli, c),
        Command::Contact(c) => node_cmds::contact(cli, c),
        Command::Serve(a) => net::serve(cli, a),
        Command::Sync(a) => net::sync(cli, a),
        Command::Gateway(a) => net::gateway(cli, a),
        Command::Peers => net::peers(cli),
        Command::Peer(c) => net::peer(cli, c),
        Command::Verify { file } => bundle_cmds::verify(cli, file),
        Command::Task(c) => task_cmds::task(cli, c),
        Command::Market(c) => market_cmds::market(cli, c),
        Command::Wallet(a) => wallet_cmds::wallet_cmd(cli, a),
        Command::Model(c) => model_cmds::run(cli, c),
        Command::Worker(a) => worker_cmds::worker_cmd(cli, a),
        Command::Guild(c) => guild_cmds::guild(cli, c),
        Command::Release(c) => release_cmds::run(cli, c),
        Command::Update(a) => release_cmds::update(cli, a),
        Command::Spread(a) => release_cmds::spread(cli, a),
        Command::Telegram(c) => telegram_cmds::run(cli, c),
        Command::Demo(a) => demo::run(cli, a),
    }
}

/// This process's peak resident memory in KiB (Linux `VmHWM`), for `--json` summaries.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Print a JSON value (pretty) to stdout.
pub(crate) fn print_json(v: &serde_json::Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}
