//! `demo`: the end-to-end flow that exists so far, on temporary homes, narrated.
//!
//! Today: A seals a message and a photo for C, and a request for marketplace M, onto stick 1
//! (a search of the stick finds no node ID and no plaintext); a file on stick 1 is lost;
//! B (a courier, who cannot open them) imports it and exports everything for the road onto
//! stick 2; a file on stick 2 is corrupted; C imports stick 2, rebuilds from parity, opens
//! and reads both. On the way, a single-bundle file with one flipped bit is refused. B, the
//! cell's gateway, syncs with M over QUIC; M answers A, and the answer comes back through B
//! over the LAN. A's stick also carried a task for M: M holds its reward in escrow, three
//! workers fetch it over QUIC, two run it and one lies; the quorum accepts the right
//! output and M pays the honest two (`demo_market`). Then M publishes a two-pass satellite
//! feed; the recording loses a quarter of its files and a burst is corrupted; C ingests it
//! and still gets every bulletin, and the workers' payments and A's verdict come home on it.
//! Last, first contact on paper: D knows only C's node ID (read off C's QR code), seals a
//! message for it and prints it as QR frames; 30% are lost; C photographs the rest.

use super::bundle_cmds::{read_bundle_file, write_atomic};
use super::messages::adu_text;
use super::out::outln;
use super::{print_json, Cli};
use crate::adu::{self, Adu, FileMessage, Message};
use crate::bundle::VerifiedBundle;
use crate::fec::Policy;
use crate::node::Node;
use crate::time::DtnTime;
use crate::transport::broadcast::{self, IngestOptions, PublishOptions};
use crate::transport::folder::{self, ExportOptions, ImportOptions, ImportReport};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's homes and sticks in this folder instead of a temporary one
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Time a worker may take for each inference task (longer on slow or emulated CPUs,
    /// as `scripts/release.sh` runs the demo under qemu)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub task_limit: std::time::Duration,
}

fn pack_files(stick: &Path) -> Result<Vec<PathBuf>> {
    let dir = stick.join(folder::ROOT).join("shards");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "msp"))
        .collect();
    v.sort();
    Ok(v)
}

fn export(node: &Node, stick: &Path, now: DtnTime) -> Result<folder::ExportReport> {
    let opts = ExportOptions {
        for_node: None,
        max_bytes: None,
        policy: Policy::folder(0.25),
        now,
        have_summary: false,
        node_records: false,
        only: None,
    };
    Ok(folder::export(node, stick, &opts, &ProgressBar::hidden())?)
}

fn import(node: &Node, stick: &Path, now: DtnTime) -> Result<ImportReport> {
    let opts = ImportOptions { clean: false, now };
    Ok(folder::import(node, stick, &opts, &ProgressBar::hidden())?)
}

/// A deterministic stand-in for a photo: 300 kB of bytes.
fn photo() -> Vec<u8> {
    let mut out = Vec::with_capacity(300_000);
    let mut h = blake3::Hasher::new();
    h.update(b"demo photo");
    h.finalize_xof().fill({
        out.resize(300_000, 0);
        &mut out
    });
    out
}

pub fn run(cli: &Cli, a: &DemoArgs) -> Result<()> {
    let tmp;
    let root = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
            tmp.path().to_path_buf()
        }
    };
    let say = |s: String| {
        if !cli.json {
            outln!("{}", super::safe::line(&s));
        }
    };
    let now = DtnTime::now();
    let started = std::time::Instant::now();

    say("== Mycelium demo: A to C by two USB sticks, through courier B ==".into());
    let alice = Node::init(&root.join("node-a"))?;
    let bob = std::sync::Arc::new(Node::init(&root.join("node-b"))?);
    let carol = Node::init(&root.join("node-c"))?;
    say(format!("1. nodes:  A {}", alice.node_id()));
    say(format!("           B {}", bob.node_id()));
    say(format!("           C {}", carol.node_id()));

    let market = std::sync::Arc::new(Node::init(&root.join("node-m"))?);
    let workers = (1..=3)
        .map(|i| Node::init(&root.join(format!("node-w{i}"))).map(std::sync::Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let text = "Salam from A: the clinic needs insulin, 20 units, by Friday.";
    let week = 7 * 24 * 3600 * 1000;
    // Node records (signed sealing keys) were exchanged at an earlier meeting and by feed.
    let everyone: Vec<&Node> = [&alice, &*bob, &carol, &*market]
        .into_iter()
        .chain(workers.iter().map(|w| &**w))
        .collect();
    for n in &everyone {
        let rec = n.publish_record(now)?;
        for other in &everyone {
            if other.node_id() != n.node_id() {
                other.receive(rec.raw(), now)?;
            }
        }
    }
    let sealed = |to: &Node, payload: Vec<u8>| -> Result<(VerifiedBundle, VerifiedBundle)> {
        let (inner, outer) = alice.send(to.node_id(), payload, week, now, true)?;
        Ok((inner, outer.context("sealing produced no outer bundle")?))
    };
    let (msg, msg_sealed) = sealed(&carol, adu::encode_message(&Message::Text(text.into())))?;
    let pic = photo();
    let (file, file_sealed) = sealed(
        &carol,
        adu::encode_message(&Message::File(FileMessage {
            name: "clinic.jpg".into(),
            media_type: "image/jpeg".into(),
            data: pic.clone(),
        })),
    )?;
    let ask = "A to the marketplace: who can supply insulin to the clinic?";
    let (request, _) = sealed(&market, adu::encode_message(&Message::Text(ask.into())))?;
    let models = super::demo_market::setup(&alice, &market, &workers, now)?;
    let tasks = super::demo_market::submit(&alice, &models, now, a.task_limit.as_millis() as u64)?;
    let task = tasks.digest;
    say(format!(
        "2. A signs three BPv7 bundles: for C a message ({} B) and a photo ({} B), for the marketplace M a request ({} B),",
        msg.raw().len(),
        file.raw().len(),
        request.raw().len()
    ));
    say(format!(
        "   and seals each for its recipient: anonymous outer bundles of {} B, {} B, ... (padded, stamped)",
        msg_sealed.raw().len(),
        file_sealed.raw().len()
    ));
    say(format!(
        "   A also submits three tasks for M, paid from the {} credits M granted it and sealed too: the digest of the clinic's inventory {} (3 workers, {} credits each), embeddings of 3 sentences with all-MiniLM-L6-v2 and an answer from SmolLM2-135M (2 workers each)",
        super::demo_market::GRANT,
        &hex::encode(task)[..12],
        super::demo_market::REWARD
    ));

    // A single bundle file with one flipped bit is refused outright.
    let loose = root.join("loose.bundle");
    let mut tampered = msg_sealed.raw().to_vec();
    let n = tampered.len();
    tampered[n - 10] ^= 0x01;
    write_atomic(&loose, &tampered)?;
    let refusal = match bob.receive(&read_bundle_file(&loose)?, now) {
        Ok(_) => bail!("B accepted a bundle with a flipped bit"),
        Err(e) => e.to_string(),
    };
    say(format!(
        "   (a copy with one flipped bit is refused: {refusal})"
    ));

    let stick1 = root.join("stick-1");
    let e1 = export(&alice, &stick1, now)?;
    say(format!(
        "3. A exports to stick 1: {} bundles as {} shards in {} files, 25% parity",
        e1.bundles, e1.shards, e1.files
    ));
    let scan = scan_for(
        &stick1,
        &[
            alice.node_id().to_string().as_bytes(),
            carol.node_id().to_string().as_bytes(),
            market.node_id().to_string().as_bytes(),
            text.as_bytes(),
            b"clinic",
        ],
    )?;
    if scan.1 > 0 {
        bail!("stick 1 shows a node ID or plaintext");
    }
    say(format!(
        "   a search of stick 1 ({} files) finds no node ID, no name and no word of the messages",
        scan.0
    ));
    let lost = pack_files(&stick1)?
        .into_iter()
        .next()
        .context("stick 1 has no shard files")?;
    std::fs::remove_file(&lost)?;
    say(format!(
        "4. on the way, a file is lost from stick 1: {}",
        lost.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));

    let i1 = import(&bob, &stick1, now)?;
    say(format!(
        "5. courier B imports stick 1: {} new bundles ({} rebuilt from parity), {} incomplete; B can open none of them",
        i1.new, i1.rebuilt_from_parity, i1.incomplete
    ));
    if i1.new != e1.bundles {
        bail!(
            "B should have rebuilt all {} bundles, got {}",
            e1.bundles,
            i1.new
        );
    }

    let stick2 = root.join("stick-2");
    let e2 = export(&bob, &stick2, now)?;
    say(format!(
        "6. B exports to stick 2 for the road: {} bundles, {} files",
        e2.bundles, e2.files
    ));
    let hit = pack_files(&stick2)?
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .context("stick 2 has no shard files")?;
    let mut bytes = std::fs::read(&hit)?;
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&hit, &bytes)?;
    say(format!(
        "7. on the way, 64 bytes of a file on stick 2 are corrupted: {}",
        hit.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));

    let i2 = import(&carol, &stick2, now)?;
    say(format!(
        "8. C imports stick 2: {} new bundles ({} rebuilt from parity), opens the {} sealed for it; refused parts: {}",
        i2.new,
        i2.rebuilt_from_parity,
        i2.delivered,
        i2.rejected.len()
    ));
    for r in &i2.rejected {
        say(format!("     ! {}: {}", short_name(&r.file), r.reason));
    }

    let inbox = carol.inbox()?;
    let mut got_text = None;
    let mut got_photo = false;
    for item in &inbox {
        match &item.adu {
            Ok(Adu::Message(Message::Text(t))) => got_text = Some(t.clone()),
            Ok(Adu::Message(Message::File(f))) => got_photo = f.data == pic,
            _ => {}
        }
    }
    let Some(got) = got_text else {
        bail!("C's inbox has no message")
    };
    if got != text || !got_photo {
        bail!("C read {got:?} and photo intact = {got_photo}");
    }
    say("9. C's inbox:".to_string());
    for item in &inbox {
        say(format!(
            "     from {}: {}",
            item.record.source,
            adu_text(&item.adu, "       ")
        ));
    }
    say("   the photo is byte-identical to A's.".into());

    // B is also the cell's gateway: an uplink to the marketplace over QUIC.
    let (quic_summary, market_summary) =
        gateway_round_trip(&say, &alice, &bob, &market, &workers, &tasks, ask)?;

    // The global side answers by satellite: a one-way feed, recorded with losses.
    let n_feed = 120;
    for i in 0..n_feed {
        let to = if i % 4 == 0 {
            carol.node_id()
        } else {
            alice.node_id()
        };
        market.originate(
            to,
            adu::encode_message(&Message::Text(format!(
                "news bulletin {i}: road north open, clinic supplies expected"
            ))),
            week,
            now,
        )?;
    }
    let feed = root.join("feed");
    let mut po = PublishOptions::new(now);
    po.passes = 2;
    po.symbol_size = 256;
    po.file_size = 4096;
    let pr = broadcast::publish(&market, &feed, &po, &ProgressBar::hidden())?;
    say(format!(
        "14. marketplace M ({}) publishes a satellite feed (payments, verdict, records, news): {} bundles, {} files, 2 passes, 30% overhead",
        market.node_id(),
        pr.bundles,
        pr.files
    ));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&feed)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mfd"))
        .collect();
    files.sort();
    // A quarter of the files, chosen at random (seeded, so the demo is reproducible).
    let mut rng = crate::sim::Rng::new(2026);
    let total_files = files.len();
    let mut order: Vec<usize> = (0..total_files).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let doomed: std::collections::HashSet<usize> =
        order[..total_files / 4].iter().copied().collect();
    let mut deleted = 0;
    let mut kept = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        if doomed.contains(&i) {
            std::fs::remove_file(&f)?;
            deleted += 1;
        } else {
            kept.push(f);
        }
    }
    let burst = 6;
    let start = kept.len() / 3;
    for f in kept.iter().skip(start).take(burst) {
        let mut b = std::fs::read(f)?;
        let l = b.len();
        for x in &mut b[l / 4..l / 4 + 256] {
            *x ^= 0xa5;
        }
        std::fs::write(f, b)?;
    }
    say(format!(
        "15. the receiver's recording loses {deleted} of {total_files} files at random and {burst} consecutive files are corrupted"
    ));
    carol
        .store
        .add_trust(&market.node_id().to_string(), crate::store::TRUST_BROADCAST)?;
    let ir = broadcast::ingest(
        &carol,
        &feed,
        &IngestOptions {
            any_signer: false,
            now,
        },
        &ProgressBar::hidden(),
    )?;
    // The feed carries everything M holds that should travel (the notices, and what the
    // gateway brought up): every one must come out, new or already known.
    // Bundles signed by others (A's, which the gateway brought up) are not taken from a
    // feed: C trusts M's signature only.
    if ir.new + ir.duplicate + ir.untrusted_bundles != pr.bundles || ir.new < n_feed {
        bail!(
            "C's ingest yielded {} new + {} known + {} untrusted of {} bundles",
            ir.new,
            ir.duplicate,
            ir.untrusted_bundles,
            pr.bundles
        );
    }
    say(format!(
        "16. C trusts M's feed and ingests it: all {} bundles rebuilt and verified ({} new, {} already held, {} signed by others refused; {} damaged parts skipped, loss estimate {:.0}%)",
        pr.bundles,
        ir.new,
        ir.duplicate,
        ir.untrusted_bundles,
        ir.problems.len(),
        ir.loss_estimate() * 100.0
    ));
    let mut feed_in = Vec::new();
    for n in workers.iter().map(|w| &**w).chain([&alice]) {
        n.store
            .add_trust(&market.node_id().to_string(), crate::store::TRUST_BROADCAST)?;
        let r = broadcast::ingest(
            n,
            &feed,
            &IngestOptions {
                any_signer: false,
                now: DtnTime::now(),
            },
            &ProgressBar::hidden(),
        )?;
        feed_in.push(r.new);
    }
    say(format!(
        "17. the workers and A ingest the same recording ({} new bundles each for W1, W2, W3, {} for A) and open what is sealed for them:",
        feed_in[..3]
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        feed_in[3]
    ));
    let wallets = super::demo_market::home(&say, &alice, &workers, &tasks)?;
    let qr = qr_first_contact(&root, &carol, &say)?;
    let telegram = telegram_bridge(&root, &bob, &carol, &say)?;
    let took = started.elapsed();
    say("demo complete: signed, sharded, carried by hand twice, damaged twice, delivered; the gateway crossed to the marketplace over QUIC; the task was run by three workers, checked by quorum and paid; the payments came home by satellite.".into());
    say(format!("({:.2} s)", took.as_secs_f64()));
    if cli.json {
        print_json(&json!({
            "node_a": alice.node_id().to_string(),
            "node_b": bob.node_id().to_string(),
            "node_c": carol.node_id().to_string(),
            "tampered_refused": refusal,
            "stick1": {"files": e1.files, "bundles": e1.bundles, "lost": lost.display().to_string(),
                        "b_new": i1.new, "b_rebuilt_from_parity": i1.rebuilt_from_parity},
            "stick2": {"files": e2.files, "bundles": e2.bundles, "corrupted": hit.display().to_string(),
                        "c_new": i2.new, "c_rebuilt_from_parity": i2.rebuilt_from_parity,
                        "c_rejected": i2.rejected.len()},
            "delivered": got,
            "quic": quic_summary,
            "market": market_summary,
            "wallets": wallets,
            "qr": qr,
            "telegram": telegram,
            "elapsed_ms": took.as_millis() as u64,
            "photo_intact": got_photo,
            "feed": {"bundles": pr.bundles, "notices": n_feed, "files": pr.files, "deleted": deleted,
                     "corrupted": burst, "c_new": ir.new},
            "ok": true,
        }));
    }
    Ok(())
}

/// Step 18: first contact with nothing but a node ID, over QR frames on paper.
fn qr_first_contact(root: &Path, carol: &Node, say: &dyn Fn(String)) -> Result<serde_json::Value> {
    use crate::qr::image as qimg;
    use crate::transport::qr as tqr;
    let dave = Node::init(&root.join("node-d"))?;
    // D points a camera at the QR code C shows (`mycelium id --qr`).
    let shown = qimg::symbol(&carol.node_id().to_string(), None)?.to_image(8);
    let read = qimg::scan(&shown);
    let id = read.first().context("C's ID QR code did not scan")?;
    let c_id = crate::bundle::Eid::parse(id)?;
    let text = "Salam C, this is D: I got your ID from the poster at the pharmacy.";
    let now = DtnTime::now();
    let (_, outer) = dave.send(
        c_id,
        adu::encode_message(&Message::Text(text.into())),
        7 * 24 * 3600 * 1000,
        now,
        true,
    )?;
    let outer = outer.context("sealing produced no outer bundle")?;
    let dir = root.join("qr-frames");
    let ex = tqr::export(
        &[outer],
        &dir,
        &tqr::ExportOptions::default(),
        &ProgressBar::hidden(),
    )?;
    // Three frames in ten are lost (torn, smudged, never photographed).
    let kept: Vec<PathBuf> = ex
        .pngs
        .iter()
        .enumerate()
        .filter(|(i, _)| (i * 7) % 10 >= 3)
        .map(|(_, p)| p.clone())
        .collect();
    let ir = tqr::import(carol, &kept, DtnTime::now(), &ProgressBar::hidden())?;
    let got = carol
        .inbox()?
        .into_iter()
        .any(|i| matches!(&i.adu, Ok(Adu::Message(Message::Text(t))) if t == text));
    if ir.delivered != 1 || !got {
        bail!("C did not read D's message from the QR frames: {ir:?}");
    }
    say(format!(
        "18. first contact on paper: D knows only C's node ID (scanned from C's QR code) and seals a message for the key that ID stands for; printed as {} QR frames (any {} rebuild it), {} are lost; C photographs the other {}, rebuilds, opens and reads it",
        ex.frames,
        ex.needed,
        ex.frames - kept.len(),
        kept.len()
    ));
    Ok(
        json!({"frames": ex.frames, "needed": ex.needed, "photographed": kept.len(),
              "delivered": ir.delivered, "read": got}),
    )
}

/// Step 19: a person with only Telegram. B's daemon runs the Telegram bridge; the Bot API
/// is the stand-in on loopback (the demo runs offline). E links a chat, writes to C by
/// node ID; the message leaves on a stick, C reads it and answers by stick, and the bridge
/// pushes the answer to E's chat.
fn telegram_bridge(
    root: &Path,
    bob: &std::sync::Arc<Node>,
    carol: &Node,
    say: &dyn Fn(String),
) -> Result<serde_json::Value> {
    use crate::telegram::{standin::StandIn, TelegramRole};
    const CHAT: i64 = 4242;
    let wait = std::time::Duration::from_secs(60);
    let token = "4242:demo";
    let api = StandIn::start(token).context("cannot start the stand-in Bot API")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let roles = crate::daemon::Roles {
        telegram: Some(TelegramRole {
            api_url: api.url.clone(),
            token: token.into(),
            proxy: None,
            allow: vec![CHAT],
            per_minute: 20,
            poll: std::time::Duration::from_secs(25),
            task_reward: 10,
            task_workers: 3,
        }),
        socket: false,
        ..Default::default()
    };
    let (tx, stop) = tokio::sync::oneshot::channel::<()>();
    let daemon = rt.spawn(crate::daemon::run(
        bob.clone(),
        roles,
        crate::daemon::Hub::default(),
        None,
        async {
            let _ = stop.await;
        },
    ));
    let has = |what: &'static str| {
        move |s: &crate::telegram::standin::Sent| {
            s.chat == CHAT && s.text.as_deref().is_some_and(|t| t.contains(what))
        }
    };
    let run = || -> Result<serde_json::Value> {
        api.say(CHAT, "/start");
        let welcome = api
            .wait_sent("the welcome", wait, has("Welcome"))
            .map_err(anyhow::Error::msg)?;
        let e_id = welcome
            .text
            .as_deref()
            .and_then(|t| t.lines().find(|l| l.starts_with("dtn://")))
            .context("no node ID in the welcome")?
            .to_string();
        let text = "Salam C, E here, writing from Telegram: is the clinic open on Saturday?";
        api.say(CHAT, &format!("/send {} {text}", carol.node_id()));
        api.wait_sent("the send", wait, has("Sent to"))
            .map_err(anyhow::Error::msg)?;
        let now = DtnTime::now();
        let s5 = root.join("stick-5");
        export(bob, &s5, now)?;
        import(carol, &s5, now)?;
        let read = carol.inbox()?.into_iter().any(|i| {
            i.record.source == e_id
                && matches!(&i.adu, Ok(Adu::Message(Message::Text(t))) if t == text)
        });
        if !read {
            bail!("C did not read E's message from Telegram");
        }
        let answer = "C to E: yes, open 9 to 1 on Saturday.";
        carol.send(
            crate::bundle::Eid::parse(&e_id)?,
            adu::encode_message(&Message::Text(answer.into())),
            7 * 24 * 3600 * 1000,
            DtnTime::now(),
            true,
        )?;
        let s6 = root.join("stick-6");
        export(carol, &s6, DtnTime::now())?;
        import(bob, &s6, DtnTime::now())?;
        api.wait_sent("the answer pushed to E's chat", wait, has(answer))
            .map_err(anyhow::Error::msg)?;
        say(format!(
            "19. E has only Telegram: E's chat links to B's bridge (`serve --telegram`; the Bot API here is a stand-in on loopback) and gets its own node ID, held by B; E types `/send <C's node ID> …`; B seals it for C, it leaves on stick 5, C reads it and answers by stick 6, and B's bridge pushes the answer to E's chat ({} messages the bot sent in all)",
            api.sent().len()
        ));
        Ok(
            json!({"chat_node": e_id, "read_by_c": read, "answer_pushed": true,
                  "bot_messages": api.sent().len()}),
        )
    };
    let r = run();
    let _ = tx.send(());
    let _ = rt.block_on(daemon);
    r
}

/// Steps 10-12: gateway B syncs the cell with marketplace M over QUIC (on loopback),
/// M answers A, the answer and M's delivery receipt come back through B, and A gets them
/// from B over the neighbourhood LAN (QUIC again).
fn gateway_round_trip(
    say: &impl Fn(String),
    alice: &Node,
    bob: &std::sync::Arc<Node>,
    market: &std::sync::Arc<Node>,
    workers: &[std::sync::Arc<Node>],
    tasks: &super::demo_market::Tasks,
    ask: &str,
) -> Result<(serde_json::Value, serde_json::Value)> {
    use crate::transport::quic::{self, QuicConfig};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cfg = QuicConfig::default();
    let (m_addr, m_stop) = serve_in(&rt, market.clone(), &cfg)?;
    let up = rt.block_on(quic::sync_with(bob, m_addr, Some(&market.node_id()), &cfg))?;
    let asked = market
        .inbox()?
        .iter()
        .any(|i| matches!(&i.adu, Ok(Adu::Message(Message::Text(t))) if t == ask));
    if !asked {
        bail!("the marketplace did not receive A's request");
    }
    say(format!(
        "10. gateway B syncs with M over QUIC ({m_addr}, keys checked both ways): sent {} bundles, reconciliation {} B in {} rounds, {} B on the wire",
        up.stats.bundles_out,
        up.stats.recon_bytes_out + up.stats.recon_bytes_in,
        up.stats.rounds,
        up.wire_tx + up.wire_rx
    ));
    let market_summary = super::demo_market::work(say, &rt, market, m_addr, workers, tasks, &cfg)?;
    let answer = "M to A: a supplier in the next town has insulin; order placed.";
    market.send(
        alice.node_id(),
        adu::encode_message(&Message::Text(answer.into())),
        7 * 24 * 3600 * 1000,
        DtnTime::now(),
        true,
    )?;
    let down = rt.block_on(quic::sync_with(bob, m_addr, Some(&market.node_id()), &cfg))?;
    say(format!(
        "11. M opens A's request and answers; B's next sync brings back {} bundles (the answer, M's receipts, the marketplace's payments and verdict, sealed and unreadable to B; the workers' public records)",
        down.new
    ));
    // B's node as its person runs it: one daemon (`serve`) owning B's home, serving the
    // LAN and syncing upstream, while the person uses the CLI on the same home.
    let b_daemon = BobDaemon::start(&rt, bob, m_addr, &market.node_id())?;
    let note = "B to A: your answer is in; I will bring the insulin on Friday.";
    let sent = b_daemon.cli(&[
        "--json",
        "send",
        "--to",
        &alice.node_id().to_string(),
        "--text",
        note,
    ])?;
    let b_inbox = b_daemon.cli(&["--json", "inbox"])?;
    say(format!(
        "12. B now runs as one daemon (`mycelium serve`: LAN listener on {}, gateway to M), and B's person works on the same home from the CLI through its control socket {}: `send` stores a note for A (bundle {}), `inbox` reads {} messages, while the daemon keeps serving",
        b_daemon.addr,
        b_daemon.socket.display(),
        sent["id"].as_str().map(|s| &s[..s.len().min(12)]).unwrap_or("?"),
        b_inbox.as_array().map_or(0, Vec::len)
    ));
    let lan = rt.block_on(quic::sync_with(
        alice,
        b_daemon.addr,
        Some(&bob.node_id()),
        &cfg,
    ))?;
    b_daemon.stop(&rt);
    let _ = m_stop.send(());
    let texts: Vec<String> = alice
        .inbox()?
        .iter()
        .filter_map(|i| match &i.adu {
            Ok(Adu::Message(Message::Text(t))) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let got = texts.iter().any(|t| t == answer);
    if !got || !texts.iter().any(|t| t == note) {
        bail!("M's answer or B's note did not reach A");
    }
    say(format!(
        "13. A syncs with B's daemon over the LAN: {} new bundles; A reads \"{answer}\" and B's note; M's receipts tell A its request and its task arrived, and A drops its copies ({} purged)",
        lan.new, lan.purged
    ));
    Ok((
        json!({
            "uplink_sent": up.stats.bundles_out,
            "uplink_reconciliation_bytes": up.stats.recon_bytes_out + up.stats.recon_bytes_in,
            "downlink_new": down.new,
            "a_new": lan.new,
            "a_purged": lan.purged,
            "answer_delivered": got,
        }),
        market_summary,
    ))
}

/// B's daemon in the demo: `serve` on B's home inside the demo's runtime.
struct BobDaemon {
    addr: std::net::SocketAddr,
    socket: std::path::PathBuf,
    home: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), crate::daemon::DaemonError>>>,
}

impl BobDaemon {
    fn start(
        rt: &tokio::runtime::Runtime,
        bob: &std::sync::Arc<Node>,
        upstream: std::net::SocketAddr,
        market: &crate::bundle::Eid,
    ) -> Result<BobDaemon> {
        use crate::daemon::{self, Event, GatewayRole, Hub, Roles};
        let roles = Roles {
            listen: Some(([127, 0, 0, 1], 0).into()),
            gateway: Some(GatewayRole {
                upstream: upstream.to_string(),
                expect: Some(market.clone()),
                interval: std::time::Duration::from_secs(3600),
                budget: None,
            }),
            ..Roles::default()
        };
        let hub = Hub::default();
        let mut rx = hub.subscribe();
        let (tx, stop) = tokio::sync::oneshot::channel::<()>();
        let done = rt.spawn(daemon::run(
            bob.clone(),
            roles,
            hub,
            Some(super::runner()),
            async {
                let _ = stop.await;
            },
        ));
        let started = rt.block_on(async {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        if let Event::Started { listen, socket, .. } = &*e {
                            return Ok((listen.clone(), socket.clone()));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Err(anyhow::anyhow!("B's daemon did not start")),
                }
            }
        });
        let (listen, socket) = match started {
            Ok(s) => s,
            Err(e) => {
                // Its own error says why.
                if let Ok(Err(d)) = rt.block_on(done) {
                    return Err(d.into());
                }
                return Err(e);
            }
        };
        Ok(BobDaemon {
            addr: listen.context("no listener")?.parse()?,
            socket: socket.context("no control socket")?.into(),
            home: bob.home.clone(),
            stop: Some(tx),
            done: Some(done),
        })
    }

    /// A CLI command on B's home, as B's person types it: through the control socket.
    fn cli(&self, args: &[&str]) -> Result<serde_json::Value> {
        let s = crate::daemon::client::connect(&self.home)
            .context("B's daemon does not answer on its socket")?;
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (mut out, mut err) = (String::new(), String::new());
        let code = crate::daemon::client::run(s, &args, &self.home, &mut |o, t| match o {
            crate::daemon::Output::Out => out.push_str(t),
            crate::daemon::Output::Err => err.push_str(t),
        })?;
        if code != 0 {
            bail!("`mycelium {}` on B failed: {err}", args.join(" "));
        }
        Ok(serde_json::from_str(&out)?)
    }

    fn stop(mut self, rt: &tokio::runtime::Runtime) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = rt.block_on(d);
        }
    }
}

/// Serve `node` on a loopback port inside `rt`; returns its address and a stopper.
fn serve_in(
    rt: &tokio::runtime::Runtime,
    node: std::sync::Arc<Node>,
    cfg: &crate::transport::quic::QuicConfig,
) -> Result<(std::net::SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    use crate::transport::quic;
    let _g = rt.enter();
    let ep = quic::server_endpoint(&node.identity, ([127, 0, 0, 1], 0).into(), None, cfg)?;
    let addr = ep.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(quic::serve(node, ep, cfg.clone(), |_, _| {}, async {
        let _ = rx.await;
    }));
    Ok((addr, tx))
}

/// Count files under `dir` and how many contain any of `needles` (names and contents).
fn scan_for(dir: &Path, needles: &[&[u8]]) -> Result<(usize, usize)> {
    let (mut files, mut hits) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            files += 1;
            let mut blob = std::fs::read(&p)?;
            blob.extend_from_slice(p.to_string_lossy().as_bytes());
            if needles
                .iter()
                .any(|n| blob.windows(n.len()).any(|w| w == *n))
            {
                hits += 1;
            }
        }
    }
    Ok((files, hits))
}

fn short_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}
