//! Which roles a home runs: `<home>/config.toml`, merged by the CLI with `serve`'s flags
//! (flags win). Every field is optional; unknown fields are refused so that a typo does not
//! silently leave a role off.
//!
//! ```toml
//! listen = "0.0.0.0:4433"          # QUIC listener; "off" for none
//! allowlist = false                # accept only peers added with `peer add`
//! discovery = "239.255.70.77:4434" # LAN beacons; "off" for none
//! discovery_interval = "1m"
//! http = "127.0.0.1:8080"          # status page; other than loopback needs http_token
//! http_token = "long-random-string"
//!
//! [gateway]                        # sync with an upstream node within a daily budget
//! upstream = "market.example.org:4433"
//! expect = "dtn://…/"              # refuse anyone else answering there
//! interval = "5m"
//! budget_mb = 100
//!
//! [feed]                           # broadcast folders ingested as files appear
//! dirs = ["/media/toosheh"]
//! any_signer = false
//!
//! [stick]                          # mount folders where sticks appear (e.g. /media/alice)
//! mounts = ["/media/alice"]
//!
//! [worker]                         # run assigned tasks as soon as they are stored
//! enabled = true
//! gpu = false
//! seal = true
//! max_batch = 32
//!
//! [market]                         # the marketplace's rules (global side only)
//! enabled = false
//! seal = true
//! ledger = "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"  # shared by front nodes;
//!                                  # absent: the ledger is in this node's store
//!
//! [telegram]                       # the Telegram bridge (at a gateway)
//! enabled = false
//! token_file = "/etc/mycelium/bot-token"   # or MYCELIUM_TELEGRAM_TOKEN; never here
//! api_url = "https://api.telegram.org"
//! proxy = "socks5://127.0.0.1:9050"        # else HTTPS_PROXY / ALL_PROXY
//! allow = [123456789]              # chats that may link without an invite code
//! per_minute = 20
//! task_reward = 10                 # /task: credits to each agreeing worker
//! task_workers = 3                 # /task: independent workers
//! ```

use super::DaemonError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub allowlist: Option<bool>,
    pub discovery: Option<String>,
    pub discovery_interval: Option<String>,
    pub http: Option<String>,
    pub http_token: Option<String>,
    pub gateway: Option<GatewayFile>,
    pub feed: Option<FeedFile>,
    pub stick: Option<StickFile>,
    pub worker: Option<WorkerFile>,
    pub market: Option<MarketFile>,
    pub telegram: Option<TelegramFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramFile {
    pub enabled: Option<bool>,
    pub token_file: Option<PathBuf>,
    pub api_url: Option<String>,
    pub proxy: Option<String>,
    #[serde(default)]
    pub allow: Vec<i64>,
    pub per_minute: Option<u32>,
    pub task_reward: Option<u64>,
    pub task_workers: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub upstream: String,
    pub expect: Option<String>,
    pub interval: Option<String>,
    pub budget_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedFile {
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    pub any_signer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickFile {
    #[serde(default)]
    pub mounts: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    pub enabled: Option<bool>,
    pub gpu: Option<bool>,
    pub seal: Option<bool>,
    pub max_batch: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketFile {
    pub enabled: Option<bool>,
    pub seal: Option<bool>,
    pub ledger: Option<String>,
}

/// `<home>/config.toml`, or the empty config when there is none.
pub fn load(home: &Path) -> Result<FileConfig, DaemonError> {
    let path = home.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => return Err(DaemonError::Config(format!("{}: {e}", path.display()))),
    };
    toml::from_str(&text).map_err(|e| DaemonError::Config(format!("{}: {e}", path.display())))
}

/// The gateway role: sync with `upstream` every `interval`, within `budget` bytes a day.
#[derive(Debug, Clone)]
pub struct GatewayRole {
    pub upstream: String,
    pub expect: Option<crate::bundle::Eid>,
    pub interval: Duration,
    /// Bytes a day, both directions, QUIC overhead included.
    pub budget: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct WorkerRole {
    pub seal: bool,
    pub max_batch: usize,
    pub gpu: bool,
}

#[derive(Debug, Clone)]
pub struct MarketRole {
    pub seal: bool,
    /// `etcd://HOST:PORT[,...]`: the ledger shared by front nodes; `None`: in the store.
    pub ledger: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HttpRole {
    pub addr: SocketAddr,
    /// Required on every API request when set (`?token=` or `Authorization: Bearer`).
    pub token: Option<String>,
}

/// What one daemon runs. [`Roles::default`] runs nothing but the control socket.
#[derive(Debug, Clone)]
pub struct Roles {
    /// QUIC listener.
    pub listen: Option<SocketAddr>,
    pub allowlist: bool,
    /// LAN discovery group (needs the listener).
    pub discovery: Option<SocketAddr>,
    pub discovery_interval: Duration,
    pub gateway: Option<GatewayRole>,
    pub feeds: Vec<PathBuf>,
    pub feed_any_signer: bool,
    pub sticks: Vec<PathBuf>,
    pub worker: Option<WorkerRole>,
    pub market: Option<MarketRole>,
    pub http: Option<HttpRole>,
    /// The Telegram bridge.
    pub telegram: Option<crate::telegram::TelegramRole>,
    /// The control socket `<home>/daemon.sock` (the CLI's way in).
    pub socket: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            listen: None,
            allowlist: false,
            discovery: None,
            discovery_interval: Duration::from_secs(60),
            gateway: None,
            feeds: Vec::new(),
            feed_any_signer: false,
            sticks: Vec::new(),
            worker: None,
            market: None,
            http: None,
            telegram: None,
            socket: true,
        }
    }
}

impl Roles {
    /// The roles' names, for the status page and the log.
    pub fn names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.listen.is_some() {
            v.push("quic".to_string());
        }
        if self.discovery.is_some() && self.listen.is_some() {
            v.push("discovery".into());
        }
        if self.gateway.is_some() {
            v.push("gateway".into());
        }
        if !self.feeds.is_empty() {
            v.push("feed".into());
        }
        if !self.sticks.is_empty() {
            v.push("stick".into());
        }
        if self.worker.is_some() {
            v.push("worker".into());
        }
        if self.market.is_some() {
            v.push("market".into());
        }
        if self.http.is_some() {
            v.push("http".into());
        }
        if self.telegram.is_some() {
            v.push("telegram".into());
        }
        v
    }

    /// Refuse what cannot work: a status page beyond loopback without a token.
    pub fn check(&self) -> Result<(), DaemonError> {
        if let Some(h) = &self.http {
            if !h.addr.ip().is_loopback() && h.token.as_deref().is_none_or(str::is_empty) {
                return Err(DaemonError::Config(format!(
                    "the status page on {} would be reachable from other machines: give it a token (--http-token or http_token in config.toml), or listen on 127.0.0.1",
                    h.addr
                )));
            }
        }
        Ok(())
    }
}
