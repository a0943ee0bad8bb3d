//! A node's wallet, computed from the signed bundles in its store: payments in and out
//! (a payment counts only when its bundle is signed by its payer), task escrows, and the
//! marketplace's settlements (counted only when signed by the marketplace this node
//! settles with, and only for the exact payment or escrow they judge: same ID, parties,
//! amount, nonce, and judged as signed by its payer). A payment is *confirmed* when the marketplace made it or settled it,
//! *rejected* when the marketplace refused it (with its reason), and *pending* until the
//! word comes back. Balance = confirmed in − confirmed out; spendable = balance − pending
//! out. `send` refuses to spend more than that, and sends the signed payment both to the
//! payee and to the marketplace's ledger.
//!
//! Owns: balances as this node sees them, and making payments.

use crate::adu::market::{self as m, Payment, Settlement, Subject};
use crate::bundle::Eid;
use crate::node::{Node, NodeError};
use crate::store::StoreError;
use crate::time::DtnTime;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("no marketplace set for this node: `mycelium market use NODE` first")]
    NoMarket,
    #[error("amount must be 1 to {max} credits, not {0}", max = m::MAX_AMOUNT)]
    BadAmount(u64),
    #[error("this wallet can spend {spendable} credits now ({pending_out} pending out); {amount} is more")]
    Insufficient {
        amount: u64,
        spendable: i128,
        pending_out: u64,
    },
    #[error("task: {0}")]
    BadTask(String),
    #[error("payee {0}")]
    BadPayee(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pending,
    Confirmed,
    Rejected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// One movement of credits.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Payment ID, or task ID for an escrow.
    pub id: [u8; 32],
    pub direction: Direction,
    pub counterparty: String,
    pub amount: u64,
    pub what: Subject,
    pub status: Status,
    pub memo: String,
    pub created_ms: u64,
}

/// The wallet as this node sees it.
#[derive(Debug, Clone, Default)]
pub struct Wallet {
    pub entries: Vec<Entry>,
    pub balance: i128,
    pub pending_in: u64,
    pub pending_out: u64,
    pub spendable: i128,
}

/// The marketplace's settlements, by subject ID.
type Settlements = HashMap<[u8; 32], Vec<Settlement>>;

/// What the settlements of `id` that `binds` accepts say. Settlements about anything else
/// (another signer's copy of the payment, another amount, nonce or party) are ignored;
/// an acceptance outweighs a refusal, so nobody can turn a confirmed payment into a
/// refused one by getting a refusal of something else issued under its ID.
fn status_of(
    settlements: &Settlements,
    id: &[u8; 32],
    binds: impl Fn(&Settlement) -> bool,
) -> Status {
    let bound: Vec<&Settlement> = settlements
        .get(id)
        .into_iter()
        .flatten()
        .filter(|s| binds(s))
        .collect();
    if bound.iter().any(|s| s.accepted) {
        return Status::Confirmed;
    }
    match bound.first() {
        None => Status::Pending,
        Some(s) => Status::Rejected(s.reason.clone().unwrap_or_else(|| "no reason given".into())),
    }
}

/// Ledger keys of what this wallet paid and submitted: prefix ‖ ID → created (u64 BE) ‖
/// payload.
const OUT_PAY: &[u8] = b"wallet/pay/";
const OUT_TASK: &[u8] = b"wallet/task/";

fn out_entry(
    prefix: &[u8],
    id: &[u8; 32],
    now: DtnTime,
    payload: &[u8],
) -> (Vec<u8>, Option<Vec<u8>>) {
    (
        [prefix, id].concat(),
        Some([now.0.to_be_bytes().as_slice(), payload].concat()),
    )
}

fn split_out(v: &[u8]) -> Option<(u64, &[u8])> {
    let (t, p) = v.split_at_checked(8)?;
    Some((u64::from_be_bytes(t.try_into().ok()?), p))
}

/// Tasks this node submitted: (task ID, task, created ms), oldest first.
pub fn submitted(node: &Node) -> Result<Vec<([u8; 32], m::Task, u64)>, WalletError> {
    let mut out = Vec::new();
    for (k, v) in node.store.ledger_scan(OUT_TASK)? {
        let (Some((created, payload)), Ok(id)) =
            (split_out(&v), <[u8; 32]>::try_from(&k[OUT_TASK.len()..]))
        else {
            continue;
        };
        if let Ok(t) = m::decode_task(payload) {
            out.push((id, t, created));
        }
    }
    out.sort_by_key(|t| t.2);
    Ok(out)
}

/// Compute the wallet of `node` from its store.
pub fn view(node: &Node) -> Result<Wallet, WalletError> {
    let me = node.node_id().to_string();
    let market = node.market()?.map(|e| e.to_string());
    let store = &node.store;
    let mut settlements = Settlements::new();
    if let Some(mk) = &market {
        for key in store.of_kind(m::KIND_SETTLEMENT)? {
            let Some(vb) = store.get(&key)? else { continue };
            if &vb.bundle().primary.source.node_id().to_string() != mk {
                continue;
            }
            if let Ok(s) = m::decode_settlement(vb.bundle().payload()) {
                settlements.entry(s.subject).or_default().push(s);
            }
        }
    }
    let mut w = Wallet::default();
    let mut seen = std::collections::HashSet::new();
    // Payments in: bundles addressed here stay here.
    for key in store.of_kind(m::KIND_PAYMENT)? {
        let Some(vb) = store.get(&key)? else { continue };
        let payload = vb.bundle().payload();
        let Ok(p) = m::decode_payment(payload) else {
            continue;
        };
        let signer = vb.bundle().primary.source.node_id().to_string();
        // A payment counts only when signed by its payer.
        if signer != p.payer || p.payee != me {
            continue;
        }
        let id = m::payment_id(payload);
        if !seen.insert(id) {
            continue;
        }
        // The marketplace's own payments are confirmed by its signature.
        let status = if market.as_deref() == Some(p.payer.as_str()) {
            Status::Confirmed
        } else {
            status_of(&settlements, &id, |s| s.judges_payment(&id, &p))
        };
        w.entries.push(Entry {
            id,
            direction: Direction::In,
            counterparty: p.payer.clone(),
            amount: p.amount,
            what: Subject::Payment,
            status,
            memo: p.memo.clone(),
            created_ms: vb.bundle().primary.created.time.0,
        });
    }
    // Payments out and escrows: recorded when made (their bundles leave once delivered).
    for (k, v) in store.ledger_scan(OUT_PAY)? {
        let Some((created_ms, payload)) = split_out(&v) else {
            continue;
        };
        let Ok(p) = m::decode_payment(payload) else {
            continue;
        };
        let id = m::payment_id(payload);
        if k.len() != OUT_PAY.len() + 32 || !seen.insert(id) || p.payer != me {
            continue;
        }
        w.entries.push(Entry {
            id,
            direction: Direction::Out,
            counterparty: p.payee.clone(),
            amount: p.amount,
            what: Subject::Payment,
            status: status_of(&settlements, &id, |s| s.judges_payment(&id, &p)),
            memo: p.memo.clone(),
            created_ms,
        });
    }
    for (id, t, created_ms) in submitted(node)? {
        let amount = t.escrow().unwrap_or(0);
        w.entries.push(Entry {
            id,
            direction: Direction::Out,
            counterparty: market.clone().unwrap_or_default(),
            amount,
            what: Subject::Escrow,
            status: status_of(&settlements, &id, |s| s.judges_escrow(&id, &me, amount)),
            memo: format!("escrow for {} task", t.job.as_str()),
            created_ms,
        });
    }
    w.entries.sort_by_key(|e| (e.created_ms, e.id));
    for e in &w.entries {
        let a = i128::from(e.amount);
        match (&e.status, e.direction) {
            (Status::Confirmed, Direction::In) => w.balance += a,
            (Status::Confirmed, Direction::Out) => w.balance -= a,
            (Status::Pending, Direction::In) => {
                w.pending_in = w.pending_in.saturating_add(e.amount)
            }
            (Status::Pending, Direction::Out) => {
                w.pending_out = w.pending_out.saturating_add(e.amount)
            }
            (Status::Rejected(_), _) => {}
        }
    }
    w.spendable = w.balance - i128::from(w.pending_out);
    Ok(w)
}

/// Pay `to` `amount` credits: refused beyond the spendable balance; otherwise one signed
/// payment, sent (sealed where keys are known) to the payee and to the marketplace.
/// Returns the payment ID.
pub fn send(
    node: &Node,
    to: &Eid,
    amount: u64,
    memo: &str,
    now: DtnTime,
    seal: bool,
) -> Result<[u8; 32], WalletError> {
    let market = node.market()?.ok_or(WalletError::NoMarket)?;
    if amount == 0 || amount > m::MAX_AMOUNT {
        return Err(WalletError::BadAmount(amount));
    }
    let payee = to.node_id().to_string();
    m::node_id_ok(&payee).map_err(WalletError::BadPayee)?;
    if payee == node.node_id().to_string() {
        return Err(WalletError::BadPayee("is this node itself".into()));
    }
    let w = view(node)?;
    if i128::from(amount) > w.spendable {
        return Err(WalletError::Insufficient {
            amount,
            spendable: w.spendable,
            pending_out: w.pending_out,
        });
    }
    let mut nonce = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let p = Payment {
        payer: node.node_id().to_string(),
        payee,
        amount,
        nonce,
        refers: None,
        memo: memo.to_string(),
    };
    let payload = m::encode_payment(&p);
    let id = m::payment_id(&payload);
    let life = crate::market::ledger::NOTICE_LIFETIME_MS;
    let mut outs = vec![(Some(to.node_id()), payload.clone(), life)];
    if market != to.node_id() {
        outs.push((Some(market), payload, life));
    }
    let c = node.compose(&outs, now, seal)?;
    let rec = out_entry(OUT_PAY, &id, now, &outs[0].1);
    node.store
        .commit_ledger(&[rec], &c.bundles, &c.private, now)?;
    Ok(id)
}

/// Submit `task` to this node's marketplace: refused when its escrow is more than the
/// wallet can spend; otherwise signed (sealed where the marketplace's key is known) and
/// stored for the next contact. Returns the task ID.
pub fn submit_task(
    node: &Node,
    task: &m::Task,
    now: DtnTime,
    seal: bool,
) -> Result<[u8; 32], WalletError> {
    submit_task_with(node, task, now, seal, &[])
}

/// [`submit_task`], committing `extra` ledger writes in the same write (a caller's own
/// record that the task was made, so it is never made twice).
pub fn submit_task_with(
    node: &Node,
    task: &m::Task,
    now: DtnTime,
    seal: bool,
    extra: &[crate::market::ledger::KvWrite],
) -> Result<[u8; 32], WalletError> {
    let market = node.market()?.ok_or(WalletError::NoMarket)?;
    task.check().map_err(WalletError::BadTask)?;
    let escrow = task.escrow().unwrap_or(0);
    let w = view(node)?;
    if i128::from(escrow) > w.spendable {
        return Err(WalletError::Insufficient {
            amount: escrow,
            spendable: w.spendable,
            pending_out: w.pending_out,
        });
    }
    let lifetime = task.deadline.saturating_sub(now.0).max(60_000);
    let payload = m::encode_task(task);
    let c = node.compose(&[(Some(market), payload.clone(), lifetime)], now, seal)?;
    let id = c.bundles[0].id().key();
    let mut kv = vec![out_entry(OUT_TASK, &id, now, &payload)];
    kv.extend_from_slice(extra);
    node.store.commit_ledger(&kv, &c.bundles, &c.private, now)?;
    Ok(id)
}
