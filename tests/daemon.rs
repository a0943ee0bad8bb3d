//! The node as one process: `serve` running its roles (QUIC, feed watch, stick watch,
//! worker, gateway, marketplace rules) while the CLI works on the same home through the
//! daemon's control socket; clean stops; kills at random moments losing nothing reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::daemon::Daemon;
use common::{json, my};

const T: Duration = Duration::from_secs(60);

fn id(h: &Path) -> String {
    json(h, &["id"])["node_id"].as_str().unwrap().to_string()
}

fn init(h: &Path) -> String {
    my(h).arg("init").assert().success();
    id(h)
}

fn keys(list: &serde_json::Value) -> std::collections::BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// What "Done when" asks: on one home with `serve` running (feed watch, stick watch,
/// worker and gateway on), the CLI works from another terminal, a message synced in from
/// another node shows in `inbox`, a task goes round the marketplace through daemons only.
#[test]
fn serve_runs_every_role_while_the_cli_works_on_the_same_home() {
    let t = tempfile::tempdir().unwrap();
    let (m, a, b) = (t.path().join("m"), t.path().join("a"), t.path().join("b"));
    let (m_id, a_id, b_id) = (init(&m), init(&a), init(&b));
    let (feed, mount) = (t.path().join("feed"), t.path().join("media"));
    std::fs::create_dir_all(&feed).unwrap();
    std::fs::create_dir_all(&mount).unwrap();

    // The marketplace, as a daemon; its grant is run through it.
    let md = Daemon::start_cmd(&m, &["market", "serve"], &["--no-seal"]);
    let mut mev = md.events();
    let g = json(&m, &["market", "grant", "--to", &a_id, "--amount", "20"]);
    assert_eq!(g["amount"], 20);
    for h in [&a, &b] {
        my(h).args(["market", "use", &m_id]).assert().success();
    }
    json(&b, &["worker", "offer", "--kinds", "digest", "--no-seal"]);

    // B: every role on, the gateway syncing with M.
    let bd = Daemon::start(
        &b,
        &[
            "--feed",
            feed.to_str().unwrap(),
            "--stick",
            mount.to_str().unwrap(),
            "--worker",
            "--no-seal",
            "--upstream",
            &md.addr(),
            "--upstream-expect",
            &m_id,
            "--upstream-interval",
            "1s",
        ],
    );
    let roles = bd.started["roles"].to_string();
    for r in ["quic", "gateway", "feed", "stick", "worker"] {
        assert!(roles.contains(r), "{roles}");
    }
    let mut bev = bd.events();
    // The offer reached M through B's gateway.
    bev.wait("a gateway sync", T, |v| v["type"] == "gateway");

    // From another terminal: send, list, inbox, wallet, export, all through the daemon.
    let s = json(
        &b,
        &["send", "--no-seal", "--to", &a_id, "--text", "from b"],
    );
    let sent = s["id"].as_str().unwrap().to_string();
    let list = json(&b, &["list"]);
    assert!(keys(&list).contains(&sent), "{list}");
    assert!(json(&b, &["inbox"]).is_array());
    let w = json(&b, &["wallet"]);
    assert!(w.get("spendable").is_some(), "{w}");
    let stick_out = t.path().join("out-stick");
    let e = json(&b, &["export", stick_out.to_str().unwrap()]);
    assert!(e["bundles"].as_u64().unwrap() >= 1, "{e}");
    // A relative path is the caller's, not the daemon's.
    let rel = my(&b)
        .current_dir(t.path())
        .args(["--json", "export", "rel-stick"])
        .output()
        .unwrap();
    assert!(rel.status.success());
    assert!(t.path().join("rel-stick/mycelium").is_dir());

    // A message synced in from A shows in B's inbox while serve runs.
    my(&a)
        .args(["send", "--no-seal", "--to", &b_id, "--text", "over quic"])
        .assert()
        .success();
    my(&a).args(["sync", &bd.addr()]).assert().success();
    let inbox = json(&b, &["inbox"]).to_string();
    assert!(inbox.contains("over quic"), "{inbox}");

    // A stick that appears under the mount folder is imported, then written for the road.
    my(&a)
        .args(["send", "--no-seal", "--to", &b_id, "--text", "by stick"])
        .assert()
        .success();
    let staging = t.path().join("staging-stick");
    my(&a).arg("export").arg(&staging).assert().success();
    std::fs::rename(&staging, mount.join("usb0")).unwrap();
    let st = bev.wait("the stick", T, |v| v["type"] == "stick");
    assert!(st["error"].is_null(), "{st}");
    assert!(st["imported"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["exported"].as_u64().unwrap() >= 1, "{st}");
    assert!(json(&b, &["inbox"]).to_string().contains("by stick"));

    // A task from A reaches M (A syncs by hand); M's rules assign it to B; B's gateway
    // brings the assignment; B's worker runs it as it is stored; the result goes up.
    let input = t.path().join("in.txt");
    std::fs::write(&input, "words to digest").unwrap();
    let sub = json(
        &a,
        &[
            "task",
            "submit",
            "--kind",
            "digest",
            "--reward",
            "3",
            "--redundancy",
            "1",
            "--no-seal",
            "--input",
            input.to_str().unwrap(),
        ],
    );
    let task = sub["task"].as_str().unwrap().to_string();
    my(&a).args(["sync", &md.addr()]).assert().success();
    mev.wait("the assignment", T, |v| {
        v["type"] == "market" && v["text"].as_str().unwrap_or("").contains("assigned to")
    });
    // The worker wakes on the very commit that announces the assignment, so its events
    // and the announcement may reach the stream in either order.
    let (mut stored, mut ran) = (None, None);
    let (mut stored_at, mut working_at) = (None, None);
    while stored.is_none() || working_at.is_none() || ran.is_none() {
        let v = bev.wait(
            "the assignment at B, the worker starting, the run",
            T,
            |v| {
                (v["type"] == "stored" && v["kind"] == "assignment")
                    || v["type"] == "working"
                    || v["type"] == "ran"
            },
        );
        let now = std::time::Instant::now();
        match v["type"].as_str() {
            Some("working") => working_at = Some(now),
            Some("ran") => ran = Some(v),
            _ => {
                stored_at = Some(now);
                stored = Some(v);
            }
        }
    }
    let (Some(stored), Some(ran), Some(s_at), Some(w_at)) = (stored, ran, stored_at, working_at)
    else {
        unreachable!("the loop ends when all are seen")
    };
    let to_worker = w_at.saturating_duration_since(s_at);
    assert!(to_worker < Duration::from_secs(5), "{to_worker:?} {stored}");
    assert_eq!(ran["task"].as_str().unwrap(), task, "{ran}");
    assert!(ran["failed"].is_null(), "{ran}");
    mev.wait("the verdict", T, |v| {
        v["type"] == "market" && v["text"].as_str().unwrap_or("").contains("agreeing")
    });
    my(&a).args(["sync", &md.addr()]).assert().success();
    let res = json(&a, &["task", "result", &task[..12]]);
    assert_eq!(res["status"], "accepted", "{res}");

    // And a feed file set dropped in the watched folder is ingested.
    let fa = t.path().join("feed-a");
    my(&a)
        .args(["send", "--no-seal", "--to", &b_id, "--text", "by satellite"])
        .assert()
        .success();
    my(&b)
        .args(["trust", "add", &a_id, "--broadcast"])
        .assert()
        .success();
    my(&a)
        .args(["broadcast", "publish"])
        .arg(&fa)
        .assert()
        .success();
    for f in std::fs::read_dir(&fa).unwrap() {
        let f = f.unwrap().path();
        std::fs::rename(&f, feed.join(f.file_name().unwrap())).unwrap();
    }
    bev.wait("the feed pass", T, |v| {
        v["type"] == "feed" && v["total_new"].as_u64().unwrap_or(0) >= 1
    });
    assert!(json(&b, &["inbox"]).to_string().contains("by satellite"));

    // Idle roles stay idle: a pass does not wake the next one (reading the folder is not a
    // change in it). A handful of feed passes happened above, not thousands.
    let passes = bev.seen.iter().filter(|v| v["type"] == "feed").count();
    assert!(passes < 20, "{passes} feed passes");

    // The one-role commands say why they cannot run beside the daemon.
    my(&b)
        .arg("worker")
        .assert()
        .failure()
        .stderr(predicates::str::contains("daemon already runs"));
    assert!(bd.stop().success());
    assert!(md.stop().success());
}

/// Every command prints the same and exits the same through the daemon as without it.
#[test]
fn output_and_exit_codes_are_the_same_with_and_without_the_daemon() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("b");
    init(&b);
    let a_id = init(&t.path().join("a"));
    my(&b)
        .args(["send", "--no-seal", "--to", &a_id, "--text", "one"])
        .assert()
        .success();
    let runs: &[&[&str]] = &[
        &["list"],
        &["--json", "list"],
        &["inbox"],
        &["--json", "peers"],
        &["show", "ffff"],
        &["wallet"],
        &["send", "--to", "nobody", "--text", "x"],
        &["--json", "trust", "list"],
        &["id"],
    ];
    let run = |args: &[&str]| {
        let o = my(&b).args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let without: Vec<_> = runs.iter().map(|a| run(a)).collect();
    let d = Daemon::start(&b, &[]);
    let with: Vec<_> = runs.iter().map(|a| run(a)).collect();
    for ((args, w), wo) in runs.iter().zip(&with).zip(&without) {
        assert_eq!(w, wo, "{args:?}");
    }
    assert!(without[4].0 == Some(1) && without[6].0 == Some(1));
    assert!(d.stop().success());
    assert!(!b.join("daemon.sock").exists());
}

/// Sends through the daemon: many in a row, each stored once, no store open per message.
#[test]
fn sends_through_the_daemon_are_all_stored() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("b");
    init(&b);
    let a_id = init(&t.path().join("a"));
    let d = Daemon::start(&b, &[]);
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..20 {
        let s = json(
            &b,
            &[
                "send",
                "--to",
                &a_id,
                "--no-seal",
                "--text",
                &format!("m{i}"),
            ],
        );
        ids.insert(s["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 20);
    let all = keys(&json(&b, &["list"]));
    assert!(ids.is_subset(&all));
    // The socket's JSON API counts the same bundles.
    let status = mycelium::daemon::client::get(&b, "/api/status").unwrap();
    assert_eq!(
        status["bundles"]["total"].as_u64(),
        Some(all.len() as u64),
        "{status}"
    );
    assert_eq!(
        status["bundles"]["by_kind"]["message"].as_u64(),
        Some(20),
        "{status}"
    );
    assert!(d.stop().success());
    // After the stop the CLI opens the store itself and sees the same.
    assert_eq!(keys(&json(&b, &["list"])), all);
}

/// A killed daemon leaves a stale socket: the CLI then runs the command itself, and the
/// next `serve` takes the home over.
#[test]
fn a_stale_socket_does_not_stop_the_cli_or_the_next_start() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("b");
    init(&b);
    let mut d = Daemon::start(&b, &[]);
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    assert!(b.join("daemon.sock").exists());
    json(&b, &["list"]);
    let d2 = Daemon::start(&b, &[]);
    json(&b, &["list"]);
    assert!(d2.stop().success());
}

/// A store held by another process that does not answer on a socket (a daemon starting or
/// stopping): the command waits a bounded time, then says so; it never hangs.
#[test]
fn a_command_meeting_a_held_store_gets_a_clear_answer() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("b");
    init(&b);
    let held = mycelium::node::Node::open(&b).unwrap();
    let started = std::time::Instant::now();
    my(&b)
        .env("MYCELIUM_LOCK_WAIT", "1")
        .arg("list")
        .assert()
        .failure()
        .stderr(predicates::str::contains("no daemon answers"));
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(held);
    my(&b).arg("list").assert().success();
}

struct Sender {
    home: PathBuf,
    keys: std::collections::BTreeSet<String>,
    stick: PathBuf,
    feed: PathBuf,
}

/// A sender with `n` messages for `to`, on a stick and in a feed, and ready to sync.
fn sender(root: &Path, to: &str, n: usize) -> Sender {
    let home = root.join("sender");
    let node = mycelium::node::Node::init(&home).unwrap();
    let to = mycelium::bundle::Eid::parse(to).unwrap();
    let now = mycelium::time::DtnTime::now();
    let mut keys = std::collections::BTreeSet::new();
    for i in 0..n {
        let payload = mycelium::adu::encode_message(&mycelium::adu::Message::Text(format!(
            "message {i} {}",
            "x".repeat(200)
        )));
        let vb = node
            .originate(to.clone(), payload, 7 * 24 * 3600 * 1000, now)
            .unwrap();
        keys.insert(vb.id().hex());
    }
    drop(node);
    let stick = root.join("stick");
    my(&home).arg("export").arg(&stick).assert().success();
    let feed = root.join("feed-src");
    my(&home)
        .args(["broadcast", "publish"])
        .arg(&feed)
        .assert()
        .success();
    Sender {
        home,
        keys,
        stick,
        feed,
    }
}

/// SIGKILL at random moments during syncs, imports and ingests (30 trials): everything the
/// daemon reported stored is there after a restart, and the next start carries on to the
/// end.
#[test]
fn killed_at_random_moments_the_daemon_loses_nothing_it_reported_stored() {
    let t = tempfile::tempdir().unwrap();
    let probe = t.path().join("probe");
    init(&probe);
    // For a node elsewhere: the trial homes relay them, so no receipt ever tells the
    // sender they were delivered (each trial starts from the same sender).
    let elsewhere = init(&t.path().join("elsewhere"));
    let s = sender(t.path(), &elsewhere, 150);
    // A small deterministic generator: the kill point of each trial.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for trial in 0..30 {
        let began = std::time::Instant::now();
        let home = t.path().join(format!("trial-{trial}"));
        // Each trial a fresh copy of the receiving home (same node), so there is work.
        copy_dir(&probe, &home);
        let feed = t.path().join(format!("feed-{trial}"));
        std::fs::create_dir_all(&feed).unwrap();
        let feed_args = ["--feed", feed.to_str().unwrap(), "--any-signer"];
        let d = Daemon::start(&home, &feed_args);
        let ev = d.events();
        let kill_after = 1 + rnd(120) as usize;
        let what = trial % 3;
        // The activity, in the background: a sync from the sender (a process of its own,
        // killed with the daemon: a peer that vanishes is otherwise noticed only at QUIC's
        // idle timeout), an import through the daemon, or feed files arriving.
        let mut syncing = (what == 0).then(|| {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("mycelium"))
                .arg("--home")
                .arg(&s.home)
                .args(["sync", &d.addr()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        });
        let act = {
            let (hh, stick, fsrc, fdst) =
                (home.clone(), s.stick.clone(), s.feed.clone(), feed.clone());
            std::thread::spawn(move || match what {
                0 => {}
                1 => {
                    let _ = my(&hh).arg("import").arg(&stick).output();
                }
                _ => {
                    for f in std::fs::read_dir(&fsrc).unwrap() {
                        let f = f.unwrap().path();
                        let _ = std::fs::copy(&f, fdst.join(f.file_name().unwrap()));
                    }
                }
            })
        };
        let mut reported = std::collections::BTreeSet::new();
        while reported.len() < kill_after {
            match ev.next(Duration::from_secs(20)) {
                Some(v) if v["type"] == "stored" => {
                    reported.insert(v["key"].as_str().unwrap().to_string());
                }
                Some(_) => {}
                None => break,
            }
        }
        eprintln!(
            "trial {trial} ({}): killed after {} reported stored, at {:?}",
            ["sync", "import", "feed"][what],
            reported.len(),
            began.elapsed()
        );
        let mut d = d;
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        if let Some(c) = &mut syncing {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = act.join();
        // Restart: everything reported is there; then carry the activity to its end.
        let d = Daemon::start(&home, &feed_args);
        let held = keys(&json(&home, &["list"]));
        let lost: Vec<_> = reported.difference(&held).collect();
        assert!(lost.is_empty(), "trial {trial}: lost {lost:?}");
        match what {
            0 => {
                my(&s.home).args(["sync", &d.addr()]).assert().success();
            }
            1 => {
                my(&home).arg("import").arg(&s.stick).assert().success();
            }
            _ => {
                // The watch ingests the folder again at start; copy anything missing.
                for f in std::fs::read_dir(&s.feed).unwrap() {
                    let f = f.unwrap().path();
                    let dst = feed.join(f.file_name().unwrap());
                    std::fs::copy(&f, &dst).unwrap();
                }
                let mut e2 = d.events();
                let deadline = std::time::Instant::now() + T;
                while !s.keys.is_subset(&keys(&json(&home, &["list"]))) {
                    assert!(std::time::Instant::now() < deadline, "trial {trial}: feed");
                    e2.wait("a feed pass", T, |v| v["type"] == "feed");
                }
            }
        }
        let held = keys(&json(&home, &["list"]));
        let missing: Vec<_> = s.keys.difference(&held).collect();
        assert!(
            missing.is_empty(),
            "trial {trial}: never arrived {missing:?}"
        );
        eprintln!("trial {trial}: complete at {:?}", began.elapsed());
        assert!(d.stop().success());
        std::fs::remove_dir_all(&home).unwrap();
        std::fs::remove_dir_all(&feed).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else if e.file_name() != "LOCK" && e.file_name() != "daemon.sock" {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
