//! `guild create`, `guild join`, `guild list`: groups of workers sharing tasks and pay.

use super::market_cmds::parse_hash;
use super::net::parse_node;
use super::out::{errln, outln};
use super::safe::say;
use super::{print_json, Cli};
use crate::adu::market::{self as m};
use crate::time::DtnTime;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum GuildCommand {
    /// Found a guild: sign its charter (members and shares) for the marketplace, with a
    /// copy to each member; a member gets a share only after it joins
    Create {
        #[arg(long)]
        name: String,
        /// A member as NODE or NODE=SHARE (default share 1); this node is always one
        #[arg(long = "member")]
        members: Vec<String>,
        #[arg(long)]
        no_seal: bool,
    },
    /// Consent to a guild's charter (its members and shares, shown): only then does the
    /// marketplace give this node the guild's tasks or split pay to or away from it
    Join {
        /// The guild ID (guild:...)
        guild: String,
        /// The charter's hash, when its founder signed more than one
        #[arg(long)]
        charter: Option<String>,
        #[arg(long)]
        no_seal: bool,
    },
    /// Charters in the store that list this node, and whether it joined them
    List,
}

fn charter_json(c: &crate::guild::Charter) -> Value {
    json!({"guild": c.id, "name": c.guild.name, "founder": c.founder,
        "charter": hex::encode(c.hash), "joined": c.joined,
        "members": c.guild.members.iter().map(|x| json!({"node": x.node, "share": x.share}))
            .collect::<Vec<_>>()})
}

fn print_charter(c: &crate::guild::Charter) {
    let total: u64 = c.guild.members.iter().map(|x| u64::from(x.share)).sum();
    say!(
        "{} {:?} founded by {}{}",
        c.id,
        c.guild.name,
        c.founder,
        if c.joined { " (joined)" } else { "" }
    );
    for x in &c.guild.members {
        say!("  {} share {} of {total}", x.node, x.share);
    }
}

pub fn guild(cli: &Cli, c: &GuildCommand) -> Result<()> {
    let node = super::open(cli)?;
    match c {
        GuildCommand::Create {
            name,
            members,
            no_seal,
        } => {
            let mut list = Vec::new();
            for mem in members {
                let (n, share) = match mem.rsplit_once('=') {
                    Some((n, s)) => (
                        n,
                        s.parse::<u32>()
                            .with_context(|| format!("share in {mem:?}"))?,
                    ),
                    None => (mem.as_str(), 1),
                };
                list.push(m::Member {
                    node: parse_node(n)?.to_string(),
                    share,
                });
            }
            let n = list.len();
            let id = crate::guild::create(&node, name, list, DtnTime::now(), !*no_seal)?;
            if cli.json {
                print_json(&json!({"guild": id, "members": n.max(1)}));
            } else {
                outln!("{id}");
                errln!("each member gets a share only after it runs `mycelium guild join {id}`");
            }
        }
        GuildCommand::Join {
            guild,
            charter,
            no_seal,
        } => {
            let hash = charter.as_deref().map(parse_hash).transpose()?;
            let c = crate::guild::join(&node, guild, hash, DtnTime::now(), !*no_seal)?;
            if cli.json {
                print_json(&charter_json(&c));
            } else {
                print_charter(&c);
                outln!("joined: the consent goes to the marketplace with the next contact");
            }
        }
        GuildCommand::List => {
            let all = crate::guild::charters(&node)?;
            if cli.json {
                print_json(&json!(all.iter().map(charter_json).collect::<Vec<_>>()));
            } else if all.is_empty() {
                outln!("no charters list this node");
            } else {
                for c in &all {
                    print_charter(c);
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ show and inbox
