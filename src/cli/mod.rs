//! The `mycelium` command tree (clap) and its dispatch. Each command group has its own
//! file; all of them print human text, or JSON with `--json`. Errors are `anyhow` here
//! (the binary's edge) and become a message on stderr and exit code 1. Text that came from
//! outside (other nodes, sticks, feeds, peers) is printed for a person only through
//! [`safe`], which escapes what a terminal would act on.

mod broadcast;
mod bundle_cmds;
mod demo;
mod demo_market;
mod market_cmds;
mod messages;
mod model_cmds;
mod net;
mod node_cmds;
pub mod safe;
mod sneakernet;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
    Init,
    /// Print this node's ID
    Id,
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
    /// Sealing keys of other nodes
    #[command(subcommand)]
    Contact(node_cmds::ContactCommand),
    /// Run the node: accept QUIC syncs, announce it on the LAN and sync with neighbours
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
    Task(market_cmds::TaskCommand),
    /// The marketplace: choose one, run one, grant credits, workers' records
    #[command(subcommand)]
    Market(market_cmds::MarketCommand),
    /// Balance and payments; `wallet send` pays a node
    Wallet(market_cmds::WalletArgs),
    /// Models this node holds for its engines, and their travel as bundles
    #[command(subcommand)]
    Model(model_cmds::ModelCommand),
    /// Run assigned tasks and answer the marketplace; `worker offer` announces this node
    Worker(market_cmds::WorkerArgs),
    /// Guilds: groups of workers sharing tasks and payments
    #[command(subcommand)]
    Guild(market_cmds::GuildCommand),
    /// Run the end-to-end demo on temporary homes
    Demo(demo::DemoArgs),
}

/// Where the node lives, from `--home` or the defaults.
pub fn home(cli: &Cli) -> PathBuf {
    cli.home.clone().unwrap_or_else(crate::node::default_home)
}

pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Init => node_cmds::init(&cli),
        Command::Id => node_cmds::id(&cli),
        Command::Send(a) => messages::send(&cli, a),
        Command::List => messages::list(&cli),
        Command::Show { id } => messages::show(&cli, id),
        Command::Inbox => messages::inbox(&cli),
        Command::Bundle(c) => bundle_cmds::run(&cli, c),
        Command::Export(a) => sneakernet::export(&cli, a),
        Command::Import(a) => sneakernet::import(&cli, a),
        Command::Broadcast(c) => broadcast::run(&cli, c),
        Command::Trust(c) => broadcast::trust(&cli, c),
        Command::Contact(c) => node_cmds::contact(&cli, c),
        Command::Serve(a) => net::serve(&cli, a),
        Command::Sync(a) => net::sync(&cli, a),
        Command::Gateway(a) => net::gateway(&cli, a),
        Command::Peers => net::peers(&cli),
        Command::Peer(c) => net::peer(&cli, c),
        Command::Verify { file } => bundle_cmds::verify(&cli, file),
        Command::Task(c) => market_cmds::task(&cli, c),
        Command::Market(c) => market_cmds::market(&cli, c),
        Command::Wallet(a) => market_cmds::wallet_cmd(&cli, a),
        Command::Model(c) => model_cmds::run(&cli, c),
        Command::Worker(a) => market_cmds::worker_cmd(&cli, a),
        Command::Guild(c) => market_cmds::guild(&cli, c),
        Command::Demo(a) => demo::run(&cli, a),
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
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}
