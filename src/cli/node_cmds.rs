//! `init` and `id`.

use super::{home, print_json, Cli};
use crate::node::Node;
use anyhow::{Context, Result};
use serde_json::json;

pub fn init(cli: &Cli) -> Result<()> {
    let h = home(cli);
    let node =
        Node::init(&h).with_context(|| format!("cannot initialise a node in {}", h.display()))?;
    if cli.json {
        print_json(&json!({
            "node_id": node.node_id().to_string(),
            "home": h.display().to_string(),
        }));
    } else {
        println!("created node {}", node.node_id());
        println!("home: {}", h.display());
    }
    Ok(())
}

pub fn id(cli: &Cli) -> Result<()> {
    let h = home(cli);
    let node = Node::open(&h)?;
    if cli.json {
        print_json(&json!({
            "node_id": node.node_id().to_string(),
            "public_key": hex::encode(node.identity.public_key()),
            "home": h.display().to_string(),
        }));
    } else {
        println!("{}", node.node_id());
    }
    Ok(())
}
