//! `demo`: the end-to-end flow that exists so far, on temporary homes, narrated.
//!
//! Today: node A writes a signed message bundle for node B to a file (the "stick"),
//! a copy with one flipped bit is refused by B, B loads the good file, a second load is a
//! duplicate, and B reads the message from its inbox.

use super::bundle_cmds::{read_bundle_file, write_atomic};
use super::messages::adu_text;
use super::{print_json, Cli};
use crate::adu::{self, Message};
use crate::node::Node;
use crate::store::PutOutcome;
use crate::time::DtnTime;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's homes and stick in this folder instead of a temporary one
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
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
            println!("{s}");
        }
    };
    let now = DtnTime::now();

    say("== Mycelium demo: a message from A to B on a stick ==".into());
    let alice = Node::init(&root.join("node-a"))?;
    let bob = Node::init(&root.join("node-b"))?;
    say(format!("1. node A is {}", alice.node_id()));
    say(format!("   node B is {}", bob.node_id()));

    let text = "Salam from A: the clinic needs insulin, 20 units, by Friday.";
    let vb = alice.originate(
        bob.node_id(),
        adu::encode_message(&Message::Text(text.into())),
        7 * 24 * 3600 * 1000,
        now,
    )?;
    say(format!(
        "2. A signs a BPv7 bundle for B: {} bytes, id {}",
        vb.raw().len(),
        &vb.id().hex()[..16]
    ));

    let stick = root.join("stick");
    std::fs::create_dir_all(&stick)?;
    let file = stick.join("message.bundle");
    write_atomic(&file, vb.raw())?;
    say(format!("3. A writes it to the stick: {}", file.display()));

    let mut tampered = vb.raw().to_vec();
    let n = tampered.len();
    tampered[n - 10] ^= 0x01;
    let tampered_file = stick.join("tampered.bundle");
    write_atomic(&tampered_file, &tampered)?;
    let refusal = match bob.receive(&read_bundle_file(&tampered_file)?, now) {
        Ok(_) => bail!("B accepted a bundle with a flipped bit"),
        Err(e) => e.to_string(),
    };
    say(format!(
        "4. someone flips one bit of a copy on the stick; B refuses it: {refusal}"
    ));

    let (id, first) = bob.receive(&read_bundle_file(&file)?, now)?;
    let (_, second) = bob.receive(&read_bundle_file(&file)?, now)?;
    if first != PutOutcome::New || second != PutOutcome::Duplicate {
        bail!("unexpected store outcomes {first:?}, {second:?}");
    }
    say(format!(
        "5. B loads the stick: signature valid, stored durably (bundle {}); loading it again is a duplicate",
        &id.hex()[..16]
    ));

    let inbox = bob.inbox()?;
    let Some(item) = inbox.first() else {
        bail!("B's inbox is empty")
    };
    let got = adu_text(&item.adu);
    if got != text {
        bail!("B read {got:?}, expected {text:?}");
    }
    say(format!("6. B's inbox: from {}", item.record.source));
    say(format!("   \"{got}\""));
    say("demo complete: signed, carried, tamper refused, delivered once.".into());
    if cli.json {
        print_json(&json!({
            "node_a": alice.node_id().to_string(),
            "node_b": bob.node_id().to_string(),
            "bundle": id.hex(),
            "bundle_size": vb.raw().len(),
            "tampered_refused": refusal,
            "delivered": got,
            "ok": true,
        }));
    }
    Ok(())
}
