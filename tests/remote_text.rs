//! Text from other nodes and sticks, as the binary prints it for a person: terminal
//! sequences (clear the screen, set the title, OSC 52 clipboard writes), C1 controls and
//! bidi overrides are shown escaped, a forged "from" line stays inside the message it came
//! in, and `--json` keeps the exact text. Real homes, real folders.

use std::path::Path;

/// A forged header, as `inbox` prints a real one.
const FAKE: &str = "0123456789abcdef  from dtn://bank/  2026-01-01T00:00:00Z";
/// The same for a file name (no `/`).
const FAKE_NAME: &str = "0123456789abcdef  from the bank";

/// Everything a hostile sender might put in a text: clear screen, window title, clipboard
/// write (OSC 52), a C1 CSI, a bidi override, a CR, and a line break with a forged header.
fn evil() -> String {
    format!(
        "hi\u{1b}[2J\u{1b}]0;pwned\u{7}\u{1b}]52;c;cm0gLXJmIH4K\u{7}\u{9b}31m\u{202e}gnp.exe\r\n{FAKE}\npay me"
    )
}

mod common;
use common::{json, my};

/// Human output of `args`, stdout and stderr together (the command may fail).
fn text(home: &Path, args: &[&str]) -> String {
    let out = my(home).args(args).output().unwrap();
    let mut s = String::from_utf8(out.stdout).unwrap();
    s.push_str(&String::from_utf8(out.stderr).unwrap());
    s
}

/// Nothing in `out` that a terminal acts on, no line that starts with the forged header,
/// and the hostile text visible in escaped form.
fn assert_inert(out: &str, what: &str) {
    let bad: Vec<char> = out
        .chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        })
        .collect();
    assert!(bad.is_empty(), "{what}: raw {bad:?} in {out:?}");
    assert!(
        !out.lines().any(|l| l.starts_with(&FAKE[..16])),
        "{what}: the forged header starts a line: {out}"
    );
    assert!(out.contains("\\x1b]52;c;"), "{what}: {out}");
}

#[test]
fn messages_and_stick_files_cannot_drive_the_terminal_or_forge_a_message() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    my(&a).arg("init").assert().success();
    my(&b).arg("init").assert().success();
    let b_id = json(&b, &["id"])["node_id"].as_str().unwrap().to_string();
    let evil = evil();
    let sent = json(&a, &["send", "--no-seal", "--to", &b_id, "--text", &evil]);
    let id = sent["id"].as_str().unwrap().to_string();
    // A file whose name and media type carry sequences too.
    let f = t
        .path()
        .join("x\u{1b}]52;c;cm0gLXJmIH4K\u{7}\u{202e}txt.exe");
    std::fs::write(&f, b"data").unwrap();
    let file_id = json(
        &a,
        &[
            "send",
            "--no-seal",
            "--to",
            &b_id,
            "--file",
            f.to_str().unwrap(),
            "--media-type",
            &format!("text/plain\u{1b}[2J\n{FAKE}"),
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The stick carries them, and a junk file named to forge a line of the import report.
    let stick = t.path().join("stick");
    my(&a).arg("export").arg(&stick).assert().success();
    let junk = stick
        .join("mycelium/shards")
        .join(format!("j\u{1b}]52;c;cm0gLXJmIH4K\u{7}\n{FAKE_NAME}.msp"));
    std::fs::write(&junk, b"not a pack").unwrap();
    let import = text(&b, &["import", stick.to_str().unwrap()]);
    assert!(import.contains("! "), "{import}");
    assert_inert(&import, "import");

    let inbox = text(&b, &["inbox"]);
    assert_inert(&inbox, "inbox");
    // The forged header is shown, indented inside the message it came in.
    assert!(
        inbox.contains(&format!("\n    {FAKE}\n    pay me")),
        "{inbox}"
    );
    assert!(inbox.contains("\\u{9b}31m\\u{202e}gnp.exe\n"), "{inbox}");
    for shown in [
        text(&b, &["show", &id[..12]]),
        text(&b, &["show", &file_id[..12]]),
    ] {
        assert_inert(&shown, "show");
    }
    // JSON keeps the exact text.
    let j = json(&b, &["inbox"]);
    let texts: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["message"]["text"].as_str())
        .collect();
    assert_eq!(texts, [evil.as_str()]);
    assert_eq!(
        json(&b, &["show", &id[..12]])["payload"]["text"],
        evil.as_str()
    );

    // An error that names a file from outside (here a bundle file on a stick).
    let bad = t.path().join(format!(
        "b\u{1b}]52;c;cm0gLXJmIH4K\u{7}\n{FAKE_NAME}.bundle"
    ));
    std::fs::write(&bad, b"junk").unwrap();
    let out = my(&b).args(["bundle", "load"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert_inert(&String::from_utf8(out.stderr).unwrap(), "error");
}

#[test]
fn a_wallet_memo_cannot_drive_the_terminal() {
    let t = tempfile::tempdir().unwrap();
    let (m, a, w) = (t.path().join("m"), t.path().join("a"), t.path().join("w"));
    for h in [&m, &a, &w] {
        my(h).arg("init").assert().success();
    }
    let id = |h: &Path| json(h, &["id"])["node_id"].as_str().unwrap().to_string();
    let (m_id, a_id, w_id) = (id(&m), id(&a), id(&w));
    for h in [&a, &w] {
        my(h).args(["market", "use", &m_id]).assert().success();
    }
    let carry = |from: &Path, to: &Path, n: &str| {
        let stick = t.path().join(n);
        my(from).arg("export").arg(&stick).assert().success();
        my(to).arg("import").arg(&stick).assert().success();
    };
    json(&m, &["market", "grant", "--to", &a_id, "--amount", "50"]);
    carry(&m, &a, "s1");
    // A memo is at most 256 bytes: the sequences and a forged header.
    let memo = format!("\u{1b}]52;c;cm0gLXJmIH4K\u{7}\u{1b}[2J\u{202e}\n{FAKE}");
    json(
        &a,
        &[
            "wallet",
            "send",
            "--to",
            &w_id,
            "--amount",
            "5",
            "--memo",
            &memo,
            "--no-seal",
        ],
    );
    carry(&a, &w, "s2");
    let wallet = text(&w, &["wallet"]);
    assert!(wallet.contains("pending"), "{wallet}");
    assert_inert(&wallet, "wallet");
    assert_inert(&text(&w, &["inbox"]), "inbox");
    let j = json(&w, &["wallet"]);
    assert_eq!(j["entries"][0]["memo"], memo.as_str(), "{j}");
}
