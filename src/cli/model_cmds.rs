//! `model add` and `model list`: the models this node holds, by hash, and their travel as
//! bundles.

use super::out::outln;
use super::safe::{esay, say};
use super::{print_json, Cli};
use crate::time::DtnTime;
use crate::worker::models;
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Hold a model (a .gguf file, or a folder with config.json, model.safetensors and
    /// tokenizer.json) and store it as bundles that travel; prints its hash
    Add {
        path: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Hold it without storing bundles for travel
        #[arg(long)]
        no_publish: bool,
    },
    /// Models held, and models still arriving chunk by chunk
    List,
}

pub fn run(cli: &Cli, c: &ModelCommand) -> Result<()> {
    let node = super::open(cli)?;
    match c {
        ModelCommand::Add {
            path,
            name,
            no_publish,
        } => {
            let held = models::add(&node.home, path, name.as_deref())?;
            let bundles = if *no_publish {
                0
            } else {
                models::publish(&node, &held, DtnTime::now())?
            };
            if cli.json {
                print_json(&json!({"hash": hex::encode(held.hash), "name": held.name,
                    "format": format!("{:?}", held.format).to_lowercase(), "bundles": bundles}));
            } else {
                outln!("{}", hex::encode(held.hash));
                esay!(
                    "{} ({:?}, {} files, {} bytes) held in {}; {bundles} bundles stored for travel",
                    held.name,
                    held.format,
                    held.files.len(),
                    held.files.iter().map(|f| f.1).sum::<u64>(),
                    held.dir.display()
                );
            }
        }
        ModelCommand::List => {
            // One bad manifest is shown as failed; it never keeps the others from being
            // put together, nor makes this command fail.
            let a = models::assemble(&node)?;
            let held = models::list(&node.home)?;
            let what = |f: &models::Failed| match f.hash {
                Some(h) => hex::encode(h),
                None => format!("manifest {}", hex::encode(f.manifest)),
            };
            if cli.json {
                print_json(&json!({
                    "held": held.iter().map(|h| json!({"hash": hex::encode(h.hash), "name": h.name,
                        "format": format!("{:?}", h.format).to_lowercase(),
                        "bytes": h.files.iter().map(|f| f.1).sum::<u64>()})).collect::<Vec<_>>(),
                    "arriving": a.waiting.iter().map(|w| json!({"hash": hex::encode(w.hash), "name": w.name,
                        "signer": w.signer, "chunks": w.have, "of": w.need})).collect::<Vec<_>>(),
                    "failed": a.failed.iter().map(|f| json!({"hash": f.hash.map(hex::encode),
                        "manifest": hex::encode(f.manifest), "name": f.name, "signer": f.signer,
                        "reason": f.reason})).collect::<Vec<_>>(),
                }));
                return Ok(());
            }
            if held.is_empty() && a.waiting.is_empty() && a.failed.is_empty() {
                outln!("no models (mycelium model add PATH)");
            }
            for h in &held {
                say!(
                    "{}  {:<5}  {:>11} bytes  {}",
                    hex::encode(h.hash),
                    format!("{:?}", h.format).to_lowercase(),
                    h.files.iter().map(|f| f.1).sum::<u64>(),
                    h.name
                );
            }
            for w in &a.waiting {
                say!(
                    "{}  arriving: {} of {} chunks  {}  (signed by {})",
                    hex::encode(w.hash),
                    w.have,
                    w.need,
                    w.name,
                    w.signer
                );
            }
            for f in &a.failed {
                say!(
                    "{}  failed: {}  {}  (signed by {})",
                    what(f),
                    f.reason,
                    f.name,
                    f.signer
                );
            }
        }
    }
    Ok(())
}
