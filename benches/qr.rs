//! QR frames: what a sealed message costs on screens and paper. For a 1 KiB text message
//! and a 300 kB photo, each sealed as `send` seals it: bytes per frame, frames in the
//! sequence and frames that rebuild it (default version 15, ECC M, 40% loss allowed);
//! the frame rate a screen-to-camera transfer needs to finish in 10 s / 60 s; and the time
//! to draw a frame (symbol + PNG) and to decode a picture (a clean screenshot, and a
//! photo-like copy: turned 8°, scaled to 75%, blurred, noisy).
//! Run: `cargo bench --bench qr`.

use image::{GrayImage, Luma};
use mycelium::adu::{self, FileMessage, Message};
use mycelium::bundle::{BundleBuilder, CreationTimestamp, VerifiedBundle};
use mycelium::identity::{seal_key_for_node_id, Identity};
use mycelium::qr::{self, image as qimg};
use mycelium::seal;
use mycelium::time::DtnTime;
use std::time::Instant;

fn sealed(a: &Identity, b: &Identity, msg: Message, now: DtnTime) -> VerifiedBundle {
    let inner = BundleBuilder::new(
        b.node_id(),
        CreationTimestamp { time: now, seq: 1 },
        86_400_000,
    )
    .payload(adu::encode_message(&msg))
    .sign(a)
    .expect("sign");
    // First contact: sealed for the key the node ID stands for.
    let xpk = seal_key_for_node_id(&b.node_id()).expect("node-ID key");
    seal::seal(&inner, &xpk, now, &mut rand_core::OsRng).expect("seal")
}

fn photo_like(img: &GrayImage) -> GrayImage {
    let (w, h) = img.dimensions();
    let (s, c) = 8f64.to_radians().sin_cos();
    let side = (w as f64 * (c + s)).ceil() as u32;
    let half = side as f64 / 2.0;
    let turned = GrayImage::from_fn(side, side, |x, y| {
        let (dx, dy) = (x as f64 - half, y as f64 - half);
        let sx = c * dx + s * dy + w as f64 / 2.0;
        let sy = -s * dx + c * dy + h as f64 / 2.0;
        if sx < 0.0 || sy < 0.0 || sx >= w as f64 || sy >= h as f64 {
            Luma([255])
        } else {
            *img.get_pixel(sx as u32, sy as u32)
        }
    });
    let small = image::imageops::resize(
        &turned,
        side * 3 / 4,
        side * 3 / 4,
        image::imageops::FilterType::Triangle,
    );
    let mut out = image::imageops::blur(&small, 0.8);
    let mut r = 7u64;
    for p in out.pixels_mut() {
        r = r
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = ((r >> 33) % 33) as f64 - 16.0;
        p[0] = (40.0 + p[0] as f64 * 0.7 + noise).clamp(0.0, 255.0) as u8;
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let now = DtnTime(820_000_000_000);
    let text = sealed(&a, &b, Message::Text("x".repeat(1024)), now);
    let photo = sealed(
        &a,
        &b,
        Message::File(FileMessage {
            name: "photo.jpg".into(),
            media_type: "image/jpeg".into(),
            data: (0..300_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        }),
        now,
    );
    let version = qimg::DEFAULT_VERSION;
    let frame_bytes = qimg::frame_bytes(version).expect("capacity");
    println!(
        "QR version {version}, ECC M: {frame_bytes} frame bytes ({} text characters) per symbol",
        5 + frame_bytes / 2 * 3
    );
    println!(
        "{:<22} {:>9} {:>7} {:>7} {:>8} {:>9} {:>9} {:>10}",
        "bundle", "bytes", "frames", "needed", "symbol", "overhead", "fps 10 s", "fps 60 s"
    );
    let mut sample: Option<Vec<qr::Frame>> = None;
    for (label, vb) in [
        ("1 KiB message, sealed", &text),
        ("300 kB photo, sealed", &photo),
    ] {
        let frames = qr::encode(
            &[vb.raw()],
            qr::Layout {
                frame_bytes,
                loss: qr::DEFAULT_LOSS,
            },
        )
        .expect("encode");
        let needed = frames[0].needed() as f64;
        let payload = frames[0].symbol.len();
        println!(
            "{:<22} {:>9} {:>7} {:>7} {:>8} {:>8.2}x {:>9.1} {:>10.1}",
            label,
            vb.raw().len(),
            frames.len(),
            needed,
            payload,
            (frames.len() * frame_bytes) as f64 / vb.raw().len() as f64,
            // a camera misses frames: read at the rate that gets `needed` of the sequence
            // shown once (the 40% spare covers misses)
            frames.len() as f64 / 10.0,
            frames.len() as f64 / 60.0,
        );
        sample = Some(frames);
    }
    // Timings on the photo's first 40 frames.
    let mut frames = sample.expect("frames");
    frames.truncate(40);
    // Draw time per frame (symbol + PNG at 6 px per module).
    let n = frames.len();
    let t = Instant::now();
    let mut pngs = Vec::new();
    for f in &frames {
        let sym = qimg::symbol(&f.to_text(), Some(version)).expect("symbol");
        pngs.push(qimg::png(&sym.to_image(6)).expect("png"));
    }
    let draw_ms = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
    // Decode time per picture: clean screenshots and photo-like copies.
    let clean: Vec<GrayImage> = pngs.iter().map(|p| qimg::load(p).expect("load")).collect();
    let photos: Vec<GrayImage> = clean.iter().map(photo_like).collect();
    for (label, imgs) in [("clean screenshot", &clean), ("photo-like", &photos)] {
        let t = Instant::now();
        let mut read = 0;
        for img in imgs.iter() {
            for text in qimg::scan(img) {
                if qr::Frame::from_text(&text).is_ok() {
                    read += 1;
                }
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / imgs.len() as f64;
        println!(
            "decode, {label:<17} {:>4}x{:<4} {ms:>7.1} ms per picture, {read}/{} frames read",
            imgs[0].width(),
            imgs[0].height(),
            imgs.len()
        );
    }
    println!("draw                                {draw_ms:>7.1} ms per frame (symbol + PNG)");
}
