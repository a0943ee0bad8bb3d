//! The marketplace commands: `task submit|list|result`, `market use|serve|process|grant|
//! reputation`, `wallet [send]`, `worker [offer]`, `guild create|join|list`, and how marketplace
//! payloads are shown by `show` and `inbox`.

use super::net::{parse_node, ServeArgs};
use super::out::outln;
use super::safe::say;
use super::{print_json, Cli};
use crate::adu::market::{self as m};
use crate::adu::MarketAdu;
use crate::market::{service, Event};
use crate::time::DtnTime;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

pub(super) fn short(k: &[u8]) -> String {
    hex::encode(k).chars().take(12).collect()
}

pub(super) fn parse_hash(s: &str) -> Result<[u8; 32]> {
    let b = hex::decode(s).with_context(|| format!("{s:?} is not hex"))?;
    b.as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("{s:?}: a model hash is 64 hex digits (blake3)"))
}

pub(super) fn duration_ms(s: &str, what: &str) -> Result<u64> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{what} {s:?}: use a duration like 1d, 2h or 30s"))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------- task

#[derive(Subcommand, Debug)]
pub enum MarketCommand {
    /// Settle with, submit tasks to and work for this marketplace node
    Use { node: String },
    /// Run this node as the marketplace: `serve`, with the marketplace's rules after
    /// every sync and every minute
    Serve {
        #[command(flatten)]
        serve: Box<ServeArgs>,
        #[command(flatten)]
        ledger: LedgerArg,
    },
    /// Apply the marketplace's rules once to what the store holds, and print what happened
    Process {
        #[arg(long)]
        no_seal: bool,
        #[command(flatten)]
        ledger: LedgerArg,
    },
    /// Issue new credits to a node (the marketplace is the issuer)
    Grant {
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
        #[arg(long)]
        no_seal: bool,
        #[command(flatten)]
        ledger: LedgerArg,
    },
    /// Workers' records: from the ledger on the marketplace, else as it published them
    Reputation {
        #[command(flatten)]
        ledger: LedgerArg,
    },
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LedgerArg {
    /// Where the ledger is: etcd://HOST:PORT[,HOST:PORT...] (an etcd cluster the
    /// marketplace's front nodes share) [default: `ledger` under [market] in
    /// <home>/config.toml, else this node's store]
    #[arg(long, value_name = "etcd://HOST:PORT,...")]
    pub ledger: Option<String>,
}

impl LedgerArg {
    /// The flag, else the config file's `[market] ledger`.
    fn address(&self, cli: &Cli) -> Result<Option<String>> {
        if self.ledger.is_some() {
            return Ok(self.ledger.clone());
        }
        let c = crate::daemon::config::load(&super::home(cli))?;
        Ok(c.market.and_then(|m| m.ledger))
    }

    fn open(&self, cli: &Cli, node: &crate::node::Node) -> Result<service::Ledger> {
        let addr = self.address(cli)?;
        service::Ledger::open(node, addr.as_deref())
            .with_context(|| format!("cannot reach the ledger at {}", addr.unwrap_or_default()))
    }
}

fn print_events(cli: &Cli, processed: usize, sent: usize, events: &[Event]) {
    if cli.json {
        print_json(&json!({
            "processed": processed,
            "sent": sent,
            "events": events.iter().map(crate::market::describe).collect::<Vec<_>>(),
        }));
    } else {
        for e in events {
            say!("{}", crate::market::describe(e));
        }
        outln!("{processed} bundles processed, {sent} sent");
    }
}

pub fn market(cli: &Cli, c: &MarketCommand) -> Result<()> {
    match c {
        MarketCommand::Use { node: n } => {
            let node = super::open(cli)?;
            let e = parse_node(n)?;
            node.set_market(&e)?;
            if cli.json {
                print_json(&json!({"market": e.to_string()}));
            } else {
                outln!("this node now settles with marketplace {e}");
            }
            Ok(())
        }
        MarketCommand::Serve { serve, ledger } => {
            let node = super::open(cli)?;
            node.set_market(&node.node_id())?;
            drop(node);
            let mut roles = super::net::serve_roles(cli, serve)?;
            roles.market = Some(crate::daemon::MarketRole {
                seal: !serve.no_seal,
                ledger: ledger.address(cli)?,
            });
            super::net::run_daemon(cli, roles, super::net::serve_printer(cli.json))
        }
        MarketCommand::Process { no_seal, ledger } => {
            let node = super::open(cli)?;
            node.set_market(&node.node_id())?;
            let ledger = ledger.open(cli, &node)?;
            let r = service::process_on(
                &node,
                &ledger,
                DtnTime::now(),
                !*no_seal,
                &mut crate::worker::judge(&node.home),
            )?;
            print_events(cli, r.processed, r.sent, &r.events);
            Ok(())
        }
        MarketCommand::Grant {
            to,
            amount,
            no_seal,
            ledger,
        } => {
            let node = super::open(cli)?;
            node.set_market(&node.node_id())?;
            let to = parse_node(to)?.to_string();
            let ledger = ledger.open(cli, &node)?;
            let (id, events) =
                service::with_engine_on(&node, &ledger, DtnTime::now(), !*no_seal, |e| {
                    e.grant(&to, *amount, "grant")
                })?;
            if cli.json {
                print_json(&json!({"payment": hex::encode(id), "to": to, "amount": amount}));
            } else {
                for e in &events {
                    say!("{}", crate::market::describe(e));
                }
            }
            Ok(())
        }
        MarketCommand::Reputation { ledger } => reputation(cli, ledger),
    }
}

fn reputation(cli: &Cli, ledger: &LedgerArg) -> Result<()> {
    let node = super::open(cli)?;
    let me = node.node_id();
    let mut rows: Vec<m::Reputation> = Vec::new();
    if node.market()? == Some(me.clone()) {
        let ledger = ledger.open(cli, &node)?;
        rows = service::workers_on(&node, &ledger)?
            .into_iter()
            .map(|(_, w)| w.record)
            .collect();
    } else if let Some(mk) = node.market()? {
        // The latest record the marketplace published for each worker.
        let mut latest: std::collections::BTreeMap<String, (u64, u64, m::Reputation)> =
            Default::default();
        for key in node.store.of_kind(m::KIND_REPUTATION)? {
            let Some(vb) = node.store.get(&key)? else {
                continue;
            };
            let p = &vb.bundle().primary;
            if p.source.node_id() != mk {
                continue;
            }
            if let Ok(r) = m::decode_reputation(vb.bundle().payload()) {
                let at = (p.created.time.0, p.created.seq);
                if latest.get(&r.worker).is_none_or(|l| (l.0, l.1) < at) {
                    latest.insert(r.worker.clone(), (at.0, at.1, r));
                }
            }
        }
        rows = latest.into_values().map(|l| l.2).collect();
    }
    if cli.json {
        print_json(&Value::Array(
            rows.iter()
                .map(|r| {
                    json!({"worker": r.worker, "accepted": r.accepted, "disagreed": r.disagreed,
                           "late": r.late, "failed": r.failed, "eligible": r.eligible})
                })
                .collect(),
        ));
        return Ok(());
    }
    if rows.is_empty() {
        outln!("no worker records (set the marketplace with `mycelium market use`)");
    }
    outln!(
        "{:<62}  {:>8}  {:>9}  {:>4}  {:>6}  eligible",
        "worker",
        "accepted",
        "disagreed",
        "late",
        "failed"
    );
    for r in &rows {
        say!(
            "{:<62}  {:>8}  {:>9}  {:>4}  {:>6}  {}",
            r.worker,
            r.accepted,
            r.disagreed,
            r.late,
            r.failed,
            if r.eligible { "yes" } else { "no" }
        );
    }
    Ok(())
}

// -------------------------------------------------------------------------- wallet

pub fn adu_json(a: &MarketAdu) -> Value {
    match a {
        MarketAdu::Task(t) => {
            json!({"kind": "task", "job": t.job.as_str(), "model": hex::encode(t.model),
            "input_bytes": t.input.len(), "reward": t.reward, "redundancy": t.redundancy,
            "deadline": DtnTime(t.deadline).to_rfc3339()})
        }
        MarketAdu::Result(r) => {
            json!({"kind": "result", "task": hex::encode(r.task), "worker": r.worker,
            "output_hash": hex::encode(r.output_hash), "failed": r.failed})
        }
        MarketAdu::Payment(p) => json!({"kind": "payment", "payer": p.payer, "payee": p.payee,
            "amount": p.amount, "memo": p.memo}),
        MarketAdu::Settlement(s) => json!({"kind": "settlement", "subject": hex::encode(s.subject),
            "accepted": s.accepted, "amount": s.amount, "reason": s.reason}),
        MarketAdu::Offer(o) => {
            json!({"kind": "offer", "kinds": o.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "models": o.models.len(), "capacity": o.capacity})
        }
        MarketAdu::Assignment(a) => {
            json!({"kind": "assignment", "task_bytes": a.task_bundle.len()})
        }
        MarketAdu::Verdict(v) => {
            json!({"kind": "verdict", "task": hex::encode(v.task), "accepted": v.accepted,
            "agreeing": v.agreeing.len(), "reason": v.reason})
        }
        MarketAdu::Reputation(r) => {
            json!({"kind": "reputation", "worker": r.worker, "accepted": r.accepted,
            "disagreed": r.disagreed, "late": r.late, "eligible": r.eligible})
        }
        MarketAdu::Guild(g) => json!({"kind": "guild", "name": g.name, "members": g.members.len()}),
        MarketAdu::Membership(mb) => json!({"kind": "membership", "guild": mb.guild,
            "charter": hex::encode(mb.charter)}),
    }
}

/// One line about a marketplace ADU, raw: `messages::adu_text` escapes it.
pub fn adu_text(a: &MarketAdu) -> String {
    match a {
        MarketAdu::Task(t) => format!(
            "[task: {} for {} credits × {}]",
            t.job.as_str(),
            t.reward,
            t.redundancy
        ),
        MarketAdu::Result(r) => format!("[result for task {}]", short(&r.task)),
        MarketAdu::Payment(p) => format!(
            "[payment: {} credits from {} ({})]",
            p.amount, p.payer, p.memo
        ),
        MarketAdu::Settlement(s) => format!(
            "[settlement of {}: {}]",
            short(&s.subject),
            if s.accepted {
                "confirmed".to_string()
            } else {
                format!("rejected: {}", s.reason.clone().unwrap_or_default())
            }
        ),
        MarketAdu::Offer(o) => format!("[offer: capacity {}]", o.capacity),
        MarketAdu::Assignment(_) => "[assignment: a task to run]".into(),
        MarketAdu::Verdict(v) => format!(
            "[verdict on task {}: {}]",
            short(&v.task),
            if v.accepted { "accepted" } else { "failed" }
        ),
        MarketAdu::Reputation(r) => format!(
            "[record of {}: {} accepted, {} disagreed, {} late]",
            r.worker, r.accepted, r.disagreed, r.late
        ),
        MarketAdu::Guild(g) => format!("[guild charter {:?}: {} members]", g.name, g.members.len()),
        MarketAdu::Membership(mb) => format!("[membership of guild {}]", mb.guild),
    }
}
