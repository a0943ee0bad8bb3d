//! The `mycelium` binary as a user meets it: real homes in temp dirs, real files.

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

mod common;
use common::{json, my};

#[test]
fn a_message_travels_from_a_to_b_as_a_file() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    my(&a)
        .arg("init")
        .assert()
        .success()
        .stdout(predicate::str::contains("dtn://"));
    my(&b).arg("init").assert().success();
    // init twice refuses to overwrite the identity
    my(&a)
        .arg("init")
        .assert()
        .failure()
        .stderr(predicate::str::contains("refusing to overwrite"));

    let b_id = json(&b, &["id"])["node_id"].as_str().unwrap().to_string();
    let sent = json(
        &a,
        &[
            "send",
            "--no-seal",
            "--to",
            &b_id,
            "--text",
            "hello B",
            "--lifetime",
            "2d",
        ],
    );
    let id = sent["id"].as_str().unwrap().to_string();

    // The message, and a's own node record (published by init: its sealing key).
    let list = json(&a, &["list"]);
    let kinds: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(
        kinds.contains(&"message") && kinds.contains(&"node"),
        "{kinds:?}"
    );

    // --home accepted after the subcommand too
    let file = t.path().join("m.bundle");
    Command::cargo_bin("mycelium")
        .unwrap()
        .args(["bundle", "dump", &id[..10], "-o"])
        .arg(&file)
        .arg("--home")
        .arg(&a)
        .assert()
        .success();

    my(&b)
        .arg("verify")
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::contains("valid"));
    let loaded = json(&b, &["bundle", "load", file.to_str().unwrap()]);
    assert_eq!(loaded["status"], "stored");
    assert_eq!(loaded["id"], id.as_str());
    let again = json(&b, &["bundle", "load", file.to_str().unwrap()]);
    assert_eq!(again["status"], "duplicate");

    let inbox = json(&b, &["inbox"]);
    assert_eq!(inbox.as_array().unwrap().len(), 1);
    assert_eq!(inbox[0]["message"]["text"], "hello B");
    assert!(json(&a, &["inbox"]).as_array().unwrap().is_empty());

    let shown = json(&b, &["show", &id[..8]]);
    assert_eq!(shown["signature"], "valid");
    assert_eq!(shown["payload"]["text"], "hello B");

    // the file the CLI wrote is a BPv7 bundle to the independent bp7 crate
    let bytes = std::fs::read(&file).unwrap();
    let theirs = bp7::Bundle::try_from(bytes.as_slice()).unwrap();
    theirs.validate().unwrap();
    assert_eq!(theirs.primary.destination.to_string(), b_id);
}

#[test]
fn send_a_file_and_read_it_back() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    my(&a).arg("init").assert().success();
    let a_id = json(&a, &["id"])["node_id"].as_str().unwrap().to_string();
    let f = t.path().join("report.csv");
    std::fs::write(&f, "x,y\n1,2\n").unwrap();
    json(
        &a,
        &[
            "send",
            "--no-seal",
            "--to",
            &a_id,
            "--file",
            f.to_str().unwrap(),
            "--media-type",
            "text/csv",
        ],
    );
    let inbox = json(&a, &["inbox"]);
    assert_eq!(inbox[0]["message"]["file"]["name"], "report.csv");
    assert_eq!(inbox[0]["message"]["file"]["size"], 8);
}

#[test]
fn bad_files_are_refused_with_reasons_and_nothing_is_stored() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    my(&a).arg("init").assert().success();
    my(&b).arg("init").assert().success();
    let b_id = json(&b, &["id"])["node_id"].as_str().unwrap().to_string();
    let id = json(&a, &["send", "--no-seal", "--to", &b_id, "--text", "x"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let good = t.path().join("good.bundle");
    my(&a)
        .args(["bundle", "dump", &id, "-o"])
        .arg(&good)
        .assert()
        .success();
    let bytes = std::fs::read(&good).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            bytes[..bytes.len() - 7].to_vec(),
            "malformed CBOR",
        ),
        (
            "flipped",
            {
                let mut v = bytes.clone();
                let n = v.len();
                v[n - 5] ^= 0x20;
                v
            },
            "CRC mismatch",
        ),
        ("empty", vec![], "empty input"),
        ("text", b"hello".to_vec(), "not a BPv7 bundle"),
    ];
    for (name, data, why) in cases {
        let p = t.path().join(format!("{name}.bundle"));
        std::fs::write(&p, data).unwrap();
        my(&b)
            .args(["bundle", "load"])
            .arg(&p)
            .assert()
            .failure()
            .stderr(predicate::str::contains(why))
            .stderr(predicate::str::contains(format!("{name}.bundle")));
        my(&b).arg("verify").arg(&p).assert().failure();
    }
    // Nothing stored but b's own node record.
    let left = json(&b, &["list"]);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["kind"], "node");
    my(&b)
        .args(["show", "0000"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no bundle matches"));
}

#[test]
fn commands_before_init_say_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    my(&t.path().join("nowhere"))
        .arg("list")
        .assert()
        .failure()
        .stderr(predicate::str::contains("mycelium init"));
    my(t.path())
        .args(["send", "--no-seal", "--to", "not-an-eid", "--text", "x"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("not-an-eid"));
}

#[test]
fn demo_runs_end_to_end() {
    let t = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("mycelium")
        .unwrap()
        .args(["demo", "--json", "--dir"])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["tampered_refused"].as_str().unwrap().contains("CRC"));
    assert_eq!(v["photo_intact"], true);
    assert_eq!(v["stick1"]["b_new"], v["stick1"]["bundles"]);
    assert_eq!(v["stick2"]["c_new"], v["stick2"]["bundles"]);
    assert!(v["stick2"]["c_rejected"].as_u64().unwrap() >= 1);
    assert!(v["feed"]["c_new"].as_u64() >= v["feed"]["notices"].as_u64());
    assert_eq!(v["quic"]["answer_delivered"], true);
    // A's private copies of its four sealed bundles (by M's signed receipts) and their
    // travelling sealed copies (by the delivery secrets those receipts reveal).
    assert_eq!(v["quic"]["a_purged"], 8);
    // The marketplace: two honest workers agree, the liar is outvoted, the payments
    // reach the workers' wallets by the feed, A holds 100 − 30 + 10 refunded − 20.
    assert_eq!(v["market"]["agreeing"], 2);
    assert_eq!(v["market"]["outvoted"], 1);
    // With the embed and generate tasks (5 credits × 2 workers each): 30 + 20 paid.
    assert_eq!(v["market"]["paid_total"], 50);
    assert_eq!(v["market"]["accepted_tasks"], 3);
    assert_eq!(
        v["wallets"]["worker_balances"],
        serde_json::json!([20, 20, 0])
    );
    assert_eq!(v["wallets"]["a_balance"], 60);
    assert_eq!(v["wallets"]["embeddings"], 3);
    assert_eq!(v["wallets"]["dim"], 384);
    assert!(v["wallets"]["similar"].as_f64() > v["wallets"]["dissimilar"].as_f64());
    assert!(!v["wallets"]["generated"].as_str().unwrap().is_empty());
    assert!(v["feed"]["deleted"].as_u64().unwrap() > 0);
    // First contact by node ID alone, over QR frames with 30% lost.
    assert_eq!(v["qr"]["read"], true);
    assert!(v["qr"]["photographed"].as_u64() < v["qr"]["frames"].as_u64());
    // Step 19: a chat on the Telegram bridge (stand-in Bot API) to C and back.
    assert_eq!(v["telegram"]["read_by_c"], true);
    assert_eq!(v["telegram"]["answer_pushed"], true);
    assert!(v["telegram"]["chat_node"]
        .as_str()
        .is_some_and(|n| n.starts_with("dtn://") && n != v["node_b"]));
}

#[test]
fn export_and_import_through_a_folder() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    my(&a).arg("init").assert().success();
    my(&b).arg("init").assert().success();
    let b_id = json(&b, &["id"])["node_id"].as_str().unwrap().to_string();
    json(
        &a,
        &[
            "send",
            "--no-seal",
            "--to",
            &b_id,
            "--text",
            "over the stick",
        ],
    );
    let stick = t.path().join("stick");
    let s = stick.to_str().unwrap();
    let e = json(&a, &["export", s, "--parity", "0.5"]);
    assert_eq!(e["bundles"], 1);
    assert!(e["error"].is_null());
    // a human summary too, and no progress bar garbage without a terminal
    my(&a)
        .args(["export", s])
        .assert()
        .success()
        .stdout(predicate::str::contains("bundles written"))
        .stderr(predicate::str::is_empty());
    let i = json(&b, &["import", s]);
    assert_eq!(i["new"], 1);
    assert_eq!(i["rejected"].as_array().unwrap().len(), 0);
    assert_eq!(json(&b, &["inbox"])[0]["message"]["text"], "over the stick");
    let again = json(&b, &["import", s]);
    assert_eq!(again["new"], 0);

    // refusals say what is wrong
    my(&b)
        .args(["import"])
        .arg(t.path().join("a"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("nothing to import"));
    my(&a)
        .args(["export", s, "--parity", "2"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--parity"));
    my(&a)
        .args(["export", s, "--max-bytes", "5 parsecs"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("size unit"));
    let file = t.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    my(&a)
        .arg("export")
        .arg(&file)
        .assert()
        .failure()
        .stderr(predicate::str::contains("plain-file"));
}
