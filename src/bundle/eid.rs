//! Endpoint IDs (RFC 9171 §4.2.5): the `dtn` scheme (including `dtn:none`) and the `ipn`
//! scheme, their text form and their CBOR form `[scheme code, SSP]`.
//!
//! Owns: EID syntax. Does not know how node IDs relate to keys (see `identity`).

use super::cbor::{Reader, Writer};
use super::BundleError;
use std::fmt;

/// Longest EID text we accept, to bound memory per block.
pub const MAX_EID_LEN: usize = 1024;

/// An endpoint ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Eid {
    /// `dtn:none`, the null endpoint.
    Null,
    /// `dtn://node/demux`; holds the scheme-specific part after `dtn:` (starting with `//`).
    Dtn(String),
    /// `ipn:node.service`.
    Ipn { node: u64, service: u64 },
}

const SCHEME_DTN: u64 = 1;
const SCHEME_IPN: u64 = 2;

impl Eid {
    /// Parse the text form: `dtn:none`, `dtn://node/demux...`, `ipn:N.S`.
    pub fn parse(s: &str) -> Result<Eid, BundleError> {
        let bad = |why: &str| BundleError::BadEid(format!("{s:?}: {why}"));
        if s.len() > MAX_EID_LEN {
            return Err(bad("too long"));
        }
        if s == "dtn:none" {
            return Ok(Eid::Null);
        }
        if let Some(ssp) = s.strip_prefix("dtn:") {
            validate_dtn_ssp(ssp).map_err(&bad)?;
            return Ok(Eid::Dtn(ssp.to_string()));
        }
        if let Some(rest) = s.strip_prefix("ipn:") {
            let (n, sv) = rest
                .split_once('.')
                .ok_or_else(|| bad("ipn EID needs node.service"))?;
            let node = n.parse().map_err(|_| bad("ipn node is not a number"))?;
            let service = sv.parse().map_err(|_| bad("ipn service is not a number"))?;
            return Ok(Eid::Ipn { node, service });
        }
        Err(bad("expected a dtn: or ipn: endpoint ID"))
    }

    /// A `dtn://<name>/` node ID.
    pub fn dtn_node(name: &str) -> Result<Eid, BundleError> {
        Eid::parse(&format!("dtn://{name}/"))
    }

    /// The node name of a `dtn://name/...` EID.
    pub fn node_name(&self) -> Option<&str> {
        match self {
            Eid::Dtn(ssp) => ssp[2..].split('/').next(),
            _ => None,
        }
    }

    /// The node ID (`dtn://name/`) this endpoint belongs to; `ipn` keeps service 0.
    pub fn node_id(&self) -> Eid {
        match self {
            Eid::Dtn(_) => match self.node_name() {
                Some(n) => Eid::Dtn(format!("//{n}/")),
                None => self.clone(),
            },
            Eid::Ipn { node, .. } => Eid::Ipn {
                node: *node,
                service: 0,
            },
            Eid::Null => Eid::Null,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Eid::Null)
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.array(2);
        match self {
            Eid::Null => {
                w.uint(SCHEME_DTN);
                w.uint(0);
            }
            Eid::Dtn(ssp) => {
                w.uint(SCHEME_DTN);
                w.text(ssp);
            }
            Eid::Ipn { node, service } => {
                w.uint(SCHEME_IPN);
                w.array(2);
                w.uint(*node);
                w.uint(*service);
            }
        }
    }

    /// CBOR encoding of this EID alone.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_vec()
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Eid, BundleError> {
        let at = r.pos();
        if r.array()? != 2 {
            return Err(BundleError::BadEid(format!(
                "at byte {at}: EID must be a 2-element array"
            )));
        }
        match r.uint()? {
            SCHEME_DTN => match r.peek()? {
                ciborium_ll::Header::Positive(_) => {
                    if r.uint()? == 0 {
                        Ok(Eid::Null)
                    } else {
                        Err(BundleError::BadEid(format!(
                            "at byte {at}: dtn SSP integer must be 0 (dtn:none)"
                        )))
                    }
                }
                _ => {
                    let ssp = r.text()?;
                    if ssp.len() + "dtn:".len() > MAX_EID_LEN {
                        return Err(BundleError::BadEid(format!("at byte {at}: too long")));
                    }
                    validate_dtn_ssp(ssp)
                        .map_err(|w| BundleError::BadEid(format!("at byte {at}: {w}")))?;
                    Ok(Eid::Dtn(ssp.to_string()))
                }
            },
            SCHEME_IPN => {
                if r.array()? != 2 {
                    return Err(BundleError::BadEid(format!(
                        "at byte {at}: ipn SSP must be [node, service]"
                    )));
                }
                let node = r.uint()?;
                let service = r.uint()?;
                Ok(Eid::Ipn { node, service })
            }
            other => Err(BundleError::BadEid(format!(
                "at byte {at}: unknown URI scheme code {other}"
            ))),
        }
    }
}

/// `dtn-hier-part = "//" node-name name-delim demux` with node-name of 1*VCHAR.
fn validate_dtn_ssp(ssp: &str) -> Result<(), &'static str> {
    let rest = ssp.strip_prefix("//").ok_or("dtn SSP must start with //")?;
    let (node, _demux) = rest
        .split_once('/')
        .ok_or("dtn EID needs a / after the node name")?;
    if node.is_empty() {
        return Err("dtn node name is empty");
    }
    if !ssp.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("dtn EID may hold only visible ASCII characters");
    }
    Ok(())
}

impl fmt::Display for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Eid::Null => f.write_str("dtn:none"),
            Eid::Dtn(ssp) => write!(f, "dtn:{ssp}"),
            Eid::Ipn { node, service } => write!(f, "ipn:{node}.{service}"),
        }
    }
}

impl std::str::FromStr for Eid {
    type Err = BundleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Eid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for s in ["dtn:none", "dtn://node/", "dtn://a/inbox/x", "ipn:977.1"] {
            let e = Eid::parse(s).unwrap();
            assert_eq!(e.to_string(), s);
            let cbor = e.to_cbor();
            let mut r = Reader::new(&cbor);
            assert_eq!(Eid::decode(&mut r).unwrap(), e);
        }
        assert_eq!(
            Eid::parse("dtn:none").unwrap().to_cbor(),
            vec![0x82, 0x01, 0x00]
        );
    }

    #[test]
    fn bad_forms_are_refused() {
        for s in [
            "",
            "dtn:",
            "dtn://",
            "dtn:///x",
            "dtn://a",
            "http://x/",
            "ipn:1",
            "dtn://a b/",
        ] {
            assert!(Eid::parse(s).is_err(), "{s} accepted");
        }
    }

    #[test]
    fn node_id_drops_demux() {
        let e = Eid::parse("dtn://abc/inbox").unwrap();
        assert_eq!(e.node_id().to_string(), "dtn://abc/");
        assert_eq!(e.node_name(), Some("abc"));
    }
}
