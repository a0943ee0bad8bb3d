//! The ledger: a transaction over key/value state ([`Txn`], over any [`Kv`]), the accounts
//! it holds and the rules for a payment: signed by its payer, amount in range, nonce never
//! used before, payer able to cover it, payee's balance not overflowing. A payment ID seen
//! again is a replay and changes nothing; the same nonce under another ID is refused.
//!
//! Keys: `acct/<node>` (u64 BE credits), `nonce/<payer>\0<nonce>` (payment ID),
//! `pay/<id>` (CBOR [`PaymentEntry`]), `seq` (ledger position), `issued` (credits minted).
//!
//! Owns: balances and payment settlement. Pure: no I/O.

use super::MarketError;
use crate::adu::market::{self as m, Payment, Settlement, Subject, MAX_AMOUNT};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

/// Key/value pairs read from the ledger, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// One staged write: a value, or `None` to delete.
pub type KvWrite = (Vec<u8>, Option<Vec<u8>>);

/// Read access to persisted ledger state.
pub trait Kv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MarketError>;
    /// Entries whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Entries, MarketError>;
}

/// Ledger state in memory (for the pure rules' tests and benchmarks).
#[derive(Default)]
pub struct MemKv(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl Kv for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MarketError> {
        Ok(self.0.get(key).cloned())
    }
    fn scan(&self, prefix: &[u8]) -> Result<Entries, MarketError> {
        Ok(self
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl MemKv {
    /// Apply a finished transaction's writes.
    pub fn apply(&mut self, writes: Vec<KvWrite>) {
        for (k, v) in writes {
            match v {
                Some(v) => {
                    self.0.insert(k, v);
                }
                None => {
                    self.0.remove(&k);
                }
            }
        }
    }
}

/// A payload the rules want sent, signed by the marketplace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// A node ID, or `None` for everyone (`dtn:none`).
    pub to: Option<String>,
    pub payload: Vec<u8>,
    pub lifetime_ms: u64,
}

/// Changes staged over a [`Kv`]: reads see earlier writes; nothing is persisted until
/// the caller commits [`Txn::into_parts`].
pub struct Txn<'a> {
    base: &'a dyn Kv,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub out: Vec<Outgoing>,
}

impl<'a> Txn<'a> {
    pub fn new(base: &'a dyn Kv) -> Txn<'a> {
        Txn {
            base,
            writes: BTreeMap::new(),
            out: Vec::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MarketError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    pub fn scan(&self, prefix: &[u8]) -> Result<Entries, MarketError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self.base.scan(prefix)?.into_iter().collect();
        for (k, v) in self.writes.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    pub fn get_cbor<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, MarketError> {
        match self.get(key)? {
            None => Ok(None),
            Some(b) => ciborium::from_reader(b.as_slice())
                .map(Some)
                .map_err(|e| corrupt(key, e)),
        }
    }

    pub fn put_cbor<T: Serialize>(&mut self, key: Vec<u8>, value: &T) {
        let mut b = Vec::new();
        // Serialising plain structs into a Vec cannot fail.
        let _ = ciborium::into_writer(value, &mut b);
        self.put(key, b);
    }

    pub fn get_u64(&self, key: &[u8]) -> Result<u64, MarketError> {
        match self.get(key)? {
            None => Ok(0),
            Some(b) => {
                let a: [u8; 8] = b.as_slice().try_into().map_err(|_| MarketError::Corrupt {
                    key: String::from_utf8_lossy(key).into(),
                    reason: "not 8 bytes".into(),
                })?;
                Ok(u64::from_be_bytes(a))
            }
        }
    }

    pub fn put_u64(&mut self, key: Vec<u8>, v: u64) {
        self.put(key, v.to_be_bytes().to_vec());
    }

    pub fn send(&mut self, to: Option<&str>, payload: Vec<u8>, lifetime_ms: u64) {
        self.out.push(Outgoing {
            to: to.map(str::to_string),
            payload,
            lifetime_ms,
        });
    }

    /// The staged writes and the payloads to send.
    pub fn into_parts(self) -> (Vec<KvWrite>, Vec<Outgoing>) {
        (self.writes.into_iter().collect(), self.out)
    }
}

pub(crate) fn corrupt(key: &[u8], e: impl std::fmt::Display) -> MarketError {
    MarketError::Corrupt {
        key: String::from_utf8_lossy(key).into(),
        reason: e.to_string(),
    }
}

/// How long settlements, payments and verdicts live in the network: 60 days.
pub const NOTICE_LIFETIME_MS: u64 = 60 * 24 * 3600 * 1000;

fn acct_key(node: &str) -> Vec<u8> {
    [b"acct/", node.as_bytes()].concat()
}

fn pay_key(id: &[u8; 32]) -> Vec<u8> {
    [b"pay/".as_slice(), id].concat()
}

fn nonce_key(payer: &str, nonce: &[u8; 16]) -> Vec<u8> {
    [b"nonce/", payer.as_bytes(), b"\0", nonce].concat()
}

/// What the ledger decided about a payment, kept under its ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEntry {
    pub payer: String,
    pub payee: String,
    pub amount: u64,
    pub accepted: bool,
    pub reason: Option<String>,
    pub seq: u64,
    pub at: u64,
}

/// The ledger's answer to a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Confirmed {
        seq: u64,
    },
    /// Seen before (a replay of the same payment): nothing changed; the first answer.
    AlreadySettled(PaymentEntry),
    Rejected(String),
}

/// A node's balance in credits.
pub fn balance(tx: &Txn, node: &str) -> Result<u64, MarketError> {
    tx.get_u64(&acct_key(node))
}

/// Add to a balance; refuses to pass [`MAX_AMOUNT`].
pub fn credit(tx: &mut Txn, node: &str, amount: u64) -> Result<Result<(), String>, MarketError> {
    let b = balance(tx, node)?;
    match b.checked_add(amount).filter(|v| *v <= MAX_AMOUNT) {
        Some(v) => {
            tx.put_u64(acct_key(node), v);
            Ok(Ok(()))
        }
        None => Ok(Err(format!(
            "{node}'s balance of {b} credits cannot take {amount} more"
        ))),
    }
}

/// Take from a balance; refuses to go below zero.
pub fn debit(tx: &mut Txn, node: &str, amount: u64) -> Result<Result<(), String>, MarketError> {
    let b = balance(tx, node)?;
    match b.checked_sub(amount) {
        Some(v) => {
            tx.put_u64(acct_key(node), v);
            Ok(Ok(()))
        }
        None => Ok(Err(format!(
            "insufficient funds: {node} holds {b} credits and this needs {amount}"
        ))),
    }
}

/// The next ledger position.
pub fn next_seq(tx: &mut Txn) -> Result<u64, MarketError> {
    let s = tx.get_u64(b"seq")? + 1;
    tx.put_u64(b"seq".to_vec(), s);
    Ok(s)
}

/// A stored payment entry.
pub fn payment_entry(tx: &Txn, id: &[u8; 32]) -> Result<Option<PaymentEntry>, MarketError> {
    tx.get_cbor(&pay_key(id))
}

/// The ledger's word on payment `id` as signed by `signer`: accepted when there is no
/// `reason`. Bound to the payment's parties, amount and nonce and to its signer.
fn settlement(
    id: &[u8; 32],
    p: &Payment,
    signer: &str,
    reason: Option<String>,
    seq: u64,
) -> Settlement {
    Settlement {
        subject: *id,
        what: Subject::Payment,
        payer: p.payer.clone(),
        payee: p.payee.clone(),
        amount: p.amount,
        accepted: reason.is_none(),
        reason,
        seq,
        signer: signer.to_string(),
        nonce: Some(serde_bytes::ByteBuf::from(p.nonce.to_vec())),
    }
}

/// Settle a payment that arrived signed by `signer`, with payment ID `id`: record the
/// outcome and send a settlement to payer and payee (rejections say why).
pub fn settle_payment(
    tx: &mut Txn,
    market: &str,
    id: &[u8; 32],
    signer: &str,
    p: &Payment,
    now: u64,
) -> Result<PaymentOutcome, MarketError> {
    if signer != p.payer {
        // Not recorded: a copy of someone's payment re-signed by another node must not
        // settle (or block) the real one, whose ID it shares.
        let reason = format!("signed by {signer}, who is not the payer {}", p.payer);
        let s = settlement(id, p, signer, Some(reason.clone()), 0);
        if signer != market {
            tx.send(Some(signer), m::encode_settlement(&s), NOTICE_LIFETIME_MS);
        }
        return Ok(PaymentOutcome::Rejected(reason));
    }
    if let Some(prev) = payment_entry(tx, id)? {
        return Ok(PaymentOutcome::AlreadySettled(prev));
    }
    let verdict = check_payment(tx, p)?;
    let (accepted, reason, seq) = match verdict {
        Err(reason) => (false, Some(reason), 0),
        Ok(()) => {
            // Both checked above; neither can fail now.
            debit(tx, &p.payer, p.amount)?.map_err(MarketError::Refused)?;
            credit(tx, &p.payee, p.amount)?.map_err(MarketError::Refused)?;
            tx.put(nonce_key(&p.payer, &p.nonce), id.to_vec());
            (true, None, next_seq(tx)?)
        }
    };
    let entry = PaymentEntry {
        payer: p.payer.clone(),
        payee: p.payee.clone(),
        amount: p.amount,
        accepted,
        reason: reason.clone(),
        seq,
        at: now,
    };
    tx.put_cbor(pay_key(id), &entry);
    let s = settlement(id, p, signer, reason.clone(), seq);
    let payload = m::encode_settlement(&s);
    // The notice goes to the payer (the signer) and to the payee (checked for a valid
    // key, unless the payment was accepted and so already checked). A refusal is final:
    // the payer sends a new payment, with a new nonce.
    if signer != market {
        tx.send(Some(signer), payload.clone(), NOTICE_LIFETIME_MS);
    }
    if p.payee != signer && p.payee != market && (accepted || m::node_id_ok(&p.payee).is_ok()) {
        tx.send(Some(&p.payee), payload, NOTICE_LIFETIME_MS);
    }
    Ok(match reason {
        None => PaymentOutcome::Confirmed { seq },
        Some(r) => PaymentOutcome::Rejected(r),
    })
}

fn check_payment(tx: &Txn, p: &Payment) -> Result<Result<(), String>, MarketError> {
    if let Err(e) = p.check() {
        return Ok(Err(format!("malformed payment: {e}")));
    }
    if let Some(other) = tx.get(&nonce_key(&p.payer, &p.nonce))? {
        return Ok(Err(format!(
            "replay: nonce {} was already used by payment {}",
            hex::encode(p.nonce),
            hex::encode(&other)
        )));
    }
    let have = balance(tx, &p.payer)?;
    if have < p.amount {
        return Ok(Err(format!(
            "insufficient funds (a double spend loses here): {} holds {have} credits, the payment is {}",
            p.payer, p.amount
        )));
    }
    let theirs = balance(tx, &p.payee)?;
    if theirs.checked_add(p.amount).is_none_or(|v| v > MAX_AMOUNT) {
        return Ok(Err(format!(
            "overflow: {}'s balance of {theirs} cannot take {} more",
            p.payee, p.amount
        )));
    }
    Ok(Ok(()))
}

/// A payment the marketplace makes itself.
pub struct Issue<'s> {
    pub payee: &'s str,
    pub amount: u64,
    /// The result, task or payment it pays for.
    pub refers: Option<[u8; 32]>,
    pub memo: &'s str,
    /// Create the credits (a grant); otherwise the caller took them from an escrow.
    pub mint: bool,
}

/// A payment by the marketplace itself (rewards, refunds, grants): recorded as settled
/// and sent to the payee. Returns its payment ID, or why it cannot be made.
pub fn issue(
    tx: &mut Txn,
    market: &str,
    i: &Issue,
    now: u64,
) -> Result<Result<[u8; 32], String>, MarketError> {
    let Issue {
        payee,
        amount,
        refers,
        memo,
        mint,
    } = *i;
    if amount == 0 || amount > MAX_AMOUNT {
        return Ok(Err(format!("amount {amount} is outside 1..={MAX_AMOUNT}")));
    }
    if let Err(e) = m::node_id_ok(payee) {
        return Ok(Err(format!("payee: {e}")));
    }
    if let Err(e) = credit(tx, payee, amount)? {
        return Ok(Err(e));
    }
    if mint {
        let issued = tx.get_u64(b"issued")?;
        tx.put_u64(b"issued".to_vec(), issued.saturating_add(amount));
    }
    let seq = next_seq(tx)?;
    let mut nonce = [0u8; 16];
    nonce[8..].copy_from_slice(&seq.to_be_bytes());
    let p = Payment {
        payer: market.to_string(),
        payee: payee.to_string(),
        amount,
        nonce,
        refers: refers.map(|r| serde_bytes::ByteBuf::from(r.to_vec())),
        memo: memo.to_string(),
    };
    let payload = m::encode_payment(&p);
    let id = m::payment_id(&payload);
    tx.put(nonce_key(market, &nonce), id.to_vec());
    tx.put_cbor(
        pay_key(&id),
        &PaymentEntry {
            payer: p.payer.clone(),
            payee: p.payee.clone(),
            amount,
            accepted: true,
            reason: None,
            seq,
            at: now,
        },
    );
    tx.send(Some(payee), payload, NOTICE_LIFETIME_MS);
    Ok(Ok(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_reads_its_own_writes_and_deletes() {
        let mut kv = MemKv::default();
        kv.0.insert(b"a/1".to_vec(), b"x".to_vec());
        kv.0.insert(b"a/2".to_vec(), b"y".to_vec());
        kv.0.insert(b"b/1".to_vec(), b"z".to_vec());
        let mut tx = Txn::new(&kv);
        tx.delete(b"a/1".to_vec());
        tx.put(b"a/3".to_vec(), b"w".to_vec());
        let keys: Vec<Vec<u8>> = tx.scan(b"a/").unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(keys, vec![b"a/2".to_vec(), b"a/3".to_vec()]);
        assert_eq!(tx.get(b"a/1").unwrap(), None);
        // Nothing reaches the base until the writes are applied.
        assert!(kv.0.contains_key(b"a/1".as_slice()));
        let (w, _) = tx.into_parts();
        kv.apply(w);
        assert!(!kv.0.contains_key(b"a/1".as_slice()));
    }

    #[test]
    fn balances_never_go_negative_or_past_the_ceiling() {
        let kv = MemKv::default();
        let mut tx = Txn::new(&kv);
        assert!(debit(&mut tx, "n", 1).unwrap().is_err());
        credit(&mut tx, "n", MAX_AMOUNT).unwrap().unwrap();
        assert!(credit(&mut tx, "n", 1).unwrap().is_err());
        assert_eq!(balance(&tx, "n").unwrap(), MAX_AMOUNT);
        debit(&mut tx, "n", MAX_AMOUNT).unwrap().unwrap();
        assert_eq!(balance(&tx, "n").unwrap(), 0);
        tx.put(b"acct/bad".to_vec(), vec![1, 2, 3]);
        assert!(matches!(
            balance(&tx, "bad"),
            Err(MarketError::Corrupt { .. })
        ));
    }
}
