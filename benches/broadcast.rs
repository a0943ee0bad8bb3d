//! The broadcast channel simulation: fraction of bundles recovered after 1, 2 and 3 passes
//! for loss 5/20/40% (independent, and Gilbert–Elliott bursts of 8 files on average) and
//! overhead 10/30/60%, against a plain carousel of whole bundles on the same channel.
//! Real RaptorQ coding and the real carousel schedule; files in memory. Mean of 3 seeds.
//! Run: `cargo bench --bench broadcast`.

use mycelium::sim::{self, Channel, Feed};
use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // 4 MiB of 1 KiB bundles, 1 MiB segments, 1 KiB symbols, 4 symbols a file (1 of each
    // segment): the files-per-segment of a 1 GiB day sent in 1 MiB files.
    let feed = Feed {
        bundles: 4096,
        bundle_size: 1024,
        segment_size: 1 << 20,
        symbol_size: 1024,
        per_file: 4,
    };
    let seeds = 3u64;
    let t = Instant::now();
    println!(
        "broadcast feed: {} x {} B bundles, {} B symbols, {} symbols/file, mean of {seeds} seeds",
        feed.bundles, feed.bundle_size, feed.symbol_size, feed.per_file
    );
    println!(
        "{:<22} {:>8}   {:>22}   {:>22}",
        "channel", "overhead", "coded: pass 1 / 2 / 3", "plain: pass 1 / 2 / 3"
    );
    for (name, ch) in [
        ("independent 5%", Channel::Independent { loss: 0.05 }),
        ("independent 20%", Channel::Independent { loss: 0.20 }),
        ("independent 40%", Channel::Independent { loss: 0.40 }),
        (
            "bursts 5% (mean 8)",
            Channel::GilbertElliott {
                loss: 0.05,
                burst: 8.0,
            },
        ),
        (
            "bursts 20% (mean 8)",
            Channel::GilbertElliott {
                loss: 0.20,
                burst: 8.0,
            },
        ),
        (
            "bursts 40% (mean 8)",
            Channel::GilbertElliott {
                loss: 0.40,
                burst: 8.0,
            },
        ),
    ] {
        let mut plain = [0.0; 3];
        for s in 0..seeds {
            for (i, v) in sim::plain(&feed, 3, ch, s).iter().enumerate() {
                plain[i] += v / seeds as f64;
            }
        }
        for overhead in [0.1, 0.3, 0.6] {
            let mut coded = [0.0; 3];
            for s in 0..seeds {
                for (i, v) in sim::coded(&feed, overhead, 3, ch, s).iter().enumerate() {
                    coded[i] += v / seeds as f64;
                }
            }
            let pct = |v: [f64; 3]| {
                format!(
                    "{:>6.1} {:>6.1} {:>6.1}",
                    v[0] * 100.0,
                    v[1] * 100.0,
                    v[2] * 100.0
                )
            };
            println!(
                "{name:<22} {:>7.0}%   {:>22}   {:>22}",
                overhead * 100.0,
                pct(coded),
                pct(plain)
            );
        }
    }
    println!(
        "(percent of bundles recovered; {:.1} s)",
        t.elapsed().as_secs_f64()
    );
}
