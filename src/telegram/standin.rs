//! A stand-in for Telegram's Bot API on loopback, for the tests and the demo, which run
//! where the real one cannot be reached: long-polled `getUpdates` from a queue its user
//! fills (as chats would), `sendMessage`, `sendDocument`, `sendPhoto` (multipart uploads),
//! `getFile` and file downloads, with Telegram's length limits. It records what the bot
//! sent, can play a proxy that drops every request, and chats that blocked the bot. Never
//! part of a running bridge: `serve --telegram` talks to the URL it is given.

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One thing the bot sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: String,
    pub chat: i64,
    pub text: Option<String>,
    pub caption: Option<String>,
    /// Uploaded file: name and bytes.
    pub file: Option<(String, Vec<u8>)>,
}

#[derive(Default)]
struct Inner {
    next_update: i64,
    /// Updates not yet confirmed by an offset past them.
    updates: Vec<Value>,
    sent: Vec<Sent>,
    files: HashMap<String, Vec<u8>>,
    down: bool,
    /// Chats that blocked the bot: sending to them is refused (403).
    blocked: Vec<i64>,
    /// The offsets `getUpdates` was called with.
    offsets: Vec<i64>,
}

struct Shared {
    token: String,
    inner: Mutex<Inner>,
    sent_cv: Condvar,
    updates: tokio::sync::Notify,
}

type St = Arc<Shared>;

pub struct StandIn {
    pub url: String,
    shared: St,
    _rt: tokio::runtime::Runtime,
}

fn ok(result: Value) -> Response {
    Json(json!({"ok": true, "result": result})).into_response()
}

fn refuse(code: u16, description: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        Json(json!({"ok": false, "error_code": code, "description": description})),
    )
        .into_response()
}

fn dropped() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        "proxy: upstream connection dropped",
    )
        .into_response()
}

fn message_json(chat: i64) -> Value {
    json!({"message_id": 1, "date": 0, "chat": {"id": chat, "type": "private"}})
}

async fn method(
    State(s): State<St>,
    Path((bot, method)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if s.inner.lock().unwrap_or_else(|p| p.into_inner()).down {
        return dropped();
    }
    if bot != format!("bot{}", s.token) {
        return refuse(401, "Unauthorized");
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match method.as_str() {
        "getUpdates" => {
            let offset = v["offset"].as_i64().unwrap_or(0);
            let wait = v["timeout"].as_u64().unwrap_or(0).min(30);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
            loop {
                let notified = s.updates.notified();
                {
                    let mut i = s.inner.lock().unwrap_or_else(|p| p.into_inner());
                    if i.down {
                        return dropped();
                    }
                    i.offsets.push(offset);
                    // An offset confirms every update before it: they are gone.
                    i.updates
                        .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
                    if !i.updates.is_empty() {
                        return ok(Value::Array(i.updates.clone()));
                    }
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return ok(json!([]));
                }
            }
        }
        "sendMessage" => {
            let chat = v["chat_id"].as_i64().unwrap_or(0);
            let text = v["text"].as_str().unwrap_or_default().to_string();
            if let Some(r) = blocked(&s, chat) {
                return r;
            }
            if text.encode_utf16().count() > 4096 {
                return refuse(400, "Bad Request: message is too long");
            }
            record(
                &s,
                Sent {
                    method,
                    chat,
                    text: Some(text),
                    caption: None,
                    file: None,
                },
            );
            ok(message_json(chat))
        }
        "getFile" => {
            let id = v["file_id"].as_str().unwrap_or_default().to_string();
            let i = s.inner.lock().unwrap_or_else(|p| p.into_inner());
            match i.files.get(&id) {
                Some(d) => ok(json!({"file_id": id, "file_unique_id": id,
                                     "file_size": d.len(), "file_path": format!("documents/{id}")})),
                None => refuse(400, "Bad Request: invalid file_id"),
            }
        }
        _ => refuse(404, "Not Found"),
    }
}

async fn upload(
    State(s): State<St>,
    Path((bot, method)): Path<(String, String)>,
    mut form: Multipart,
) -> Response {
    if s.inner.lock().unwrap_or_else(|p| p.into_inner()).down {
        return dropped();
    }
    if bot != format!("bot{}", s.token) {
        return refuse(401, "Unauthorized");
    }
    let (mut chat, mut caption, mut file) = (0i64, None, None);
    while let Ok(Some(f)) = form.next_field().await {
        let name = f.name().unwrap_or_default().to_string();
        let file_name = f.file_name().map(str::to_string);
        let data = f.bytes().await.unwrap_or_default().to_vec();
        match name.as_str() {
            "chat_id" => chat = String::from_utf8_lossy(&data).parse().unwrap_or(0),
            "caption" => caption = Some(String::from_utf8_lossy(&data).into_owned()),
            "document" | "photo" => file = Some((file_name.unwrap_or_default(), data)),
            _ => {}
        }
    }
    if let Some(r) = blocked(&s, chat) {
        return r;
    }
    if caption
        .as_deref()
        .is_some_and(|c| c.encode_utf16().count() > 1024)
    {
        return refuse(400, "Bad Request: message caption is too long");
    }
    record(
        &s,
        Sent {
            method,
            chat,
            text: None,
            caption,
            file,
        },
    );
    ok(message_json(chat))
}

async fn download(State(s): State<St>, Path((bot, path)): Path<(String, String)>) -> Response {
    if bot != format!("bot{}", s.token) {
        return refuse(401, "Unauthorized");
    }
    let id = path.trim_start_matches("documents/").to_string();
    match s
        .inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .files
        .get(&id)
    {
        Some(d) => d.clone().into_response(),
        None => refuse(404, "Not Found"),
    }
}

/// Telegram's answer to a send to a chat that blocked the bot.
fn blocked(s: &St, chat: i64) -> Option<Response> {
    let i = s.inner.lock().unwrap_or_else(|p| p.into_inner());
    i.blocked
        .contains(&chat)
        .then(|| refuse(403, "Forbidden: bot was blocked by the user"))
}

fn record(s: &St, sent: Sent) {
    s.inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sent
        .push(sent);
    s.sent_cv.notify_all();
}

async fn route(st: State<St>, p: Path<(String, String)>, req: axum::extract::Request) -> Response {
    let multipart = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        match <Multipart as axum::extract::FromRequest<St>>::from_request(req, &st.0).await {
            Ok(form) => upload(st, p, form).await,
            Err(_) => refuse(400, "Bad Request: bad multipart"),
        }
    } else {
        match axum::body::to_bytes(req.into_body(), 64 << 20).await {
            Ok(b) => method(st, p, b).await,
            Err(_) => refuse(400, "Bad Request"),
        }
    }
}

impl StandIn {
    /// Serve on a free loopback port, on a runtime of its own.
    pub fn start(token: &str) -> std::io::Result<StandIn> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            token: token.to_string(),
            inner: Mutex::new(Inner {
                next_update: 100,
                ..Default::default()
            }),
            sent_cv: Condvar::new(),
            updates: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .route("/{bot}/{method}", post(route))
            .route("/file/{bot}/{*path}", get(download))
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
            .with_state(shared.clone());
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(StandIn {
            url: format!("http://{addr}"),
            shared,
            _rt: rt,
        })
    }

    fn push(&self, mut message: Value, chat: i64) -> i64 {
        let mut i = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = i.next_update;
        i.next_update += 1;
        message["message_id"] = json!(id);
        message["date"] = json!(0);
        message["chat"] = json!({"id": chat, "type": "private"});
        message["from"] = json!({"id": chat, "is_bot": false, "first_name": "Tester"});
        i.updates.push(json!({"update_id": id, "message": message}));
        drop(i);
        self.shared.updates.notify_waiters();
        id
    }

    /// A chat writes `text` to the bot; returns the update ID.
    pub fn say(&self, chat: i64, text: &str) -> i64 {
        self.push(json!({"text": text}), chat)
    }

    /// A chat sends a document with a caption.
    pub fn document(&self, chat: i64, name: &str, mime: &str, data: &[u8], caption: &str) -> i64 {
        let id = {
            let mut i = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            let id = format!("doc{}", i.files.len());
            i.files.insert(id.clone(), data.to_vec());
            id
        };
        self.push(
            json!({"caption": caption, "document": {"file_id": id, "file_unique_id": id,
                   "file_name": name, "mime_type": mime, "file_size": data.len()}}),
            chat,
        )
    }

    /// A chat sends a photo (Telegram offers it in two sizes; `data` is the larger).
    pub fn photo(&self, chat: i64, data: &[u8], caption: &str) -> i64 {
        let (small, large) = {
            let mut i = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            let n = i.files.len();
            let (small, large) = (format!("pic{n}s"), format!("pic{n}l"));
            i.files
                .insert(small.clone(), data[..data.len().min(16)].to_vec());
            i.files.insert(large.clone(), data.to_vec());
            (small, large)
        };
        self.push(
            json!({"caption": caption, "photo": [
                {"file_id": small, "file_unique_id": small, "width": 90, "height": 90, "file_size": 16},
                {"file_id": large, "file_unique_id": large, "width": 800, "height": 600,
                 "file_size": data.len()}]}),
            chat,
        )
    }

    /// A chat sends a document whose size Telegram reports as `size` (never fetched).
    pub fn big_document(&self, chat: i64, size: u64, caption: &str) -> i64 {
        self.push(
            json!({"caption": caption, "document": {"file_id": "big", "file_unique_id": "big",
                   "file_name": "big.bin", "file_size": size}}),
            chat,
        )
    }

    /// Play a proxy that drops every request (`true`), or let them through.
    pub fn set_down(&self, down: bool) {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .down = down;
        self.shared.updates.notify_waiters();
    }

    /// The chat blocks the bot: what is sent to it is refused from now on.
    pub fn block(&self, chat: i64) {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .blocked
            .push(chat);
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sent
            .clone()
    }

    /// Offsets `getUpdates` was called with, in order.
    pub fn offsets(&self) -> Vec<i64> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offsets
            .clone()
    }

    /// Updates not yet confirmed.
    pub fn pending(&self) -> usize {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .updates
            .len()
    }

    /// Wait until the bot has sent something `pred` accepts (looking at everything it
    /// sent, from the start); after `timeout`, an error listing what it did send.
    pub fn wait_sent(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Sent) -> bool,
    ) -> Result<Sent, String> {
        Ok(self.wait_n(what, timeout, 1, pred)?.swap_remove(0))
    }

    /// Wait until the bot has sent `n` things `pred` accepts; returns them all (the
    /// latest last).
    pub fn wait_n(
        &self,
        what: &str,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&Sent) -> bool,
    ) -> Result<Vec<Sent>, String> {
        let deadline = Instant::now() + timeout;
        let mut i = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let found: Vec<Sent> = i.sent.iter().filter(|s| pred(s)).cloned().collect();
            if found.len() >= n {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("the bot never sent {what}; it sent {:#?}", i.sent));
            }
            i = match self.shared.sent_cv.wait_timeout(i, left) {
                Ok(r) => r.0,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Texts sent to `chat`, in order.
    pub fn texts(&self, chat: i64) -> Vec<String> {
        self.sent()
            .into_iter()
            .filter(|s| s.chat == chat)
            .filter_map(|s| s.text)
            .collect()
    }
}
