//! `wallet` and `wallet send`: balance, payments and their state.

use super::market_cmds::short;
use super::net::parse_node;
use super::out::outln;
use super::safe::say;
use super::{print_json, Cli};
use crate::adu::market::{self as m};
use crate::time::DtnTime;
use crate::wallet::{self, Direction, Status};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args, Debug)]
pub struct WalletArgs {
    #[command(subcommand)]
    pub cmd: Option<WalletCommand>,
}

#[derive(Subcommand, Debug)]
pub enum WalletCommand {
    /// Pay a node: a signed payment to it and to the marketplace's ledger
    Send {
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value = "")]
        memo: String,
        #[arg(long)]
        no_seal: bool,
    },
}

pub(super) fn status_text(s: &Status) -> String {
    match s {
        Status::Pending => "pending".into(),
        Status::Confirmed => "confirmed".into(),
        Status::Rejected(r) => format!("rejected: {r}"),
    }
}

pub fn wallet_cmd(cli: &Cli, a: &WalletArgs) -> Result<()> {
    let node = super::open(cli)?;
    if let Some(WalletCommand::Send {
        to,
        amount,
        memo,
        no_seal,
    }) = &a.cmd
    {
        let to = parse_node(to)?;
        let id = wallet::send(&node, &to, *amount, memo, DtnTime::now(), !*no_seal)?;
        if cli.json {
            print_json(
                &json!({"payment": hex::encode(id), "to": to.to_string(), "amount": amount, "status": "pending"}),
            );
        } else {
            outln!(
                "payment {} of {amount} credits to {to}: pending until the marketplace settles it",
                short(&id)
            );
        }
        return Ok(());
    }
    let w = wallet::view(&node)?;
    if cli.json {
        print_json(&json!({
            "node": node.node_id().to_string(),
            "market": node.market()?.map(|e| e.to_string()),
            "balance": w.balance.to_string().parse::<i64>().ok(),
            "spendable": w.spendable.to_string().parse::<i64>().ok(),
            "pending_in": w.pending_in,
            "pending_out": w.pending_out,
            "entries": w.entries.iter().map(|e| json!({
                "id": hex::encode(e.id),
                "direction": if e.direction == Direction::In { "in" } else { "out" },
                "what": if e.what == m::Subject::Escrow { "escrow" } else { "payment" },
                "counterparty": e.counterparty,
                "amount": e.amount,
                "status": status_text(&e.status),
                "memo": e.memo,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    outln!(
        "balance {} credits, spendable {} ({} pending in, {} pending out)",
        w.balance,
        w.spendable,
        w.pending_in,
        w.pending_out
    );
    for e in &w.entries {
        say!(
            "  {} {:>3} {:>8}  {:<9} {}  {}",
            short(&e.id),
            if e.direction == Direction::In {
                "in"
            } else {
                "out"
            },
            e.amount,
            status_text(&e.status),
            e.counterparty,
            e.memo
        );
    }
    Ok(())
}

// -------------------------------------------------------------------------- worker
