//! Sneakernet on real folders and real RocksDB: export to a "stick", import what survived.

mod common;

use indicatif::ProgressBar;
use mycelium::adu::{self, FileMessage, Message};
use mycelium::bundle::Eid;
use mycelium::fec::Policy;
use mycelium::node::Node;
use mycelium::time::DtnTime;
use mycelium::transport::folder::{self, ExportOptions, ExportReport, ImportOptions, ImportReport};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const NOW: DtnTime = DtnTime(820_540_800_000);
const WEEK: u64 = 7 * 24 * 3600 * 1000;

fn node(dir: &Path, name: &str) -> Node {
    Node::init(&dir.join(name)).unwrap()
}

fn bytes(seed: u8, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut h = blake3::Hasher::new();
    h.update(&[seed]);
    h.finalize_xof().fill(&mut out);
    out
}

/// A mix: three short texts, a 100 kB file and a 1 MB file.
fn send_mix(from: &Node, to: &Eid) -> usize {
    for i in 0..3 {
        send_text(from, to, &format!("message {i}"));
    }
    for (i, n) in [(1u8, 100_000usize), (2, 1_000_000)] {
        let m = Message::File(FileMessage {
            name: format!("f{i}"),
            media_type: "application/octet-stream".into(),
            data: bytes(i, n),
        });
        from.originate(to.clone(), adu::encode_message(&m), WEEK, NOW)
            .unwrap();
    }
    5
}

fn send_text(from: &Node, to: &Eid, t: &str) {
    from.originate(
        to.clone(),
        adu::encode_message(&Message::Text(t.into())),
        WEEK,
        NOW,
    )
    .unwrap();
}

fn export_opts(parity: f64) -> ExportOptions {
    ExportOptions {
        for_node: None,
        max_bytes: None,
        policy: Policy::folder(parity),
        now: NOW,
        have_summary: true,
        node_records: false,
        only: None,
    }
}

fn export(n: &Node, stick: &Path, opts: &ExportOptions) -> ExportReport {
    folder::export(n, stick, opts, &ProgressBar::hidden()).unwrap()
}

fn import(n: &Node, stick: &Path) -> ImportReport {
    folder::import(
        n,
        stick,
        &ImportOptions {
            clean: false,
            now: NOW,
        },
        &ProgressBar::hidden(),
    )
    .unwrap()
}

fn packs(stick: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(stick.join("mycelium/shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "msp"))
        .collect();
    v.sort();
    v
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            fs::copy(e.path(), t).unwrap();
        }
    }
}

/// path → (size, blake3) of every file under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                let b = fs::read(e.path()).unwrap();
                out.insert(e.path(), (m.len(), blake3::hash(&b).to_hex().to_string()));
            }
        }
    }
    out
}

#[test]
fn export_import_round_trip_and_rerun_adds_only_new() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (node(t.path(), "a"), node(t.path(), "b"));
    let n = send_mix(&a, &b.node_id());
    let stick = t.path().join("stick");
    let e = export(&a, &stick, &export_opts(0.25));
    assert_eq!(e.bundles, n);
    assert!(e.files >= 2);
    let i = import(&b, &stick);
    assert_eq!(i.new, n);
    assert!(i.rejected.is_empty(), "{:?}", i.rejected);
    assert_eq!(i.incomplete, 0);
    assert_eq!(b.inbox().unwrap().len(), n);
    for key in a.store.records().unwrap().into_iter().map(|(k, _)| k) {
        assert_eq!(
            a.store.get_raw(&key).unwrap(),
            b.store.get_raw(&key).unwrap()
        );
    }

    // Re-running export adds nothing; a new bundle adds just itself.
    let again = export(&a, &stick, &export_opts(0.25));
    assert_eq!(again.bundles, 0);
    assert_eq!(again.skipped.unwanted, n);
    send_text(&a, &b.node_id(), "one more");
    let more = export(&a, &stick, &export_opts(0.25));
    assert_eq!(more.bundles, 1);
    // Import is idempotent: only the new one is new.
    let i2 = import(&b, &stick);
    assert_eq!(i2.new, 1);
    assert_eq!(import(&b, &stick).new, 0);
    assert_eq!(b.inbox().unwrap().len(), n + 1);
}

#[test]
fn losing_any_one_file_loses_no_bundle() {
    let t = tempfile::tempdir().unwrap();
    let a = node(t.path(), "a");
    let to = Eid::dtn_node("far-away").unwrap();
    let n = send_mix(&a, &to);
    let stick = t.path().join("stick");
    export(&a, &stick, &export_opts(0.25));
    let files = packs(&stick);
    assert!(files.len() > 3);
    for (i, lost) in files.iter().enumerate() {
        let copy = t.path().join(format!("copy-{i}"));
        copy_tree(&stick, &copy);
        fs::remove_file(copy.join("mycelium/shards").join(lost.file_name().unwrap())).unwrap();
        let b = node(t.path(), &format!("b{i}"));
        let r = import(&b, &copy);
        assert_eq!(r.new, n, "losing {} lost a bundle", lost.display());
    }
}

#[test]
fn parity_rebuilds_what_is_missing_and_says_so() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (node(t.path(), "a"), node(t.path(), "b"));
    let big = Message::File(FileMessage {
        name: "big".into(),
        media_type: "x/y".into(),
        data: bytes(9, 1_000_000),
    });
    a.originate(b.node_id(), adu::encode_message(&big), WEEK, NOW)
        .unwrap();
    let stick = t.path().join("stick");
    export(&a, &stick, &export_opts(0.25));
    // Delete the files holding data shards 0 and 1 (the first two packs).
    let files = packs(&stick);
    fs::remove_file(&files[0]).unwrap();
    let r = import(&b, &stick);
    assert_eq!(r.new, 1);
    assert_eq!(r.rebuilt_from_parity, 1);
}

#[test]
fn incomplete_objects_wait_in_the_store_for_the_next_stick() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (node(t.path(), "a"), node(t.path(), "b"));
    let big = Message::File(FileMessage {
        name: "big".into(),
        media_type: "x/y".into(),
        data: bytes(3, 1_000_000),
    });
    a.originate(b.node_id(), adu::encode_message(&big), WEEK, NOW)
        .unwrap();
    let stick = t.path().join("stick");
    export(&a, &stick, &export_opts(0.0));
    let files = packs(&stick);
    // Two half-sticks: the first half of the files, then the rest.
    let (h1, h2) = (t.path().join("half1"), t.path().join("half2"));
    for (h, part) in [
        (&h1, &files[..files.len() / 2]),
        (&h2, &files[files.len() / 2..]),
    ] {
        let d = h.join("mycelium/shards");
        fs::create_dir_all(&d).unwrap();
        for f in part {
            fs::copy(f, d.join(f.file_name().unwrap())).unwrap();
        }
    }
    let r1 = import(&b, &h1);
    assert_eq!((r1.new, r1.incomplete), (0, 1));
    assert_eq!(b.store.partial_summary().unwrap().objects, 1);
    drop(b);
    // ... the node restarts; the partial shards are durable ...
    let b = Node::open(&t.path().join("b")).unwrap();
    let r2 = import(&b, &h2);
    assert_eq!(r2.new, 1);
    assert_eq!(b.store.partial_summary().unwrap().objects, 0);
    assert_eq!(b.inbox().unwrap().len(), 1);
    // Shards of an object already rebuilt are ignored, not stored again.
    let r3 = import(&b, &h1);
    assert_eq!(r3.new, 0);
    assert_eq!(b.store.partial_summary().unwrap().objects, 0);
}

#[test]
fn a_damaged_drive_is_reported_file_by_file_and_nothing_stored_is_lost() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, other) = (
        node(t.path(), "a"),
        node(t.path(), "b"),
        node(t.path(), "o"),
    );
    // B already holds something; it must survive the import untouched.
    send_text(&b, &b.node_id(), "already here");
    let before = b.store.records().unwrap();

    for i in 0..4 {
        send_text(&a, &b.node_id(), &format!("text {i}"));
    }
    a.originate(
        b.node_id(),
        adu::encode_message(&Message::File(FileMessage {
            name: "f".into(),
            media_type: "x/y".into(),
            data: bytes(5, 100_000),
        })),
        WEEK,
        NOW,
    )
    .unwrap();
    let stick = t.path().join("stick");
    // parity 1.0: tiny bundles get 4 copies, the 100 kB one 2 + 2: any two packs may go.
    export(&a, &stick, &export_opts(1.0));
    let sh = stick.join("mycelium/shards");
    let files = packs(&stick);
    assert_eq!(files.len(), 4, "{files:?}");

    // 1. truncated pack
    let tr = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &tr[..tr.len() / 2]).unwrap();
    // 2. a pack of another drive under this drive's name ("same name, other object")
    send_text(&other, &b.node_id(), "from elsewhere, partial");
    let ostick = t.path().join("other-stick");
    export(&other, &ostick, &export_opts(1.0));
    fs::copy(&packs(&ostick)[0], &files[1]).unwrap();
    // 3. a duplicated pack with bit flips in it
    let mut dup = fs::read(&files[2]).unwrap();
    for i in (100..dup.len()).step_by(1000) {
        dup[i] ^= 0x08;
    }
    fs::write(sh.join("zz-dup.msp"), &dup).unwrap();
    // 4. duplicated shards: an exact copy
    fs::copy(&files[3], sh.join("zz-copy.msp")).unwrap();
    // 5. zero-length, junk named like a shard pack, a 4 GiB announced record
    fs::write(sh.join("empty.msp"), b"").unwrap();
    fs::write(sh.join("junk.msp"), bytes(7, 5000)).unwrap();
    let mut huge = b"MYCPACK1MSR1".to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.extend_from_slice(&bytes(8, 1000));
    fs::write(sh.join("huge.msp"), huge).unwrap();
    // 6. a symlink out of the drive, a folder and a FIFO named like packs
    let outside = t.path().join("secret.msp");
    fs::write(&outside, b"MYCPACK1").unwrap();
    std::os::unix::fs::symlink(&outside, sh.join("link.msp")).unwrap();
    fs::create_dir(sh.join("dir.msp")).unwrap();
    let fifo = sh.join("fifo.msp");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a valid NUL-terminated path.
    assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o644) }, 0);

    let snap = snapshot(&stick);
    let r = import(&b, &stick);
    // A's five, and the foreign pack's text: it is a valid bundle for B with k = 1.
    assert_eq!(r.new, 6, "rejected: {:#?}", r.rejected);
    assert_eq!(r.incomplete, 0);
    let reasons: Vec<String> = r
        .rejected
        .iter()
        .map(|x| format!("{} {}", x.file, x.reason))
        .collect();
    let has = |file: &str, why: &str| {
        assert!(
            reasons.iter().any(|x| x.contains(file) && x.contains(why)),
            "no report for {file} ({why}) in {reasons:#?}"
        )
    };
    has(files[0].file_name().unwrap().to_str().unwrap(), "truncated");
    has("zz-dup.msp", "Merkle proof");
    has("empty.msp", "empty file");
    has("junk.msp", "bad magic");
    has("huge.msp", "more than the");
    has("link.msp", "symbolic link, not followed");
    has("dir.msp", "not a regular file");
    has("fifo.msp", "not a regular file");
    assert!(r.duplicate_shards > 0);
    // The foreign pack was fine: its bundle was rebuilt too (it is a valid bundle for B).
    assert_eq!(b.inbox().unwrap().len(), 1 + 5 + 1);
    // A flipped record is reported once, not again as the bytes skipped behind it.
    assert!(!reasons
        .iter()
        .any(|x| x.contains("zz-dup.msp") && x.contains("unreadable")));
    // Nothing on the drive changed, nothing already stored changed.
    assert_eq!(snapshot(&stick), snap);
    let after = b.store.records().unwrap();
    for (k, rec) in &before {
        assert!(after.iter().any(|(k2, r2)| k2 == k && r2 == rec));
    }
}

extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}

#[test]
fn have_summaries_let_the_next_export_skip_what_the_peer_holds() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (node(t.path(), "a"), node(t.path(), "b"));
    let n = send_mix(&a, &b.node_id());
    send_text(&a, &Eid::dtn_node("elsewhere").unwrap(), "not for b");
    let s1 = t.path().join("s1");
    export(&a, &s1, &export_opts(0.25));
    import(&b, &s1);
    // B sends its have-summary home on another stick.
    let s2 = t.path().join("s2");
    export(&b, &s2, &export_opts(0.25));
    let back = import(&a, &s2);
    assert_eq!(back.summaries, 1);
    // Towards B, nothing B holds travels again, even on a fresh stick; bundles B holds
    // that were addressed to B are known delivered and stop travelling to anyone.
    let s3 = t.path().join("s3");
    let mut o = export_opts(0.25);
    o.for_node = Some(b.node_id());
    assert_eq!(export(&a, &s3, &o).bundles, 0);
    let s4 = t.path().join("s4");
    let r = export(&a, &s4, &export_opts(0.25));
    // B's bundles are delivered; the one for elsewhere still travels (B only carries it).
    assert_eq!(r.bundles, 1, "B holds and was sent {n}");
    send_text(&a, &b.node_id(), "new");
    let s5 = t.path().join("s5");
    assert_eq!(export(&a, &s5, &o).bundles, 1);
}

#[test]
fn import_changes_nothing_on_the_drive_unless_clean_and_clean_keeps_damage() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (node(t.path(), "a"), node(t.path(), "b"));
    send_mix(&a, &b.node_id());
    let stick = t.path().join("stick");
    export(&a, &stick, &export_opts(0.25));
    let files = packs(&stick);
    let mut damaged = fs::read(&files[1]).unwrap();
    let l = damaged.len();
    damaged[l / 2] ^= 1;
    fs::write(&files[1], &damaged).unwrap();
    let snap = snapshot(&stick);
    import(&b, &stick);
    assert_eq!(snapshot(&stick), snap);
    let r = folder::import(
        &b,
        &stick,
        &ImportOptions {
            clean: true,
            now: NOW,
        },
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(r.cleaned, files.len() - 1);
    assert_eq!(
        packs(&stick),
        vec![files[1].clone()],
        "the damaged file is kept"
    );
}

#[test]
fn max_bytes_keeps_priority_order() {
    let t = tempfile::tempdir().unwrap();
    let a = node(t.path(), "a");
    let to = Eid::dtn_node("x").unwrap();
    send_mix(&a, &to);
    let stick = t.path().join("stick");
    let mut o = export_opts(0.25);
    o.max_bytes = Some(200_000);
    let r = export(&a, &stick, &o);
    assert!(r.bytes <= 200_000, "{} bytes written", r.bytes);
    assert_eq!(r.bundles, 4, "the 1 MB file does not fit, the rest does");
    assert_eq!(r.skipped.over_budget, 1);
}

fn mount_tmpfs(dir: &Path, opts: &str) -> bool {
    fs::create_dir_all(dir).unwrap();
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn umount(dir: &Path) {
    let _ = std::process::Command::new("umount").arg(dir).status();
}

#[test]
fn a_drive_that_fills_up_mid_export_stays_importable() {
    let t = tempfile::tempdir().unwrap();
    let stick = t.path().join("stick");
    // A real file system that runs out of inodes part way: ENOSPC from the kernel.
    if !mount_tmpfs(&stick, "size=256m,nr_inodes=34") {
        eprintln!("cannot mount a tmpfs here (needs root): drive-full test not run");
        return;
    }
    let a = node(t.path(), "a");
    let b = node(t.path(), "b");
    for i in 0..40u8 {
        let m = Message::File(FileMessage {
            name: format!("f{i}"),
            media_type: "x/y".into(),
            data: bytes(i, 1_000_000),
        });
        a.originate(b.node_id(), adu::encode_message(&m), WEEK, NOW)
            .unwrap();
    }
    let r = export(&a, &stick, &export_opts(0.25));
    let err = r.error.clone().unwrap_or_default();
    assert!(
        err.contains("no space left"),
        "expected a drive-full error, got {err:?}"
    );
    assert!(
        r.bundles > 0 && r.bundles < 40,
        "{} bundles reported",
        r.bundles
    );
    let i = import(&b, &stick);
    assert!(i.rejected.is_empty(), "{:?}", i.rejected);
    assert!(
        i.new >= r.bundles,
        "reported {} exported, imported {}",
        r.bundles,
        i.new
    );
    umount(&stick);
}

#[test]
fn a_read_only_drive_imports_and_refuses_export_clearly() {
    let t = tempfile::tempdir().unwrap();
    let stick = t.path().join("stick");
    if !mount_tmpfs(&stick, "size=64m") {
        eprintln!("cannot mount a tmpfs here (needs root): read-only test not run");
        return;
    }
    let (a, b) = (node(t.path(), "a"), node(t.path(), "b"));
    send_mix(&a, &b.node_id());
    export(&a, &stick, &export_opts(0.25));
    let ro = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&stick)
        .status()
        .unwrap();
    assert!(ro.success());
    assert_eq!(import(&b, &stick).new, 5);
    send_text(&a, &b.node_id(), "one more");
    let err = folder::export(&a, &stick, &export_opts(0.25), &ProgressBar::hidden())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("read-only"), "{err}");
    umount(&stick);
}

#[test]
fn import_streams_a_huge_drive_in_bounded_memory() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let stick = t.path().join("stick");
    {
        let an = Node::init(&a).unwrap();
        let bn = Node::init(&b).unwrap();
        // the CLI runs on the wall clock: bundles made now
        let now = DtnTime::now();
        for i in 0..5u8 {
            let m = Message::File(FileMessage {
                name: format!("f{i}"),
                media_type: "x/y".into(),
                data: bytes(i, 300_000),
            });
            an.originate(bn.node_id(), adu::encode_message(&m), WEEK, now)
                .unwrap();
        }
        let mut o = export_opts(0.25);
        o.now = now;
        export(&an, &stick, &o);
    }
    // A 256 MiB pack of junk (sparse on disk); the 4 GiB announced record is tested above.
    let f = fs::File::create(stick.join("mycelium/shards/zz-huge.msp")).unwrap();
    use std::io::Write;
    (&f).write_all(b"MYCPACK1").unwrap();
    f.set_len(256 << 20).unwrap();
    let v = common::cli_json(&b, &["import"], &stick);
    assert_eq!(v["new"], 5);
    assert!(v["rejected"].to_string().contains("zz-huge.msp"));
    let peak_mib = v["peak_memory_kib"].as_u64().unwrap() / 1024;
    eprintln!("import peak RSS: {peak_mib} MiB");
    assert!(
        peak_mib < 100,
        "import of a 256 MiB drive peaked at {peak_mib} MiB"
    );
}

#[test]
fn a_stick_carries_the_receipt_home_and_the_sender_drops_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a");
    let b = node(dir.path(), "b");
    send_text(&a, &b.node_id(), "by hand");
    let there = dir.path().join("there");
    export(&a, &there, &export_opts(0.25));
    assert_eq!(import(&b, &there).new, 1);
    // b is the destination: it keeps the message and issued a signed receipt for a.
    assert_eq!(b.inbox().unwrap().len(), 1);
    assert_eq!(b.store.of_kind("receipts").unwrap().len(), 1);
    let back = dir.path().join("back");
    let e = export(&b, &back, &export_opts(0.25));
    assert_eq!(
        e.bundles, 1,
        "b carries only the receipt, not what it received: {e:?}"
    );
    let r = import(&a, &back);
    assert_eq!(r.new, 1, "only the receipt travels back: {r:?}");
    // a dropped its delivered copy and will refuse it if it comes round again.
    assert!(a.store.of_kind("message").unwrap().is_empty());
    assert_eq!(a.store.tombstones().unwrap().len(), 1);
    let again = import(&a, &there);
    assert_eq!((again.new, again.already_delivered), (0, 1), "{again:?}");
    assert!(a.store.of_kind("message").unwrap().is_empty());
}
