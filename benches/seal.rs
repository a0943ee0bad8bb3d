//! Sealed bundles: seal and open throughput at 1 KiB and 1 MiB, what a relay pays to
//! check a stamp, and the size overhead per bundle. The seal time includes the
//! proof-of-work stamp (16 bits up to 64 KiB of ciphertext, 20 bits at 1 MiB), which is
//! most of it by design.
//! Run: `cargo bench --bench seal`.

use mycelium::adu::{self, FileMessage, Message};
use mycelium::bundle::{BundleBuilder, CreationTimestamp, VerifiedBundle};
use mycelium::identity::Identity;
use mycelium::seal;
use mycelium::time::DtnTime;
use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let now = DtnTime(820_000_000_000);
    let key = b.seal_key();
    let xpk = key.public();
    println!(
        "{:<8} {:>6} {:>14} {:>14} {:>14} {:>12} {:>10}",
        "size", "n", "seal b/s", "seal MB/s", "open b/s", "check µs", "overhead"
    );
    for (label, size, n) in [("1 KiB", 1024usize, 200usize), ("1 MiB", 1 << 20, 20)] {
        let inners: Vec<VerifiedBundle> = (0..n)
            .map(|i| {
                BundleBuilder::new(
                    b.node_id(),
                    CreationTimestamp {
                        time: now,
                        seq: i as u64,
                    },
                    86_400_000,
                )
                .payload(adu::encode_message(&Message::File(FileMessage {
                    name: "x".into(),
                    media_type: "application/octet-stream".into(),
                    data: vec![7u8; size],
                })))
                .sign(&a)
                .expect("sign")
            })
            .collect();
        let t = Instant::now();
        let outers: Vec<VerifiedBundle> = inners
            .iter()
            .map(|i| seal::seal(i, &xpk, now, &mut rand_core::OsRng).expect("seal"))
            .collect();
        let seal_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for o in &outers {
            seal::check_stamp(o.bundle()).expect("stamp");
        }
        let check_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for o in &outers {
            let inner = seal::open(o.bundle(), &key, &b.node_id())
                .expect("open")
                .expect("mine");
            assert_eq!(inner.bundle().primary.source, a.node_id());
        }
        let open_s = t.elapsed().as_secs_f64();
        // What every other node pays to find a sealed bundle is not its own: one X25519 per
        // key it tries (the node-ID key; a home made before 2026-12 also the key it published).
        let c = Identity::from_seed([3; 32]).with_legacy_seal_key(true);
        let (one, both) = (c.seal_key(), c.seal_keys());
        let t = Instant::now();
        for o in &outers {
            assert!(seal::open(o.bundle(), &one, &c.node_id())
                .expect("try")
                .is_none());
        }
        let try_one = t.elapsed().as_secs_f64() / n as f64;
        let t = Instant::now();
        for o in &outers {
            assert!(seal::open_with_any(o.bundle(), both, &c.node_id())
                .expect("try")
                .is_none());
        }
        let try_both = t.elapsed().as_secs_f64() / n as f64;
        println!(
            "         not ours: {:.1} µs (node-ID key), {:.1} µs in a pre-2026-12 home ({:.2}x)",
            try_one * 1e6,
            try_both * 1e6,
            try_both / try_one
        );
        let inner_len: usize = inners.iter().map(|i| i.raw().len()).sum();
        let outer_len: usize = outers.iter().map(|o| o.raw().len()).sum();
        let mb = inner_len as f64 / 1e6;
        println!(
            "{label:<8} {n:>6} {:>14.0} {:>14.1} {:>14.0} {:>12.1} {:>9.1}%",
            n as f64 / seal_s,
            mb / seal_s,
            n as f64 / open_s,
            check_s / n as f64 * 1e6,
            (outer_len as f64 / inner_len as f64 - 1.0) * 100.0
        );
        println!(
            "         per bundle: {} B inner -> {} B sealed (+{} B); open {:.1} MB/s",
            inner_len / n,
            outer_len / n,
            (outer_len - inner_len) / n,
            mb / open_s
        );
    }
    // The stamp alone: expected 2^16 blake3 calls on 48 bytes.
    let t = Instant::now();
    let mut x = 0u64;
    let reps = 1u64 << 20;
    for i in 0..reps {
        let h = blake3::hash(&[&i.to_le_bytes()[..], &[0u8; 40][..]].concat());
        x ^= h.as_bytes()[0] as u64;
    }
    let per_hash = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "stamp: {:.0} ns per attempt here ({x}); 16 bits = {:.1} ms expected, 20 bits = {:.0} ms",
        per_hash * 1e9,
        per_hash * 65536.0 * 1e3,
        per_hash * 1048576.0 * 1e3
    );
}
