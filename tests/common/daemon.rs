//! A node's daemon (`mycelium serve`) as a child process, and its event stream.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// `mycelium serve` on a home, started and answering.
pub struct Daemon {
    pub child: Child,
    pub home: PathBuf,
    /// What `serve --json` printed when it was up.
    pub started: serde_json::Value,
    pub stderr: Receiver<String>,
}

#[allow(dead_code)]
impl Daemon {
    /// Start `serve --json --listen 127.0.0.1:0 --discovery off ARGS` (or `market serve`
    /// with `market`), and wait until it is up.
    pub fn start(home: &Path, args: &[&str]) -> Daemon {
        Self::start_cmd(home, &["serve"], args)
    }

    pub fn start_cmd(home: &Path, cmd: &[&str], args: &[&str]) -> Daemon {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("mycelium"))
            .env_remove("MYCELIUM_HOME")
            .env("RUST_LOG", "mycelium=info")
            .arg("--home")
            .arg(home)
            .arg("--json")
            .args(cmd)
            .args(["--listen", "127.0.0.1:0", "--discovery", "off"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (otx, orx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if otx.send(l).is_err() {
                    break;
                }
            }
        });
        let line = match orx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let errs: Vec<String> = stderr.try_iter().collect();
                panic!("serve did not start: {}", errs.join("\n"));
            }
        };
        let started: serde_json::Value = serde_json::from_str(&line).unwrap();
        Daemon {
            child,
            home: home.to_path_buf(),
            started,
            stderr,
        }
    }

    /// The QUIC address it listens on.
    pub fn addr(&self) -> String {
        self.started["listening"].as_str().unwrap().to_string()
    }

    /// Subscribe to its events (nothing after this returns is missed).
    pub fn events(&self) -> Events {
        Events::subscribe(&self.home)
    }

    /// SIGTERM; whether it then ended cleanly (exit status 0). A failure prints its log.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        if !st.success() {
            eprintln!("serve ended with {st}; its log:\n{}", self.log().join("\n"));
        }
        st
    }

    /// Lines of its log that arrived so far.
    pub fn log(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon's event stream, read on a thread of its own.
pub struct Events {
    rx: Receiver<serde_json::Value>,
    /// Events seen while waiting for others.
    pub seen: Vec<serde_json::Value>,
}

#[allow(dead_code)]
impl Events {
    pub fn subscribe(home: &Path) -> Events {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = home.to_path_buf();
        std::thread::spawn(move || {
            let _ = mycelium::daemon::client::events(&h, &mut |v| tx.send(v.clone()).is_err());
        });
        let mut e = Events {
            rx,
            seen: Vec::new(),
        };
        e.wait("the stream's hello", Duration::from_secs(30), |v| {
            v["type"] == "hello"
        });
        e
    }

    /// The next event `pred` accepts (others are kept in `seen`); panics after `timeout`.
    pub fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no event for {what} within {timeout:?}; saw {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("event stream ended waiting for {what}; saw {:?}", self.seen)
                }
            }
        }
    }

    /// The next event, if one comes within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<serde_json::Value> {
        self.rx.recv_timeout(timeout).ok()
    }
}
