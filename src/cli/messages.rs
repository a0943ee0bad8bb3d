//! `send`, `list`, `show` and `inbox`, plus the shared JSON/text description of a bundle.

use super::out::outln;
use super::{print_json, safe, Cli};
use crate::adu::{self, Adu, FileMessage, Message};
use crate::bundle::{block_types, Bundle, Eid};
use crate::store::BundleRecord;
use crate::time::DtnTime;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Largest file `send --file` carries in one bundle.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("body").required(true).args(["text", "file"])))]
pub struct SendArgs {
    /// Destination endpoint, e.g. dtn://<node>/
    #[arg(long, value_name = "EID")]
    pub to: String,
    /// Message text
    #[arg(long)]
    pub text: Option<String>,
    /// Send a file instead of text
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Media type of --file
    #[arg(long, default_value = "application/octet-stream")]
    pub media_type: String,
    /// How long the bundle lives, e.g. 7d, 12h, 30m
    #[arg(long, default_value = "7d")]
    pub lifetime: String,
    /// Spray and wait: at most this many copies in the network (default: epidemic)
    #[arg(long)]
    pub copies: Option<u32>,
    /// Send in clear (signed, readable by every carrier) instead of sealed for the
    /// recipient; for debugging, or for a recipient whose sealing key is unknown
    #[arg(long)]
    pub no_seal: bool,
}

pub fn send(cli: &Cli, a: &SendArgs) -> Result<()> {
    let to = Eid::parse(&a.to).context("--to")?;
    let lifetime = humantime::parse_duration(&a.lifetime).with_context(|| {
        format!(
            "--lifetime {:?}: use a duration like 7d, 12h or 30m",
            a.lifetime
        )
    })?;
    let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    if lifetime_ms == 0 {
        bail!("--lifetime must be longer than 0");
    }
    let msg = match (&a.text, &a.file) {
        (Some(t), _) => Message::Text(t.clone()),
        (None, Some(f)) => {
            let len = std::fs::metadata(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .len();
            if len > MAX_FILE {
                bail!(
                    "{} is {len} bytes; one message carries at most {MAX_FILE} bytes",
                    f.display()
                );
            }
            let data = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            Message::File(FileMessage {
                name,
                media_type: a.media_type.clone(),
                data,
            })
        }
        (None, None) => bail!("give --text or --file"),
    };
    let node = super::open(cli)?;
    if a.copies == Some(0) {
        bail!("--copies must be at least 1");
    }
    if a.copies.is_some() && !a.no_seal {
        bail!("--copies (spray and wait) needs a destination relays can see: add --no-seal");
    }
    let (vb, outer) = node.send(
        to,
        adu::encode_message(&msg),
        lifetime_ms,
        DtnTime::now(),
        !a.no_seal,
    )?;
    let id = vb.id();
    // What travels: the sealed outer bundle, or the signed one itself.
    let travelling = outer.as_ref().unwrap_or(&vb);
    if let Some(c) = a.copies {
        node.store.set_copies(&travelling.id().key(), c)?;
    }
    if cli.json {
        print_json(&json!({
            "id": id.hex(),
            "source": id.source.to_string(),
            "destination": vb.bundle().primary.destination.to_string(),
            "size": vb.raw().len(),
            "sealed": outer.as_ref().map(|o| json!({"id": o.id().hex(), "size": o.raw().len()})),
        }));
    } else {
        outln!(
            "stored bundle {} ({} bytes) for {}{}",
            &id.hex()[..16],
            vb.raw().len(),
            vb.bundle().primary.destination,
            match &outer {
                Some(o) => format!(", sealed for travel ({} bytes)", o.raw().len()),
                None => " (in clear)".into(),
            }
        );
    }
    Ok(())
}

fn record_json(key: &[u8; 32], r: &BundleRecord) -> Value {
    json!({
        "id": hex::encode(key),
        "source": r.source,
        "destination": r.destination,
        "kind": r.kind,
        "size": r.size,
        "created": DtnTime(r.created_ms).to_rfc3339(),
        "seq": r.seq,
        "expires": r.expires_at.to_rfc3339(),
    })
}

fn short(eid: &str) -> String {
    if eid.len() > 24 {
        format!("{}…{}", &eid[..14], &eid[eid.len() - 6..])
    } else {
        eid.to_string()
    }
}

pub fn list(cli: &Cli) -> Result<()> {
    let node = super::open(cli)?;
    let purged = node.store.purge_expired(DtnTime::now())?;
    let recs = node.store.records()?;
    if cli.json {
        print_json(&Value::Array(
            recs.iter().map(|(k, r)| record_json(k, r)).collect(),
        ));
        return Ok(());
    }
    if purged > 0 {
        outln!("(purged {purged} expired bundles)");
    }
    outln!(
        "{:<16}  {:<8}  {:>8}  {:<24}  {:<24}  created",
        "id",
        "kind",
        "bytes",
        "source",
        "destination"
    );
    for (k, r) in &recs {
        outln!(
            "{:<16}  {:<8}  {:>8}  {:<24}  {:<24}  {}",
            &hex::encode(k)[..16],
            r.kind,
            r.size,
            short(&r.source),
            short(&r.destination),
            DtnTime(r.created_ms).to_rfc3339()
        );
    }
    outln!("{} bundles", recs.len());
    Ok(())
}

/// JSON description of an ADU.
pub fn adu_json(adu: &Result<Adu, String>) -> Value {
    match adu {
        Ok(Adu::Message(Message::Text(t))) => json!({"kind": "message", "text": t}),
        Ok(Adu::Message(Message::File(f))) => json!({
            "kind": "message",
            "file": {"name": f.name, "media_type": f.media_type, "size": f.data.len()},
        }),
        Ok(Adu::Node(r)) => json!({"kind": "node", "x25519": hex::encode(r.x25519)}),
        Ok(Adu::Receipt(r)) => json!({
            "kind": "receipt",
            "delivered": hex::encode(r.bundle),
            "at": DtnTime(r.at).to_rfc3339(),
        }),
        Ok(Adu::Receipts(r)) => json!({
            "kind": "receipts",
            "delivered": r.keys().map(hex::encode).collect::<Vec<_>>(),
            "at": DtnTime(r.at).to_rfc3339(),
        }),
        Ok(Adu::Market(m)) => super::market_cmds::adu_json(m),
        Ok(Adu::Unknown { version, kind }) => {
            json!({"kind": kind, "version": version, "understood": false})
        }
        Err(e) => json!({"kind": "opaque", "error": e}),
    }
}

/// Text for a person about an ADU, safe to print (see [`safe`]): a text message as a block
/// of lines, each after the first starting with `indent`; anything else as one line.
pub fn adu_text(adu: &Result<Adu, String>, indent: &str) -> String {
    match adu {
        Ok(Adu::Message(Message::Text(t))) => safe::block(t, indent),
        other => safe::line(&adu_line(other)).into_owned(),
    }
}

/// One line about an ADU other than a text message, raw (names, memos and reasons in it
/// come from outside).
fn adu_line(adu: &Result<Adu, String>) -> String {
    match adu {
        Ok(Adu::Message(Message::Text(t))) => t.clone(),
        Ok(Adu::Message(Message::File(f))) => {
            format!(
                "[file {} ({}, {} bytes)]",
                f.name,
                f.media_type,
                f.data.len()
            )
        }
        Ok(Adu::Node(r)) => format!("[node record: sealing key {}]", hex::encode(r.x25519)),
        Ok(Adu::Receipt(r)) => format!(
            "[receipt: your bundle {} was delivered {}]",
            &hex::encode(r.bundle)[..12],
            DtnTime(r.at).to_rfc3339()
        ),
        Ok(Adu::Receipts(r)) => {
            let keys: Vec<String> = r.keys().take(3).map(|k| hex::encode(&k[..6])).collect();
            let more = match r.len() > 3 {
                true => format!(" and {} more", r.len() - 3),
                false => String::new(),
            };
            format!(
                "[receipts: {} of your bundles were delivered by {} ({}{more})]",
                r.len(),
                DtnTime(r.at).to_rfc3339(),
                keys.join(", ")
            )
        }
        Ok(Adu::Market(m)) => super::market_cmds::adu_text(m),
        Ok(Adu::Unknown { version, kind }) => format!("[{kind} v{version}: not understood here]"),
        Err(e) => format!("[opaque payload: {e}]"),
    }
}

/// JSON description of a decoded bundle.
pub fn bundle_json(b: &Bundle) -> Value {
    let p = &b.primary;
    let id = b.id();
    let blocks: Vec<Value> = b
        .blocks
        .iter()
        .map(|bl| {
            let name = match bl.block_type {
                block_types::PAYLOAD => "payload",
                block_types::PREVIOUS_NODE => "previous node",
                block_types::BUNDLE_AGE => "bundle age",
                block_types::HOP_COUNT => "hop count",
                block_types::BIB => "block integrity (BIB)",
                block_types::BCB => "block confidentiality (BCB)",
                _ => "unknown",
            };
            json!({"type": bl.block_type, "name": name, "number": bl.number,
                   "flags": bl.flags, "crc_type": bl.crc.code(), "data_len": bl.data.len()})
        })
        .collect();
    json!({
        "id": id.hex(),
        "source": p.source.to_string(),
        "destination": p.destination.to_string(),
        "report_to": p.report_to.to_string(),
        "created": p.created.time.to_rfc3339(),
        "created_ms": p.created.time.0,
        "seq": p.created.seq,
        "lifetime_ms": p.lifetime_ms,
        "flags": p.flags,
        "hop_count": b.hop_count().map(|h| json!({"limit": h.limit, "count": h.count})),
        "age_ms": b.age_ms(),
        "blocks": blocks,
        "payload": adu_json(&adu::decode(b.payload()).map_err(|e| e.to_string())),
    })
}

pub fn show(cli: &Cli, id: &str) -> Result<()> {
    let node = super::open(cli)?;
    let key = node.store.resolve(id)?;
    let vb = node
        .store
        .get(&key)?
        .with_context(|| format!("bundle {id} vanished while reading"))?;
    let rec = node.store.record(&key)?;
    let mut v = bundle_json(vb.bundle());
    v["signature"] = json!("valid");
    v["size"] = json!(vb.raw().len());
    if let Some(r) = rec {
        v["received"] = json!(r.received_at.to_rfc3339());
        v["expires"] = json!(r.expires_at.to_rfc3339());
    }
    if cli.json {
        print_json(&v);
    } else {
        let b = vb.bundle();
        outln!("bundle      {}", vb.id().hex());
        outln!("source      {}", b.primary.source);
        outln!("destination {}", b.primary.destination);
        outln!(
            "created     {} (seq {})",
            b.primary.created.time.to_rfc3339(),
            b.primary.created.seq
        );
        outln!("expires     {}", v["expires"].as_str().unwrap_or("?"));
        outln!(
            "size        {} bytes, {} blocks",
            vb.raw().len(),
            b.blocks.len() + 1
        );
        outln!("signature   valid (Ed25519 by the source)");
        outln!(
            "payload     {}",
            adu_text(
                &adu::decode(b.payload()).map_err(|e| e.to_string()),
                "            "
            )
        );
    }
    Ok(())
}

pub fn inbox(cli: &Cli) -> Result<()> {
    let node = super::open(cli)?;
    node.store.purge_expired(DtnTime::now())?;
    let items = node.inbox()?;
    if cli.json {
        print_json(&Value::Array(
            items
                .iter()
                .map(|i| {
                    let mut v = record_json(&i.key, &i.record);
                    v["message"] = adu_json(&i.adu);
                    v
                })
                .collect(),
        ));
        return Ok(());
    }
    if items.is_empty() {
        outln!("inbox is empty");
    }
    for i in &items {
        outln!(
            "{}  from {}  {}",
            &hex::encode(i.key)[..16],
            short(&i.record.source),
            DtnTime(i.record.created_ms).to_rfc3339()
        );
        outln!("    {}", adu_text(&i.adu, "    "));
    }
    Ok(())
}
