//! Figures for the node as one process (`cargo run --release --example daemon_figures`):
//! - the time from an assignment stored by an incoming sync to the worker starting on it
//!   (median of 20), through real daemons: marketplace M and worker B run `serve`, A
//!   submits tasks, M's daemon pushes each assignment to B with `sync`;
//! - `send` through the daemon against `send` with no daemon (messages per second, sealed,
//!   as `send` makes them, one process per message as a person types them);
//! - the daemon's resident memory when idle and at the end of a 10,000-bundle sync.
//!
//! Uses the `mycelium` binary next to this example (build it first, same profile).

use mycelium::daemon::client;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("mycelium")
}

fn my(home: &Path, args: &[&str]) -> std::process::Output {
    let o = Command::new(bin())
        .env_remove("MYCELIUM_HOME")
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("run mycelium");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_slice(&my(home, &a).stdout).expect("json")
}

struct Serve {
    child: Child,
    started: serde_json::Value,
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn serve(home: &Path, cmd: &[&str], args: &[&str]) -> Serve {
    let mut child = Command::new(bin())
        .env_remove("MYCELIUM_HOME")
        .env("RUST_LOG", "warn")
        .arg("--home")
        .arg(home)
        .arg("--json")
        .args(cmd)
        .args(["--listen", "127.0.0.1:0", "--discovery", "off"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("started");
    Serve {
        child,
        started: serde_json::from_str(&line).expect("started json"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn events(home: &Path) -> std::sync::mpsc::Receiver<(Instant, serde_json::Value)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = home.to_path_buf();
    std::thread::spawn(move || {
        let _ = client::events(&h, &mut |v| tx.send((Instant::now(), v.clone())).is_err());
    });
    let (_, hello) = rx.recv_timeout(Duration::from_secs(30)).expect("hello");
    assert_eq!(hello["type"], "hello");
    rx
}

fn main() {
    let t = tempfile::tempdir().expect("tmp");
    let home = |n: &str| t.path().join(n);
    let (m, a, b) = (home("m"), home("a"), home("b"));
    for h in [&m, &a, &b] {
        my(h, &["init"]);
    }
    let id = |h: &Path| {
        json(h, &["id"])["node_id"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let (m_id, a_id, b_id) = (id(&m), id(&a), id(&b));

    // 1. Stored by an incoming sync -> worker starting, 20 times.
    let md = serve(&m, &["market", "serve"], &["--no-seal"]);
    let m_addr = md.started["listening"].as_str().unwrap_or("").to_string();
    json(&m, &["market", "grant", "--to", &a_id, "--amount", "1000"]);
    for h in [&a, &b] {
        my(h, &["market", "use", &m_id]);
    }
    json(
        &b,
        &[
            "worker",
            "offer",
            "--kinds",
            "digest",
            "--no-seal",
            "--capacity",
            "100",
        ],
    );
    my(&b, &["sync", &m_addr]);
    my(&a, &["sync", &m_addr]);
    let bd = serve(&b, &["serve"], &["--worker", "--no-seal"]);
    let b_addr = bd.started["listening"].as_str().unwrap_or("").to_string();
    let bev = events(&b);
    let input = t.path().join("in.txt");
    let mut lat = Vec::new();
    for i in 0..20 {
        std::fs::write(&input, format!("text {i}")).expect("input");
        let submitted = json(
            &a,
            &[
                "task",
                "submit",
                "--kind",
                "digest",
                "--reward",
                "1",
                "--redundancy",
                "1",
                "--no-seal",
                "--input",
                input.to_str().unwrap_or(""),
            ],
        );
        let task = submitted["task"].as_str().unwrap_or("").to_string();
        my(&a, &["sync", &m_addr]);
        // M's rules run on the commit; its daemon pushes the assignment to B.
        my(&m, &["sync", &b_addr]);
        // The worker's "working" can reach the stream just before the commit's "stored"
        // (two emitters): both times are kept, and a negative gap counts as zero.
        let (mut stored, mut working) = (None, None);
        loop {
            let (at, v) = bev.recv_timeout(Duration::from_secs(60)).expect("event");
            if v["type"] == "stored" && v["kind"] == "assignment" && stored.is_none() {
                stored = Some(at);
            }
            if v["type"] == "working" && working.is_none() {
                working = Some(at);
            }
            if v["type"] == "ran" && v["task"] == task.as_str() {
                break;
            }
        }
        if let (Some(s), Some(w)) = (stored, working) {
            lat.push(w.saturating_duration_since(s));
        }
    }
    lat.sort();
    let med = lat.get(lat.len() / 2).copied().unwrap_or_default();
    println!(
        "assignment stored by an incoming sync -> worker starting: median {:.1} ms of {} (min {:.1}, max {:.1})",
        med.as_secs_f64() * 1e3,
        lat.len(),
        lat.first().copied().unwrap_or_default().as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    drop(bd);
    drop(md);

    // 2. send, sealed, one process per message: with and without the daemon.
    let c = home("c");
    my(&c, &["init"]);
    // B's sealing key reaches C (as `contact add` with what `id --json` prints).
    let x = json(&b, &["id"])["x25519"]
        .as_str()
        .unwrap_or("")
        .to_string();
    my(&c, &["contact", "add", &b_id, &x]);
    let n = 100;
    let run = |label: &str| -> f64 {
        let t0 = Instant::now();
        for i in 0..n {
            my(
                &c,
                &["send", "--to", &b_id, "--text", &format!("{label} {i}")],
            );
        }
        n as f64 / t0.elapsed().as_secs_f64()
    };
    let without = run("plain");
    let cd = serve(&c, &["serve"], &[]);
    let with = run("daemon");
    println!(
        "send (sealed, one process each): {with:.1} msg/s through the daemon, {without:.1} msg/s without ({:.2}x)",
        with / without
    );

    // 3. Daemon memory: idle, then during a 10,000-bundle sync into it.
    let idle = rss_kib(cd.child.id());
    let s = home("s");
    {
        let node = mycelium::node::Node::init(&s).expect("sender");
        let to = mycelium::bundle::Eid::parse(&id(&c)).expect("eid");
        let now = mycelium::time::DtnTime::now();
        for i in 0..10_000 {
            let p = mycelium::adu::encode_message(&mycelium::adu::Message::Text(format!(
                "bulletin {i}"
            )));
            node.originate(to.clone(), p, 7 * 24 * 3600 * 1000, now)
                .expect("originate");
        }
    }
    let c_addr = cd.started["listening"].as_str().unwrap_or("").to_string();
    let pid = cd.child.id();
    let stick = t.path().join("stick-10k");
    my(&s, &["export", stick.to_str().unwrap_or("")]);
    // Resident memory sampled every 20 ms while `what` runs.
    let during = |what: &dyn Fn() -> Result<String, String>| -> (u64, f64, Result<String, String>) {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p2, d2) = (peak.clone(), done.clone());
        let watcher = std::thread::spawn(move || {
            while !d2.load(std::sync::atomic::Ordering::Relaxed) {
                p2.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let t0 = Instant::now();
        let r = what();
        let secs = t0.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = watcher.join();
        (peak.load(std::sync::atomic::Ordering::Relaxed), secs, r)
    };
    let run = |home: &Path, args: &[&str]| -> Result<String, String> {
        let o = Command::new(bin())
            .env_remove("MYCELIUM_HOME")
            .arg("--home")
            .arg(home)
            .arg("--json")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    };
    let (peak, secs, r) = during(&|| run(&s, &["sync", &c_addr]));
    println!(
        "daemon RSS: {} MiB idle; {} MiB peak during a sync of 10,000 bundles into it ({secs:.1} s): {}",
        idle / 1024,
        peak / 1024,
        match &r {
            Ok(v) => format!("{} received", serde_json::from_str::<serde_json::Value>(v).map(|v| v["sent"].clone()).unwrap_or_default()),
            Err(e) => format!("FAILED: {e}"),
        }
    );
    let (peak, secs, r) = during(&|| run(&c, &["import", stick.to_str().unwrap_or("")]));
    println!(
        "daemon RSS: {} MiB peak during an import through it of a stick with the same 10,000 bundles (already held) ({secs:.1} s): {}",
        peak / 1024,
        match &r {
            Ok(v) => format!("{} new", serde_json::from_str::<serde_json::Value>(v).map(|v| v["new"].clone()).unwrap_or_default()),
            Err(e) => format!("FAILED: {e}"),
        }
    );
    drop(cd);
}
