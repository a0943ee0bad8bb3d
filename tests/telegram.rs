//! The Telegram bridge (`serve --telegram`), against a stand-in Bot API on loopback (the
//! real one cannot be reached from here; `common::telegram`): a chat's message goes chat →
//! bridge → stick → recipient and the answer comes back to the chat; who may link;
//! rate limits; hostile chats; restarts and a Bot API that drops requests.

use std::path::Path;
use std::time::Duration;

mod common;
use common::daemon::Daemon;
use common::telegram::{FakeBot, Sent};
use common::{json, my};

const T: Duration = Duration::from_secs(90);
const TOKEN: &str = "123456:test-token_ABC";

fn init(h: &Path) -> String {
    my(h).arg("init").assert().success();
    json(h, &["id"])["node_id"].as_str().unwrap().to_string()
}

/// `serve` with the bridge on, pointed at the stand-in.
fn serve(home: &Path, bot: &FakeBot) -> Daemon {
    let tok = home.join("bot-token");
    std::fs::write(&tok, format!("{TOKEN}\n")).unwrap();
    Daemon::start(
        home,
        &[
            "--telegram",
            "--telegram-token-file",
            tok.to_str().unwrap(),
            "--telegram-api",
            &bot.url,
        ],
    )
}

fn text_has(chat: i64, what: &'static str) -> impl Fn(&Sent) -> bool {
    move |s: &Sent| s.chat == chat && s.text.as_deref().is_some_and(|t| t.contains(what))
}

/// The node ID in a `/start` or `/id` answer.
fn node_in(s: &Sent) -> String {
    let t = s.text.as_deref().unwrap();
    t.lines()
        .find(|l| l.starts_with("dtn://"))
        .unwrap_or_else(|| panic!("no node ID in {t:?}"))
        .trim()
        .to_string()
}

fn link(bot: &FakeBot, chat: i64, invite: Option<&str>) -> String {
    bot.say(chat, &format!("/start {}", invite.unwrap_or("")));
    node_in(&bot.wait_sent("a welcome", T, text_has(chat, "Welcome")))
}

fn count(bot: &FakeBot, chat: i64, what: &str) -> usize {
    bot.texts(chat).iter().filter(|t| t.contains(what)).count()
}

/// Carry everything `from` would export to `to` on a fresh stick folder.
fn stick(from: &Path, to: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    my(from)
        .args(["export", dir.to_str().unwrap()])
        .assert()
        .success();
    my(to)
        .args(["import", dir.to_str().unwrap()])
        .assert()
        .success();
}

/// A gateway G that allows chat 1001, a mesh node R, the stand-in Bot API: (temp dir,
/// G's home, R's home, G's node ID, R's node ID, the stand-in).
fn gateway_and_recipient() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
    String,
    FakeBot,
) {
    let t = tempfile::tempdir().unwrap();
    let (g, r) = (t.path().join("g"), t.path().join("r"));
    let gid = init(&g);
    let rid = init(&r);
    my(&g)
        .args(["telegram", "allow", "1001"])
        .assert()
        .success();
    (t, g, r, gid, rid, FakeBot::start(TOKEN))
}

fn inbox(h: &Path) -> Vec<serde_json::Value> {
    json(h, &["inbox"]).as_array().unwrap().clone()
}

/// "Done when": the round trip chat → mesh → chat. A chat links, sends a text and a file
/// to a mesh node by node ID; they travel on a stick to that node, which reads them and
/// answers with a text and a picture; the answer comes back on a stick and the bridge
/// pushes both to the chat. The recipient's receipts make the chat's identity drop its
/// private copies, and the chat's store (opened once the daemon stops) holds its own
/// mail and nothing of the gateway's.
#[test]
fn a_message_goes_chat_to_mesh_by_stick_and_the_answer_comes_back() {
    let (t, g, r, gid, rid, bot) = gateway_and_recipient();
    let d = serve(&g, &bot);

    let chat_id = link(&bot, 1001, None);
    assert_ne!(chat_id, gid, "a chat gets its own identity");
    bot.say(1001, "/id");
    // The welcome said it first; /id says it again.
    let ids = bot.wait_n("the /id answer", T, 2, text_has(1001, "Your node ID"));
    assert_eq!(node_in(&ids[1]), chat_id);
    bot.say(1001, &format!("/send {rid} hello from telegram"));
    bot.wait_sent("the send's answer", T, text_has(1001, "Sent to"));
    let notes = b"line one\nline two\n".repeat(100);
    // The caption names the recipient by its bare 52 characters.
    let bare = rid.trim_start_matches("dtn://").trim_end_matches('/');
    bot.document(
        1001,
        "notes.txt",
        "text/plain",
        &notes,
        &format!("{bare} the notes"),
    );
    let sent = bot.wait_n("the file's answer", T, 2, text_has(1001, "Sent to"));
    assert!(sent[1].text.as_deref().unwrap().contains(&rid));
    // A photo: the largest size Telegram offers is the one sent.
    let jpeg: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    bot.photo(1001, &jpeg, &rid);
    bot.wait_n("the photo's answer", T, 3, text_has(1001, "Sent to"));

    // Gateway → stick → recipient.
    stick(&g, &r, &t.path().join("stick1"));
    let got = inbox(&r);
    let from_chat: Vec<&serde_json::Value> = got
        .iter()
        .filter(|m| m["source"] == chat_id.as_str())
        .collect();
    assert_eq!(from_chat.len(), 4, "text, file, caption, photo: {got:#?}");
    let pic = from_chat
        .iter()
        .find(|m| m["message"]["file"]["name"] == "photo.jpg")
        .expect("the photo arrived");
    assert_eq!(pic["message"]["file"]["size"], jpeg.len());
    assert_eq!(pic["message"]["file"]["media_type"], "image/jpeg");
    assert!(from_chat
        .iter()
        .any(|m| m["message"]["text"] == "hello from telegram"));
    assert!(from_chat
        .iter()
        .any(|m| m["message"]["text"] == "the notes"));
    let file = from_chat
        .iter()
        .find(|m| m["message"]["file"]["name"] == "notes.txt")
        .expect("the file arrived");
    assert_eq!(file["message"]["file"]["size"], notes.len());
    assert_eq!(file["message"]["file"]["media_type"], "text/plain");

    // The answer: a text and a picture, back by stick.
    my(&r)
        .args(["send", "--to", &chat_id, "--text", "reply from the mesh"])
        .assert()
        .success();
    let png = t.path().join("pic.png");
    let mut img = image::RgbImage::new(32, 32);
    img.put_pixel(3, 3, image::Rgb([250, 10, 10]));
    img.save(&png).unwrap();
    let png_bytes = std::fs::read(&png).unwrap();
    my(&r)
        .args(["send", "--to", &chat_id, "--file"])
        .arg(&png)
        .args(["--media-type", "image/png"])
        .assert()
        .success();
    // And a document (not a picture: it goes as one).
    let doc = t.path().join("report.csv");
    std::fs::write(&doc, b"a,b\n1,2\n").unwrap();
    my(&r)
        .args(["send", "--to", &chat_id, "--file"])
        .arg(&doc)
        .args(["--media-type", "text/csv"])
        .assert()
        .success();
    stick(&r, &g, &t.path().join("stick2"));
    let pushed = bot.wait_sent(
        "the answer pushed",
        T,
        text_has(1001, "reply from the mesh"),
    );
    assert!(pushed.text.unwrap().contains(&rid), "says who it is from");
    let photo = bot.wait_sent("the picture pushed", T, |s| {
        s.chat == 1001 && s.method == "sendPhoto"
    });
    let (name, data) = photo.file.unwrap();
    assert_eq!(name, "pic.png");
    assert_eq!(data, png_bytes, "the picture arrives byte for byte");
    assert!(photo.caption.unwrap().contains(&rid));
    let d2 = bot.wait_sent("the document pushed", T, |s| {
        s.chat == 1001 && s.method == "sendDocument"
    });
    assert_eq!(
        d2.file.unwrap(),
        ("report.csv".to_string(), b"a,b\n1,2\n".to_vec())
    );
    // Pushed once each.
    assert_eq!(count(&bot, 1001, "reply from the mesh"), 1);
    assert!(d.stop().success());

    // The chat's own store: its mail; its sent messages' private copies dropped once the
    // recipient's receipts came back; nothing else of the gateway's.
    let ch = g.join("telegram").join("1001");
    assert_eq!(json(&ch, &["id"])["node_id"], chat_id.as_str());
    let mail = inbox(&ch);
    assert!(mail
        .iter()
        .any(|m| m["message"]["text"] == "reply from the mesh"));
    let held = json(&ch, &["list"]);
    let to_r: Vec<_> = held
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["destination"] == rid.as_str())
        .collect();
    assert!(to_r.is_empty(), "delivered copies dropped: {to_r:#?}");
    // Not shown twice after a restart either.
    let d = serve(&g, &bot);
    bot.say(1001, "/id");
    bot.wait_n("a second /id answer", T, 3, text_has(1001, "Your node ID"));
    assert_eq!(count(&bot, 1001, "reply from the mesh"), 1);
    assert!(d.stop().success());
}

/// Only allowed or invited chats link; an invite links one chat; a flooding chat gets one
/// refusal and then silence; a hostile chat's words never become paths, other chats'
/// mail or the gateway's identity.
#[test]
fn who_may_link_rate_limits_and_hostile_chats() {
    let t = tempfile::tempdir().unwrap();
    let g = t.path().join("g");
    let gid = init(&g);
    std::fs::write(
        g.join("config.toml"),
        "[telegram]\nallow = [1001]\nper_minute = 10\n",
    )
    .unwrap();
    let bot = FakeBot::start(TOKEN);
    let d = serve(&g, &bot);

    // Not allowed, no code.
    bot.say(2002, "/start");
    bot.wait_sent("a refusal", T, text_has(2002, "may not use this bridge"));
    bot.say(2002, &format!("/send {gid} let me in"));
    bot.wait_n(
        "a second refusal",
        T,
        2,
        text_has(2002, "may not use this bridge"),
    );
    // An invite, made by the owner while the daemon runs (through its socket).
    let code = json(&g, &["telegram", "invite"])["code"]
        .as_str()
        .unwrap()
        .to_string();
    bot.say(2002, "/start not-the-code");
    bot.wait_sent("a bad code", T, text_has(2002, "not valid"));
    let id2 = link(&bot, 2002, Some(&code));
    bot.say(3003, &format!("/start {code}"));
    bot.wait_sent("a used code", T, text_has(3003, "not valid"));
    let id1 = link(&bot, 1001, None);
    let ids = [gid.as_str(), id1.as_str(), id2.as_str()];
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "every chat has its own identity, none the gateway's"
    );
    let linked = json(&g, &["telegram", "chats"]);
    assert_eq!(linked.as_array().unwrap().len(), 2);

    // 1001 writes to 2002 through the bridge itself: 2002 gets it, 1001's inbox and
    // pushes stay its own.
    bot.say(1001, &format!("/send {id2} psst, for 2002 only"));
    let got = bot.wait_sent("the message pushed to 2002", T, text_has(2002, "psst"));
    assert!(
        got.text.unwrap().contains(&id1),
        "signed by 1001's identity"
    );
    bot.say(1001, "/inbox");
    bot.wait_sent("1001's inbox", T, text_has(1001, "No messages yet"));
    bot.say(2002, "/inbox");
    bot.wait_sent("2002's inbox", T, text_has(2002, "1 message(s)"));
    assert_eq!(count(&bot, 1001, "psst"), 0);

    // Words that look like paths or flags stay words.
    bot.say(2002, "/send ../../identity.key give me the key");
    bot.wait_sent("a bad node ID", T, text_has(2002, "is not a node ID"));
    bot.say(2002, "/task digest --input /etc/hostname");
    let r = bot.wait_sent("the task's answer", T, text_has(2002, "Task not submitted"));
    assert!(r.text.unwrap().contains("no marketplace"));
    // A file bigger than the mesh carries is refused before it is fetched.
    bot.big_document(2002, 40 << 20, &id1);
    bot.wait_sent("a too-large file", T, text_has(2002, "16 MiB"));

    // Flood: 10 a minute. A chat nobody linked floods: ten refusals, one "too many",
    // then silence.
    for _ in 0..16 {
        bot.say(5005, "/id");
    }
    bot.say(1001, "/id");
    // (The welcome said "Your node ID" once already.)
    bot.wait_n("1001 still answered", T, 2, text_has(1001, "Your node ID"));
    let to5005 = bot.texts(5005);
    assert_eq!(
        to5005.iter().filter(|t| t.contains("may not use")).count(),
        10,
        "{to5005:#?}"
    );
    assert_eq!(
        to5005.iter().filter(|t| t.contains("Too many")).count(),
        1,
        "{to5005:#?}"
    );
    assert_eq!(to5005.len(), 11);
    // 1001 blocks the bot: what it cannot take stays in its inbox, and the queue of
    // pushes goes on to other chats.
    bot.block(1001);
    bot.say(2002, &format!("/send {id1} into a blocked chat"));
    bot.say(1001, &format!("/send {id2} from the blocked chat"));
    bot.wait_sent(
        "2002 still served",
        T,
        text_has(2002, "from the blocked chat"),
    );
    assert_eq!(count(&bot, 1001, "into a blocked chat"), 0);

    // No chat got the gateway's identity, and nothing went to a chat that never wrote.
    assert!(bot.sent().iter().all(|s| !s
        .text
        .as_deref()
        .unwrap_or_default()
        .contains(&format!("Your node ID:\n{gid}"))));
    assert!(bot
        .sent()
        .iter()
        .all(|s| [1001, 2002, 3003, 5005].contains(&s.chat)));
    assert!(d.stop().success());
}

/// Updates are neither lost nor handled twice across restarts (the offset is kept), and a
/// Bot API that drops every request stops nothing else: sticks still come and go, and
/// what arrived meanwhile reaches the chat once it answers again.
#[test]
fn restarts_and_a_dropping_proxy_lose_nothing_and_repeat_nothing() {
    let (t, g, r, _, rid, bot) = gateway_and_recipient();
    let d = serve(&g, &bot);
    let chat = link(&bot, 1001, None);
    let first = bot.say(1001, &format!("/send {rid} first"));
    bot.wait_sent("the first send", T, text_has(1001, "Sent to"));
    assert!(d.stop().success());
    let before = bot.offsets().len();

    // Written while the bridge is down.
    bot.say(1001, &format!("/send {rid} second"));
    let d = serve(&g, &bot);
    bot.wait_n("the second send", T, 2, text_has(1001, "Sent to"));
    // The restarted bridge asked from where it had stopped.
    let offsets = bot.offsets();
    assert!(
        offsets[before..].iter().all(|&o| o > first),
        "the restarted bridge asked for updates it had handled: {offsets:?}"
    );
    assert_eq!(count(&bot, 1001, "Sent to"), 2, "nothing handled twice");
    assert_eq!(count(&bot, 1001, "already"), 0);
    stick(&g, &r, &t.path().join("s1"));
    let texts: Vec<String> = inbox(&r)
        .iter()
        .filter(|m| m["source"] == chat.as_str())
        .filter_map(|m| m["message"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(texts, ["first", "second"]);

    // The proxy drops everything: the daemon says so and carries on.
    let mut ev = d.events();
    bot.set_down(true);
    ev.wait("the bridge saying the Bot API is down", T, |v| {
        v["type"] == "telegram" && v["up"] == false
    });
    my(&r)
        .args(["send", "--to", &chat, "--text", "while the proxy was down"])
        .assert()
        .success();
    // A stick comes and goes through the running daemon meanwhile.
    stick(&r, &g, &t.path().join("s2"));
    assert!(
        json(&g, &["inbox"]).as_array().unwrap().is_empty(),
        "the gateway's own inbox is not the chat's"
    );
    assert_eq!(count(&bot, 1001, "while the proxy"), 0);
    bot.set_down(false);
    bot.wait_sent(
        "the message pushed once the API is back",
        T,
        text_has(1001, "while the proxy"),
    );
    ev.wait("the bridge saying it answers again", T, |v| {
        v["type"] == "telegram" && v["up"] == true
    });
    assert!(d.stop().success());
    assert_eq!(count(&bot, 1001, "while the proxy"), 1);
    assert_eq!(bot.pending(), 0, "every update confirmed");
}

/// The wallet and the marketplace from a chat: a grant from the marketplace reaches the
/// chat's identity through the gateway's uplink and is pushed; a task typed in the chat is
/// paid from that wallet, travels up, is run by a worker (the gateway's own), judged, and
/// the verdict with the output comes back to the chat.
#[test]
fn a_task_from_a_chat_goes_round_the_marketplace() {
    let t = tempfile::tempdir().unwrap();
    let (m, g) = (t.path().join("m"), t.path().join("g"));
    let m_id = init(&m);
    init(&g);
    my(&g).args(["market", "use", &m_id]).assert().success();
    json(&g, &["worker", "offer", "--kinds", "digest"]);
    my(&g)
        .args(["telegram", "allow", "1001"])
        .assert()
        .success();
    std::fs::write(
        g.join("config.toml"),
        "[telegram]\ntask_reward = 4\ntask_workers = 1\n",
    )
    .unwrap();
    let md = Daemon::start_cmd(&m, &["market", "serve"], &[]);
    let bot = FakeBot::start(TOKEN);
    let tok = g.join("bot-token");
    std::fs::write(&tok, TOKEN).unwrap();
    let gd = Daemon::start(
        &g,
        &[
            "--telegram",
            "--telegram-token-file",
            tok.to_str().unwrap(),
            "--telegram-api",
            &bot.url,
            "--worker",
            "--upstream",
            &md.addr(),
            "--upstream-expect",
            &m_id,
            "--upstream-interval",
            "1s",
        ],
    );
    let chat = link(&bot, 1001, None);
    bot.say(1001, "/task digest words to digest");
    let r = bot.wait_sent("a refused task", T, text_has(1001, "Task not submitted"));
    assert!(r.text.unwrap().contains("can spend 0 credits"));

    // The marketplace grants the chat's identity credits; the uplink brings them.
    json(&m, &["market", "grant", "--to", &chat, "--amount", "50"]);
    let p = bot.wait_sent("the grant pushed", T, text_has(1001, "50 credits from"));
    assert!(p.text.unwrap().contains(&m_id[6..18]), "names the payer");
    bot.say(1001, "/wallet");
    bot.wait_sent("the wallet", T, text_has(1001, "Balance: 50"));

    bot.say(1001, "/task digest words to digest");
    let s = bot.wait_sent("the task submitted", T, text_has(1001, "held in escrow"));
    assert!(s.text.unwrap().contains("(4 credits held in escrow"));
    let digest = blake3::hash(b"words to digest").to_hex().to_string();
    let v = bot.wait_sent("the verdict pushed", T, |s| {
        s.chat == 1001 && s.text.as_deref().is_some_and(|t| t.contains("accepted"))
    });
    let v = v.text.unwrap();
    assert!(v.contains(&digest), "{v}");
    assert!(v.contains("1 of 1 workers agreed"), "{v}");
    bot.say(1001, "/wallet");
    bot.wait_sent("the wallet after paying", T, text_has(1001, "Balance: 46"));
    assert!(gd.stop().success());
    assert!(md.stop().success());
}
