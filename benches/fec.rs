//! Shard encode and decode throughput at 25% parity, with the folder policy the product
//! uses (1 KiB: k=1 + a copy; 64 KiB: k=2, m=1; 4 MiB: k=64, m=16). Encode = split, Reed–
//! Solomon parity, Merkle tree, record encoding. Decode = verify k records against the
//! object id (the first m data shards lost, so parity is used) and rebuild.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mycelium::fec::{self, Policy, Shard};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let policy = Policy::folder(0.25);
    let mut g = c.benchmark_group("fec");
    for (name, len) in [("1KiB", 1024usize), ("64KiB", 64 * 1024), ("4MiB", 4 << 20)] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let p = policy.params(len);
        eprintln!(
            "{name}: k={} m={} stripes={} shard={} B",
            p.k, p.m, p.stripes, p.shard_len
        );
        g.throughput(Throughput::Bytes(len as u64));
        if len > 1 << 20 {
            g.sample_size(20);
        }
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                let (_, shards) = fec::encode(black_box(&data), p).unwrap();
                black_box(shards.iter().map(|s| s.encode().len()).sum::<usize>())
            })
        });
        let (_, shards) = fec::encode(&data, p).unwrap();
        let records: Vec<Vec<u8>> = shards
            .iter()
            // the first m data shards of every stripe are lost: parity must be used
            .filter(|s| s.index >= p.m.min(p.k))
            .map(Shard::encode)
            .collect();
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                let got: Vec<Shard> = records
                    .iter()
                    .map(|r| Shard::decode_verified(r).unwrap())
                    .collect();
                let refs: Vec<&Shard> = got.iter().collect();
                let (out, _) = fec::rebuild(&p, &refs).unwrap();
                assert_eq!(out.len(), len);
                black_box(out)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
