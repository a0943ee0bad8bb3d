//! A real etcd cluster on loopback for the tests and the market bench: Debian's `etcd`
//! binary, free ports, its own data dirs; members can be killed (SIGKILL) and started
//! again on their data. Readiness is read from each member's log (the line it writes once
//! it has joined the cluster and serves clients), not guessed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    token: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Start `n` members under `root` and wait until each serves clients.
    pub fn start(root: &Path, n: usize) -> Cluster {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                dir: root.join(format!("etcd-m{i}")),
                child: None,
            })
            .collect();
        let mut c = Cluster {
            members,
            token: format!("mycelium-test-{}", std::process::id()),
        };
        let waits: Vec<_> = (0..n).map(|i| c.spawn(i)).collect();
        for (i, w) in waits.into_iter().enumerate() {
            c.await_ready(i, w);
        }
        c
    }

    /// `etcd://127.0.0.1:C0,...` (the members' client ports).
    pub fn addr(&self) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}", eps.join(","))
    }

    fn spawn(&mut self, i: usize) -> mpsc::Receiver<String> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &mut self.members[i];
        let mut child = Command::new("etcd")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.dir)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--max-txn-ops")
            .arg("8192")
            .arg("--max-request-bytes")
            .arg("16777216")
            .arg("--logger")
            .arg("zap")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcd (Debian's etcd-server; scripts/setup.sh --tests installs it)");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // etcd 3.4 (Debian 12) says the first, 3.5 and later the second, once
                // the member has joined its cluster and serves clients.
                if line.contains("serving client traffic insecurely")
                    || line.contains("ready to serve client requests")
                {
                    let _ = tx.send(line);
                }
            }
        });
        m.child = Some(child);
        rx
    }

    fn await_ready(&mut self, i: usize, rx: mpsc::Receiver<String>) {
        let m = &mut self.members[i];
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "etcd member {} not ready in 60 s (exit: {status:?})",
                m.name
            );
        }
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> mpsc::Receiver<String> {
        assert!(self.members[i].child.is_none(), "member {i} runs");
        self.spawn(i)
    }

    /// Wait for a restarted member (from [`Cluster::restart`]) to serve again.
    pub fn await_restarted(&mut self, i: usize, rx: mpsc::Receiver<String>) {
        self.await_ready(i, rx);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Cluster {
    /// The member that leads now.
    pub fn leader(&self) -> usize {
        let rt = runtime();
        for (i, m) in self.members.iter().enumerate() {
            let ep = format!("http://127.0.0.1:{}", m.client);
            let Ok(mut c) = rt.block_on(etcd_client::Client::connect([ep], None)) else {
                continue;
            };
            if let Ok(s) = rt.block_on(c.status()) {
                if s.header().map(|h| h.member_id()) == Some(s.leader()) {
                    return i;
                }
            }
        }
        panic!("no etcd member leads");
    }

    /// Every change of `key` from now on, as its new revision (a thread with its own
    /// client; ends when the receiver is dropped or the cluster goes).
    pub fn watch(&self, key: Vec<u8>) -> mpsc::Receiver<i64> {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async move {
                let mut c = etcd_client::Client::connect(eps, None).await.unwrap();
                let mut s = c.watch(key, None).await.unwrap();
                let _ = ready_tx.send(());
                while let Ok(Some(r)) = s.message().await {
                    for e in r.events() {
                        if let Some(kv) = e.kv() {
                            if tx.send(kv.mod_revision()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("watch started");
        rx
    }
}
