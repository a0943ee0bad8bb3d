//! The marketplace as a user meets it through the binary: a grant, offers, a task on a
//! stick, workers answering, the quorum, the verdict, wallets and records. Bundles move
//! between homes by `export`/`import` through real folders.

use predicates::prelude::*;
use std::path::{Path, PathBuf};

mod common;
use common::{json, my};

struct Sticks {
    root: PathBuf,
    n: usize,
}

impl Sticks {
    /// Carry everything `from` has for the road to `to` on a fresh stick.
    fn carry(&mut self, from: &Path, to: &Path) {
        self.n += 1;
        let stick = self.root.join(format!("stick-{}", self.n));
        my(from).arg("export").arg(&stick).assert().success();
        my(to).arg("import").arg(&stick).assert().success();
    }
}

#[test]
fn a_task_is_submitted_run_checked_paid_and_read_back() {
    let t = tempfile::tempdir().unwrap();
    let home = |n: &str| t.path().join(n);
    let (m, a, w1, w2) = (home("m"), home("a"), home("w1"), home("w2"));
    for h in [&m, &a, &w1, &w2] {
        my(h).arg("init").assert().success();
    }
    let id = |h: &Path| json(h, &["id"])["node_id"].as_str().unwrap().to_string();
    let (m_id, a_id, w1_id) = (id(&m), id(&a), id(&w1));
    let mut s = Sticks {
        root: t.path().to_path_buf(),
        n: 0,
    };

    // Before choosing a marketplace, the commands say what to do.
    let input = t.path().join("input.txt");
    std::fs::write(&input, "count these words").unwrap();
    my(&a)
        .args(["task", "submit", "--kind", "digest", "--input"])
        .arg(&input)
        .assert()
        .failure()
        .stderr(predicate::str::contains("market use"));
    for h in [&a, &w1, &w2] {
        my(h).args(["market", "use", &m_id]).assert().success();
    }

    // M grants A 50 credits; the grant reaches A on a stick.
    let g = json(&m, &["market", "grant", "--to", &a_id, "--amount", "50"]);
    assert_eq!(g["amount"], 50);
    s.carry(&m, &a);
    let wa = json(&a, &["wallet"]);
    assert_eq!(wa["balance"], 50, "{wa}");

    // The wallet refuses more than it can spend.
    my(&a)
        .args([
            "task",
            "submit",
            "--kind",
            "digest",
            "--reward",
            "30",
            "--redundancy",
            "2",
            "--input",
        ])
        .arg(&input)
        .assert()
        .failure()
        .stderr(predicate::str::contains("this wallet can spend 50 credits"));
    let sub = json(
        &a,
        &[
            "task",
            "submit",
            "--kind",
            "digest",
            "--reward",
            "5",
            "--redundancy",
            "2",
            "--no-seal",
            "--input",
            input.to_str().unwrap(),
        ],
    );
    let task = sub["task"].as_str().unwrap().to_string();
    assert_eq!(sub["escrow"], 10);
    let wa = json(&a, &["wallet"]);
    assert_eq!(
        (wa["spendable"].as_i64(), wa["pending_out"].as_u64()),
        (Some(40), Some(10))
    );

    for w in [&w1, &w2] {
        json(w, &["worker", "offer", "--kinds", "digest", "--no-seal"]);
        s.carry(w, &m);
    }
    s.carry(&a, &m);
    let p = json(&m, &["market", "process", "--no-seal"]);
    let ev = p["events"].to_string();
    assert!(ev.contains("accepted, 10 credits in escrow"), "{ev}");
    assert_eq!(ev.matches("assigned to").count(), 2, "{ev}");

    for w in [&w1, &w2] {
        s.carry(&m, w);
        let r = json(w, &["worker", "--once", "--no-seal"]);
        assert_eq!(r["ran"].as_array().unwrap().len(), 1, "{r}");
        assert!(r["ran"][0]["failed"].is_null());
        s.carry(w, &m);
    }
    let p = json(&m, &["market", "process", "--no-seal"]);
    let ev = p["events"].to_string();
    assert!(ev.contains("accepted by 2 agreeing workers"), "{ev}");
    let rep = json(&m, &["market", "reputation"]);
    assert_eq!(rep.as_array().unwrap().len(), 2);
    assert!(rep
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["accepted"] == 1 && r["eligible"] == true));

    s.carry(&m, &a);
    s.carry(&m, &w1);
    let res = json(&a, &["task", "result", &task[..10]]);
    assert_eq!(res["status"], "accepted");
    assert_eq!(
        res["output"]["hex"],
        blake3::hash(b"count these words").to_hex().to_string()
    );
    let list = json(&a, &["task", "list"]);
    assert_eq!(list[0]["escrow"], "confirmed");
    my(&a)
        .args(["task", "result", "ffff"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no task"));
    assert_eq!(json(&a, &["wallet"])["balance"], 40);
    let ww = json(&w1, &["wallet"]);
    assert_eq!(ww["balance"], 5, "{ww}");
    // Other nodes read the published records.
    let rep = json(&w1, &["market", "reputation"]);
    assert!(rep
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["worker"] == w1_id.as_str()));

    // A pays W1 from what is left; W1 sees it pending until the ledger settles it.
    my(&a)
        .args(["wallet", "send", "--to", &w1_id, "--amount", "41"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("can spend 40"));
    json(
        &a,
        &[
            "wallet",
            "send",
            "--to",
            &w1_id,
            "--amount",
            "15",
            "--no-seal",
        ],
    );
    s.carry(&a, &w1);
    let ww = json(&w1, &["wallet"]);
    assert_eq!(
        (ww["balance"].as_i64(), ww["pending_in"].as_u64()),
        (Some(5), Some(15))
    );
    s.carry(&a, &m);
    let p = json(&m, &["market", "process", "--no-seal"]);
    assert!(p["events"].to_string().contains("confirmed"), "{p}");
    s.carry(&m, &w1);
    assert_eq!(json(&w1, &["wallet"])["balance"], 20);
    // `show` explains a marketplace bundle.
    let shown = my(&w1).args(["inbox"]).output().unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains("[payment: 15 credits"));
}
