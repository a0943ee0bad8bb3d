//! A hostile sync peer: arbitrary bytes as a stream of sync frames fed to a responder and
//! to an initiator that hold a few items. Nothing may panic; every frame that decodes
//! re-encodes to the same bytes; a session never asks to send a key it does not hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mycelium::sync::drive::{self, BundleIo};
use mycelium::sync::session::{Item, Limits, Session};
use mycelium::sync::wire::Frame;

struct Io {
    held: Vec<[u8; 32]>,
}

impl BundleIo for Io {
    fn outgoing(&mut self, key: &[u8; 32]) -> Option<Vec<u8>> {
        assert!(self.held.contains(key), "asked to send a key never offered");
        Some(vec![0x9f, 0xff])
    }
    fn incoming(&mut self, bytes: Vec<u8>) -> Result<[u8; 32], String> {
        Ok(*blake3::hash(&bytes).as_bytes())
    }
}

fn items() -> Vec<Item> {
    (0u8..5)
        .map(|i| Item {
            key: [i; 32],
            created_ms: u64::from(i) * 1000,
            class: i % 4,
            for_peer: i == 2,
            expires_ms: u64::MAX,
            size: 100,
            sendable: i != 3,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut frames = Vec::new();
    while rest.len() >= 4 {
        let Ok(len) = Frame::body_len([rest[0], rest[1], rest[2], rest[3]], 1 << 20) else {
            break;
        };
        if rest.len() < 4 + len {
            break;
        }
        if let Ok(f) = Frame::decode(rest[4..4 + len].to_vec()) {
            assert_eq!(&f.encode()[..], &rest[..4 + len]);
            frames.push(f);
        }
        rest = &rest[4 + len..];
    }
    let held: Vec<[u8; 32]> = items().iter().map(|i| i.key).collect();
    for initiator in [false, true] {
        let mut s = if initiator {
            Session::initiator(items(), Limits::default()).unwrap()
        } else {
            Session::responder(items(), Limits::default()).unwrap()
        };
        let mut io = Io { held: held.clone() };
        for f in frames.iter().cloned() {
            if drive::on_frame(&mut s, &mut io, f).is_err() {
                break;
            }
            while drive::next_output(&mut s, &mut io).is_some() {}
        }
    }
});
