//! A tiny headless-Chromium driver over the DevTools protocol, for integration tests that
//! check the node's status page in a real browser. Synchronous: one child process, one
//! WebSocket to the page target, request/reply matched by `id`.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// How long `launch` may take in all: start Chromium, find the page, wait for it to load.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium showing one page. Dropping it kills the browser.
#[allow(dead_code)]
pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Uncaught exceptions and `console.error` lines the page has produced, for error messages.
    page_errors: Vec<String>,
    /// Chromium's stderr lines, fed by a reader thread (kept so the pipe never fills).
    stderr: Receiver<String>,
    stderr_tail: Vec<String>,
    /// Removed on drop, after the browser is gone.
    _profile: tempfile::TempDir,
}

#[allow(dead_code)]
impl Browser {
    /// Start headless Chromium on `url` and connect to its page. Errs (saying to install
    /// chromium) if no chromium binary is on PATH.
    pub fn launch(url: &str) -> Result<Browser, String> {
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let binary = find_chromium().ok_or_else(|| {
            "no chromium binary (chromium, chromium-browser or google-chrome) on PATH: \
             install chromium (e.g. `apt-get install chromium`) to run the browser tests"
                .to_string()
        })?;
        let profile = tempfile::Builder::new()
            .prefix("mycelium-chromium-")
            .tempdir()
            .map_err(|e| format!("creating a temporary profile directory: {e}"))?;
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;

        // Drain stderr for the browser's whole life, a line at a time, over a channel.
        let (tx, stderr) = mpsc::channel();
        let Some(pipe) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("chromium's stderr was not captured".into());
        };
        std::thread::spawn(move || {
            let mut lines = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        // The receiver may be gone (browser dropped); keep draining regardless.
                        let _ = tx.send(text);
                    }
                }
            }
        });

        // Until the Browser exists (and its Drop kills the child), failures kill it here.
        let mut stderr_tail = Vec::new();
        let port = match wait_for_devtools(&stderr, &mut stderr_tail, profile.path(), deadline) {
            Ok(port) => port,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{e}; chromium stderr:\n{}", stderr_tail.join("\n")));
            }
        };
        let ws = match connect_page(port, &stderr, &mut stderr_tail, deadline) {
            Ok(ws) => ws,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{e}; chromium stderr:\n{}", stderr_tail.join("\n")));
            }
        };
        let mut browser = Browser {
            child,
            ws,
            next_id: 0,
            page_errors: Vec::new(),
            stderr,
            stderr_tail,
            _profile: profile,
        };
        browser.command("Runtime.enable", json!({}), deadline)?;
        browser.wait_loaded(url, deadline)?;
        Ok(browser)
    }

    /// Evaluate `expr` in the page, awaiting it if it is a Promise, and return its value
    /// (JSON; `null` for undefined). Errs on an exception or if it does not settle in time.
    pub fn eval(&mut self, expr: &str, timeout: Duration) -> Result<Value, String> {
        let reply = self.command(
            "Runtime.evaluate",
            json!({
                "expression": expr,
                "awaitPromise": true,
                "returnByValue": true,
                "userGesture": true,
            }),
            Instant::now() + timeout,
        )?;
        if let Some(details) = reply.get("exceptionDetails") {
            let what = details
                .pointer("/exception/description")
                .and_then(Value::as_str)
                .or_else(|| details.pointer("/exception/value").and_then(Value::as_str))
                .or_else(|| details.get("text").and_then(Value::as_str))
                .unwrap_or("(no description)");
            return Err(format!("evaluating `{}` threw: {what}", short(expr)));
        }
        Ok(reply
            .pointer("/result/value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Wait until the JS expression `js_condition` is truthy in the page, re-checking it on
    /// every DOM mutation and every 100 ms. Errs with the page's visible text if it is not
    /// true within `timeout`.
    pub fn wait_for(&mut self, js_condition: &str, timeout: Duration) -> Result<(), String> {
        let ms = timeout.as_millis();
        let script = format!(
            r"new Promise((resolve) => {{
  let lastError = null;
  const check = () => {{
    try {{ return !!(
{js_condition}
); }} catch (e) {{ lastError = String(e); return false; }}
  }};
  if (check()) {{ resolve({{ok: true}}); return; }}
  let finished = false;
  const observer = new MutationObserver(() => {{ if (check()) done(true); }});
  const interval = setInterval(() => {{ if (check()) done(true); }}, 100);
  const timer = setTimeout(() => done(check()), {ms});
  function done(ok) {{
    if (finished) return;
    finished = true;
    observer.disconnect(); clearInterval(interval); clearTimeout(timer);
    resolve({{ok, lastError}});
  }}
  observer.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
}})"
        );
        // The page-side timer decides; the Rust-side deadline is only a backstop.
        let result = self.eval(&script, timeout + Duration::from_secs(5))?;
        if result.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let mut message = format!("timed out after {timeout:?} waiting for `{js_condition}`");
        if let Some(e) = result.get("lastError").and_then(Value::as_str) {
            message += &format!("\nlast error from the condition: {e}");
        }
        let text = self
            .eval(
                "document.body ? document.body.innerText.slice(0, 2000) : '(no body)'",
                Duration::from_secs(5),
            )
            .map(|v| v.as_str().unwrap_or("").to_string())
            .unwrap_or_else(|e| format!("(could not read the page: {e})"));
        message += &format!("\npage text:\n{text}");
        Err(self.with_page_errors(message))
    }

    /// Send one DevTools command and return its `result`, skipping events (but remembering
    /// page errors among them) until the reply with our id arrives or `deadline` passes.
    fn command(&mut self, method: &str, params: Value, deadline: Instant) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(request))
            .map_err(|e| self.with_page_errors(format!("sending {method} to chromium: {e}")))?;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.with_page_errors(format!("no reply to {method} in time")));
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.ws
                .get_mut()
                .set_read_timeout(Some(left))
                .map_err(|e| format!("setting the socket timeout: {e}"))?;
            let message = match self.ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue; // the deadline check above ends this
                }
                Err(e) => {
                    return Err(
                        self.with_page_errors(format!("reading chromium's reply to {method}: {e}"))
                    )
                }
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(_) => {
                    return Err(self.with_page_errors(format!(
                        "chromium closed the connection while waiting for {method}"
                    )))
                }
                _ => continue,
            };
            let reply: Value = serde_json::from_str(text.as_str())
                .map_err(|e| format!("chromium sent bad JSON ({e}): {}", short(text.as_str())))?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                self.note_event(&reply);
                continue;
            }
            if let Some(error) = reply.get("error") {
                return Err(self.with_page_errors(format!("{method} failed: {error}")));
            }
            return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// Remember uncaught exceptions and console errors, so failures can show them.
    fn note_event(&mut self, event: &Value) {
        let params = event.get("params");
        let line = match event.get("method").and_then(Value::as_str) {
            Some("Runtime.exceptionThrown") => params
                .and_then(|p| {
                    p.pointer("/exceptionDetails/exception/description")
                        .or_else(|| p.pointer("/exceptionDetails/text"))
                })
                .and_then(Value::as_str)
                .map(|d| format!("uncaught: {d}")),
            Some("Runtime.consoleAPICalled")
                if params.and_then(|p| p.get("type")).and_then(Value::as_str) == Some("error") =>
            {
                let args = params
                    .and_then(|p| p.get("args"))
                    .and_then(Value::as_array)
                    .map(|args| {
                        args.iter()
                            .map(|a| match a.get("value") {
                                Some(Value::String(s)) => s.clone(),
                                Some(v) => v.to_string(),
                                None => a
                                    .get("description")
                                    .and_then(Value::as_str)
                                    .unwrap_or("?")
                                    .to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                Some(format!("console.error: {args}"))
            }
            _ => None,
        };
        if let Some(line) = line {
            if self.page_errors.len() < 50 {
                self.page_errors.push(line);
            }
        }
    }

    fn with_page_errors(&mut self, mut message: String) -> String {
        if !self.page_errors.is_empty() {
            message += "\npage errors:\n";
            message += &self.page_errors.join("\n");
        }
        if self.child.try_wait().ok().flatten().is_some() {
            while let Ok(line) = self.stderr.try_recv() {
                push_tail(&mut self.stderr_tail, line);
            }
            message += "\nchromium has exited; its stderr:\n";
            message += &self.stderr_tail.join("\n");
        }
        message
    }

    /// Wait until the page given on the command line (not the initial about:blank) has
    /// loaded. A navigation in between destroys the context we evaluate in; retry then.
    fn wait_loaded(&mut self, url: &str, deadline: Instant) -> Result<(), String> {
        let script = "new Promise((resolve) => { \
            const ready = () => resolve(location.href); \
            if (document.readyState === 'complete') ready(); \
            else addEventListener('load', ready); })";
        let mut last = String::new();
        for _ in 0..100 {
            if Instant::now() >= deadline {
                break;
            }
            match self.eval(script, deadline.saturating_duration_since(Instant::now())) {
                Ok(Value::String(href)) if href.starts_with("chrome-error:") => {
                    return Err(format!("chromium could not load {url}"));
                }
                Ok(Value::String(href)) if href != "about:blank" => return Ok(()),
                Ok(v) => last = format!("still at {v}"),
                Err(e) => last = e,
            }
            // Wait for the navigation to move on: a bounded pause, only here.
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{url} did not finish loading in {LAUNCH_TIMEOUT:?}: {last}"
        ))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask Chromium to quit, then wait (bounded) until every process that holds its stderr
        // (the browser and its helpers) has gone: the reader thread then drops its sender.
        // Killing only the main process would leave helpers behind for a few seconds.
        self.next_id += 1;
        let close = json!({"id": self.next_id, "method": "Browser.close"}).to_string();
        if self.ws.send(Message::text(close)).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.stderr.recv_timeout(left) {
                    Ok(_) => continue,
                    Err(_) => break, // all gone, or out of patience
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

fn push_tail(tail: &mut Vec<String>, line: String) {
    if tail.len() >= 40 {
        tail.remove(0);
    }
    tail.push(line);
}

/// Wait for Chromium's "DevTools listening on" line, then read the port it chose from the
/// `DevToolsActivePort` file in the profile (written at the same time); fall back to the
/// port in the line itself.
fn wait_for_devtools(
    stderr: &Receiver<String>,
    tail: &mut Vec<String>,
    profile: &Path,
    deadline: Instant,
) -> Result<u16, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match stderr.recv_timeout(left) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "chromium did not open DevTools within {LAUNCH_TIMEOUT:?}"
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("chromium exited before opening DevTools".into())
            }
        };
        push_tail(tail, line.clone());
        let Some(at) = line.find("DevTools listening on ") else {
            continue;
        };
        if let Ok(contents) = std::fs::read_to_string(profile.join("DevToolsActivePort")) {
            if let Some(port) = contents.lines().next().and_then(|l| l.trim().parse().ok()) {
                return Ok(port);
            }
        }
        // ws://127.0.0.1:PORT/devtools/browser/UUID
        let url = &line[at + "DevTools listening on ".len()..];
        return url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|host| host.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| format!("no port in chromium's line {line:?}"));
    }
}

/// Find the page target in `/json/list` (it may take a moment to appear) and open a
/// WebSocket to it.
fn connect_page(
    port: u16,
    stderr: &Receiver<String>,
    tail: &mut Vec<String>,
    deadline: Instant,
) -> Result<WebSocket<TcpStream>, String> {
    let mut last = String::new();
    let mut ws_url = None;
    for _ in 0..100 {
        match http_get_json(port, "/json/list") {
            Ok(Value::Array(targets)) => {
                ws_url = targets
                    .iter()
                    .filter(|t| t.get("type").and_then(Value::as_str) == Some("page"))
                    .find_map(|t| t.get("webSocketDebuggerUrl").and_then(Value::as_str))
                    .map(str::to_string);
                if ws_url.is_some() {
                    break;
                }
                last = format!("no page among {} targets", targets.len());
            }
            Ok(other) => {
                last = format!(
                    "unexpected /json/list answer: {}",
                    short(&other.to_string())
                )
            }
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            break;
        }
        // Bounded wait before asking again: use the stderr channel as the clock.
        match stderr.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => push_tail(tail, line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err("chromium exited while looking for its page".into())
            }
        }
    }
    let ws_url = ws_url.ok_or_else(|| format!("no page target in chromium: {last}"))?;

    let stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connecting to chromium's DevTools port {port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(10))))
        .map_err(|e| format!("setting socket timeouts: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (ws, _response) = tungstenite::client::client(ws_url.as_str(), stream)
        .map_err(|e| format!("WebSocket handshake with {ws_url}: {e}"))?;
    Ok(ws)
}

/// A minimal HTTP GET to Chromium's DevTools endpoint, parsed as JSON. (Chromium's server
/// refuses HTTP/1.0, so this is HTTP/1.1 reading exactly `Content-Length` bytes.)
fn http_get_json(port: u16, path: &str) -> Result<Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("setting socket timeouts: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending GET {path}: {e}"))?;
    // Read until the headers and `Content-Length` bytes of body are in (or, without a
    // length, until the server closes).
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let (head, body) = loop {
        let split = response.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = split {
            let head = String::from_utf8_lossy(&response[..end]).to_string();
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then_some(())?;
                value.trim().parse::<usize>().ok()
            });
            if let Some(length) = length {
                if response.len() >= end + 4 + length {
                    break (head, response[end + 4..end + 4 + length].to_vec());
                }
            }
        }
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading GET {path}: {e}"))?;
        if n == 0 {
            let Some(end) = split else {
                return Err(format!(
                    "GET {path}: connection closed mid-answer: {}",
                    short(&String::from_utf8_lossy(&response))
                ));
            };
            break (
                String::from_utf8_lossy(&response[..end]).to_string(),
                response[end + 4..].to_vec(),
            );
        }
        response.extend_from_slice(&buf[..n]);
    };
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("GET {path}: {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| {
        format!(
            "GET {path}: bad JSON ({e}): {}",
            short(&String::from_utf8_lossy(&body))
        )
    })
}

fn short(s: &str) -> String {
    match s.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}
