//! Guilds as a node sees them: founding one (a charter signed for the marketplace, with a
//! copy to every other listed member so each can read the shares it is asked to accept),
//! joining one (a signed `membership` naming the charter's hash: the member's consent),
//! and what this node has agreed to. The marketplace splits no pay to or away from a member
//! until that consent reaches it (`market::engine`); the worker runs a guild task only for
//! a guild it joined, and only when its assignment says whom the pay goes to.
//!
//! Kept in the ledger column family: `guild/joined/<guild id>` → the charter's payload.
//!
//! Owns: this node's guild charters and memberships.

use crate::adu::market::{self as m, Guild, Member, Membership};
use crate::adu::{self, Adu, MarketAdu};
use crate::node::{Node, NodeError};
use crate::store::StoreError;
use crate::time::DtnTime;

/// How long charters and memberships live in the network: one year.
pub const GUILD_LIFETIME_MS: u64 = 365 * 24 * 3600 * 1000;

const JOINED: &[u8] = b"guild/joined/";

#[derive(Debug, thiserror::Error)]
pub enum GuildError {
    #[error("no marketplace set for this node: `mycelium market use NODE` first")]
    NoMarket,
    #[error("charter: {0}")]
    BadCharter(String),
    #[error(
        "no charter of {0} that lists this node is in the store: its founder's `guild create` \
         sends each member a copy; import or sync it first"
    )]
    NoCharter(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A charter as this node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charter {
    pub id: String,
    pub founder: String,
    pub guild: Guild,
    /// blake3 of its payload: what a membership names.
    pub hash: [u8; 32],
    /// Whether this node consented to it (founded or joined it).
    pub joined: bool,
    /// The charter's payload, as signed.
    pub payload: Vec<u8>,
}

/// Found guild `name` with `members` (this node is added with share 1 if missing): the
/// signed charter goes to the marketplace and a copy to every other member. This node
/// consents by signing it. Returns the guild ID.
pub fn create(
    node: &Node,
    name: &str,
    mut members: Vec<Member>,
    now: DtnTime,
    seal: bool,
) -> Result<String, GuildError> {
    let market = node.market()?.ok_or(GuildError::NoMarket)?;
    let me = node.node_id().to_string();
    if !members.iter().any(|x| x.node == me) {
        members.insert(
            0,
            Member {
                node: me.clone(),
                share: 1,
            },
        );
    }
    let g = Guild {
        name: name.to_string(),
        members,
    };
    g.check(&me).map_err(GuildError::BadCharter)?;
    let payload = m::encode_guild(&g);
    let mut out = vec![(Some(market), payload.clone(), GUILD_LIFETIME_MS)];
    for mem in &g.members {
        if mem.node != me {
            let to = crate::bundle::Eid::parse(&mem.node).map_err(NodeError::from)?;
            out.push((Some(to), payload.clone(), GUILD_LIFETIME_MS));
        }
    }
    let id = Guild::id(&me, name);
    let c = node.compose(&out, now, seal)?;
    let mark = ([JOINED, id.as_bytes()].concat(), Some(payload));
    node.store
        .commit_ledger(&[mark], &c.bundles, &c.private, now)?;
    Ok(id)
}

/// Every charter in the store that lists this node (signed by its founder), and whether
/// this node consented to it, by guild ID.
pub fn charters(node: &Node) -> Result<Vec<Charter>, GuildError> {
    let me = node.node_id().to_string();
    let mut out: Vec<Charter> = Vec::new();
    for key in node.store.of_kind(m::KIND_GUILD)? {
        let Some(vb) = node.store.get(&key)? else {
            continue;
        };
        let payload = vb.bundle().payload();
        let Ok(Adu::Market(a)) = adu::decode(payload) else {
            continue;
        };
        let MarketAdu::Guild(g) = *a else { continue };
        let founder = vb.bundle().primary.source.node_id().to_string();
        if g.check(&founder).is_err() || !g.members.iter().any(|x| x.node == me) {
            continue;
        }
        let id = Guild::id(&founder, &g.name);
        let hash = m::charter_hash(payload);
        if out.iter().any(|c| c.id == id && c.hash == hash) {
            continue;
        }
        out.push(Charter {
            joined: joined_hash(node, &id)? == Some(hash),
            id,
            founder,
            guild: g,
            hash,
            payload: payload.to_vec(),
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id).then(a.hash.cmp(&b.hash)));
    Ok(out)
}

fn joined_hash(node: &Node, id: &str) -> Result<Option<[u8; 32]>, GuildError> {
    Ok(node
        .store
        .ledger_get(&[JOINED, id.as_bytes()].concat())?
        .map(|p| m::charter_hash(&p)))
}

/// The charter of guild `id` this node consented to, if any.
pub fn joined(node: &Node, id: &str) -> Result<Option<Guild>, GuildError> {
    let Some(p) = node.store.ledger_get(&[JOINED, id.as_bytes()].concat())? else {
        return Ok(None);
    };
    Ok(m::decode_guild(&p).ok())
}

/// Consent to guild `id`: find its charter listing this node in the store, sign a
/// membership naming its hash for the marketplace, and remember it. Two different
/// charters under one ID (a founder who signed two) are refused: say which by `hash`.
pub fn join(
    node: &Node,
    id: &str,
    hash: Option<[u8; 32]>,
    now: DtnTime,
    seal: bool,
) -> Result<Charter, GuildError> {
    m::guild_id_ok(id).map_err(GuildError::BadCharter)?;
    let market = node.market()?.ok_or(GuildError::NoMarket)?;
    let found: Vec<Charter> = charters(node)?
        .into_iter()
        .filter(|c| c.id == id && hash.is_none_or(|h| h == c.hash))
        .collect();
    let c = match found.as_slice() {
        [] => return Err(GuildError::NoCharter(id.to_string())),
        [c] => c.clone(),
        _ => {
            return Err(GuildError::BadCharter(format!(
                "its founder signed {} different charters for {id}; name the one to join by \
                 its hash ({})",
                found.len(),
                found
                    .iter()
                    .map(|c| hex::encode(c.hash))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let mb = Membership {
        guild: id.to_string(),
        charter: c.hash,
    };
    let composed = node.compose(
        &[(Some(market), m::encode_membership(&mb), GUILD_LIFETIME_MS)],
        now,
        seal,
    )?;
    let mark = ([JOINED, id.as_bytes()].concat(), Some(c.payload.clone()));
    node.store
        .commit_ledger(&[mark], &composed.bundles, &composed.private, now)?;
    Ok(Charter { joined: true, ..c })
}
