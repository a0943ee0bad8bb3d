//! Store hot paths on real RocksDB in a temp dir: durable (synced) put and get, at 1 KiB and
//! 1 MiB bundles. Reported as puts/s and gets/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mycelium::bundle::{BundleBuilder, CreationTimestamp, VerifiedBundle};
use mycelium::identity::Identity;
use mycelium::store::Store;
use mycelium::time::DtnTime;
use std::hint::black_box;
use std::time::Instant;

const SIZES: [(&str, usize); 2] = [("1KiB", 1024), ("1MiB", 1024 * 1024)];
const NOW: DtnTime = DtnTime(820_540_800_000);

fn make(alice: &Identity, seq: u64, size: usize) -> VerifiedBundle {
    BundleBuilder::new(
        Identity::from_seed([2; 32]).node_id(),
        CreationTimestamp { time: NOW, seq },
        86_400_000,
    )
    .payload(vec![(seq % 251) as u8; size])
    .sign(alice)
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let alice = Identity::from_seed([1; 32]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut seq = 0u64;
    for (name, size) in SIZES {
        if size > 64 * 1024 {
            g.sample_size(20);
        }
        g.bench_function(BenchmarkId::new("put_synced", name), |b| {
            b.iter_custom(|iters| {
                let bundles: Vec<_> = (0..iters)
                    .map(|_| {
                        seq += 1;
                        make(&alice, seq, size)
                    })
                    .collect();
                let t = Instant::now();
                for vb in &bundles {
                    black_box(store.put(vb, NOW).unwrap());
                }
                t.elapsed()
            })
        });
        let keys: Vec<[u8; 32]> = (0..64)
            .map(|_| {
                seq += 1;
                let vb = make(&alice, seq, size);
                store.put(&vb, NOW).unwrap();
                vb.id().key()
            })
            .collect();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("get_raw", name), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(store.get_raw(&keys[i]).unwrap().unwrap().len())
            })
        });
        g.bench_function(BenchmarkId::new("get_verified", name), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(store.get(&keys[i]).unwrap().unwrap().raw().len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
