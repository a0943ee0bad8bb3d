//! The store's bounds on what outside input can make it hold, on real RocksDB and real
//! folders: refusals leave nothing behind, incomplete objects and relayed sealed bundles are
//! capped with a fair eviction order, and reports count honestly. The limits are lowered
//! through `Store::set_limits` so that each test stays small; the defaults are the numbers
//! in the README.

use indicatif::ProgressBar;
use mycelium::adu::{self, Message};
use mycelium::bundle::VerifiedBundle;
use mycelium::fec::pack::{push_frame, PACK_MAGIC};
use mycelium::fec::{self, Policy};
use mycelium::node::Node;
use mycelium::route::delivery::{self, contact_tag, Arrival};
use mycelium::store::Limits;
use mycelium::time::DtnTime;
use mycelium::transport::folder::{self, ExportOptions, ImportOptions, ImportReport};
use mycelium::transport::Capped;
use std::fs;
use std::path::{Path, PathBuf};

const NOW: DtnTime = DtnTime(820_540_800_000);
const WEEK: u64 = 7 * 24 * 3600 * 1000;

fn node(dir: &Path, name: &str) -> Node {
    Node::init(&dir.join(name)).unwrap()
}

fn export(n: &Node, stick: &Path, parity: f64) -> usize {
    let r = folder::export(
        n,
        stick,
        &ExportOptions {
            for_node: None,
            max_bytes: None,
            policy: Policy::folder(parity),
            now: NOW,
            have_summary: false,
            node_records: false,
            only: None,
        },
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert!(r.error.is_none(), "{r:?}");
    r.bundles
}

fn import(n: &Node, stick: &Path) -> ImportReport {
    import_at(n, stick, NOW)
}

fn import_at(n: &Node, stick: &Path, now: DtnTime) -> ImportReport {
    folder::import(
        n,
        stick,
        &ImportOptions { clean: false, now },
        &ProgressBar::hidden(),
    )
    .unwrap()
}

fn minutes(m: u64) -> DtnTime {
    DtnTime(NOW.0 + m * 60_000)
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

/// A stick carrying `n` one-shard objects of junk (each shard verifies against its object
/// id; the rebuilt bytes are no bundle). No key, no signature, no stamp needed.
fn junk_stick(stick: &Path, n: usize) -> Vec<[u8; 32]> {
    let dir = stick.join("mycelium/shards");
    fs::create_dir_all(&dir).unwrap();
    let mut pack = PACK_MAGIC.to_vec();
    let mut ids = Vec::new();
    for i in 0..n {
        let junk = format!("junk object {i} that is no bundle").into_bytes();
        let (id, shards) = fec::encode(&junk, Policy::folder(0.0).params(junk.len())).unwrap();
        assert_eq!(shards.len(), 1);
        push_frame(&mut pack, &shards[0].encode());
        ids.push(id);
    }
    fs::write(dir.join("junk.msp"), pack).unwrap();
    ids
}

/// `from` seals `n` short messages for `to` (whose sealing key it learns here).
fn seal_for(from: &Node, to: &Node, n: usize) -> Vec<VerifiedBundle> {
    from.store
        .set_contact(&to.node_id().to_string(), &to.identity.seal_key().public())
        .unwrap();
    (0..n)
        .map(|i| {
            let m = Message::Text(format!("sealed {i}"));
            let (_, outer) = from
                .send(to.node_id(), adu::encode_message(&m), WEEK, NOW, true)
                .unwrap();
            outer.unwrap()
        })
        .collect()
}

fn stored(n: &Node, vb: &VerifiedBundle) -> bool {
    n.store.contains(&vb.id()).unwrap()
}

/// Fault 5: junk objects are refused, and the refusal is not kept: the store does not grow
/// with them, and a later stick carrying the same objects has them looked at afresh. The
/// report counts every one and lists a bounded number.
#[test]
fn refused_junk_leaves_nothing_in_the_store_and_the_list_is_capped() {
    let t = tempfile::tempdir().unwrap();
    let x = node(t.path(), "x");
    let stick = t.path().join("stick");
    let n = Capped::<folder::Rejection>::KEEP + 200;
    let ids = junk_stick(&stick, n);
    let r = import(&x, &stick);
    assert_eq!((r.new, r.refused.total()), (0, n));
    assert_eq!(r.refused.len(), Capped::<folder::Rejection>::KEEP);
    assert!(
        r.refused[0].reason.contains("rebuilt bundle refused"),
        "{:?}",
        r.refused[0]
    );
    for id in &ids {
        assert!(x.store.object_status(id).unwrap().is_none());
    }
    assert_eq!(x.store.partial_summary().unwrap().objects, 0);
    // Nothing remembered: the same junk again is refused again, not "already seen".
    let again = import(&x, &stick);
    assert_eq!((again.refused.total(), again.duplicate_shards), (n, 0));
}

/// Fault 5: incomplete objects are capped (count and bytes), the least far along and oldest
/// go first, and the report says how many this stick left waiting and how many the bound
/// dropped; the ones kept complete when the rest arrives.
#[test]
fn incomplete_objects_are_bounded_and_counted_honestly() {
    let t = tempfile::tempdir().unwrap();
    let (a, mut b) = (node(t.path(), "a"), node(t.path(), "b"));
    b.store.set_limits(Limits {
        partial_objects: 4,
        ..Limits::default()
    });
    for i in 0..10u8 {
        let m = Message::Text(format!("{i}").repeat(20_000));
        a.originate(b.node_id(), adu::encode_message(&m), WEEK, NOW)
            .unwrap();
    }
    // No parity, two data shards per bundle, each in its own pack file: one pack alone
    // leaves every bundle incomplete.
    let stick = t.path().join("stick");
    assert_eq!(export(&a, &stick, 0.0), 10);
    let p = packs(&stick);
    assert_eq!(p.len(), 2);
    let half = t.path().join("half");
    fs::create_dir_all(half.join("mycelium/shards")).unwrap();
    fs::rename(&p[1], half.join("mycelium/shards/second.msp")).unwrap();

    let r1 = import(&b, &stick);
    assert_eq!(r1.new, 0);
    assert_eq!((r1.incomplete, r1.incomplete_dropped), (4, 6), "{r1:?}");
    assert_eq!(r1.partial_evicted, 6);
    let held = b.store.partial_summary().unwrap();
    assert_eq!(held.objects, 4);
    assert!(
        held.bytes > 4 * 10_000 && held.bytes < 5 * 12_000,
        "{held:?}"
    );
    // The other halves: the four kept complete, the six dropped now wait for theirs (and
    // the bound keeps four of those).
    let r2 = import(&b, &half);
    assert_eq!(r2.new, 4, "{r2:?}");
    assert_eq!((r2.incomplete, r2.incomplete_dropped), (4, 2));
    assert_eq!(b.store.partial_summary().unwrap().objects, 4);

    // The byte bound: no more bytes of incomplete objects than allowed, whatever comes.
    let c = {
        let mut c = node(t.path(), "c");
        c.store.set_limits(Limits {
            partial_bytes: 25_000,
            ..Limits::default()
        });
        c
    };
    let r3 = import(&c, &stick);
    let held = c.store.partial_summary().unwrap();
    assert!(held.bytes <= 25_000 && held.objects == 2, "{held:?}");
    assert_eq!((r3.incomplete, r3.incomplete_dropped), (2, 8));
}

/// Fault 4: a sealed bundle refused because its stick was over the per-contact quota is
/// not remembered: the next honest stick that carries it gets it stored.
#[test]
fn a_sealed_bundle_refused_for_the_quota_is_taken_from_a_later_stick() {
    let t = tempfile::tempdir().unwrap();
    let (victim, flooder, r) = (
        node(t.path(), "victim"),
        node(t.path(), "flooder"),
        node(t.path(), "r"),
    );
    let mut x = node(t.path(), "x");
    x.store.set_limits(Limits {
        sealed_per_contact: 2,
        ..Limits::default()
    });
    // The victim's sealed bundle, copied onto the flooder's stick among its fillers.
    let v = seal_for(&victim, &r, 1).remove(0);
    let mut all = seal_for(&flooder, &r, 4);
    flooder.store.put(&v, NOW).unwrap();
    all.push(v);
    let stick = t.path().join("stick");
    assert_eq!(export(&flooder, &stick, 0.25), 5);
    let r1 = import(&x, &stick);
    assert_eq!((r1.new, r1.refused.total()), (2, 3), "{r1:?}");
    assert!(r1.refused.iter().all(|x| x.reason.contains("quota")));
    let refused: Vec<&VerifiedBundle> = all.iter().filter(|b| !stored(&x, b)).collect();
    assert_eq!(refused.len(), 3);
    // Each refused bundle on an honest stick of its own (within the quota): stored.
    for (i, b) in refused.into_iter().enumerate() {
        let h = node(t.path(), &format!("h{i}"));
        h.store.put(b, NOW).unwrap();
        let s = t.path().join(format!("honest{i}"));
        assert_eq!(export(&h, &s, 0.25), 1);
        let ri = import(&x, &s);
        assert_eq!((ri.new, ri.duplicate), (1, 0), "{ri:?}");
        assert!(stored(&x, b));
    }
    // Sealed bundles already held do not count against a stick's quota (the same five,
    // shards made with other parity: other objects, rebuilt again).
    let again = t.path().join("again");
    assert_eq!(export(&flooder, &again, 0.5), 5);
    let r3 = import(&x, &again);
    assert_eq!((r3.duplicate, r3.refused.total()), (5, 0), "{r3:?}");
}

/// Fault 7: relayed sealed bundles are bounded store-wide. Contacts that bring the most lose
/// first, so repeated flooding sticks and sync peers do not push out an honest contact's
/// bundles; this node's own sealed bundles are never counted or evicted.
#[test]
fn relayed_sealed_bundles_are_bounded_across_contacts_fairly() {
    let t = tempfile::tempdir().unwrap();
    let r = node(t.path(), "r");
    let mut x = node(t.path(), "x");
    x.store.set_limits(Limits {
        sealed_bundles: 6,
        ..Limits::default()
    });
    let own = seal_for(&x, &r, 3);
    // An honest courier's stick with two.
    let honest = node(t.path(), "honest");
    let kept = seal_for(&honest, &r, 2);
    let s = t.path().join("honest-stick");
    export(&honest, &s, 0.25);
    assert_eq!(import_at(&x, &s, minutes(1)).new, 2);
    // Three flooding sticks of four each, all within the per-stick quota.
    let mut evicted = 0;
    for i in 0..3 {
        let f = node(t.path(), &format!("f{i}"));
        seal_for(&f, &r, 4);
        let s = t.path().join(format!("flood{i}"));
        export(&f, &s, 0.25);
        let ri = import_at(&x, &s, minutes(2 + i));
        assert_eq!(ri.new, 4);
        evicted += ri.sealed_evicted;
    }
    assert_eq!(evicted, 2 + 12 - 6);
    assert_eq!(x.store.sealed_held().unwrap().count, 6);
    // A sync peer floods too (the QUIC path: `accept_from` with the peer's tag).
    let peer = node(t.path(), "peer");
    let tag = contact_tag(&peer.node_id().to_string());
    for (i, vb) in seal_for(&peer, &r, 5).into_iter().enumerate() {
        let now = minutes(10 + i as u64);
        let a = delivery::accept_from(&x.store, &x.identity, vb, now, Some(tag)).unwrap();
        assert!(matches!(a, Arrival::New { .. }));
    }
    assert_eq!(x.store.sealed_held().unwrap().count, 6);
    for b in kept.iter().chain(&own) {
        assert!(stored(&x, b), "an honest or own sealed bundle was evicted");
    }
    // Byte bound: with room for three of these, the honest contact keeps its share.
    let bytes = kept[0].raw().len() as u64;
    x.store.set_limits(Limits {
        sealed_bytes: 3 * bytes + bytes / 2,
        ..Limits::default()
    });
    let f = node(t.path(), "f-last");
    seal_for(&f, &r, 3);
    let s = t.path().join("flood-last");
    export(&f, &s, 0.25);
    import_at(&x, &s, minutes(20));
    let held = x.store.sealed_held().unwrap();
    assert!(held.bytes <= 3 * bytes + bytes / 2, "{held:?}");
    assert!(kept.iter().any(|b| stored(&x, b)));
    assert!(own.iter().all(|b| stored(&x, b)));
}

/// Fault 5, as a user sees it: `import` lists a bounded number of refusals and says how
/// many more there were; `--json` has the exact counts.
#[test]
fn the_import_command_lists_twenty_refusals_and_counts_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let bin = assert_cmd::cargo::cargo_bin("mycelium");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .env_remove("MYCELIUM_HOME")
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["init"]);
    let stick = t.path().join("stick");
    junk_stick(&stick, 30);
    let s = stick.to_str().unwrap();
    let out = run(&["import", s]);
    let listed = out.lines().filter(|l| l.starts_with("  ! ")).count();
    assert_eq!(listed, 21, "{out}");
    assert!(out.contains("and 10 more"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&run(&["--json", "import", s])).unwrap();
    assert_eq!(v["refused_total"], 30);
    assert_eq!(v["refused"].as_array().unwrap().len(), 30);
}
