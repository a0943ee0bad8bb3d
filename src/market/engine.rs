//! The marketplace's rules for tasks, offers, results and guilds, run inside one ledger
//! [`Txn`]:
//!
//! - A task is accepted when its escrow (`reward × redundancy`) can be taken from the
//!   submitter's balance and its deadline has not passed; otherwise a signed rejection
//!   says why. Either way the submitter gets an `escrow` settlement.
//! - Matching offers an open task to eligible workers until `redundancy` of them hold it:
//!   a worker is eligible when its offer covers the job kind and model, it has capacity,
//!   its record is good enough ([`eligible`]), it is not the submitter, and the task's
//!   `who` admits it (anyone, one worker, or members of a guild). Better records first.
//! - A result counts when it is signed by the worker it names, for a task that exists,
//!   that worker holds it, and it is on time. When a strict majority of `redundancy`
//!   (the quorum) agrees on one output hash, that output is accepted: each agreeing
//!   worker is paid `reward` from the escrow (on a guild task, split by shares among the
//!   guild's members who consented to its charter, as the worker's assignment said),
//!   every disagreeing worker's record takes a disagreement, and the
//!   submitter gets a verdict with the output. What is left of the escrow goes back to the
//!   submitter when every slot has answered or the deadline passes.
//! - Every change to a worker's record is published (signed, for everyone).
//!
//! - A guild member counts (takes guild tasks, gets a share) only once its signed
//!   `membership` naming the guild and the hash of the recorded charter is here; the
//!   founder consents by signing the charter. No pay is split to or away from a node that
//!   did not consent.
//!
//! Keys: `task/<id>`, `open/<id>`, `worker/<node>`, `guild/<id>`,
//! `member/<guild id>\0<node>` (the charter hash it consented to), `mcount/<node>`.
//!
//! Owns: task life cycle, matching, quorum, reputation, guild payouts. Pure: no I/O.

use super::agree;
use super::ledger::{self, Issue, PaymentOutcome, Txn, NOTICE_LIFETIME_MS};
use super::MarketError;
use crate::adu::market::{self as m, Eligibility, JobKind, Offer, Reputation, Task, TaskResult};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeSet;

/// What happened, for reports, logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TaskAccepted {
        task: [u8; 32],
        escrow: u64,
    },
    TaskRejected {
        task: [u8; 32],
        reason: String,
    },
    Assigned {
        task: [u8; 32],
        worker: String,
    },
    ResultRecorded {
        task: [u8; 32],
        worker: String,
    },
    ResultRejected {
        result: [u8; 32],
        reason: String,
    },
    Accepted {
        task: [u8; 32],
        output_hash: [u8; 32],
        agreeing: Vec<String>,
    },
    Disagreed {
        task: [u8; 32],
        worker: String,
    },
    /// The marketplace re-scored a `generate` answer with the model.
    Rescored {
        task: [u8; 32],
        worker: String,
        /// `None` when it passed; why not otherwise.
        refused: Option<String>,
    },
    Late {
        task: [u8; 32],
        worker: String,
    },
    TaskFailed {
        task: [u8; 32],
        reason: String,
    },
    Paid {
        payee: String,
        amount: u64,
        payment: [u8; 32],
    },
    Refunded {
        task: [u8; 32],
        amount: u64,
    },
    PaymentConfirmed {
        payment: [u8; 32],
        seq: u64,
    },
    PaymentRejected {
        payment: [u8; 32],
        reason: String,
    },
    PaymentReplayed {
        payment: [u8; 32],
    },
    OfferRecorded {
        worker: String,
    },
    GuildRecorded {
        guild: String,
    },
    MembershipRecorded {
        guild: String,
        member: String,
    },
    Refused {
        what: String,
        reason: String,
    },
}

/// A task as the marketplace tracks it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskState {
    pub submitter: String,
    pub task: Task,
    /// The submitter's signed task bundle, handed to workers as is.
    #[serde(with = "serde_bytes")]
    pub bundle: Vec<u8>,
    pub escrow_left: u64,
    /// Workers who hold it now (failed and late ones are dropped, freeing the slot).
    pub assigned: Vec<String>,
    pub answers: Vec<Answer>,
    pub accepted: Option<ByteBuf>,
    /// The accepted output, for approximate agreement with later answers.
    #[serde(default)]
    pub accepted_output: Option<ByteBuf>,
    /// The accepted output passed the marketplace's `generate` check.
    #[serde(default)]
    pub accepted_verified: bool,
    pub closed: bool,
    pub received: u64,
    /// For a guild task: the split of `reward` each assigned worker was told in its
    /// assignment, paid exactly so for its accepted result.
    #[serde(default)]
    pub pay: Vec<(String, Vec<m::Share>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub worker: String,
    pub result: ByteBuf,
    pub hash: ByteBuf,
    /// Counts towards the quorum: a well-formed output, on time.
    pub valid: bool,
    pub failed: Option<String>,
    pub judged: bool,
    /// The output itself, kept for jobs judged by approximate agreement (`embed`).
    #[serde(default)]
    pub output: Option<ByteBuf>,
    /// A `generate` output the marketplace re-scored with the model and found to be a
    /// greedy answer (see [`GenerateCheck`]): it agrees with every other such output.
    #[serde(default)]
    pub verified: bool,
}

/// The marketplace's own judge of a claimed `generate` output, when it holds the task's
/// model: a teacher-forced re-scoring (`worker::generate::Generator::verify`).
/// `Some(Ok(()))` passes, `Some(Err(why))` is refused, `None` cannot judge (the model is
/// not held here), and then outputs must match exactly.
pub type GenerateCheck<'a> = Box<dyn FnMut(&Task, &[u8]) -> Option<Result<(), String>> + 'a>;

/// A worker as the marketplace knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerState {
    pub offer: Option<Offer>,
    pub offered_at: u64,
    pub record: Reputation,
    /// Tasks it holds and has not answered.
    pub open: u32,
}

/// A guild charter and its founder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuildState {
    pub founder: String,
    pub charter: m::Guild,
    /// blake3 of the charter's payload: what a member's consent names.
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
}

/// Most guilds one node may consent to (memberships recorded for it).
pub const MAX_MEMBERSHIPS: u64 = 64;

/// Whether a record still earns tasks: a worker is dropped once it has at least two
/// disagreements or late answers and they outnumber half its accepted results.
pub fn eligible(r: &Reputation) -> bool {
    let bad = r.disagreed.saturating_add(r.late);
    !(bad >= 2 && bad.saturating_mul(2) > r.accepted)
}

fn task_key(id: &[u8; 32]) -> Vec<u8> {
    [b"task/".as_slice(), id].concat()
}
fn open_key(id: &[u8; 32]) -> Vec<u8> {
    [b"open/".as_slice(), id].concat()
}
/// What `open/<id>` holds: the task's deadline (u64 BE) and whether it still needs
/// workers (1 byte), so matching and the deadline check read only the tasks that need
/// them. (Empty in ledgers written before: then the task itself is read.)
fn open_summary(st: &TaskState) -> Vec<u8> {
    let mut v = st.task.deadline.to_be_bytes().to_vec();
    v.push(u8::from(needed(st) > 0));
    v
}

/// The open summary: (deadline, needs workers).
fn read_summary(v: &[u8]) -> Option<(u64, bool)> {
    let (d, rest) = v.split_first_chunk::<8>()?;
    match rest {
        [n] => Some((u64::from_be_bytes(*d), *n == 1)),
        _ => None,
    }
}

/// How many more workers task `st` needs.
fn needed(st: &TaskState) -> usize {
    let valid = st.answers.iter().filter(|a| a.valid).count();
    usize::from(st.task.redundancy).saturating_sub(valid + st.assigned.len())
}

fn worker_key(node: &str) -> Vec<u8> {
    [b"worker/", node.as_bytes()].concat()
}
fn guild_key(id: &str) -> Vec<u8> {
    [b"guild/", id.as_bytes()].concat()
}
fn member_key(guild: &str, node: &str) -> Vec<u8> {
    [b"member/", guild.as_bytes(), b"\0", node.as_bytes()].concat()
}
fn mcount_key(node: &str) -> Vec<u8> {
    [b"mcount/", node.as_bytes()].concat()
}

fn id32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    if b.len() == 32 {
        a.copy_from_slice(b);
    }
    a
}

/// One pass of the rules: a transaction, this marketplace's node ID and the time.
pub struct Engine<'a> {
    pub tx: Txn<'a>,
    pub me: String,
    pub now: u64,
    pub events: Vec<Event>,
    touched: BTreeSet<String>,
    /// Re-scores `generate` outputs when set.
    pub check: Option<GenerateCheck<'a>>,
}

impl<'a> Engine<'a> {
    pub fn new(tx: Txn<'a>, me: &str, now: u64) -> Engine<'a> {
        Engine {
            tx,
            me: me.to_string(),
            now,
            events: Vec::new(),
            touched: BTreeSet::new(),
            check: None,
        }
    }

    pub fn task(&self, id: &[u8; 32]) -> Result<Option<TaskState>, MarketError> {
        self.tx.get_cbor(&task_key(id))
    }

    pub fn worker(&self, node: &str) -> Result<Option<WorkerState>, MarketError> {
        self.tx.get_cbor(&worker_key(node))
    }

    pub fn guild(&self, id: &str) -> Result<Option<GuildState>, MarketError> {
        self.tx.get_cbor(&guild_key(id))
    }

    /// The members of guild `id` who consented to its recorded charter (the founder by
    /// signing it, the others by a membership naming its hash), with their shares, in
    /// charter order. Empty for an unknown guild.
    pub fn consenting(&self, id: &str) -> Result<Vec<m::Member>, MarketError> {
        let Some(gs) = self.guild(id)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for mem in &gs.charter.members {
            let agreed = mem.node == gs.founder
                || self
                    .tx
                    .get(&member_key(id, &mem.node))?
                    .is_some_and(|h| h == gs.hash);
            if agreed {
                out.push(mem.clone());
            }
        }
        Ok(out)
    }

    /// Whom the reward for `worker`'s accepted result on a task for guild `g` goes to:
    /// split by share among the consenting members; `None` when `worker` is not one.
    fn guild_pay(
        &self,
        g: &str,
        worker: &str,
        reward: u64,
    ) -> Result<Option<Vec<m::Share>>, MarketError> {
        let Some(gs) = self.guild(g)? else {
            return Ok(None);
        };
        let members = self.consenting(g)?;
        if !members.iter().any(|x| x.node == worker) {
            return Ok(None);
        }
        let agreed = m::Guild {
            name: gs.charter.name,
            members,
        };
        Ok(Some(
            agreed
                .split(reward)
                .into_iter()
                .map(|(node, amount)| m::Share { node, amount })
                .collect(),
        ))
    }

    /// Every worker the marketplace knows, by node ID.
    pub fn workers(&self) -> Result<Vec<(String, WorkerState)>, MarketError> {
        let mut out = Vec::new();
        for (k, v) in self.tx.scan(b"worker/")? {
            let w: WorkerState =
                ciborium::from_reader(v.as_slice()).map_err(|e| ledger::corrupt(&k, e))?;
            out.push((String::from_utf8_lossy(&k[7..]).into_owned(), w));
        }
        Ok(out)
    }

    fn put_task(&mut self, id: &[u8; 32], st: &TaskState) {
        self.tx.put_cbor(task_key(id), st);
        if !st.closed {
            self.tx.put(open_key(id), open_summary(st));
        }
    }

    fn put_worker(&mut self, node: &str, w: &WorkerState) {
        self.tx.put_cbor(worker_key(node), w);
    }

    fn update_worker(
        &mut self,
        node: &str,
        f: impl FnOnce(&mut WorkerState),
    ) -> Result<(), MarketError> {
        let mut w = self.worker(node)?.unwrap_or_default();
        w.record.worker = node.to_string();
        f(&mut w);
        w.record.eligible = eligible(&w.record);
        self.put_worker(node, &w);
        self.touched.insert(node.to_string());
        Ok(())
    }

    fn escrow_notice(
        &mut self,
        id: &[u8; 32],
        submitter: &str,
        amount: u64,
        r: Option<String>,
    ) -> Result<(), MarketError> {
        let seq = match r {
            None => ledger::next_seq(&mut self.tx)?,
            Some(_) => 0,
        };
        let s = m::Settlement {
            subject: *id,
            what: m::Subject::Escrow,
            payer: submitter.to_string(),
            payee: self.me.clone(),
            amount,
            accepted: r.is_none(),
            reason: r,
            seq,
            signer: submitter.to_string(),
            nonce: None,
        };
        if m::node_id_ok(submitter).is_ok() {
            self.tx.send(
                Some(submitter),
                m::encode_settlement(&s),
                NOTICE_LIFETIME_MS,
            );
        }
        Ok(())
    }

    /// A task bundle `id` signed by `submitter` (its raw bytes in `bundle`).
    pub fn on_task(
        &mut self,
        id: &[u8; 32],
        submitter: &str,
        bundle: &[u8],
        task: &Task,
    ) -> Result<(), MarketError> {
        if self.task(id)?.is_some() {
            return Ok(());
        }
        let escrow = task.escrow().unwrap_or(0);
        let reject = |e: &mut Self, reason: String| -> Result<(), MarketError> {
            e.escrow_notice(id, submitter, escrow, Some(reason.clone()))?;
            e.events.push(Event::TaskRejected { task: *id, reason });
            Ok(())
        };
        if let Err(why) = task.check() {
            return reject(self, format!("malformed task: {why}"));
        }
        if task.deadline <= self.now {
            return reject(
                self,
                format!(
                    "past its deadline ({} before it reached the marketplace)",
                    crate::time::DtnTime(task.deadline).to_rfc3339()
                ),
            );
        }
        match &task.who {
            Eligibility::Anyone => {}
            Eligibility::Worker(w) => {
                if let Err(e) = m::node_id_ok(w) {
                    return reject(self, format!("named worker {w}: {e}"));
                }
            }
            Eligibility::Guild(g) => {
                if self.guild(g)?.is_none() {
                    return reject(
                        self,
                        format!("unknown guild {g}: its charter has not reached the marketplace"),
                    );
                }
            }
        }
        if let Err(why) = ledger::debit(&mut self.tx, submitter, escrow)? {
            return reject(self, why);
        }
        let st = TaskState {
            submitter: submitter.to_string(),
            task: task.clone(),
            bundle: bundle.to_vec(),
            escrow_left: escrow,
            assigned: Vec::new(),
            answers: Vec::new(),
            accepted: None,
            accepted_output: None,
            accepted_verified: false,
            closed: false,
            received: self.now,
            pay: Vec::new(),
        };
        self.put_task(id, &st);
        self.escrow_notice(id, submitter, escrow, None)?;
        self.events.push(Event::TaskAccepted { task: *id, escrow });
        Ok(())
    }

    /// A worker's offer (replaces its previous one).
    pub fn on_offer(&mut self, worker: &str, offer: &Offer) -> Result<(), MarketError> {
        if let Err(why) = offer.check() {
            self.events.push(Event::Refused {
                what: format!("offer from {worker}"),
                reason: why,
            });
            return Ok(());
        }
        let now = self.now;
        self.update_worker(worker, |w| {
            w.offer = Some(offer.clone());
            w.offered_at = now;
        })?;
        self.events.push(Event::OfferRecorded {
            worker: worker.to_string(),
        });
        Ok(())
    }

    /// A guild charter signed by `founder`; `hash` is blake3 of its payload.
    pub fn on_guild(
        &mut self,
        founder: &str,
        g: &m::Guild,
        hash: [u8; 32],
    ) -> Result<(), MarketError> {
        let id = m::Guild::id(founder, &g.name);
        if self.guild(&id)?.is_some() {
            // Members and shares are fixed once agreed: a new charter is a new guild.
            self.events.push(Event::Refused {
                what: format!("guild {id}"),
                reason:
                    "a charter for this guild is already recorded; found a new guild to change it"
                        .into(),
            });
            return Ok(());
        }
        if let Err(why) = g.check(founder) {
            self.events.push(Event::Refused {
                what: format!("guild {id}"),
                reason: why,
            });
            return Ok(());
        }
        self.tx.put_cbor(
            guild_key(&id),
            &GuildState {
                founder: founder.to_string(),
                charter: g.clone(),
                hash,
            },
        );
        self.events.push(Event::GuildRecorded { guild: id });
        Ok(())
    }

    /// `member`'s signed consent to a guild charter. Recorded whether or not the charter
    /// is here yet (it counts only if it names the recorded charter's hash and `member`
    /// is listed in it), at most [`MAX_MEMBERSHIPS`] guilds per node; a later consent to
    /// the same guild replaces the earlier one.
    pub fn on_membership(&mut self, member: &str, mb: &m::Membership) -> Result<(), MarketError> {
        let refuse = |e: &mut Self, reason: String| {
            e.events.push(Event::Refused {
                what: format!("membership of {member} in {}", mb.guild),
                reason,
            });
            Ok(())
        };
        if let Err(why) = mb.check() {
            return refuse(self, why);
        }
        if let Some(gs) = self.guild(&mb.guild)? {
            if !gs.charter.members.iter().any(|x| x.node == member) {
                return refuse(self, "the guild's charter does not list this node".into());
            }
            if gs.hash != mb.charter {
                return refuse(
                    self,
                    "it consents to another charter than the one recorded for this guild".into(),
                );
            }
        }
        let key = member_key(&mb.guild, member);
        if self.tx.get(&key)?.is_none() {
            let n = self.tx.get_u64(&mcount_key(member))?;
            if n >= MAX_MEMBERSHIPS {
                return refuse(
                    self,
                    format!("this node already consented to {MAX_MEMBERSHIPS} guilds"),
                );
            }
            self.tx.put_u64(mcount_key(member), n + 1);
        }
        self.tx.put(key, mb.charter.to_vec());
        self.events.push(Event::MembershipRecorded {
            guild: mb.guild.clone(),
            member: member.to_string(),
        });
        Ok(())
    }

    /// A payment for the ledger, with its ID, signed by `signer`.
    pub fn on_payment(
        &mut self,
        id: &[u8; 32],
        signer: &str,
        p: &m::Payment,
    ) -> Result<(), MarketError> {
        let me = self.me.clone();
        let ev = match ledger::settle_payment(&mut self.tx, &me, id, signer, p, self.now)? {
            PaymentOutcome::Confirmed { seq } => Event::PaymentConfirmed { payment: *id, seq },
            PaymentOutcome::AlreadySettled(_) => Event::PaymentReplayed { payment: *id },
            PaymentOutcome::Rejected(reason) => Event::PaymentRejected {
                payment: *id,
                reason,
            },
        };
        self.events.push(ev);
        Ok(())
    }

    /// Create `amount` credits for `to` (the marketplace is the issuer).
    pub fn grant(&mut self, to: &str, amount: u64, memo: &str) -> Result<[u8; 32], MarketError> {
        let me = self.me.clone();
        let i = Issue {
            payee: to,
            amount,
            refers: None,
            memo,
            mint: true,
        };
        let id = ledger::issue(&mut self.tx, &me, &i, self.now)?.map_err(MarketError::Refused)?;
        self.events.push(Event::Paid {
            payee: to.to_string(),
            amount,
            payment: id,
        });
        Ok(id)
    }

    fn pay_from_escrow(
        &mut self,
        id: &[u8; 32],
        st: &mut TaskState,
        payee: &str,
        amount: u64,
        refers: [u8; 32],
        memo: &str,
    ) -> Result<bool, MarketError> {
        let Some(left) = st.escrow_left.checked_sub(amount) else {
            return Err(MarketError::Refused(format!(
                "task {}: escrow of {} cannot pay {amount}",
                hex::encode(id),
                st.escrow_left
            )));
        };
        let me = self.me.clone();
        let i = Issue {
            payee,
            amount,
            refers: Some(refers),
            memo,
            mint: false,
        };
        match ledger::issue(&mut self.tx, &me, &i, self.now)? {
            Ok(pid) => {
                st.escrow_left = left;
                self.events.push(Event::Paid {
                    payee: payee.to_string(),
                    amount,
                    payment: pid,
                });
                Ok(true)
            }
            Err(reason) => {
                self.events.push(Event::Refused {
                    what: format!("payment of {amount} to {payee}"),
                    reason,
                });
                Ok(false)
            }
        }
    }

    /// Pay `worker` for its accepted result (on a guild task, exactly the split its
    /// assignment stated); whether the worker itself was paid.
    fn reward(
        &mut self,
        id: &[u8; 32],
        st: &mut TaskState,
        worker: &str,
        result: [u8; 32],
    ) -> Result<bool, MarketError> {
        let reward = st.task.reward;
        let short = &hex::encode(id)[..12];
        if let Eligibility::Guild(g) = &st.task.who {
            // A guild task is only ever assigned with a stated split.
            let Some(split) = st.pay.iter().find(|p| p.0 == worker).map(|p| p.1.clone()) else {
                self.events.push(Event::Refused {
                    what: format!("pay for {worker}'s result on task {short}"),
                    reason: "no split was stated in its assignment".into(),
                });
                return Ok(false);
            };
            let memo = format!("share of {worker}'s result for task {short}, guild {g}");
            let mut paid_worker = false;
            for s in split {
                let paid = self.pay_from_escrow(id, st, &s.node, s.amount, result, &memo)?;
                paid_worker |= paid && s.node == worker;
            }
            return Ok(paid_worker);
        }
        self.pay_from_escrow(id, st, worker, reward, result, &format!("task {short}"))
    }

    /// A result bundle `key` signed by `signer`, that reached this node at `arrived`
    /// (DTN ms): on time when `arrived` ≤ the deadline, however late it is processed.
    pub fn on_result(
        &mut self,
        key: &[u8; 32],
        signer: &str,
        r: &TaskResult,
        arrived: u64,
    ) -> Result<(), MarketError> {
        let reject = |e: &mut Self, reason: String| -> Result<(), MarketError> {
            e.events.push(Event::ResultRejected {
                result: *key,
                reason,
            });
            Ok(())
        };
        if r.worker != signer {
            return reject(
                self,
                format!("signed by {signer} but names worker {}", r.worker),
            );
        }
        let Some(mut st) = self.task(&r.task)? else {
            return reject(
                self,
                format!(
                    "result for task {} that does not exist here",
                    hex::encode(r.task)
                ),
            );
        };
        if st.answers.iter().any(|a| a.worker == signer) {
            return reject(self, "this worker already answered this task".into());
        }
        if !st.assigned.iter().any(|w| w == signer) {
            return reject(self, "the task was not assigned to this worker".into());
        }
        let id = r.task;
        st.assigned.retain(|w| w != signer);
        self.update_worker(signer, |w| w.open = w.open.saturating_sub(1))?;
        if st.closed || arrived > st.task.deadline {
            st.answers.push(Answer {
                worker: signer.to_string(),
                result: ByteBuf::from(key.to_vec()),
                hash: ByteBuf::from(r.output_hash.to_vec()),
                valid: false,
                failed: None,
                judged: true,
                output: None,
                verified: false,
            });
            self.update_worker(signer, |w| w.record.late += 1)?;
            self.events.push(Event::Late {
                task: id,
                worker: signer.to_string(),
            });
            self.put_task(&id, &st);
            return Ok(());
        }
        let mut well_formed = r.check();
        let failed = r.failed.clone();
        // A `generate` answer is re-scored with the model when this marketplace holds it.
        let mut verified = false;
        if failed.is_none() && well_formed.is_ok() && st.task.job == JobKind::Generate {
            if let Some(check) = self.check.as_mut() {
                if let Some(judged) = check(&st.task, &r.output) {
                    self.events.push(Event::Rescored {
                        task: r.task,
                        worker: signer.to_string(),
                        refused: judged.clone().err(),
                    });
                    match judged {
                        Ok(()) => verified = true,
                        Err(why) => well_formed = Err(why),
                    }
                }
            }
        }
        let valid = failed.is_none() && well_formed.is_ok();
        let keep = valid && st.task.job == JobKind::Embed;
        st.answers.push(Answer {
            worker: signer.to_string(),
            result: ByteBuf::from(key.to_vec()),
            hash: ByteBuf::from(r.output_hash.to_vec()),
            valid,
            failed: failed.clone(),
            judged: false,
            output: keep.then(|| ByteBuf::from(r.output.clone())),
            verified,
        });
        self.events.push(Event::ResultRecorded {
            task: id,
            worker: signer.to_string(),
        });
        if failed.is_some() && well_formed.is_ok() {
            // An honest failure frees the slot for another worker.
            if let Some(a) = st.answers.last_mut() {
                a.judged = true;
            }
            self.update_worker(signer, |w| w.record.failed += 1)?;
        } else if well_formed.is_err() {
            // An output that does not match its own hash, or that the model refuses, is
            // wrong by construction.
            if let Some(a) = st.answers.last_mut() {
                a.judged = true;
            }
            self.update_worker(signer, |w| w.record.disagreed += 1)?;
            self.events.push(Event::Disagreed {
                task: id,
                worker: signer.to_string(),
            });
        }
        self.judge(&id, &mut st, Some(&r.output))?;
        self.put_task(&id, &st);
        Ok(())
    }

    /// Decide or extend the decision on a task after an answer.
    fn judge(
        &mut self,
        id: &[u8; 32],
        st: &mut TaskState,
        output: Option<&[u8]>,
    ) -> Result<(), MarketError> {
        let quorum = usize::from(st.task.redundancy) / 2 + 1;
        let job = st.task.job;
        let out_of =
            |a: &Answer| -> Vec<u8> { a.output.as_ref().map(|o| o.to_vec()).unwrap_or_default() };
        // Two answers agree by output, or as two verified greedy generations.
        let same = |a: (&[u8], &[u8], bool), b: &Answer| {
            (a.2 && b.verified && job == JobKind::Generate)
                || agree::agree(job, (a.0, a.1), (&b.hash, &out_of(b)))
        };
        if st.accepted.is_none() {
            // The answer the most others agree with (ties: the earliest).
            let valid: Vec<usize> = (0..st.answers.len())
                .filter(|&i| st.answers[i].valid)
                .collect();
            let mut best: Option<(usize, usize)> = None;
            for &i in &valid {
                let a = &st.answers[i];
                let (ha, oa) = (a.hash.to_vec(), out_of(a));
                let n = valid
                    .iter()
                    .filter(|&&j| same((&ha, &oa, a.verified), &st.answers[j]))
                    .count();
                if best.is_none_or(|(_, c)| n > c) {
                    best = Some((i, n));
                }
            }
            if let Some((rep_i, n)) = best {
                if n >= quorum {
                    // The quorum is reached by the answer just recorded (the last one): its
                    // output goes in the verdict when it agrees, else the representative's.
                    let last = st.answers.len() - 1;
                    let ra = &st.answers[rep_i];
                    let (ha, oa, va) = (ra.hash.to_vec(), out_of(ra), ra.verified);
                    let lb = &st.answers[last];
                    let pick = if lb.valid && same((&ha, &oa, va), lb) {
                        last
                    } else {
                        rep_i
                    };
                    let hash = id32(&st.answers[pick].hash);
                    let out = if pick == last {
                        output.unwrap_or_default().to_vec()
                    } else {
                        out_of(&st.answers[pick])
                    };
                    st.accepted = Some(ByteBuf::from(hash.to_vec()));
                    st.accepted_output =
                        (job == JobKind::Embed).then(|| ByteBuf::from(out.clone()));
                    let pv = st.answers[pick].verified;
                    st.accepted_verified = pv;
                    let agreeing: Vec<String> = valid
                        .iter()
                        .map(|&j| &st.answers[j])
                        .filter(|b| same((&hash, &out, pv), b))
                        .map(|b| b.worker.clone())
                        .collect();
                    let v = m::Verdict {
                        task: *id,
                        accepted: true,
                        output: out,
                        output_hash: hash,
                        agreeing: agreeing.clone(),
                        results: st.answers.len() as u32,
                        reason: None,
                    };
                    let sub = st.submitter.clone();
                    self.tx
                        .send(Some(&sub), m::encode_verdict(&v), NOTICE_LIFETIME_MS);
                    self.events.push(Event::Accepted {
                        task: *id,
                        output_hash: hash,
                        agreeing,
                    });
                }
            }
        }
        if let Some(acc) = st.accepted.clone() {
            let acc_out = st
                .accepted_output
                .as_ref()
                .map(|o| o.to_vec())
                .unwrap_or_default();
            let pending: Vec<usize> = (0..st.answers.len())
                .filter(|&i| st.answers[i].valid && !st.answers[i].judged)
                .collect();
            for i in pending {
                st.answers[i].judged = true;
                let worker = st.answers[i].worker.clone();
                let b = &st.answers[i];
                if same((&acc, &acc_out, st.accepted_verified), b) {
                    let result = id32(&st.answers[i].result);
                    if self.reward(id, st, &worker, result)? {
                        self.update_worker(&worker, |w| w.record.accepted += 1)?;
                    }
                } else {
                    self.update_worker(&worker, |w| w.record.disagreed += 1)?;
                    self.events.push(Event::Disagreed { task: *id, worker });
                }
            }
        }
        let answered = st.answers.iter().filter(|a| a.valid).count();
        if answered >= usize::from(st.task.redundancy) {
            self.close(
                id,
                st,
                "every worker answered and no output reached the quorum",
            )?;
        }
        Ok(())
    }

    /// Close a task: refund what is left of the escrow; without an accepted output, tell
    /// the submitter why.
    fn close(&mut self, id: &[u8; 32], st: &mut TaskState, why: &str) -> Result<(), MarketError> {
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        self.tx.delete(open_key(id));
        if st.accepted.is_none() {
            let v = m::Verdict {
                task: *id,
                accepted: false,
                output: Vec::new(),
                output_hash: [0; 32],
                agreeing: Vec::new(),
                results: st.answers.len() as u32,
                reason: Some(why.to_string()),
            };
            let sub = st.submitter.clone();
            self.tx
                .send(Some(&sub), m::encode_verdict(&v), NOTICE_LIFETIME_MS);
            self.events.push(Event::TaskFailed {
                task: *id,
                reason: why.to_string(),
            });
        }
        if st.escrow_left > 0 {
            let amount = st.escrow_left;
            let sub = st.submitter.clone();
            let memo = format!("refund for task {}", &hex::encode(id)[..12]);
            if self.pay_from_escrow(id, st, &sub, amount, *id, &memo)? {
                self.events.push(Event::Refunded { task: *id, amount });
            }
        }
        Ok(())
    }

    /// Tasks past their deadline: workers who did not answer are late; the task closes.
    pub fn tick(&mut self) -> Result<(), MarketError> {
        for (k, v) in self.tx.scan(b"open/")? {
            // Not yet past its deadline: nothing to do (without reading the task).
            if read_summary(&v).is_some_and(|(deadline, _)| deadline >= self.now) {
                continue;
            }
            let id = id32(&k[5..]);
            let Some(mut st) = self.task(&id)? else {
                self.tx.delete(k);
                continue;
            };
            // Results are on time up to and including the deadline.
            if st.task.deadline >= self.now {
                continue;
            }
            for w in std::mem::take(&mut st.assigned) {
                self.update_worker(&w, |ws| {
                    ws.open = ws.open.saturating_sub(1);
                    ws.record.late += 1;
                })?;
                self.events.push(Event::Late {
                    task: id,
                    worker: w,
                });
            }
            let why = format!(
                "deadline passed with {} results and no quorum",
                st.answers.len()
            );
            self.close(&id, &mut st, &why)?;
            self.put_task(&id, &st);
        }
        Ok(())
    }

    /// Whether `w` (known as `ws`) may take task `st`.
    fn can_take(&self, st: &TaskState, w: &str, ws: &WorkerState) -> Result<bool, MarketError> {
        let Some(offer) = &ws.offer else {
            return Ok(false);
        };
        if !offer.kinds.contains(&st.task.job)
            || (st.task.job != JobKind::Digest && !offer.holds(&st.task.model))
            || ws.open >= offer.capacity
            || !eligible(&ws.record)
            || w == st.submitter
            || st.assigned.iter().any(|a| a == w)
            || st.answers.iter().any(|a| a.worker == w)
        {
            return Ok(false);
        }
        Ok(match &st.task.who {
            Eligibility::Anyone => true,
            Eligibility::Worker(x) => x == w,
            // A consenting member whose own part of the reward is not nothing.
            Eligibility::Guild(g) => self
                .guild_pay(g, w, st.task.reward)?
                .is_some_and(|s| s.iter().any(|x| x.node == w)),
        })
    }

    /// Offer open tasks to eligible workers; returns how many assignments were made.
    pub fn match_open(&mut self) -> Result<usize, MarketError> {
        let mut workers = self.workers()?;
        let mut made = 0;
        for (k, v) in self.tx.scan(b"open/")? {
            // Held by enough workers, or past its deadline: nothing to match.
            if read_summary(&v).is_some_and(|(deadline, needs)| !needs || deadline <= self.now) {
                continue;
            }
            let id = id32(&k[5..]);
            let Some(mut st) = self.task(&id)? else {
                continue;
            };
            if st.closed || st.task.deadline <= self.now {
                continue;
            }
            let need = needed(&st);
            if need == 0 {
                continue;
            }
            // Best records first, then the least loaded.
            workers.sort_by(|a, b| {
                let bad = |w: &WorkerState| w.record.disagreed + w.record.late;
                bad(&a.1)
                    .cmp(&bad(&b.1))
                    .then(b.1.record.accepted.cmp(&a.1.record.accepted))
                    .then(a.1.open.cmp(&b.1.open))
                    .then(a.0.cmp(&b.0))
            });
            let mut picked = Vec::new();
            for (i, (name, ws)) in workers.iter().enumerate() {
                if picked.len() == need {
                    break;
                }
                if self.can_take(&st, name, ws)? {
                    picked.push(i);
                }
            }
            if picked.is_empty() {
                continue;
            }
            let lifetime = st.task.deadline.saturating_sub(self.now).max(60_000);
            for i in picked {
                let name = workers[i].0.clone();
                // A guild task states whom this worker's reward goes to, and is paid so.
                let pay = match &st.task.who {
                    Eligibility::Guild(g) => {
                        let split = self.guild_pay(g, &name, st.task.reward)?;
                        st.pay.retain(|p| p.0 != name);
                        if let Some(s) = &split {
                            st.pay.push((name.clone(), s.clone()));
                        }
                        split
                    }
                    _ => None,
                };
                let payload = m::encode_assignment(&m::Assignment {
                    task_bundle: st.bundle.clone(),
                    pay,
                });
                workers[i].1.open += 1;
                st.assigned.push(name.clone());
                self.tx.send(Some(&name), payload, lifetime);
                let ws = workers[i].1.clone();
                self.put_worker(&name, &ws);
                self.events.push(Event::Assigned {
                    task: id,
                    worker: name,
                });
                made += 1;
            }
            self.put_task(&id, &st);
        }
        Ok(made)
    }

    /// Publish the records that changed and hand back the transaction and the events.
    pub fn finish(mut self) -> Result<(Txn<'a>, Vec<Event>), MarketError> {
        for node in std::mem::take(&mut self.touched) {
            if let Some(w) = self.worker(&node)? {
                self.tx
                    .send(None, m::encode_reputation(&w.record), NOTICE_LIFETIME_MS);
            }
        }
        Ok((self.tx, self.events))
    }
}
