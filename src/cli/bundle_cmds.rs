//! `bundle dump`, `bundle load` and `verify`: single bundle files.

use super::messages::bundle_json;
use super::out::outln;
use super::safe::say;
use super::{print_json, Cli};
use crate::bundle::{DecodeLimits, VerifiedBundle};
use crate::store::PutOutcome;
use crate::time::DtnTime;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Write a stored bundle's exact bytes to a file
    Dump {
        id: String,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Verify a bundle file and store it
    Load { file: PathBuf },
}

pub fn run(cli: &Cli, c: &BundleCommand) -> Result<()> {
    match c {
        BundleCommand::Dump { id, output } => dump(cli, id, output),
        BundleCommand::Load { file } => load(cli, file),
    }
}

/// Read a bundle file without ever holding more than the decode limit in memory.
pub fn read_bundle_file(path: &Path) -> Result<Vec<u8>> {
    let max = DecodeLimits::default().max_bundle_len;
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if buf.len() > max {
        bail!(
            "{}: larger than the {max}-byte bundle limit; not a bundle",
            path.display()
        );
    }
    Ok(buf)
}

/// Write bytes atomically (temp file beside the target, fsync, rename, fsync the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    crate::transport::write_atomic(&dir, &name, bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    crate::transport::sync_dir(&dir);
    Ok(())
}

fn dump(cli: &Cli, id: &str, output: &Path) -> Result<()> {
    let node = super::open(cli)?;
    let key = node.store.resolve(id)?;
    let raw = node
        .store
        .get_raw(&key)?
        .with_context(|| format!("bundle {id} vanished while reading"))?;
    write_atomic(output, &raw)?;
    if cli.json {
        print_json(
            &json!({"id": hex::encode(key), "file": output.display().to_string(), "size": raw.len()}),
        );
    } else {
        outln!("wrote {} bytes to {}", raw.len(), output.display());
    }
    Ok(())
}

fn load(cli: &Cli, file: &Path) -> Result<()> {
    let bytes = read_bundle_file(file)?;
    let node = super::open(cli)?;
    let (id, outcome) = node
        .receive(&bytes, DtnTime::now())
        .with_context(|| format!("{}: refused", file.display()))?;
    let status = match outcome {
        PutOutcome::New => "stored",
        PutOutcome::Duplicate => "duplicate",
    };
    if cli.json {
        print_json(&json!({"id": id.hex(), "status": status, "source": id.source.to_string()}));
    } else {
        outln!("{status}: bundle {} from {}", &id.hex()[..16], id.source);
    }
    Ok(())
}

pub fn verify(cli: &Cli, file: &Path) -> Result<()> {
    let bytes = read_bundle_file(file)?;
    let vb = VerifiedBundle::decode(&bytes)
        .with_context(|| format!("{}: does not verify", file.display()))?;
    if cli.json {
        let mut v = bundle_json(vb.bundle());
        v["signature"] = json!("valid");
        v["size"] = json!(bytes.len());
        print_json(&v);
    } else {
        // The file may be named by whoever filled the stick it is on.
        say!(
            "{}: valid BPv7 bundle, {} bytes, signed by its source {}",
            file.display(),
            bytes.len(),
            vb.bundle().primary.source
        );
    }
    Ok(())
}
