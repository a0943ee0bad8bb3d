//! Node identity: the Ed25519 key pair, the node ID derived from its public key, and the
//! key file (mode 0600, never overwritten).
//!
//! A node ID is `dtn://<name>/` where `<name>` is the lowercase, unpadded RFC 4648 base32
//! of the 32-byte Ed25519 public key. Node IDs are therefore self-certifying: a verifier
//! needs nothing but the bundle to check who signed it.

use crate::bundle::Eid;
use data_encoding::{Encoding, Specification};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("an identity already exists at {0}; refusing to overwrite it (move it away first if you really mean to replace it)")]
    Exists(String),
    #[error("no identity at {0}: run `mycelium init` first")]
    Missing(String),
    #[error("cannot {action} key file {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("key file {0} is not a Mycelium identity (bad header or length)")]
    Malformed(String),
    #[error("key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("{0} is not a Mycelium node ID (expected dtn://<52 base32 characters>/)")]
    NotANodeId(String),
}

const HEADER: &str = "MYCELIUM-ED25519-SECRET-KEY-V1";

fn base32() -> &'static Encoding {
    static E: OnceLock<Encoding> = OnceLock::new();
    E.get_or_init(|| {
        let mut spec = Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        // A fixed, valid specification: building it cannot fail.
        spec.encoding()
            .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
    })
}

/// A node's signing identity.
pub struct Identity {
    key: SigningKey,
    /// Whether this node published its pre-2026-12 sealing key (so bundles may still be
    /// sealed to it): only then is that key tried too, at the cost of a second X25519.
    legacy_seal: bool,
    /// [`Identity::seal_keys`], derived on first use: every arriving sealed bundle is tried
    /// with them.
    seal_keys: OnceLock<Vec<crate::seal::SealKey>>,
}

impl Identity {
    /// A fresh random identity from the OS RNG.
    pub fn generate() -> Identity {
        Identity {
            key: SigningKey::generate(&mut rand_core::OsRng),
            legacy_seal: false,
            seal_keys: OnceLock::new(),
        }
    }

    /// An identity from a fixed 32-byte seed (tests, golden vectors).
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(&seed),
            legacy_seal: false,
            seal_keys: OnceLock::new(),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// `dtn://<base32 public key>/`.
    pub fn node_id(&self) -> Eid {
        node_id_for_key(&self.public_key())
    }

    /// This node's X25519 key for sealed bundles: the scalar of its Ed25519 key (RFC 7748's
    /// birational map, libsodium's `crypto_sign_ed25519_sk_to_curve25519`), so anyone who
    /// knows the node ID can seal for it ([`seal_key_for_node_id`]). Published in the
    /// node's signed node record too.
    pub fn seal_key(&self) -> crate::seal::SealKey {
        let s = Zeroizing::new(self.key.to_scalar_bytes());
        crate::seal::SealKey::from_bytes(*s)
    }

    /// The sealing key nodes published before first contact by node ID (2026-11): derived
    /// from the seed apart from the signing key. Still tried when opening, since other
    /// nodes may hold it from an old node record.
    pub fn legacy_seal_key(&self) -> crate::seal::SealKey {
        let k = Zeroizing::new(blake3::derive_key(
            "mycelium 2026-11 x25519 key from node seed v1",
            self.key.as_bytes(),
        ));
        crate::seal::SealKey::from_bytes(*k)
    }

    /// Also try [`Identity::legacy_seal_key`] when opening: for a home that published it.
    pub fn with_legacy_seal_key(mut self, yes: bool) -> Identity {
        self.legacy_seal = yes;
        self.seal_keys = OnceLock::new();
        self
    }

    /// Every key a sealed bundle for this node may be sealed to, the node-ID key first.
    pub fn seal_keys(&self) -> &[crate::seal::SealKey] {
        self.seal_keys.get_or_init(|| match self.legacy_seal {
            true => vec![self.seal_key(), self.legacy_seal_key()],
            false => vec![self.seal_key()],
        })
    }

    /// The key as PKCS#8 v1 DER (RFC 8410), for TLS libraries. Zeroised on drop.
    pub fn pkcs8_der(&self) -> zeroize::Zeroizing<Vec<u8>> {
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut v = zeroize::Zeroizing::new(Vec::with_capacity(48));
        v.extend_from_slice(&PREFIX);
        v.extend_from_slice(self.key.as_bytes());
        v
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Write a new key file with mode 0600; refuses to replace an existing one.
    pub fn save_new(&self, path: &Path) -> Result<(), IdentityError> {
        let p = path.display().to_string();
        let io = |action, source| IdentityError::Io {
            action,
            path: p.clone(),
            source,
        };
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(p.clone())
            } else {
                io("create", e)
            }
        })?;
        let text = Zeroizing::new(format!("{HEADER}\n{}\n", hex::encode(self.key.to_bytes())));
        f.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        Ok(())
    }

    /// Load a key file written by [`Identity::save_new`].
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let p = path.display().to_string();
        let meta = fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                IdentityError::Missing(p.clone())
            } else {
                IdentityError::Io {
                    action: "inspect",
                    path: p.clone(),
                    source: e,
                }
            }
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path: p, mode });
            }
        }
        if meta.len() > 4096 {
            return Err(IdentityError::Malformed(p));
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| IdentityError::Io {
            action: "read",
            path: p.clone(),
            source: e,
        })?);
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(IdentityError::Malformed(p));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        let hexkey = lines.next().unwrap_or("").trim();
        hex::decode_to_slice(hexkey, &mut seed[..]).map_err(|_| IdentityError::Malformed(p))?;
        Ok(Identity::from_seed(*seed))
    }
}

/// The node ID for a public key.
pub fn node_id_for_key(pk: &[u8; 32]) -> Eid {
    Eid::Dtn(format!("//{}/", base32().encode(pk)))
}

/// The Ed25519 public key a node ID stands for, if it is a Mycelium node ID.
pub fn key_for_node_id(eid: &Eid) -> Result<VerifyingKey, IdentityError> {
    let not = || IdentityError::NotANodeId(eid.to_string());
    let name = eid.node_name().ok_or_else(not)?;
    if name.len() != 52 {
        return Err(not());
    }
    let bytes = base32().decode(name.as_bytes()).map_err(|_| not())?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| not())?;
    VerifyingKey::from_bytes(&arr).map_err(|_| not())
}

/// The X25519 sealing key of a node, from its node ID alone: the Montgomery form of its
/// Ed25519 public key. `None` for a node ID whose key is of small order (unusable).
pub fn seal_key_for_node_id(eid: &Eid) -> Result<[u8; 32], IdentityError> {
    let k = key_for_node_id(eid)?;
    if k.is_weak() {
        return Err(IdentityError::NotANodeId(eid.to_string()));
    }
    Ok(k.to_montgomery().to_bytes())
}

/// Verify an Ed25519 signature by the node `signer` (strict verification: rejects
/// small-order keys and non-canonical signatures).
pub fn verify_by_node(signer: &Eid, msg: &[u8], sig: &[u8; 64]) -> bool {
    match key_for_node_id(signer) {
        Ok(vk) => vk.verify_strict(msg, &Signature::from_bytes(sig)).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys tried on every arriving sealed bundle are derived once, and again when
    /// the legacy key is switched on or off; each carries its own public key.
    #[test]
    fn seal_keys_are_derived_once_and_follow_the_legacy_switch() {
        let id = Identity::from_seed([7; 32]);
        assert_eq!(id.seal_keys().len(), 1);
        assert!(std::ptr::eq(id.seal_keys(), id.seal_keys()));
        let id = id.with_legacy_seal_key(true);
        let keys: Vec<[u8; 32]> = id.seal_keys().iter().map(|k| k.public()).collect();
        assert_eq!(
            keys,
            [id.seal_key().public(), id.legacy_seal_key().public()]
        );
        let x = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*Zeroizing::new(
            id.key.to_scalar_bytes(),
        )));
        assert_eq!(keys[0], x.to_bytes());
        assert_eq!(id.with_legacy_seal_key(false).seal_keys().len(), 1);
    }

    #[test]
    fn node_id_round_trips_to_key() {
        let id = Identity::from_seed([7; 32]);
        let nid = id.node_id();
        assert_eq!(nid.node_name().map(str::len), Some(52));
        assert_eq!(key_for_node_id(&nid).unwrap().to_bytes(), id.public_key());
        let sig = id.sign(b"hello");
        assert!(verify_by_node(&nid, b"hello", &sig));
        assert!(!verify_by_node(&nid, b"hellp", &sig));
        let other = Identity::from_seed([8; 32]).node_id();
        assert!(!verify_by_node(&other, b"hello", &sig));
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let id = Identity::generate();
        id.save_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = Identity::generate();
        assert!(matches!(
            again.save_new(&path),
            Err(IdentityError::Exists(_))
        ));
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.public_key(), id.public_key());
    }

    #[test]
    fn loose_permissions_and_junk_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        Identity::generate().save_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Identity::load(&path),
                Err(IdentityError::Permissions { .. })
            ));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::Malformed(_))
        ));
        assert!(matches!(
            Identity::load(&dir.path().join("nope")),
            Err(IdentityError::Missing(_))
        ));
    }
}
