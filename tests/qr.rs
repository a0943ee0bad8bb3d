//! QR frames end to end, through the `mycelium` binary on real homes: a sealed message
//! sent to a bare node ID travels only as PNG frames, distorted (rotated, scaled down,
//! blurred, noisy, some as JPEG, several per photo), 30% of them lost, with junk codes
//! among them; read across two runs. Independent tools check our frames both ways:
//! Debian's `zbarimg` decodes every frame we draw, and frames drawn by `qrencode` from our
//! frame texts are read by `qr import`.

mod common;
use common::{json, my};
use image::{GrayImage, Luma};
use std::path::{Path, PathBuf};
use std::process::Command;

fn init(dir: &Path, name: &str) -> (PathBuf, String) {
    let home = dir.join(name);
    let v = json(&home, &["init"]);
    (home, v["node_id"].as_str().unwrap().to_string())
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} is missing: scripts/setup.sh --tests installs it (zbar-tools, qrencode)"
    );
    Command::new(name)
}

/// A small deterministic generator (tests need repeatable noise, not secrets).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

/// Rotate by `deg` degrees about the centre (bilinear), on a white background.
fn rotate(img: &GrayImage, deg: f64) -> GrayImage {
    let (w, h) = img.dimensions();
    let (s, c) = deg.to_radians().sin_cos();
    let side = ((w as f64 * c.abs() + h as f64 * s.abs()).ceil() as u32).max(w);
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let half = side as f64 / 2.0;
    GrayImage::from_fn(side, side, |x, y| {
        let (dx, dy) = (x as f64 - half, y as f64 - half);
        let sx = c * dx + s * dy + cx;
        let sy = -s * dx + c * dy + cy;
        if sx < 0.0 || sy < 0.0 || sx >= (w - 1) as f64 || sy >= (h - 1) as f64 {
            return Luma([255]);
        }
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
        let p = |x, y| img.get_pixel(x, y)[0] as f64;
        let v = p(x0, y0) * (1.0 - fx) * (1.0 - fy)
            + p(x0 + 1, y0) * fx * (1.0 - fy)
            + p(x0, y0 + 1) * (1.0 - fx) * fy
            + p(x0 + 1, y0 + 1) * fx * fy;
        Luma([v.round() as u8])
    })
}

/// What a camera does to a frame: turned a little, smaller, out of focus, noisy, greyer.
fn distort(img: &GrayImage, i: usize, rng: &mut Lcg) -> GrayImage {
    let angle = [-17.0, 8.0, 3.0, -6.0, 12.0, 90.0, 180.0, -2.0][i % 8];
    let turned = rotate(img, angle);
    let scale = [0.65, 0.75, 0.85, 0.95][i % 4];
    let (w, h) = turned.dimensions();
    let small = image::imageops::resize(
        &turned,
        (w as f64 * scale) as u32,
        (h as f64 * scale) as u32,
        image::imageops::FilterType::Triangle,
    );
    let mut out = image::imageops::blur(&small, [0.6, 0.8, 1.0][i % 3]);
    for p in out.pixels_mut() {
        // dim paper, weak ink, and noise of ±16
        let v = 40.0 + p[0] as f64 * 0.7 + (rng.next() % 33) as f64 - 16.0;
        p[0] = v.clamp(0.0, 255.0) as u8;
    }
    out
}

fn load(p: &Path) -> GrayImage {
    image::open(p).unwrap().into_luma8()
}

/// Two pictures side by side on one grey sheet, as a photo of a printed page would hold.
fn side_by_side(a: &GrayImage, b: &GrayImage) -> GrayImage {
    let w = a.width() + b.width() + 60;
    let h = a.height().max(b.height()) + 40;
    let mut sheet = GrayImage::from_pixel(w, h, Luma([200]));
    image::imageops::overlay(&mut sheet, a, 20, 20);
    image::imageops::overlay(&mut sheet, b, i64::from(a.width()) + 40, 20);
    sheet
}

#[test]
fn a_sealed_message_to_a_bare_node_id_arrives_as_distorted_frames_with_30_percent_lost() {
    let t = tempfile::tempdir().unwrap();
    let (a, _) = init(t.path(), "a");
    let (b, b_id) = init(t.path(), "b");
    // a has never heard of b: no node record, no `contact add`; only the ID.
    assert!(!json(&a, &["contact", "list"]).to_string().contains(&b_id));
    let sent = json(
        &a,
        &[
            "send",
            "--to",
            &b_id,
            "--text",
            "the bakery on 5th opens at 6",
        ],
    );
    let sealed = sent["sealed"]["id"].as_str().unwrap().to_string();
    let photo = t.path().join("photo.bin");
    std::fs::write(
        &photo,
        (0..9000u32)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let sent2 = json(
        &a,
        &["send", "--to", &b_id, "--file", photo.to_str().unwrap()],
    );
    let sealed2 = sent2["sealed"]["id"].as_str().unwrap().to_string();
    // a keeps its signed messages, private, until a receipt says they arrived
    let held = json(&a, &["list"]).to_string();
    assert!(
        held.contains(sent["id"].as_str().unwrap()) && held.contains(sent2["id"].as_str().unwrap())
    );
    let out = t.path().join("frames");
    let ex = json(
        &a,
        &["qr", "export", out.to_str().unwrap(), &sealed, &sealed2],
    );
    let pngs: Vec<PathBuf> = ex["pngs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    let n = pngs.len();
    let needed = ex["needed"].as_u64().unwrap() as usize;
    assert_eq!(ex["frames"].as_u64().unwrap() as usize, n);
    assert!(n >= 20 && needed < n, "{ex}");
    // The pages hold every frame, self-contained (no network).
    let player = std::fs::read_to_string(ex["player"].as_str().unwrap()).unwrap();
    assert_eq!(player.matches("data:image/png;base64,").count(), n);
    assert!(!player.contains("http"), "the player page fetches nothing");
    let print = std::fs::read_to_string(ex["print"].as_str().unwrap()).unwrap();
    assert_eq!(print.matches("<img").count(), n);

    // 30% lost; the rest photographed badly, some two to a photo, some as JPEG.
    let mut rng = Lcg(7);
    let kept: Vec<usize> = (0..n).filter(|i| (i * 7) % 10 >= 3).collect();
    assert!(kept.len() * 10 <= n * 7 + 7);
    let shots = t.path().join("shots");
    std::fs::create_dir(&shots).unwrap();
    let mut pictures = Vec::new();
    let mut k = 0;
    while k < kept.len() {
        let one = distort(&load(&pngs[kept[k]]), k, &mut rng);
        let (img, name) = if k % 5 == 4 && k + 1 < kept.len() {
            let two = distort(&load(&pngs[kept[k + 1]]), k + 1, &mut rng);
            k += 2;
            (side_by_side(&one, &two), format!("page-{k:03}"))
        } else {
            k += 1;
            (one, format!("shot-{k:03}"))
        };
        let path = if k % 3 == 0 {
            shots.join(format!("{name}.jpg"))
        } else {
            shots.join(format!("{name}.png"))
        };
        img.save(&path).unwrap();
        pictures.push(path);
    }
    // Junk among them: a QR code that is not ours, a forged frame (one character of a
    // real frame changed, drawn by qrencode), a frame of another sequence, a picture that
    // is no picture.
    let junk = t.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    let qrencode = |text: &str, path: &Path| {
        let st = tool("qrencode")
            .args(["-l", "M", "-s", "5", "-o"])
            .arg(path)
            .arg(text)
            .status()
            .unwrap();
        assert!(st.success());
    };
    qrencode("HELLO, NOT A FRAME", &junk.join("foreign.png"));
    let texts = std::fs::read_to_string(ex["texts"].as_str().unwrap()).unwrap();
    let first = texts.lines().next().unwrap();
    let mut forged: Vec<char> = first.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    qrencode(&forged.iter().collect::<String>(), &junk.join("forged.png"));
    let (_, c_id) = init(t.path(), "c");
    let to_c = json(&a, &["send", "--to", &c_id, "--text", "for someone else"]);
    let other_out = t.path().join("other");
    let other = json(
        &a,
        &[
            "qr",
            "export",
            other_out.to_str().unwrap(),
            to_c["sealed"]["id"].as_str().unwrap(),
        ],
    );
    std::fs::copy(
        other["pngs"][0].as_str().unwrap(),
        junk.join("other-sequence.png"),
    )
    .unwrap();
    std::fs::write(junk.join("broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();

    // First run: the junk and too few pictures; nothing rebuilt yet, frames kept.
    let split = needed / 2;
    let mut args: Vec<String> = vec!["qr".into(), "import".into(), junk.display().to_string()];
    args.extend(pictures[..split].iter().map(|p| p.display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r1 = json(&b, &argv);
    assert_eq!(r1["not_ours"], 1, "{r1}");
    assert_eq!(r1["refused"], 1, "{r1}");
    assert_eq!(r1["new"], 0, "{r1}");
    let seqs = r1["sequences"].as_array().unwrap();
    assert_eq!(seqs.len(), 2, "ours and the other sequence: {r1}");
    let ours = seqs
        .iter()
        .find(|s| s["sequence"] == ex["sequence"])
        .unwrap();
    assert_eq!(ours["rebuilt"], false);
    assert!(ours["missing"].as_u64().unwrap() > 0);
    let held_first = ours["held"].as_u64().unwrap();
    assert!(held_first >= split as u64 / 2, "{r1}");
    let problems = r1["problems"].to_string();
    assert!(problems.contains("not a Mycelium frame"), "{problems}");
    assert!(
        problems.contains("forged or damaged frame") || problems.contains("malformed"),
        "{problems}"
    );
    assert!(problems.contains("broken.png"), "{problems}");
    assert!(
        json(&b, &["inbox"]).as_array().unwrap().is_empty(),
        "nothing yet"
    );

    // Second run: the rest of the photos. The frames of the first run count.
    let mut args: Vec<String> = vec!["qr".into(), "import".into()];
    args.extend(pictures[split..].iter().map(|p| p.display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r2 = json(&b, &argv);
    let ours = r2["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sequence"] == ex["sequence"])
        .unwrap()
        .clone();
    assert_eq!(ours["rebuilt"], true, "{r2}");
    assert_eq!(r2["delivered"], 2, "{r2}");
    let inbox = json(&b, &["inbox"]);
    let all = inbox.to_string();
    assert!(all.contains("the bakery on 5th opens at 6"), "{all}");
    assert!(all.contains("photo.bin"), "{all}");
    // Again: already rebuilt, nothing new, nothing lost.
    let r3 = json(&b, &argv);
    assert_eq!(r3["new"], 0);
    assert_eq!(json(&b, &["inbox"]).as_array().unwrap().len(), 2);

    // b's receipt goes home the same way, sealed for the key a's node ID stands for (b
    // has no record of a either): a drops its private copies of what was delivered.
    let back = t.path().join("back");
    let rx = json(&b, &["qr", "export", back.to_str().unwrap()]);
    assert!(rx["bundles"].as_u64().unwrap() >= 1, "{rx}");
    let ra = json(&a, &["qr", "import", back.to_str().unwrap()]);
    assert!(ra["purged"].as_u64().unwrap() >= 2, "{ra}");
    let left = json(&a, &["list"]).to_string();
    for s in [&sent, &sent2] {
        assert!(!left.contains(s["id"].as_str().unwrap()), "{left}");
    }
}

#[test]
fn zbarimg_reads_every_frame_we_draw_and_we_read_frames_qrencode_draws() {
    let t = tempfile::tempdir().unwrap();
    let (a, _) = init(t.path(), "a");
    let (b, b_id) = init(t.path(), "b");
    let text: String = (0..300).map(|i| format!("word{i} ")).collect();
    let sent = json(&a, &["send", "--to", &b_id, "--text", &text]);
    let sealed = sent["sealed"]["id"].as_str().unwrap().to_string();
    // The default version, and the largest we draw.
    let mut texts: Vec<String> = Vec::new();
    let mut pngs: Vec<String> = Vec::new();
    for size in ["15", "25"] {
        let out = t.path().join(format!("frames-{size}"));
        let ex = json(
            &a,
            &[
                "qr",
                "export",
                out.to_str().unwrap(),
                &sealed,
                "--size",
                size,
            ],
        );
        texts.extend(
            std::fs::read_to_string(ex["texts"].as_str().unwrap())
                .unwrap()
                .lines()
                .map(str::to_string),
        );
        pngs.extend(
            ex["pngs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string()),
        );
    }
    assert_eq!(texts.len(), pngs.len());
    // zbarimg, one file at a time so each answer is matched to its frame; QR codes only,
    // since a QR frame's modules now and then also read as a short 1-D barcode (seen in CI:
    // a frame answered its text plus a line "525844").
    for (png, want) in pngs.iter().zip(&texts) {
        let o = tool("zbarimg")
            .args(["--raw", "-q", "-Sdisable", "-Sqrcode.enable"])
            .arg(png)
            .output()
            .unwrap();
        assert!(o.status.success(), "zbarimg could not read {png}");
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), want, "{png}");
    }
    // qrencode draws our frame texts (any version it likes); we read those.
    let drawn = t.path().join("qrencode");
    std::fs::create_dir(&drawn).unwrap();
    for (i, tx) in texts.iter().enumerate() {
        let st = tool("qrencode")
            .args(["-l", "L", "-s", "3", "-o"])
            .arg(drawn.join(format!("{i:03}.png")))
            .arg(tx)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let r = json(&b, &["qr", "import", drawn.to_str().unwrap()]);
    assert_eq!(r["codes"].as_u64().unwrap() as usize, texts.len(), "{r}");
    assert_eq!(r["refused"], 0, "{r}");
    assert_eq!(r["delivered"], 1, "{r}");
    // both sequences rebuilt: the second brings the same bundle, already here
    assert_eq!(r["sequences"].as_array().unwrap().len(), 2, "{r}");
    assert!(json(&b, &["inbox"]).to_string().contains("word299"));
}

#[test]
fn id_qr_shows_the_node_id_on_the_terminal_and_in_a_png_zbarimg_reads() {
    let t = tempfile::tempdir().unwrap();
    let (a, id) = init(t.path(), "a");
    let png = t.path().join("me.png");
    let o = my(&a)
        .args(["id", "--qr", "--png"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(o.status.success());
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains('█') && shown.contains(&id), "{shown}");
    let z = tool("zbarimg")
        .args(["--raw", "-q", "-Sdisable", "-Sqrcode.enable"])
        .arg(&png)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&z.stdout).trim(), id);
    // Another node photographs it: a node ID, not a stray code.
    let (b, _) = init(t.path(), "b");
    let r = json(&b, &["qr", "import", png.to_str().unwrap()]);
    assert_eq!(r["node_ids"], serde_json::json!([id]), "{r}");
    assert_eq!(r["not_ours"], 0, "{r}");
}

#[test]
fn the_player_page_plays_the_frames_offline_in_a_real_browser() {
    use common::browser::Browser;
    use std::time::Duration;
    const T: Duration = Duration::from_secs(20);
    let t = tempfile::tempdir().unwrap();
    let (a, _) = init(t.path(), "a");
    let (_, b_id) = init(t.path(), "b");
    let sent = json(&a, &["send", "--to", &b_id, "--text", "on a screen"]);
    let out = t.path().join("frames");
    let ex = json(
        &a,
        &[
            "qr",
            "export",
            out.to_str().unwrap(),
            sent["sealed"]["id"].as_str().unwrap(),
            "--fps",
            "10",
        ],
    );
    let n = ex["frames"].as_u64().unwrap();
    let player = ex["player"].as_str().unwrap();
    let mut page = Browser::launch(&format!("file://{player}")).unwrap();
    // It plays on by itself: frame 3 comes up, drawn.
    page.wait_for(
        &format!("document.getElementById('where').textContent.startsWith('frame 3 of {n}')"),
        T,
    )
    .unwrap();
    let shown = page
        .eval(
            "(() => { const i = document.getElementById('f'); \
             return [document.getElementById('where').textContent, i.src, i.complete && i.naturalWidth]; })()",
            T,
        )
        .unwrap();
    let label = shown[0].as_str().unwrap();
    let index: u16 = label["frame ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        shown[2].as_u64().unwrap() > 0,
        "the frame is drawn: {shown}"
    );
    // The frame on screen is the frame it says, and decodes.
    let b64 = shown[1]
        .as_str()
        .unwrap()
        .strip_prefix("data:image/png;base64,")
        .unwrap();
    let png = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
    let img = mycelium::qr::image::load(&png).unwrap();
    let big = image::imageops::resize(
        &img,
        img.width() * 4,
        img.height() * 4,
        image::imageops::FilterType::Nearest,
    );
    let texts = mycelium::qr::image::scan(&big);
    let frame = mycelium::qr::Frame::from_text(&texts[0]).unwrap();
    assert_eq!(frame.index + 1, index, "{label}");
    assert_eq!(
        hex::encode(&frame.seq[..6]),
        ex["sequence"].as_str().unwrap()
    );
}
