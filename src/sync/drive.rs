//! Glue between a [`Session`] and the bundles it moves, shared by every driver (QUIC, the
//! in-memory simulation, benchmarks): turning "send bundle K" into bytes and arriving
//! bundle bytes into a verified, stored key. Still no I/O here: [`BundleIo`] is the
//! driver's store, and frames go in and out as bytes.

use super::session::{Session, SyncError, Transmit};
use super::wire::Frame;

/// A driver's access to its store for one session.
pub trait BundleIo {
    /// The bytes to send for `key` (hop count already incremented), or `None` if it is
    /// gone or must not travel further.
    fn outgoing(&mut self, key: &[u8; 32]) -> Option<Vec<u8>>;
    /// Verify and store an arriving bundle. `Ok(key)` when it verified (whether new, a
    /// duplicate or already delivered); `Err(reason)` when it is forged or malformed,
    /// which ends the session.
    fn incoming(&mut self, bytes: Vec<u8>) -> Result<[u8; 32], String>;

    /// Spray-and-wait: called as `key` is about to be sent. `Some(n)`: the bundle is under
    /// a copy limit and `n` copies go to the peer with it (the store keeps the rest).
    fn hand_over(&mut self, _key: &[u8; 32]) -> Option<u32> {
        None
    }

    /// An arriving bundle under a copy limit, with the copies handed over.
    fn incoming_sprayed(&mut self, bytes: Vec<u8>, _copies: u32) -> Result<[u8; 32], String> {
        self.incoming(bytes)
    }

    /// Commit what `incoming` took but has not stored yet (an implementation may verify
    /// and store arrivals in batches). Called when the peer says `Done`, when the
    /// session ends or is cut, and at [`BundleIo::flush_due`]. `Err(reason)` when a
    /// bundle in the batch was forged or malformed (the others are stored).
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// A batch is due ([`BundleIo::flush_due`]): commit it, or, where an implementation
    /// can, verify it now and leave its durable write to overlap the next batch's work,
    /// to be finished by the next call or by [`BundleIo::flush`]. Either way nothing is
    /// counted as stored before it is on disk. `Err` as for `flush`.
    fn flush_ahead(&mut self) -> Result<(), String> {
        self.flush()
    }

    /// When the arrivals waiting in a batch should be committed at the latest.
    fn flush_due(&self) -> Option<std::time::Instant> {
        None
    }
}

/// Feed one frame from the peer into the session.
pub fn on_frame(s: &mut Session, io: &mut impl BundleIo, frame: Frame) -> Result<(), SyncError> {
    if matches!(frame, Frame::Done) {
        // Everything the peer sent is on disk before this side can say `Done` too.
        io.flush().map_err(SyncError::BadBundle)?;
    }
    if let Some(inc) = s.on_frame(frame)? {
        let key = match inc.copies {
            None => io.incoming(inc.bundle),
            Some(c) => io.incoming_sprayed(inc.bundle, c),
        }
        .map_err(SyncError::BadBundle)?;
        s.bundle_received(&key)?;
    }
    Ok(())
}

/// What to write next: a whole frame, or a bundle as header and body (so large
/// bundles are not copied again). `None` when nothing is due.
pub enum Output {
    Frame(Vec<u8>),
    /// Header, then (for spray frames) the copies, then the bundle.
    Bundle([u8; super::wire::HEADER], Option<u32>, Vec<u8>),
}

impl Output {
    pub fn len(&self) -> usize {
        match self {
            Output::Frame(f) => f.len(),
            Output::Bundle(h, c, b) => h.len() + if c.is_some() { 4 } else { 0 } + b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Output::Frame(f) => f,
            Output::Bundle(h, c, b) => {
                let mut v = Vec::with_capacity(h.len() + 4 + b.len());
                v.extend_from_slice(&h);
                if let Some(c) = c {
                    v.extend_from_slice(&c.to_be_bytes());
                }
                v.extend_from_slice(&b);
                v
            }
        }
    }
}

/// The next output of the session, resolving bundle requests through `io`.
pub fn next_output(s: &mut Session, io: &mut impl BundleIo) -> Option<Output> {
    loop {
        match s.poll_transmit()? {
            Transmit::Frame(f) => return Some(Output::Frame(f.encode())),
            Transmit::Bundle(key) => match io.outgoing(&key) {
                Some(bytes) => {
                    s.bundle_sent(bytes.len() as u64);
                    return Some(match io.hand_over(&key) {
                        None => Output::Bundle(Frame::bundle_header(bytes.len()), None, bytes),
                        Some(c) => Output::Bundle(Frame::spray_header(bytes.len()), Some(c), bytes),
                    });
                }
                None => s.bundle_unavailable(&key),
            },
        }
    }
}

/// Split a byte stream's worth of frames (as written by [`next_output`]) back into frames.
pub fn decode_stream(bytes: &[u8], max_bundle: usize) -> Result<Vec<Frame>, SyncError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(SyncError::Protocol("truncated frame header".into()));
        }
        let len = Frame::body_len([rest[0], rest[1], rest[2], rest[3]], max_bundle)
            .map_err(|e| SyncError::Protocol(e.to_string()))?;
        if rest.len() < 4 + len {
            return Err(SyncError::Protocol("truncated frame".into()));
        }
        out.push(
            Frame::decode_body(rest[4], rest[5..4 + len].to_vec())
                .map_err(|e| SyncError::Protocol(e.to_string()))?,
        );
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// Totals of an in-memory exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Frames that crossed, both ways.
    pub frames: usize,
    /// Round trips: times the direction of traffic changed, halved (rounded up).
    pub round_trips: usize,
    pub bytes: u64,
    /// Both sessions finished (false when `cut_after` stopped it).
    pub finished: bool,
}

/// Run two sessions against each other in memory until both finish, or until
/// `cut_after` frames have crossed (a link that drops mid-transfer). Errors name the side
/// that failed: `(true, e)` for `a`.
pub fn run_pair(
    a: &mut Session,
    a_io: &mut impl BundleIo,
    b: &mut Session,
    b_io: &mut impl BundleIo,
    cut_after: Option<usize>,
) -> Result<Exchange, (bool, SyncError)> {
    let mut ex = Exchange::default();
    let mut last_dir: Option<bool> = None;
    let mut turns = 0usize;
    loop {
        let mut progressed = false;
        for from_a in [true, false] {
            loop {
                let out = if from_a {
                    next_output(a, a_io)
                } else {
                    next_output(b, b_io)
                };
                let Some(out) = out else { break };
                if cut_after.is_some_and(|c| ex.frames >= c) {
                    // A cut link: what each side took before the cut is kept.
                    a_io.flush().map_err(|e| (true, SyncError::BadBundle(e)))?;
                    b_io.flush().map_err(|e| (false, SyncError::BadBundle(e)))?;
                    return Ok(ex);
                }
                progressed = true;
                ex.frames += 1;
                ex.bytes += out.len() as u64;
                if last_dir != Some(from_a) {
                    turns += 1;
                    last_dir = Some(from_a);
                }
                let bytes = out.into_bytes();
                let frames = decode_stream(&bytes, usize::MAX).map_err(|e| (!from_a, e))?;
                for f in frames {
                    let r = if from_a {
                        on_frame(b, b_io, f)
                    } else {
                        on_frame(a, a_io, f)
                    };
                    r.map_err(|e| (!from_a, e))?;
                }
            }
        }
        if a.is_finished() && b.is_finished() {
            a_io.flush().map_err(|e| (true, SyncError::BadBundle(e)))?;
            b_io.flush().map_err(|e| (false, SyncError::BadBundle(e)))?;
            ex.finished = true;
            ex.round_trips = turns.div_ceil(2);
            return Ok(ex);
        }
        if !progressed {
            return Err((
                true,
                SyncError::Protocol("both sides stalled before finishing".into()),
            ));
        }
    }
}
