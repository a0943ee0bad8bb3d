//! `telegram invite|allow|chats`: who may link a chat to the bridge, and who has.

use super::out::outln;
use super::{print_json, Cli};
use crate::telegram::chats;
use crate::time::DtnTime;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum TelegramCommand {
    /// A one-time invite code: a chat that sends `/start CODE` to the bot links
    Invite {
        /// How long the code stays valid, e.g. 7d, 12h
        #[arg(long, default_value = "7d")]
        valid: String,
    },
    /// Let a chat link without an invite code (its numeric chat ID)
    Allow {
        #[arg(allow_hyphen_values = true)]
        chat: i64,
    },
    /// Chats linked to this bridge and their node IDs
    Chats,
}

pub fn run(cli: &Cli, c: &TelegramCommand) -> Result<()> {
    let node = super::open(cli)?;
    match c {
        TelegramCommand::Invite { valid } => {
            let d = humantime::parse_duration(valid)
                .with_context(|| format!("--valid {valid:?}: use a duration like 7d or 12h"))?;
            let now = DtnTime::now();
            let expires = DtnTime(
                now.0
                    .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            );
            let code = chats::new_invite_code();
            chats::add_invite(&node, &code, expires)?;
            if cli.json {
                print_json(&json!({"code": code, "expires": expires.to_rfc3339()}));
            } else {
                outln!("{code}");
                super::out::errln!(
                    "one chat may link with it until {}: it sends /start {code} to the bot",
                    expires.to_rfc3339()
                );
            }
        }
        TelegramCommand::Allow { chat } => {
            chats::allow(&node, *chat)?;
            if cli.json {
                print_json(&json!({"allowed": chat}));
            } else {
                outln!("chat {chat} may link with /start");
            }
        }
        TelegramCommand::Chats => {
            let linked = chats::linked(&node)?;
            if cli.json {
                print_json(&serde_json::Value::Array(
                    linked
                        .iter()
                        .map(|(c, n)| json!({"chat": c, "node": n}))
                        .collect(),
                ));
            } else if linked.is_empty() {
                outln!("no chat is linked");
            } else {
                for (c, n) in linked {
                    outln!("{c}\t{n}");
                }
            }
        }
    }
    Ok(())
}
