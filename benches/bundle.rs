//! Bundle hot paths: create+sign+encode and decode+verify, at 1 KiB and 1 MiB payloads.
//! Reported as bundles/s (elements) and MB/s (bytes).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mycelium::bundle::{BundleBuilder, CreationTimestamp, VerifiedBundle};
use mycelium::identity::Identity;
use mycelium::time::DtnTime;
use std::hint::black_box;

const SIZES: [(&str, usize); 2] = [("1KiB", 1024), ("1MiB", 1024 * 1024)];

fn bench(c: &mut Criterion) {
    let alice = Identity::from_seed([1; 32]);
    let bob = Identity::from_seed([2; 32]).node_id();
    // Baselines in the same run: Ed25519 alone, over a message as long as our signed bytes.
    let mut base = c.benchmark_group("ed25519");
    base.throughput(Throughput::Elements(1));
    let msg = [7u8; 160];
    let sig = alice.sign(&msg);
    let node = alice.node_id();
    base.bench_function("sign", |b| {
        b.iter(|| black_box(alice.sign(black_box(&msg))))
    });
    base.bench_function("verify_strict", |b| {
        b.iter(|| {
            assert!(mycelium::identity::verify_by_node(
                &node,
                black_box(&msg),
                &sig
            ))
        })
    });
    base.finish();

    let mut g = c.benchmark_group("bundle");
    for (name, size) in SIZES {
        let payload = vec![0x5au8; size];
        g.throughput(Throughput::Elements(1));
        if size > 64 * 1024 {
            g.sample_size(20);
        }
        let mut seq = 0u64;
        g.bench_with_input(
            BenchmarkId::new("create_sign_encode", name),
            &payload,
            |b, p| {
                b.iter(|| {
                    seq += 1;
                    let vb = BundleBuilder::new(
                        bob.clone(),
                        CreationTimestamp {
                            time: DtnTime(820_540_800_000),
                            seq,
                        },
                        86_400_000,
                    )
                    .payload(p.clone())
                    .sign(&alice)
                    .unwrap();
                    black_box(vb.raw().len())
                })
            },
        );
        let raw = BundleBuilder::new(
            bob.clone(),
            CreationTimestamp {
                time: DtnTime(820_540_800_000),
                seq: 0,
            },
            86_400_000,
        )
        .payload(payload.clone())
        .sign(&alice)
        .unwrap()
        .into_raw();
        g.bench_with_input(BenchmarkId::new("decode_verify", name), &raw, |b, r| {
            b.iter(|| black_box(VerifiedBundle::decode(r).unwrap().bundle().payload().len()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
