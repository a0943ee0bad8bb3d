//! Export and import through a folder, against plain `cp -r` of the same bytes, in one run:
//! 10,000 × 1 KiB bundles and 100 × 1 MiB bundles, 25% parity. Prints a table.
//! Run: `cargo bench --bench sneakernet`. Setup (creating the bundles) is not timed.

use indicatif::ProgressBar;
use mycelium::adu::{self, FileMessage, Message};
use mycelium::fec::Policy;
use mycelium::node::Node;
use mycelium::time::DtnTime;
use mycelium::transport::folder::{self, ExportOptions, ImportOptions};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn run(label: &str, count: usize, size: usize) {
    let t = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let now = DtnTime::now();
    let a = Node::init(&t.path().join("a")).unwrap();
    let b = Node::init(&t.path().join("b")).unwrap();
    let mut payload_bytes = 0u64;
    for i in 0..count {
        let data: Vec<u8> = (0..size).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
        let m = Message::File(FileMessage {
            name: format!("f{i}"),
            media_type: "application/octet-stream".into(),
            data,
        });
        let vb = a
            .originate(b.node_id(), adu::encode_message(&m), 86_400_000, now)
            .unwrap();
        payload_bytes += vb.raw().len() as u64;
    }
    let stick = t.path().join("stick");
    let opts = ExportOptions {
        for_node: None,
        max_bytes: None,
        policy: Policy::folder(0.25),
        now,
        have_summary: true,
        node_records: false,
        only: None,
    };
    let t0 = Instant::now();
    let e = folder::export(&a, &stick, &opts, &ProgressBar::hidden()).unwrap();
    let export_s = t0.elapsed().as_secs_f64();
    assert_eq!(e.bundles, count);

    let t1 = Instant::now();
    let i = folder::import(
        &b,
        &stick,
        &ImportOptions { clean: false, now },
        &ProgressBar::hidden(),
    )
    .unwrap();
    let import_s = t1.elapsed().as_secs_f64();
    assert_eq!(i.new, count);

    let drive_bytes = dir_bytes(&stick);
    let copy = t.path().join("copy");
    let t2 = Instant::now();
    let st = Command::new("cp")
        .arg("-r")
        .arg(&stick)
        .arg(&copy)
        .status()
        .unwrap();
    let sync = Command::new("sync").status();
    let cp_s = t2.elapsed().as_secs_f64();
    assert!(st.success() && sync.is_ok());

    let mb = payload_bytes as f64 / 1e6;
    println!(
        "{label:<16} bundles {count:>6}  drive {:>8.1} MB ({:.2}x)  files {:>5}",
        drive_bytes as f64 / 1e6,
        drive_bytes as f64 / payload_bytes as f64,
        e.files
    );
    println!(
        "  export  {export_s:>7.3} s  {:>9.0} bundles/s  {:>7.1} MB/s   {:>5.2}x the time of cp -r",
        count as f64 / export_s,
        mb / export_s,
        export_s / cp_s
    );
    println!(
        "  import  {import_s:>7.3} s  {:>9.0} bundles/s  {:>7.1} MB/s   {:>5.2}x the time of cp -r",
        count as f64 / import_s,
        mb / import_s,
        import_s / cp_s
    );
    println!(
        "  cp -r   {cp_s:>7.3} s  (the drive's {:.1} MB, then sync)",
        drive_bytes as f64 / 1e6
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing else we use.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("sneakernet through a folder, 25% parity (MB = bundle bytes, 10^6)");
    run("10000 x 1 KiB", 10_000, 1024);
    run("100 x 1 MiB", 100, 1 << 20);
}
