//! `init`, `id` and `contact`.

use super::out::outln;
use super::{home, print_json, Cli};
use crate::node::Node;
use crate::time::DtnTime;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ContactCommand {
    /// Learn a node's sealing key out of band (as `mycelium id` prints it there)
    Add { node_id: String, x25519: String },
    /// Nodes this node can seal bundles for
    List,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Sign as the node whose home this is (its identity.key): another front node of a
    /// replicated marketplace. Its own store; the same node ID.
    #[arg(long, value_name = "HOME")]
    pub same_identity_as: Option<PathBuf>,
}

pub fn init(cli: &Cli, a: &InitArgs) -> Result<()> {
    let h = home(cli);
    let node = match &a.same_identity_as {
        None => Node::init(&h),
        Some(other) => {
            let key = other.join(crate::node::KEY_FILE);
            let id = crate::identity::Identity::load(&key)
                .with_context(|| format!("cannot read the identity in {}", key.display()))?;
            Node::init_as(&h, id)
        }
    }
    .with_context(|| format!("cannot initialise a node in {}", h.display()))?;
    // The signed node record: how others learn the key to seal bundles for this node.
    node.publish_record(DtnTime::now())?;
    if cli.json {
        print_json(&json!({
            "node_id": node.node_id().to_string(),
            "home": h.display().to_string(),
        }));
    } else {
        outln!("created node {}", node.node_id());
        outln!("home: {}", h.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// Also show the ID as a QR code on the terminal, and write it as a PNG
    #[arg(long)]
    pub qr: bool,
    /// Where --qr writes the PNG (default: node-id.png in the home)
    #[arg(long, value_name = "FILE", requires = "qr")]
    pub png: Option<PathBuf>,
}

pub fn id(cli: &Cli, a: &IdArgs) -> Result<()> {
    let node = super::open(cli)?;
    let h = node.home.clone();
    let id = node.node_id().to_string();
    let png = a.png.clone().unwrap_or_else(|| h.join("node-id.png"));
    let drawn = match a.qr {
        true => Some(super::qr_cmds::id_qr(&id, &png)?),
        false => None,
    };
    if cli.json {
        print_json(&json!({
            "node_id": id,
            "public_key": hex::encode(node.identity.public_key()),
            "x25519": hex::encode(node.identity.seal_key().public()),
            "home": h.display().to_string(),
            "qr_png": drawn.as_ref().map(|_| png.display().to_string()),
        }));
    } else {
        if let Some(t) = &drawn {
            outln!("{t}");
        }
        outln!("{id}");
        if drawn.is_some() {
            outln!("QR code written to {}", png.display());
        }
    }
    Ok(())
}

pub fn contact(cli: &Cli, c: &ContactCommand) -> Result<()> {
    let node = super::open(cli)?;
    match c {
        ContactCommand::Add { node_id, x25519 } => {
            let e = crate::bundle::Eid::parse(node_id).map_err(|e| anyhow!("{e}"))?;
            crate::identity::key_for_node_id(&e).map_err(|e| anyhow!("{e}"))?;
            let mut k = [0u8; 32];
            if hex::decode_to_slice(x25519.trim(), &mut k).is_err() {
                bail!("{x25519:?} is not an X25519 key (64 hex digits)");
            }
            node.store.set_contact(&e.node_id().to_string(), &k)?;
            if cli.json {
                print_json(&json!({"added": e.node_id().to_string()}));
            } else {
                outln!("can now seal bundles for {}", e.node_id());
            }
        }
        ContactCommand::List => {
            let list = node.store.contacts()?;
            if cli.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(n, k)| json!({"node": n, "x25519": hex::encode(k)}))
                    .collect();
                print_json(&json!(v));
            } else {
                for (n, k) in &list {
                    outln!("{n}  {}", hex::encode(k));
                }
            }
        }
    }
    Ok(())
}
