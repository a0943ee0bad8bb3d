//! The status page in a real headless browser (Debian's `chromium`, over the DevTools
//! protocol): it loads, shows the node ID, shows a message that arrived while it was open,
//! and sends one. And the API's doors: the token, and loopback host names only.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

mod common;
use common::browser::Browser;
use common::daemon::Daemon;
use common::{json, my};

const T: Duration = Duration::from_secs(60);

fn init(h: &Path) -> String {
    my(h).arg("init").assert().success();
    json(h, &["id"])["node_id"].as_str().unwrap().to_string()
}

#[test]
fn the_page_shows_the_node_and_a_message_that_arrives_while_it_is_open() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let (a_id, b_id) = (init(&a), init(&b));
    let d = Daemon::start(&b, &["--http", "127.0.0.1:0"]);
    let http = d.started["http"].as_str().unwrap().to_string();
    let mut page = Browser::launch(&format!("http://{http}/")).unwrap();
    page.wait_for(
        &format!("document.querySelector('#node').textContent.includes({b_id:?})"),
        T,
    )
    .unwrap();
    page.wait_for("window.mycelium && window.mycelium.live === true", T)
        .unwrap();

    // A message from A arrives over QUIC while the page is open.
    my(&a)
        .args([
            "send",
            "--no-seal",
            "--to",
            &b_id,
            "--text",
            "hello <b>page</b>",
        ])
        .assert()
        .success();
    my(&a).args(["sync", &d.addr()]).assert().success();
    page.wait_for(
        "document.querySelector('#inbox').textContent.includes('hello <b>page</b>')",
        T,
    )
    .unwrap();
    // Shown as text, not markup.
    let bold = page
        .eval("document.querySelectorAll('#inbox b').length", T)
        .unwrap();
    assert_eq!(bold, 0);

    // The person at the node answers from the page.
    page.eval(
        &format!(
            "document.querySelector('#send-to').value = {a_id:?};
             document.querySelector('#send-text').value = 'answer from the page';
             document.querySelector('#send-form').requestSubmit(); true"
        ),
        T,
    )
    .unwrap();
    page.wait_for(
        "document.querySelector('#send-result').textContent.includes('sent')",
        T,
    )
    .unwrap();
    drop(page);
    let list = json(&b, &["list"]).to_string();
    assert!(list.contains(&a_id), "{list}");
    assert!(d.stop().success());
}

/// One HTTP/1.1 request by hand: (status, body).
fn get(addr: &str, path: &str, host: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let status = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, r)
}

#[test]
fn the_api_over_tcp_needs_its_token_or_a_loopback_name() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("b");
    let b_id = init(&b);
    let d = Daemon::start(&b, &["--http", "127.0.0.1:0", "--http-token", "s3cret"]);
    let http = d.started["http"].as_str().unwrap().to_string();
    assert_eq!(get(&http, "/api/status", &http).0, 401);
    assert_eq!(get(&http, "/api/status?token=wrong", &http).0, 401);
    let (code, body) = get(&http, "/api/status?token=s3cret", &http);
    assert_eq!(code, 200);
    assert!(body.contains(&b_id));
    // The token opens the page's API, not the CLI: commands run only on the socket.
    let mut c = std::net::TcpStream::connect(&http).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let req = r#"{"argv":["list"],"cwd":"/"}"#;
    write!(
        c,
        "POST /v1/run?token=s3cret HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{req}",
        req.len()
    )
    .unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    drop(d);

    let d = Daemon::start(&b, &["--http", "127.0.0.1:0"]);
    let http = d.started["http"].as_str().unwrap().to_string();
    assert_eq!(get(&http, "/api/status", &http).0, 200);
    // A web page under another name resolving to 127.0.0.1 (DNS rebinding) is refused.
    assert_eq!(get(&http, "/api/inbox", "evil.example:80").0, 403);
    drop(d);

    // Beyond loopback without a token, serve refuses to start.
    my(&b)
        .args(["serve", "--listen", "off", "--http", "0.0.0.0:0"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("token"));
}
