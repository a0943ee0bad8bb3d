//! `release publish`, `release list`, `update [--check | --rollback]` and `spread`: new
//! versions of Mycelium travelling as signed bundles, installed only from trusted signers.

use super::out::outln;
use super::safe::{esay, say};
use super::{print_json, Cli};
use crate::adu::release::{target_of_name, Version};
use crate::release::{self, Machine, Status};
use crate::time::DtnTime;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Sign a release of Mycelium and store it for travel (stick, sync, feed): the
    /// binaries named `mycelium-<target>` in the folders or files given (as
    /// `scripts/release.sh` writes them to dist/)
    Publish(PublishArgs),
    /// Releases held here, and for each whether `update` would install it, or why not
    List(MachineArgs),
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[arg(required = true, value_name = "DIR_OR_FILES")]
    pub paths: Vec<PathBuf>,
    /// The release's version, MAJOR.MINOR.PATCH [default: this program's]
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// Notes for people: what changed
    #[arg(long, default_value = "")]
    pub notes: String,
}

#[derive(Args, Debug)]
pub struct MachineArgs {
    /// Judge releases for this target instead of this machine's (x86_64-unknown-linux-musl)
    #[arg(long, value_name = "TRIPLE")]
    pub target: Option<String>,
    /// The binary to replace [default: this program]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Say what would be installed, and why not the others; change nothing
    #[arg(long, conflicts_with = "rollback")]
    pub check: bool,
    /// Put back the binary the last update replaced
    #[arg(long)]
    pub rollback: bool,
    #[command(flatten)]
    pub machine: MachineArgs,
}

#[derive(Args, Debug)]
pub struct SpreadArgs {
    /// The stick or folder to write to
    pub dir: PathBuf,
}

fn machine(a: &MachineArgs) -> Result<Machine> {
    Ok(match &a.target {
        Some(t) => Machine::of_target(t)?,
        None => Machine::this(),
    })
}

fn binary(a: &MachineArgs) -> Result<PathBuf> {
    Ok(match &a.binary {
        Some(b) => std::fs::canonicalize(b).with_context(|| format!("{}", b.display()))?,
        None => release::running_binary()?,
    })
}

/// The binaries named by `paths`: each file named `mycelium-<target>`, and such files in
/// each folder.
fn binaries(paths: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        let files: Vec<PathBuf> = if meta.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.file_name()
                            .and_then(|n| n.to_str())
                            .and_then(target_of_name)
                            .is_some()
                })
                .collect();
            v.sort();
            v
        } else {
            vec![p.clone()]
        };
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(t) = target_of_name(name) else {
                bail!(
                    "{}: a release binary is named mycelium-<target>, such as \
                     mycelium-x86_64-unknown-linux-musl",
                    f.display()
                );
            };
            out.push((t.to_string(), f));
        }
    }
    if out.is_empty() {
        bail!("no binaries named mycelium-<target> in {:?}", paths);
    }
    Ok(out)
}

pub fn run(cli: &Cli, c: &ReleaseCommand) -> Result<()> {
    let node = super::open(cli)?;
    match c {
        ReleaseCommand::Publish(a) => {
            let files = binaries(&a.paths)?;
            let version = a.version.clone().unwrap_or_else(|| release::RUNNING.into());
            let p = release::publish(&node, &files, &version, &a.notes, DtnTime::now())?;
            if cli.json {
                print_json(&json!({"id": hex::encode(p.id), "version": p.version,
                    "targets": p.targets, "bundles": p.bundles, "bytes": p.bytes,
                    "signer": node.node_id().node_id().to_string()}));
            } else {
                outln!("{}", hex::encode(p.id));
                esay!(
                    "release {} ({}; {} bytes) signed by {} and stored as {} bundles for travel",
                    p.version,
                    p.targets.join(", "),
                    p.bytes,
                    node.node_id().node_id(),
                    p.bundles
                );
            }
        }
        ReleaseCommand::List(a) => report(cli, &node, a)?,
    }
    Ok(())
}

fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Ready { .. } => "ready",
        Status::Superseded => "superseded",
        Status::Installed => "installed",
        Status::NotNewer => "not-newer",
        Status::Untrusted => "untrusted",
        Status::NoBinary => "no-binary",
        Status::Partial { .. } => "partial",
        Status::Bad(_) => "bad",
    }
}

fn seen_json(s: &release::Seen, installed: &Version, m: &Machine) -> serde_json::Value {
    json!({"version": s.version, "signer": s.signer, "id": s.id.map(hex::encode),
        "targets": s.targets, "status": status_word(&s.status),
        "reason": s.reason(installed, m), "notes": s.notes})
}

/// Every release held and whether `update` would install it, or why not (`release list`
/// and `update --check`).
fn report(cli: &Cli, node: &crate::node::Node, a: &MachineArgs) -> Result<()> {
    let (m, path) = (machine(a)?, binary(a)?);
    let installed = release::installed_version(node, &path)?;
    let seen = release::survey(node, &m, &installed)?;
    let ready = seen
        .iter()
        .find(|s| matches!(s.status, Status::Ready { .. }));
    if cli.json {
        print_json(&json!({
            "installed": installed.to_string(), "machine": m.to_string(),
            "binary": path.display().to_string(),
            "ready": ready.map(|s| s.version.clone()),
            "releases": seen.iter().map(|s| seen_json(s, &installed, &m)).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    match ready {
        Some(s) => say!(
            "update waiting: {} (installed {installed}); `mycelium update` installs it",
            s.version
        ),
        None => say!("no update to install (installed {installed} on {m})"),
    }
    if seen.is_empty() {
        outln!("  no releases held here");
    }
    for s in &seen {
        say!("  {}", s.reason(&installed, &m));
    }
    Ok(())
}

pub fn update(cli: &Cli, a: &UpdateArgs) -> Result<()> {
    let node = super::open(cli)?;
    let path = binary(&a.machine)?;
    if a.rollback {
        let r = release::rollback(&node, &path)?;
        let to = r.to.clone().unwrap_or_else(|| "the previous binary".into());
        if cli.json {
            print_json(&json!({"rolled_back": true, "from": r.from, "to": r.to,
                "path": r.path.display().to_string()}));
        } else {
            say!("rolled back {} from {} to {to}", r.path.display(), r.from);
        }
        return Ok(());
    }
    let m = machine(&a.machine)?;
    if a.check {
        return report(cli, &node, &a.machine);
    }
    let u = release::update(&node, &m, &path)?;
    if cli.json {
        print_json(
            &json!({"installed": u.to, "from": u.from.to_string(), "target": u.target,
            "path": u.path.display().to_string(), "previous": u.previous.display().to_string(),
            "signer": u.signer}),
        );
    } else {
        say!(
            "installed {} ({}) at {}, signed by {}",
            u.to,
            u.target,
            u.path.display(),
            u.signer
        );
        say!(
            "the previous binary ({}) is kept as {}: `mycelium update --rollback` puts it back",
            u.from,
            u.previous.display()
        );
        if super::out::shared_node().is_some() {
            say!(
                "the daemon still runs {}: restart it to run {}",
                u.from,
                u.to
            );
        }
    }
    Ok(())
}

pub fn spread(cli: &Cli, a: &SpreadArgs) -> Result<()> {
    let node = super::open(cli)?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("{}", a.dir.display()))?;
    let s = release::spread(&node, &a.dir, DtnTime::now())?;
    if cli.json {
        print_json(&json!({"version": s.version, "signer": s.signer,
            "dir": s.dir.display().to_string(), "bundles": s.bundles,
            "binaries": s.binaries.iter().map(|(t, n)| json!({"target": t, "bytes": n})).collect::<Vec<_>>()}));
    } else {
        say!(
            "Mycelium {} for {} written to {} (with SHA256SUMS, README.txt, README.fa.txt)",
            s.version,
            s.binaries
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            s.dir.display()
        );
        say!(
            "and its {} bundles to {}/mycelium, for nodes that import it; signed by {}",
            s.bundles,
            a.dir.display(),
            s.signer
        );
    }
    Ok(())
}
