//! The marketplace's application data units: `task`, `result`, `payment`, `settlement`,
//! `offer`, `assignment`, `verdict`, `reputation`, `guild` and `membership`. Schemas (CDDL) are in
//! `bundles/README.md` §12; every body rejects unknown fields.
//!
//! Amounts are integer credits (`u64`, at most [`MAX_AMOUNT`]): a negative or fractional
//! amount does not decode, and every sum is checked. Node IDs are text (`dtn://<key>/`).
//! [`check`] functions are the structural rules a reader applies before any ledger rule.
//!
//! Owns: marketplace payload shapes and their structural checks. Pure: no I/O.

use super::{decode_kind, encode_kind, AduError};
use serde::{Deserialize, Serialize};

pub const KIND_TASK: &str = "task";
pub const KIND_RESULT: &str = "result";
pub const KIND_PAYMENT: &str = "payment";
pub const KIND_SETTLEMENT: &str = "settlement";
pub const KIND_OFFER: &str = "offer";
pub const KIND_ASSIGNMENT: &str = "assignment";
pub const KIND_VERDICT: &str = "verdict";
pub const KIND_REPUTATION: &str = "reputation";
pub const KIND_GUILD: &str = "guild";
pub const KIND_MEMBERSHIP: &str = "membership";

/// The largest amount a payment, reward or balance may hold: 2^53 − 1 credits, so every
/// amount is also exact in JSON numbers.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;
/// The most workers one task may ask for.
pub const MAX_REDUNDANCY: u8 = 9;
/// Largest task input and result output carried in one bundle.
pub const MAX_IO: usize = 16 * 1024 * 1024;
/// Most members of a guild.
pub const MAX_GUILD: usize = 64;

/// What a task asks a worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobKind {
    /// Sentence embeddings (engine: issue 7).
    #[serde(rename = "embed")]
    Embed,
    /// Text generation (engine: issue 7).
    #[serde(rename = "generate")]
    Generate,
    /// The blake3 digest of the input: deterministic, needs no model; every worker runs it.
    #[serde(rename = "digest")]
    Digest,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Embed => "embed",
            JobKind::Generate => "generate",
            JobKind::Digest => "digest",
        }
    }
    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "embed" => Some(JobKind::Embed),
            "generate" => Some(JobKind::Generate),
            "digest" => Some(JobKind::Digest),
            _ => None,
        }
    }
}

/// Who may take a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Eligibility {
    #[serde(rename = "anyone")]
    Anyone,
    /// One named worker (node ID).
    #[serde(rename = "worker")]
    Worker(String),
    /// Members of a guild (guild ID, `guild:<hex>`); payments split by its shares.
    #[serde(rename = "guild")]
    Guild(String),
}

/// Resource limits a worker must enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most tokens generated (0: the engine's default).
    pub max_tokens: u32,
    /// Most wall time for the job, in ms.
    pub max_ms: u64,
}

/// An inference job, addressed to the marketplace and signed by its submitter (who pays).
/// Its ID is the task bundle's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub job: JobKind,
    /// blake3 of the model (all zeros for `digest`).
    #[serde(with = "serde_bytes")]
    pub model: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    pub limits: Limits,
    /// Credits paid to each worker whose result is accepted.
    pub reward: u64,
    /// Results after this time (DTN ms) are late and unpaid.
    pub deadline: u64,
    /// How many independent workers should run it; a majority must agree.
    pub redundancy: u8,
    pub who: Eligibility,
}

impl Task {
    /// What the submitter puts in escrow: `reward × redundancy`, checked.
    pub fn escrow(&self) -> Option<u64> {
        self.reward
            .checked_mul(u64::from(self.redundancy))
            .filter(|e| *e <= MAX_AMOUNT)
    }

    /// Structural rules: reward, redundancy, sizes, model for model jobs.
    pub fn check(&self) -> Result<(), String> {
        if self.reward == 0 || self.reward > MAX_AMOUNT {
            return Err(format!(
                "reward {} is outside 1..={MAX_AMOUNT} credits",
                self.reward
            ));
        }
        if self.redundancy == 0 || self.redundancy > MAX_REDUNDANCY {
            return Err(format!(
                "redundancy {} is outside 1..={MAX_REDUNDANCY}",
                self.redundancy
            ));
        }
        if self.escrow().is_none() {
            return Err("reward × redundancy overflows the largest amount".into());
        }
        if self.input.len() > MAX_IO {
            return Err(format!("input of {} bytes is too large", self.input.len()));
        }
        if self.job != JobKind::Digest && self.model == [0; 32] {
            return Err(format!("a {} task must name its model", self.job.as_str()));
        }
        if self.job == JobKind::Digest && self.model != [0; 32] {
            return Err("a digest task takes no model (all zeros)".into());
        }
        Ok(())
    }
}

/// What a worker used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Used {
    pub ms: u64,
    pub tokens: u64,
}

/// A worker's answer to a task, addressed to the marketplace and signed by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    /// The task's ID (its bundle key).
    #[serde(with = "serde_bytes")]
    pub task: [u8; 32],
    /// The worker's node ID: must be the bundle's source.
    pub worker: String,
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// blake3 of `output`; what the quorum compares.
    #[serde(with = "serde_bytes")]
    pub output_hash: [u8; 32],
    /// Set when the job failed: the reason (then `output` is empty).
    pub failed: Option<String>,
    pub used: Used,
}

impl TaskResult {
    pub fn check(&self) -> Result<(), String> {
        if self.output.len() > MAX_IO {
            return Err(format!(
                "output of {} bytes is too large",
                self.output.len()
            ));
        }
        if self.failed.is_some() && !self.output.is_empty() {
            return Err("a failed result carries no output".into());
        }
        if self.failed.as_ref().is_some_and(|f| f.len() > 1024) {
            return Err("failure reason longer than 1024 bytes".into());
        }
        if self.failed.is_none() && *blake3::hash(&self.output).as_bytes() != self.output_hash {
            return Err("output_hash is not the blake3 of the output".into());
        }
        Ok(())
    }
}

/// A transfer of credits, signed (as the bundle's source) by the payer. Its ID is the
/// blake3 of the payload bytes, so the same payment carried in two bundles (one to the
/// payee, one to the ledger) is one payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    pub payer: String,
    pub payee: String,
    pub amount: u64,
    /// Unique per payer: a second payment with the same nonce is a replay.
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 16],
    /// The result, task or earlier payment this pays for, if any.
    pub refers: Option<serde_bytes::ByteBuf>,
    pub memo: String,
}

impl Payment {
    pub fn check(&self) -> Result<(), String> {
        if self.amount == 0 || self.amount > MAX_AMOUNT {
            return Err(format!(
                "amount {} is outside 1..={MAX_AMOUNT} credits",
                self.amount
            ));
        }
        if self.payer == self.payee {
            return Err("payer and payee are the same".into());
        }
        // The payer is checked by its signature (the ledger compares it with the signer);
        // the payee must be a real key, or the credits would be lost.
        node_id_ok(&self.payee).map_err(|e| format!("payee: {e}"))?;
        if self.refers.as_ref().is_some_and(|r| r.len() != 32) {
            return Err("refers must be a 32-byte id".into());
        }
        if self.memo.len() > 256 {
            return Err("memo longer than 256 bytes".into());
        }
        Ok(())
    }
}

/// The payment ID: blake3 of the payload that carries it.
pub fn payment_id(payload: &[u8]) -> [u8; 32] {
    *blake3::hash(payload).as_bytes()
}

/// What a settlement settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    /// A payment (subject = payment ID).
    #[serde(rename = "payment")]
    Payment,
    /// A task's escrow (subject = task ID): `reward × redundancy` held from the submitter.
    #[serde(rename = "escrow")]
    Escrow,
}

/// The ledger's word on a payment or an escrow, signed by the marketplace (the settlement
/// authority) and sent to both parties. A rejection says why.
///
/// It is bound to exactly the bundle it judged: the subject ID, payer, payee, amount, the
/// payment's nonce and the node that signed what was judged. A wallet counts it only for a
/// payment (or escrow) that matches every one of them and was signed by its payer
/// ([`Settlement::judges`]), so a refusal of someone's re-signed copy of a payment (same
/// payment ID, another signer) says nothing about the real one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settlement {
    #[serde(with = "serde_bytes")]
    pub subject: [u8; 32],
    pub what: Subject,
    pub payer: String,
    pub payee: String,
    pub amount: u64,
    pub accepted: bool,
    pub reason: Option<String>,
    /// Position in the ledger (accepted entries only; 0 for rejections).
    pub seq: u64,
    /// The node whose signed bundle (payment or task) was judged.
    pub signer: String,
    /// The payment's nonce (`None` for an escrow).
    pub nonce: Option<serde_bytes::ByteBuf>,
}

impl Settlement {
    /// Whether this settlement judges payment `p` (ID `id`) as signed by its payer.
    pub fn judges_payment(&self, id: &[u8; 32], p: &Payment) -> bool {
        self.what == Subject::Payment
            && self.subject == *id
            && self.payer == p.payer
            && self.payee == p.payee
            && self.amount == p.amount
            && self.signer == p.payer
            && self.nonce.as_ref().map(|n| n.as_slice()) == Some(p.nonce.as_slice())
    }

    /// Whether this settlement judges the escrow of task `id`, submitted and signed by
    /// `submitter`, of `amount` credits.
    pub fn judges_escrow(&self, id: &[u8; 32], submitter: &str, amount: u64) -> bool {
        self.what == Subject::Escrow
            && self.subject == *id
            && self.payer == submitter
            && self.signer == submitter
            && self.amount == amount
            && self.nonce.is_none()
    }
}

/// A worker tells the marketplace what it can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    pub kinds: Vec<JobKind>,
    /// blake3 hashes of the models it holds.
    pub models: Vec<serde_bytes::ByteBuf>,
    /// Most tasks it takes at once.
    pub capacity: u32,
}

impl Offer {
    pub fn check(&self) -> Result<(), String> {
        if self.kinds.is_empty() || self.kinds.len() > 8 {
            return Err("an offer names 1 to 8 job kinds".into());
        }
        let mut k = self.kinds.clone();
        k.sort();
        k.dedup();
        if k.len() != self.kinds.len() {
            return Err("an offer names a job kind twice".into());
        }
        if self.models.len() > 256 || self.models.iter().any(|m| m.len() != 32) {
            return Err("an offer names at most 256 models of 32 bytes".into());
        }
        if self.capacity == 0 || self.capacity > 10_000 {
            return Err("capacity is outside 1..=10000".into());
        }
        Ok(())
    }
    pub fn holds(&self, model: &[u8; 32]) -> bool {
        self.models.iter().any(|m| m.as_slice() == model)
    }
}

/// The marketplace hands a task to a worker: the submitter's signed task bundle, whole,
/// and, for a guild task, whom the reward for this worker's accepted result is paid to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    #[serde(with = "serde_bytes")]
    pub task_bundle: Vec<u8>,
    /// The split of `reward` for this worker's result (guild tasks only; absent: all of it
    /// to the worker). The marketplace pays exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay: Option<Vec<Share>>,
}

/// One part of a reward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub node: String,
    pub amount: u64,
}

/// The marketplace's decision on a task, sent to its submitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    #[serde(with = "serde_bytes")]
    pub task: [u8; 32],
    pub accepted: bool,
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub output_hash: [u8; 32],
    /// Workers whose results agreed with the accepted output.
    pub agreeing: Vec<String>,
    /// Results received in all.
    pub results: u32,
    pub reason: Option<String>,
}

/// A worker's track record, published by the marketplace for everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reputation {
    pub worker: String,
    pub accepted: u64,
    pub disagreed: u64,
    pub late: u64,
    pub failed: u64,
    /// Whether the marketplace still offers this worker tasks.
    pub eligible: bool,
}

/// A guild charter, signed by its founder: members and their shares of every payment a
/// member earns on a guild task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guild {
    pub name: String,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub node: String,
    pub share: u32,
}

impl Guild {
    /// The guild's ID: `guild:` and 32 hex digits of
    /// blake3("mycelium guild v1" ‖ 0 ‖ founder ‖ 0 ‖ name).
    pub fn id(founder: &str, name: &str) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"mycelium guild v1\0");
        h.update(founder.as_bytes());
        h.update(&[0]);
        h.update(name.as_bytes());
        format!("guild:{}", &h.finalize().to_hex()[..32])
    }

    pub fn check(&self, founder: &str) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Err("a guild name has 1 to 64 bytes".into());
        }
        if self.members.is_empty() || self.members.len() > MAX_GUILD {
            return Err(format!("a guild has 1 to {MAX_GUILD} members"));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.members {
            node_id_ok(&m.node).map_err(|e| format!("member {}: {e}", m.node))?;
            if m.share == 0 || m.share > 1_000_000 {
                return Err(format!("member {}: share outside 1..=1000000", m.node));
            }
            if !seen.insert(&m.node) {
                return Err(format!("member {} listed twice", m.node));
            }
        }
        if !seen.contains(&founder.to_string()) {
            return Err("the founder must be a member".into());
        }
        Ok(())
    }

    /// Split `amount` by shares, exactly (largest remainder; ties to the earlier member).
    pub fn split(&self, amount: u64) -> Vec<(String, u64)> {
        let total: u128 = self.members.iter().map(|m| u128::from(m.share)).sum();
        if total == 0 {
            return Vec::new();
        }
        let mut parts: Vec<(String, u64, u128)> = self
            .members
            .iter()
            .map(|m| {
                let exact = u128::from(amount) * u128::from(m.share);
                (m.node.clone(), (exact / total) as u64, exact % total)
            })
            .collect();
        let given: u64 = parts.iter().map(|p| p.1).sum();
        let mut left = amount - given;
        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.sort_by(|&a, &b| parts[b].2.cmp(&parts[a].2).then(a.cmp(&b)));
        for i in order {
            if left == 0 {
                break;
            }
            parts[i].1 += 1;
            left -= 1;
        }
        parts
            .into_iter()
            .filter(|p| p.1 > 0)
            .map(|(n, a, _)| (n, a))
            .collect()
    }
}

/// A member's consent to a guild charter, signed by the member and sent to the
/// marketplace: it names the guild and the blake3 hash of the charter's payload, so it
/// agrees to exactly those members and shares. No pay is split to or away from a listed
/// member until its consent is recorded (the founder consents by signing the charter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    pub guild: String,
    /// blake3 of the charter's payload (the `guild` envelope bytes).
    #[serde(with = "serde_bytes")]
    pub charter: [u8; 32],
}

impl Membership {
    pub fn check(&self) -> Result<(), String> {
        guild_id_ok(&self.guild)
    }
}

/// A guild ID is `guild:` and 32 lowercase hex digits.
pub fn guild_id_ok(s: &str) -> Result<(), String> {
    match s.strip_prefix("guild:") {
        Some(h) if h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(())
        }
        _ => Err(format!(
            "{s:?} is not a guild ID (guild: and 32 hex digits)"
        )),
    }
}

/// The hash a membership names: blake3 of the charter's payload.
pub fn charter_hash(payload: &[u8]) -> [u8; 32] {
    *blake3::hash(payload).as_bytes()
}

/// A node ID must be a self-certifying `dtn://<key>/`.
pub fn node_id_ok(s: &str) -> Result<(), String> {
    let e = crate::bundle::Eid::parse(s).map_err(|e| e.to_string())?;
    if e.node_id().to_string() != s {
        return Err("not a node ID (dtn://<key>/)".into());
    }
    crate::identity::key_for_node_id(&e)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

macro_rules! codec {
    ($t:ty, $kind:expr, $enc:ident, $dec:ident) => {
        pub fn $enc(v: &$t) -> Vec<u8> {
            encode_kind($kind, v)
        }
        pub fn $dec(payload: &[u8]) -> Result<$t, AduError> {
            decode_kind(payload, $kind)
        }
    };
}

codec!(Task, KIND_TASK, encode_task, decode_task);
codec!(TaskResult, KIND_RESULT, encode_result, decode_result);
codec!(Payment, KIND_PAYMENT, encode_payment, decode_payment);
codec!(
    Settlement,
    KIND_SETTLEMENT,
    encode_settlement,
    decode_settlement
);
codec!(Offer, KIND_OFFER, encode_offer, decode_offer);
codec!(
    Assignment,
    KIND_ASSIGNMENT,
    encode_assignment,
    decode_assignment
);
codec!(Verdict, KIND_VERDICT, encode_verdict, decode_verdict);
codec!(
    Reputation,
    KIND_REPUTATION,
    encode_reputation,
    decode_reputation
);
codec!(Guild, KIND_GUILD, encode_guild, decode_guild);
codec!(
    Membership,
    KIND_MEMBERSHIP,
    encode_membership,
    decode_membership
);

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> String {
        crate::identity::Identity::from_seed([n; 32])
            .node_id()
            .to_string()
    }

    fn task() -> Task {
        Task {
            job: JobKind::Digest,
            model: [0; 32],
            input: b"hello".to_vec(),
            limits: Limits {
                max_tokens: 0,
                max_ms: 1000,
            },
            reward: 10,
            deadline: 99,
            redundancy: 3,
            who: Eligibility::Anyone,
        }
    }

    #[test]
    fn all_kinds_round_trip() {
        let t = task();
        assert_eq!(decode_task(&encode_task(&t)).unwrap(), t);
        let p = Payment {
            payer: node(1),
            payee: node(2),
            amount: 5,
            nonce: [9; 16],
            refers: Some(serde_bytes::ByteBuf::from(vec![3; 32])),
            memo: "rice".into(),
        };
        assert_eq!(decode_payment(&encode_payment(&p)).unwrap(), p);
        p.check().unwrap();
        let g = Guild {
            name: "north".into(),
            members: vec![
                Member {
                    node: node(1),
                    share: 1,
                },
                Member {
                    node: node(2),
                    share: 2,
                },
            ],
        };
        assert_eq!(decode_guild(&encode_guild(&g)).unwrap(), g);
        g.check(&node(1)).unwrap();
        assert!(g.check(&node(3)).is_err());
        // The kind is checked: a payment is not a task.
        assert!(decode_task(&encode_payment(&p)).is_err());
    }

    #[test]
    fn negative_and_overflowing_amounts_are_refused() {
        #[derive(Serialize)]
        struct Neg {
            payer: String,
            payee: String,
            amount: i64,
            #[serde(with = "serde_bytes")]
            nonce: [u8; 16],
            refers: Option<serde_bytes::ByteBuf>,
            memo: String,
        }
        let neg = encode_kind(
            KIND_PAYMENT,
            &Neg {
                payer: node(1),
                payee: node(2),
                amount: -5,
                nonce: [0; 16],
                refers: None,
                memo: String::new(),
            },
        );
        let e = decode_payment(&neg).unwrap_err().to_string();
        assert!(e.contains("payment"), "{e}");
        let mut p = decode_payment(&encode_payment(&Payment {
            payer: node(1),
            payee: node(2),
            amount: 1,
            nonce: [0; 16],
            refers: None,
            memo: String::new(),
        }))
        .unwrap();
        p.amount = u64::MAX;
        assert!(p.check().unwrap_err().contains("outside"));
        p.amount = 0;
        assert!(p.check().is_err());
        let mut t = task();
        t.reward = MAX_AMOUNT / 2;
        assert!(t.check().unwrap_err().contains("overflows"));
        t.reward = 1;
        t.redundancy = 0;
        assert!(t.check().is_err());
    }

    #[test]
    fn guild_split_is_exact() {
        let g = Guild {
            name: "g".into(),
            members: (1..=3)
                .map(|i| Member {
                    node: node(i),
                    share: 1,
                })
                .collect(),
        };
        let s = g.split(100);
        assert_eq!(s.iter().map(|p| p.1).sum::<u64>(), 100);
        assert_eq!(s[0].1, 34);
        assert_eq!(s[1].1, 33);
        let g2 = Guild {
            name: "g".into(),
            members: vec![
                Member {
                    node: node(1),
                    share: 3,
                },
                Member {
                    node: node(2),
                    share: 1,
                },
            ],
        };
        assert_eq!(g2.split(10), vec![(node(1), 8), (node(2), 2)]);
        assert_eq!(
            g2.split(MAX_AMOUNT).iter().map(|p| p.1).sum::<u64>(),
            MAX_AMOUNT
        );
    }

    #[test]
    fn result_hash_must_match_output() {
        let mut r = TaskResult {
            task: [1; 32],
            worker: node(1),
            output: b"abc".to_vec(),
            output_hash: *blake3::hash(b"abc").as_bytes(),
            failed: None,
            used: Used::default(),
        };
        r.check().unwrap();
        r.output_hash[0] ^= 1;
        assert!(r.check().is_err());
    }
}
