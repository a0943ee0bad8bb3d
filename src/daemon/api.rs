//! The local API: HTTP/JSON on the control socket (`<home>/daemon.sock`, 0600) and, with
//! `serve --http`, on a TCP address for the status page.
//!
//! - `POST /v1/run` `{"argv": [...], "cwd": "..."}` (control socket only): run a CLI
//!   command on the daemon's node; the answer streams NDJSON lines `{"out": text}`,
//!   `{"err": text}` and finally `{"exit": code}`. This is how every CLI command works
//!   while the daemon runs, with the same output and exit code as without it.
//! - `GET /api/status`: node, roles, peers, bundles by kind and priority class, feed
//!   progress, gateway budget, wallet, tasks.
//! - `GET /api/inbox`, `POST /api/send` `{"to", "text"}`: as `inbox --json` and `send --json`.
//! - `GET /api/events`: the [`Event`] stream as server-sent events.
//! - `GET /`: the status page.
//!
//! Over TCP, a token (when set) is required on every request (`?token=` or
//! `Authorization: Bearer`); without one, only loopback host names are answered (a web
//! page elsewhere cannot reach the API by DNS rebinding).

use super::{Hub, Output, Runner, Shared};
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

const PAGE: &str = include_str!("page.html");

#[derive(Clone)]
pub struct State {
    pub node: Arc<Node>,
    pub hub: Hub,
    pub shared: Arc<Shared>,
    pub runner: Option<Runner>,
    /// Served over TCP (the status page): needs the token, or a loopback host name.
    pub tcp: bool,
    /// Over TCP: what every request must carry (`None`: loopback host names only).
    pub token: Option<String>,
}

/// The API's routes. Over TCP (`state.tcp`) every request is checked for the token or a
/// loopback host name; the control socket needs neither (its file mode is the access
/// control).
pub fn router(state: State) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/v1/status", get(status))
        .route("/api/inbox", get(inbox))
        .route("/api/send", post(send))
        .route("/api/events", get(events))
        .route("/v1/run", post(run))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

async fn guard(Extract(s): Extract<State>, req: Request, next: Next) -> Response {
    if !s.tcp {
        return next.run(req).await;
    }
    match &s.token {
        Some(t) => {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let query = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="));
            let ok = [bearer, query]
                .into_iter()
                .flatten()
                .any(|given| constant_time_eq(given.as_bytes(), t.as_bytes()));
            // The page itself carries no secret; its API calls need the token.
            if !ok && req.uri().path() != "/" {
                return error(StatusCode::UNAUTHORIZED, "this node's API needs its token");
            }
        }
        None => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !loopback_host(host) {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "not answering for host {host:?}: open the page as http://127.0.0.1:PORT/"
                    ),
                );
            }
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT`.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// One piece of a command's output, or its end.
enum Frame {
    Out(String),
    Err(String),
    Exit(i32),
}

/// Run a CLI command on a thread of its own; its output arrives on the receiver.
fn spawn_command(
    s: &State,
    argv: Vec<String>,
    cwd: PathBuf,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Frame>, Box<Response>> {
    let Some(runner) = s.runner.clone() else {
        return Err(Box::new(error(
            StatusCode::NOT_IMPLEMENTED,
            "this daemon runs no CLI commands",
        )));
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let node = s.node.clone();
    std::thread::spawn(move || {
        let out = tx.clone();
        let sink = Box::new(move |o: Output, text: &str| {
            let _ = out.send(match o {
                Output::Out => Frame::Out(text.to_string()),
                Output::Err => Frame::Err(text.to_string()),
            });
        });
        // A command that panics is one failed command, not a cut connection.
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runner(node, argv, cwd, sink)
        }))
        .unwrap_or_else(|_| {
            let _ = tx.send(Frame::Err(
                "error: the command failed inside the daemon (a bug: see its log)\n".into(),
            ));
            101
        });
        let _ = tx.send(Frame::Exit(code));
    });
    Ok(rx)
}

/// Run a command to its end: (exit code, stdout, stderr).
async fn run_collect(s: &State, argv: &[&str]) -> Result<(i32, String, String), Box<Response>> {
    let mut rx = spawn_command(
        s,
        argv.iter().map(|a| a.to_string()).collect(),
        s.node.home.clone(),
    )?;
    let (mut out, mut err) = (String::new(), String::new());
    while let Some(f) = rx.recv().await {
        match f {
            Frame::Out(t) => out.push_str(&t),
            Frame::Err(t) => err.push_str(&t),
            Frame::Exit(c) => return Ok((c, out, err)),
        }
    }
    Ok((1, out, "the command stopped without an exit code".into()))
}

/// A `--json` command's output as the answer.
async fn json_command(s: &State, argv: &[&str]) -> Response {
    match run_collect(s, argv).await {
        Err(r) => *r,
        Ok((0, out, _)) => match serde_json::from_str::<Value>(&out) {
            Ok(v) => Json(v).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Ok((_, _, err)) => error(
            StatusCode::BAD_REQUEST,
            err.trim().trim_start_matches("error: ").to_string(),
        ),
    }
}

#[derive(Deserialize)]
struct RunRequest {
    argv: Vec<String>,
    cwd: PathBuf,
}

async fn run(Extract(s): Extract<State>, Json(r): Json<RunRequest>) -> Response {
    // Any command (files written anywhere this user may) only for the home's owner, on
    // the control socket; the status page's token does not open it.
    if s.tcp {
        return error(
            StatusCode::FORBIDDEN,
            "commands run only over the control socket",
        );
    }
    if !r.cwd.is_absolute() {
        return error(StatusCode::BAD_REQUEST, "cwd must be an absolute path");
    }
    let rx = match spawn_command(&s, r.argv, r.cwd) {
        Ok(rx) => rx,
        Err(e) => return *e,
    };
    let body = stream::unfold(rx, |mut rx| async move {
        let f = rx.recv().await?;
        let v = match f {
            Frame::Out(t) => json!({"out": t}),
            Frame::Err(t) => json!({"err": t}),
            Frame::Exit(c) => json!({"exit": c}),
        };
        Some((Ok::<_, std::convert::Infallible>(format!("{v}\n")), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn inbox(Extract(s): Extract<State>) -> Response {
    json_command(&s, &["--json", "inbox"]).await
}

#[derive(Deserialize)]
struct SendRequest {
    to: String,
    text: String,
}

async fn send(Extract(s): Extract<State>, Json(r): Json<SendRequest>) -> Response {
    json_command(
        &s,
        &["--json", "send", "--to", r.to.trim(), "--text", &r.text],
    )
    .await
}

async fn status(Extract(s): Extract<State>) -> Response {
    let node = s.node.clone();
    let local = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let peers = node.store.peers().map_err(|e| e.to_string())?;
        let records = node.store.records().map_err(|e| e.to_string())?;
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_priority: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, r) in &records {
            *by_kind.entry(r.kind.clone()).or_default() += 1;
            let class = match crate::route::priority(&r.kind) {
                0 => "payments and results",
                1 => "receipts",
                2 => "tasks and messages",
                _ => "bulk",
            };
            *by_priority.entry(class).or_default() += 1;
        }
        let peers: Vec<Value> = peers
            .iter()
            .map(|(id, p)| {
                json!({
                    "node": id, "addr": p.addr, "allowed": p.allowed, "sessions": p.sessions,
                    "last_success": (p.last_success.0 != 0).then(|| p.last_success.to_rfc3339()),
                    "last_attempt": (p.last_attempt.0 != 0).then(|| p.last_attempt.to_rfc3339()),
                    "bundles_in": p.bundles_in, "bundles_out": p.bundles_out,
                    "last_error": p.last_error,
                })
            })
            .collect();
        Ok(json!({
            "node": node.node_id().to_string(),
            "peers": peers,
            "bundles": {"total": records.len(), "by_kind": by_kind, "by_priority": by_priority},
        }))
    })
    .await;
    let mut v = match local {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    v["roles"] = json!(s.shared.roles);
    v["listen"] = json!(s.shared.listen);
    v["feed"] = json!(s.shared.feeds());
    v["gateway"] = json!(s.shared.gateway());
    v["update"] = json!(s.shared.update());
    v["telegram"] = json!(s.shared.telegram());
    v["events_subscribers"] = json!(s.hub.subscribers());
    v["pid"] = json!(std::process::id());
    for (field, argv) in [
        ("wallet", &["--json", "wallet"][..]),
        ("tasks", &["--json", "task", "list"][..]),
    ] {
        v[field] = match run_collect(&s, argv).await {
            Ok((0, out, _)) => serde_json::from_str(&out).unwrap_or(Value::Null),
            _ => Value::Null,
        };
    }
    Json(v).into_response()
}

async fn events(
    Extract(s): Extract<State>,
) -> Sse<impl Stream<Item = Result<sse::Event, std::convert::Infallible>>> {
    let rx = s.hub.subscribe();
    let hello = sse::Event::default()
        .data(json!({"type": "hello", "node": s.node.node_id().to_string()}).to_string());
    let first = stream::once(async move { Ok(hello) });
    let rest = stream::unfold(rx, |mut rx| async move {
        let data = match rx.recv().await {
            Ok(e) => serde_json::to_string(&*e).unwrap_or_default(),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                json!({"type": "lagged", "missed": n}).to_string()
            }
            Err(_) => return None,
        };
        Some((Ok(sse::Event::default().data(data)), rx))
    });
    use futures_util::StreamExt;
    Sse::new(first.chain(rest)).keep_alive(KeepAlive::default())
}
