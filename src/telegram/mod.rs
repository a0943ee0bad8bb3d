//! The Telegram bridge, a role of `serve` at a gateway: people with only a phone reach the
//! mesh through a Telegram bot, and the mesh reaches them. Each linked chat has its own
//! mesh identity held here ([`chats`]); what the chat sends is signed and sealed by that
//! identity and handed to the gateway's store like any contact's bundles; what reaches the
//! identity through the mesh is delivered to it and pushed to the chat as it arrives.
//!
//! Owns: the bot's long poll (the update offset persisted, so a restart neither loses nor
//! repeats updates), commands ([`command`]), per-chat rate limits, pushing to chats with
//! retries while the Bot API is unreachable. It depends on the node, the store, the
//! wallet and the bundle formats; the daemon wires it and nothing here knows the daemon.
//! A Bot API that is down or slow only delays this role: it runs on its own tasks.

pub mod bot;
pub mod chats;
pub mod command;
pub mod standin;

use crate::adu::{self, Adu, FileMessage, MarketAdu, Message};
use crate::bundle::Eid;
use crate::node::{InboxItem, Node};
use crate::time::DtnTime;
use bot::{Bot, BotError};
use chats::{Chat, ChatError, Chats};
use command::{Command, CommandError, Rate, RateLimit};
use frankenstein::methods::{
    GetFileParams, GetUpdatesParams, SendDocumentParams, SendMessageParams, SendPhotoParams,
};
use frankenstein::types::AllowedUpdate;
use frankenstein::updates::UpdateContent;
use frankenstein::AsyncTelegramApi;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Where the bot token comes from when it is not in a file.
pub const TOKEN_ENV: &str = "MYCELIUM_TELEGRAM_TOKEN";
pub const DEFAULT_API: &str = "https://api.telegram.org";
/// Largest file a chat can send into the mesh or receive from it (one message bundle).
pub const MAX_FILE: u64 = 16 * 1024 * 1024;
/// Largest picture sent as a photo (Telegram's limit); larger ones go as documents.
const MAX_PHOTO: usize = 10 * 1024 * 1024;
/// How long a message from a chat lives in the mesh.
const LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
/// Longest wait between tries while the Bot API is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The bridge's settings.
#[derive(Clone)]
pub struct TelegramRole {
    /// The Bot API's base URL (`https://api.telegram.org`, a local Bot API server, …).
    pub api_url: String,
    pub token: String,
    /// A proxy for the Bot API (`socks5://…`, `http://…`); else the environment's.
    pub proxy: Option<String>,
    /// Chats that may link without an invite code.
    pub allow: Vec<i64>,
    /// Commands a minute from one chat.
    pub per_minute: u32,
    /// How long one long poll waits for updates.
    pub poll: Duration,
    /// `/task`: credits paid to each worker whose result is accepted.
    pub task_reward: u64,
    /// `/task`: independent workers; a majority must agree.
    pub task_workers: u8,
}

impl std::fmt::Debug for TelegramRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramRole")
            .field("api_url", &self.api_url)
            .field("token", &"…")
            .field("proxy", &self.proxy)
            .field("allow", &self.allow)
            .field("per_minute", &self.per_minute)
            .field("task_reward", &self.task_reward)
            .field("task_workers", &self.task_workers)
            .finish()
    }
}

/// What the bridge tells the daemon (for its events and log).
#[derive(Debug, Clone)]
pub enum Report {
    /// Something happened: a chat linked, a message sent or pushed, a refusal.
    Note { chat: Option<i64>, text: String },
    /// The Bot API cannot be reached (said once per spell).
    Down(String),
    /// It answers again.
    Up,
}

pub type OnReport = Arc<dyn Fn(Report) + Send + Sync>;

async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Run the bridge until `stop` turns true.
pub async fn run(
    gateway: Arc<Node>,
    role: TelegramRole,
    report: OnReport,
    stop: watch::Receiver<bool>,
) {
    let bot = match Bot::new(&role.api_url, &role.token, role.proxy.as_deref(), role.poll) {
        Ok(b) => b,
        Err(e) => {
            report(Report::Down(e.to_string()));
            return;
        }
    };
    let chats = Arc::new(Chats::new(gateway));
    let (push_tx, push_rx) = mpsc::unbounded_channel::<i64>();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(pusher(
        bot.clone(),
        chats.clone(),
        push_rx,
        report.clone(),
        stop.clone(),
    ));
    tasks.spawn(router(
        chats.clone(),
        push_tx.clone(),
        report.clone(),
        stop.clone(),
    ));
    let poll = Poller {
        bot,
        chats,
        role,
        report,
        push: push_tx,
        limits: HashMap::new(),
        answers: Vec::new(),
    };
    tokio::select! {
        _ = stopped(stop.clone()) => {}
        _ = poll.run() => {}
    }
    tasks.abort_all();
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChatError> + Send + 'static,
) -> Result<T, ChatError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(ChatError::Stopped(e.to_string())),
    }
}

/// Bundles the gateway stores go to the chats they are for; each chat that received
/// something is queued for pushing. At start: everything held, and every chat's backlog.
async fn router(
    chats: Arc<Chats>,
    push: mpsc::UnboundedSender<i64>,
    report: OnReport,
    stop: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = chats.gateway.store.subscribe();
    // At start, what arrived since the last routing; after a lag, everything.
    let mut all = true;
    let mut since = {
        let c = chats.clone();
        blocking(move || Ok(c.routed()?)).await.unwrap_or(0)
    };
    /// Commits are announced within this of their time of receipt.
    const MARGIN_MS: u64 = 60_000;
    let mut written = since;
    loop {
        let c = chats.clone();
        let mut batch = Vec::new();
        if !all {
            let first = tokio::select! {
                _ = stopped(stop.clone()) => return,
                r = rx.recv() => r,
            };
            match first {
                Ok(s) => batch.push(s),
                Err(RecvError::Lagged(_)) => {
                    all = true;
                    since = 0;
                }
                Err(RecvError::Closed) => return,
            }
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                        all = true;
                        since = 0;
                    }
                    Err(_) => break,
                }
            }
        }
        let whole = std::mem::take(&mut all);
        let t0 = DtnTime::now().0;
        let r = blocking(move || {
            let ids = if whole {
                let _ = c.route_all(since)?;
                chats::linked(&c.gateway)?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect::<Vec<_>>()
            } else {
                c.route_from_gateway(&batch)?
                    .into_iter()
                    .map(|c| c.id)
                    .collect()
            };
            // Everything announced before t0 is routed now (noted every 10 s at most).
            let mark = t0.saturating_sub(MARGIN_MS);
            if mark >= written + 10_000 {
                c.set_routed(mark)?;
                return Ok((ids, mark));
            }
            Ok((ids, written))
        })
        .await;
        match r {
            Ok((ids, w)) => {
                written = w;
                for id in ids {
                    let _ = push.send(id);
                }
            }
            Err(e) => report(Report::Note {
                chat: None,
                text: format!("routing to chats failed: {e}"),
            }),
        }
    }
}

/// Pushes what reached chats' identities to the chats, one chat at a time; what cannot
/// be pushed now (the Bot API is down) is tried again later, and nothing is marked shown
/// before Telegram took it.
async fn pusher(
    bot: Bot,
    chats: Arc<Chats>,
    mut rx: mpsc::UnboundedReceiver<i64>,
    report: OnReport,
    stop: watch::Receiver<bool>,
) {
    let mut waiting: BTreeSet<i64> = BTreeSet::new();
    let mut backoff = Duration::from_secs(1);
    let mut down = false;
    loop {
        if waiting.is_empty() {
            let id = tokio::select! {
                _ = stopped(stop.clone()) => return,
                r = rx.recv() => r,
            };
            match id {
                Some(id) => waiting.insert(id),
                None => return,
            };
        }
        while let Ok(id) = rx.try_recv() {
            waiting.insert(id);
        }
        let mut failed = None;
        for id in std::mem::take(&mut waiting) {
            if failed.is_some() {
                waiting.insert(id);
                continue;
            }
            match push_chat(&bot, &chats, id, &report).await {
                Ok(()) => {}
                Err(PushError::Bot(e)) => {
                    waiting.insert(id);
                    failed = Some(e);
                }
                Err(PushError::Chat(e)) => report(Report::Note {
                    chat: Some(id),
                    text: format!("cannot read this chat's inbox: {e}"),
                }),
            }
        }
        match failed {
            None => {
                if down {
                    down = false;
                    report(Report::Up);
                }
                backoff = Duration::from_secs(1);
            }
            Some(e) => {
                if !down {
                    down = true;
                    report(Report::Down(e.to_string()));
                }
                // Wait before trying again (new arrivals join the queue meanwhile).
                let wait = retry_wait(&e, &mut backoff);
                tokio::select! {
                    _ = stopped(stop.clone()) => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// How long to wait after `e` before trying the Bot API again: what Telegram asked for
/// (flood control), else the backoff, which doubles up to [`MAX_BACKOFF`].
fn retry_wait(e: &BotError, backoff: &mut Duration) -> Duration {
    let wait = match e {
        BotError::Api {
            retry_after: Some(s),
            ..
        } => Duration::from_secs(*s).min(MAX_BACKOFF),
        _ => *backoff,
    };
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    wait
}

enum PushError {
    Bot(BotError),
    Chat(ChatError),
}

/// What one inbox item becomes in a chat.
enum Shown {
    Texts(Vec<String>),
    File(FileMessage, String),
    Nothing,
}

fn short_id(s: &str) -> String {
    let inner = s.trim_start_matches("dtn://").trim_end_matches('/');
    if inner.len() > 12 {
        format!("{}…", &inner[..12])
    } else {
        inner.to_string()
    }
}

fn render(item: &InboxItem, market: Option<&str>) -> Shown {
    let from = &item.record.source;
    match &item.adu {
        Ok(Adu::Message(Message::Text(t))) => {
            Shown::Texts(command::text_for_chat(&format!("From {from}:\n{t}")))
        }
        Ok(Adu::Message(Message::File(f))) => {
            let cap = command::caption(&format!("From {from}: {}", f.name));
            Shown::File(f.clone(), cap)
        }
        Ok(Adu::Market(m)) => match m.as_ref() {
            MarketAdu::Verdict(v) if market == Some(from.as_str()) => {
                let id = hex::encode(v.task);
                let text = if v.accepted {
                    format!(
                        "Task {}: accepted ({} of {} workers agreed)\n{}",
                        &id[..12],
                        v.agreeing.len(),
                        v.results,
                        output_text(&v.output)
                    )
                } else {
                    format!(
                        "Task {}: failed: {}",
                        &id[..12],
                        v.reason.clone().unwrap_or_default()
                    )
                };
                Shown::Texts(command::text_for_chat(&text))
            }
            MarketAdu::Payment(p) => Shown::Texts(vec![format!(
                "{} credits from {} ({}); /wallet shows when it is confirmed",
                p.amount,
                short_id(&p.payer),
                if p.memo.is_empty() {
                    "no memo"
                } else {
                    p.memo.as_str()
                }
            )]),
            _ => Shown::Nothing,
        },
        _ => Shown::Nothing,
    }
}

/// A task's output as a person reads it: generated text, else vectors' shape, else hex.
fn output_text(out: &[u8]) -> String {
    if let Ok(g) = crate::worker::decode_generation(out) {
        return g.text;
    }
    if let Ok(v) = crate::worker::decode_vectors(out) {
        let dims = v.first().map(|x| x.len()).unwrap_or(0);
        return format!("{} vectors of {dims} numbers", v.len());
    }
    hex::encode(out)
}

/// A file name safe to write in a folder of ours (the sender chose it).
fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| {
            if matches!(c, '/' | '\\' | ':') {
                '_'
            } else {
                c
            }
        })
        .take(120)
        .collect();
    let s = s.trim_start_matches('.').trim().to_string();
    if s.is_empty() {
        "file".into()
    } else {
        s
    }
}

async fn push_chat(
    bot: &Bot,
    chats: &Arc<Chats>,
    id: i64,
    report: &OnReport,
) -> Result<(), PushError> {
    let c = chats.clone();
    let got = blocking(move || {
        let Some(chat) = c.get(id)? else {
            return Ok(None);
        };
        let market = chat.node.market()?.map(|m| m.to_string());
        let items = chat.unpushed()?;
        Ok(Some((chat, market, items)))
    })
    .await
    .map_err(PushError::Chat)?;
    let Some((chat, market, items)) = got else {
        return Ok(());
    };
    let mut shown = 0;
    for item in items {
        match render(&item, market.as_deref()) {
            Shown::Nothing => {}
            Shown::Texts(parts) => {
                let mut r = Ok(());
                for p in parts {
                    let params = SendMessageParams::builder().chat_id(id).text(p).build();
                    r = bot.send_message(&params).await.map(|_| ());
                    if r.is_err() {
                        break;
                    }
                }
                shown += refused_here(r, id, report)?;
            }
            Shown::File(f, caption) => {
                let r = match send_file(bot, &chat, &f, caption).await {
                    Err(PushError::Bot(e)) => Err(e),
                    Err(e) => return Err(e),
                    Ok(()) => Ok(()),
                };
                shown += refused_here(r, id, report)?;
            }
        }
        let (ch, key) = (chat.clone(), item.key);
        blocking(move || Ok(ch.mark_pushed(&key)?))
            .await
            .map_err(PushError::Chat)?;
    }
    if shown > 0 {
        report(Report::Note {
            chat: Some(id),
            text: format!("{shown} item(s) pushed to the chat"),
        });
    }
    Ok(())
}

/// A push's outcome: 1 when shown; 0 when Telegram refused it for this chat alone (the
/// bot was blocked, the chat is gone, the content was refused: it stays in `/inbox`, and
/// the queue goes on); an error when the Bot API is not answering (tried again later).
fn refused_here(r: Result<(), BotError>, chat: i64, report: &OnReport) -> Result<usize, PushError> {
    match r {
        Ok(()) => Ok(1),
        Err(BotError::Api {
            code: 400 | 403, ..
        }) => {
            let e = r.err().map(|e| e.to_string()).unwrap_or_default();
            report(Report::Note {
                chat: Some(chat),
                text: format!("Telegram refused a push (left in the inbox): {e}"),
            });
            Ok(0)
        }
        Err(e) => Err(PushError::Bot(e)),
    }
}

async fn send_file(
    bot: &Bot,
    chat: &Chat,
    f: &FileMessage,
    caption: String,
) -> Result<(), PushError> {
    let io = |e: std::io::Error| {
        PushError::Chat(ChatError::Node(crate::node::NodeError::File {
            path: chat.home().display().to_string(),
            source: e,
        }))
    };
    // Uploads go from a private folder of the chat's home, under the sender's file name.
    let dir = tempfile::Builder::new()
        .prefix(".upload")
        .tempdir_in(chat.home())
        .map_err(io)?;
    let path = dir.path().join(safe_name(&f.name));
    tokio::fs::write(&path, &f.data).await.map_err(io)?;
    let photo = f.media_type.starts_with("image/")
        && matches!(f.media_type.as_str(), "image/jpeg" | "image/png")
        && f.data.len() <= MAX_PHOTO;
    let r = if photo {
        let p = SendPhotoParams::builder()
            .chat_id(chat.id)
            .photo(frankenstein::input_file::InputFile { path: path.clone() })
            .caption(caption)
            .build();
        bot.send_photo(&p).await.map(|_| ())
    } else {
        let p = SendDocumentParams::builder()
            .chat_id(chat.id)
            .document(frankenstein::input_file::InputFile { path: path.clone() })
            .caption(caption)
            .build();
        bot.send_document(&p).await.map(|_| ())
    };
    r.map_err(PushError::Bot)
}

/// The long poll and the commands.
struct Poller {
    bot: Bot,
    chats: Arc<Chats>,
    role: TelegramRole,
    report: OnReport,
    push: mpsc::UnboundedSender<i64>,
    limits: HashMap<i64, RateLimit>,
    /// Answers to the update being handled.
    answers: Vec<(i64, String)>,
}

impl Poller {
    async fn run(mut self) {
        let c = self.chats.clone();
        let mut offset = match blocking(move || Ok(c.offset()?)).await {
            Ok(o) => o,
            Err(e) => {
                (self.report)(Report::Down(format!("cannot read the update offset: {e}")));
                return;
            }
        };
        let mut backoff = Duration::from_secs(1);
        // Whether the Bot API answered the last poll (`None`: not asked yet).
        let mut up: Option<bool> = None;
        loop {
            let params = GetUpdatesParams::builder()
                .offset(offset)
                .timeout(self.role.poll.as_secs() as u32)
                .allowed_updates(vec![AllowedUpdate::Message])
                .build();
            match self.bot.get_updates(&params).await {
                Ok(r) => {
                    if up != Some(true) {
                        up = Some(true);
                        (self.report)(Report::Up);
                    }
                    backoff = Duration::from_secs(1);
                    for u in r.result {
                        let id = i64::from(u.update_id);
                        if id < offset {
                            continue;
                        }
                        if let UpdateContent::Message(m) = u.content {
                            self.handle(id, *m).await;
                        }
                        offset = id + 1;
                        let c = self.chats.clone();
                        if let Err(e) = blocking(move || Ok(c.set_offset(offset)?)).await {
                            (self.report)(Report::Down(format!(
                                "cannot save the update offset: {e}"
                            )));
                            return;
                        }
                        self.send_answers().await;
                    }
                }
                Err(e) => {
                    if up != Some(false) {
                        up = Some(false);
                        (self.report)(Report::Down(e.to_string()));
                    }
                    tokio::time::sleep(retry_wait(&e, &mut backoff)).await;
                }
            }
        }
    }

    /// Queue an answer: answers go out once the update's offset is saved.
    async fn reply(&mut self, chat: i64, text: impl Into<String>) {
        self.answers.push((chat, text.into()));
    }

    async fn send_answers(&mut self) {
        for (chat, text) in std::mem::take(&mut self.answers) {
            for part in command::split_text(&text, command::TEXT_LIMIT) {
                let p = SendMessageParams::builder()
                    .chat_id(chat)
                    .text(part)
                    .build();
                if let Err(e) = self.bot.send_message(&p).await {
                    tracing::warn!(chat, "cannot answer the chat: {e}");
                    break;
                }
            }
        }
    }

    fn note(&self, chat: i64, text: String) {
        (self.report)(Report::Note {
            chat: Some(chat),
            text,
        });
    }

    async fn handle(&mut self, update: i64, m: frankenstein::types::Message) {
        let chat_id = m.chat.id;
        let now_ms = DtnTime::now().0;
        let per_minute = self.role.per_minute;
        // Chats quiet for a minute have full buckets again: forget them.
        if self.limits.len() > 10_000 {
            self.limits.retain(|_, l| !l.idle(now_ms));
        }
        let rate = self
            .limits
            .entry(chat_id)
            .or_insert_with(|| RateLimit::new(per_minute, now_ms))
            .check(now_ms);
        match rate {
            Rate::Ok => {}
            Rate::Refuse => {
                self.note(chat_id, "rate limit: commands refused".into());
                return self
                    .reply(
                        chat_id,
                        format!(
                            "Too many messages: this bridge takes {per_minute} a minute from each chat. Wait a little, then send again."
                        ),
                    )
                    .await;
            }
            Rate::Quiet => return,
        }
        let text = m.text.clone().unwrap_or_default();
        let parsed = command::parse(&text);
        if let Ok(Command::Start { invite }) = &parsed {
            return self.start(chat_id, invite.clone()).await;
        }
        let c = self.chats.clone();
        let chat = match blocking(move || c.get(chat_id)).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.note(chat_id, "refused: not linked".into());
                return self.reply(chat_id, ChatError::NotAllowed.to_string()).await;
            }
            Err(e) => return self.reply(chat_id, format!("The bridge failed: {e}")).await,
        };
        if m.document.is_some() || m.photo.is_some() {
            let answer = self.file(update, &chat, &m).await;
            return self.reply(chat_id, answer).await;
        }
        let answer = match parsed {
            Err(CommandError::NotACommand) if text.is_empty() => {
                "I carry text, photos and files. Send /help to see how.".to_string()
            }
            Err(CommandError::NotACommand) => {
                "To send this to someone: /send NODE_ID TEXT. Send /help to see more.".into()
            }
            Err(e) => e.to_string(),
            Ok(Command::Help) | Ok(Command::Start { .. }) => command::HELP.into(),
            Ok(Command::Id) => format!(
                "Your node ID:\n{}\nPeople reach you by sending to it.",
                chat.node.node_id()
            ),
            Ok(cmd) => {
                let (chats, ch) = (self.chats.clone(), chat.clone());
                let terms = (self.role.task_reward, self.role.task_workers);
                let r = blocking(move || Ok(run_command(&chats, &ch, update, cmd, terms))).await;
                match r {
                    Ok((answer, note)) => {
                        if let Some(n) = note {
                            self.note(chat_id, n);
                        }
                        answer
                    }
                    Err(e) => format!("The bridge failed: {e}"),
                }
            }
        };
        self.reply(chat_id, answer).await;
    }

    async fn start(&mut self, chat_id: i64, invite: Option<String>) {
        let (c, allow) = (self.chats.clone(), self.role.allow.clone());
        let r = blocking(move || c.link(chat_id, invite.as_deref(), &allow, DtnTime::now())).await;
        match r {
            Ok((chat, new)) => {
                let id = chat.node.node_id();
                if new {
                    self.note(chat_id, format!("linked to {id}"));
                    // What reached this identity before (nothing, for a new one) is pushed.
                    let _ = self.push.send(chat_id);
                    self.reply(
                        chat_id,
                        format!(
                            "Welcome. This chat now has its own mesh identity, held by this gateway. Your node ID:\n{id}\nGive it to people who want to write to you. Send /help to see what I do."
                        ),
                    )
                    .await;
                } else {
                    self.reply(chat_id, format!("This chat is linked to node ID:\n{id}"))
                        .await;
                }
            }
            Err(e) => {
                self.note(chat_id, format!("link refused: {e}"));
                self.reply(chat_id, e.to_string()).await;
            }
        }
    }

    /// A photo or document with a caption naming the recipient.
    async fn file(
        &self,
        update: i64,
        chat: &Arc<Chat>,
        m: &frankenstein::types::Message,
    ) -> String {
        let caption = m.caption.clone().unwrap_or_default();
        let Some((to, text)) = command::parse_caption(&caption) else {
            return "Add a caption naming the recipient: NODE_ID [TEXT]".into();
        };
        let to = match parse_node(&to) {
            Ok(t) => t,
            Err(e) => return e,
        };
        let (file_id, size, name, media) = if let Some(d) = &m.document {
            (
                d.file_id.clone(),
                d.file_size,
                d.file_name.clone().unwrap_or_else(|| "file".into()),
                d.mime_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
            )
        } else if let Some(p) = m.photo.as_ref().and_then(|ps| {
            ps.iter()
                .max_by_key(|p| u64::from(p.width) * u64::from(p.height))
        }) {
            (
                p.file_id.clone(),
                p.file_size,
                "photo.jpg".into(),
                "image/jpeg".into(),
            )
        } else {
            return "I carry text, photos and files.".into();
        };
        if let Some(s) = size.filter(|&s| s > MAX_FILE) {
            return format!(
                "That file is {s} bytes; the mesh carries files of up to {MAX_FILE} bytes (16 MiB). Send a smaller one."
            );
        }
        let file = match self
            .bot
            .get_file(&GetFileParams::builder().file_id(file_id).build())
            .await
        {
            Ok(f) => f.result,
            Err(e) => return format!("Cannot fetch the file from Telegram: {e}"),
        };
        let Some(path) = file.file_path else {
            return "Telegram did not give the file (too large for bots?)".into();
        };
        let data = match self.bot.download(&path, MAX_FILE).await {
            Ok(d) => d,
            Err(BotError::TooLarge(..)) => {
                return format!(
                    "That file is larger than the {MAX_FILE} bytes (16 MiB) the mesh carries."
                )
            }
            Err(e) => return format!("Cannot fetch the file from Telegram: {e}"),
        };
        let mut msgs = vec![Message::File(FileMessage {
            name: safe_name(&name),
            media_type: media,
            data,
        })];
        // The caption's words travel as a text beside the file.
        if !text.is_empty() {
            msgs.push(Message::Text(text));
        }
        let (chats, ch) = (self.chats.clone(), chat.clone());
        match blocking(move || Ok(send_message(&chats, &ch, update, to, msgs))).await {
            Ok((answer, note)) => {
                if let Some(n) = note {
                    self.note(chat.id, n);
                }
                answer
            }
            Err(e) => format!("The bridge failed: {e}"),
        }
    }
}

/// `dtn://…/` or the bare 52 characters.
fn parse_node(s: &str) -> Result<Eid, String> {
    let full = if s.contains(':') {
        s.to_string()
    } else {
        format!("dtn://{s}/")
    };
    let e = Eid::parse(&full).map_err(|e| format!("{s} is not a node ID: {e}"))?;
    crate::identity::key_for_node_id(&e).map_err(|e| format!("{s} is not a node ID: {e}"))?;
    Ok(e.node_id())
}

/// Commands that read or change the chat's node (run off the async threads). Returns the
/// answer and, for the log, what happened.
fn run_command(
    chats: &Chats,
    chat: &Chat,
    update: i64,
    cmd: Command,
    terms: (u64, u8),
) -> (String, Option<String>) {
    let r = match cmd {
        Command::Send { to, text } => match parse_node(&to) {
            Ok(to) => return send_message(chats, chat, update, to, vec![Message::Text(text)]),
            Err(e) => Ok(e),
        },
        Command::Inbox => inbox_text(chat),
        Command::Wallet => wallet_text(chat),
        Command::Task { kind, model, input } => {
            return submit_task(chats, chat, update, &kind, model.as_deref(), input, terms)
        }
        Command::Id | Command::Help | Command::Start { .. } => Ok(command::HELP.into()),
    };
    match r {
        Ok(s) => (s, None),
        Err(e) => (format!("The bridge failed: {e}"), None),
    }
}

/// Whether `update` was already carried out (its effect committed before a restart).
fn done_before(chat: &Chat, update: i64) -> Result<bool, ChatError> {
    Ok(update <= chat.last_update()?)
}

/// Sign and seal `msgs` from the chat's identity for `to`, committed with the update's
/// mark in one write, then handed to the gateway.
fn send_message(
    chats: &Chats,
    chat: &Chat,
    update: i64,
    to: Eid,
    msgs: Vec<Message>,
) -> (String, Option<String>) {
    let go = || -> Result<String, ChatError> {
        if done_before(chat, update)? {
            return Ok("(already sent before the bridge restarted)".into());
        }
        let now = DtnTime::now();
        let out: Vec<_> = msgs
            .iter()
            .map(|m| (Some(to.clone()), adu::encode_message(m), LIFETIME_MS))
            .collect();
        let c = chat.node.compose(&out, now, true)?;
        let size: usize = c
            .bundles
            .iter()
            .filter(|b| c.travelling.contains(&b.id().key()))
            .map(|b| b.raw().len())
            .sum();
        chat.node
            .store
            .commit_ledger(&[Chat::update_mark(update)], &c.bundles, &c.private, now)?;
        chats.hand_to_gateway(chat)?;
        Ok(format!(
            "Sent to {to}, sealed ({size} bytes). It travels with this gateway's next contact."
        ))
    };
    match go() {
        Ok(s) => {
            let what = match msgs.first() {
                Some(Message::File(f)) => format!("file of {} bytes", f.data.len()),
                _ => "text".to_string(),
            };
            (s, Some(format!("sent a {what} to {to}")))
        }
        Err(e) => (format!("Not sent: {e}"), None),
    }
}

fn inbox_text(chat: &Chat) -> Result<String, ChatError> {
    let items = chat.node.inbox()?;
    let msgs: Vec<&InboxItem> = items
        .iter()
        .filter(|i| matches!(i.adu, Ok(Adu::Message(_))))
        .collect();
    if msgs.is_empty() {
        return Ok("No messages yet.".into());
    }
    let mut out = format!("{} message(s); the latest:\n", msgs.len());
    for i in msgs.iter().rev().take(10).rev() {
        let when = DtnTime(i.record.created_ms).to_rfc3339();
        let body = match &i.adu {
            Ok(Adu::Message(Message::Text(t))) => {
                let t: String = t.chars().take(200).collect();
                t
            }
            Ok(Adu::Message(Message::File(f))) => {
                format!("[file {} , {} bytes]", f.name, f.data.len())
            }
            _ => String::new(),
        };
        out.push_str(&format!("\n{when} from {}:\n{body}\n", i.record.source));
    }
    Ok(out)
}

fn wallet_text(chat: &Chat) -> Result<String, ChatError> {
    let w = crate::wallet::view(&chat.node)?;
    Ok(format!(
        "Balance: {} credits\nSpendable now: {}\nPending in: {}\nPending out: {}\n{} entries",
        w.balance,
        w.spendable,
        w.pending_in,
        w.pending_out,
        w.entries.len()
    ))
}

/// The one model of this format the gateway holds, if exactly one.
fn model_for(gateway: &Node, format: &str) -> Option<[u8; 32]> {
    let mut found = BTreeSet::new();
    for key in gateway.store.of_kind(adu::model::KIND_MODEL).ok()? {
        let Ok(Some(vb)) = gateway.store.get(&key) else {
            continue;
        };
        if let Ok(m) = adu::model::decode_manifest(vb.bundle().payload()) {
            if m.format == format {
                found.insert(m.hash());
            }
        }
    }
    (found.len() == 1)
        .then(|| found.into_iter().next())
        .flatten()
}

fn submit_task(
    chats: &Chats,
    chat: &Chat,
    update: i64,
    kind: &str,
    model: Option<&str>,
    input: String,
    (reward, workers): (u64, u8),
) -> (String, Option<String>) {
    use crate::adu::market::{Eligibility, JobKind, Limits, Task};
    let go = || -> Result<String, String> {
        if done_before(chat, update).map_err(|e| e.to_string())? {
            return Ok("(already submitted before the bridge restarted)".into());
        }
        let job = JobKind::parse(kind)
            .ok_or_else(|| format!("unknown task kind {kind:?}: use digest, embed or generate"))?;
        let model = match (model, job) {
            (Some(h), _) => {
                let mut m = [0u8; 32];
                hex::decode_to_slice(h, &mut m).map_err(|e| format!("model hash: {e}"))?;
                m
            }
            (None, JobKind::Digest) => [0; 32],
            (None, JobKind::Embed) => model_for(&chats.gateway, "bert")
                .ok_or("give the model's hash: /task embed MODEL_HASH TEXT")?,
            (None, JobKind::Generate) => model_for(&chats.gateway, "gguf")
                .ok_or("give the model's hash: /task generate MODEL_HASH TEXT")?,
        };
        let now = DtnTime::now();
        let t = Task {
            job,
            model,
            input: input.into_bytes(),
            limits: Limits {
                max_tokens: 256,
                max_ms: 10 * 60 * 1000,
            },
            reward,
            deadline: now.0.saturating_add(2 * 24 * 3600 * 1000),
            redundancy: workers,
            who: Eligibility::Anyone,
        };
        let escrow = t.escrow().unwrap_or(0);
        // The task and the update's mark in one write: never submitted twice.
        let id = crate::wallet::submit_task_with(
            &chat.node,
            &t,
            now,
            true,
            &[Chat::update_mark(update)],
        )
        .map_err(|e| e.to_string())?;
        chats.hand_to_gateway(chat).map_err(|e| e.to_string())?;
        Ok(format!(
            "Task {} submitted ({} credits held in escrow once the marketplace has it). Its result comes here.",
            &hex::encode(id)[..12],
            escrow
        ))
    };
    match go() {
        Ok(s) => (s, Some(format!("submitted a {kind} task"))),
        Err(e) => (format!("Task not submitted: {e}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender's file name never leaves the folder it is written to for upload.
    #[test]
    fn file_names_from_the_mesh_stay_in_their_folder() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("..\\..\\x"), "_.._x");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name(&"x".repeat(500)).len(), 120);
        for n in ["../../etc/passwd", "/abs", "..", "a/../../b", "C:\\x"] {
            let p = std::path::Path::new("/base").join(safe_name(n));
            assert_eq!(p.parent(), Some(std::path::Path::new("/base")), "{n}");
        }
    }

    /// A restart between an update's effect and the saved offset hands the same update
    /// in again: its effect is committed with the update's number, so it is not repeated.
    #[test]
    fn an_update_is_carried_out_once() {
        let t = tempfile::tempdir().unwrap();
        let gateway = Arc::new(Node::init(&t.path().join("g")).unwrap());
        let r = Node::init(&t.path().join("r")).unwrap();
        let to = r.node_id();
        let chats = Chats::new(gateway.clone());
        let (chat, new) = chats.link(7, None, &[7], DtnTime::now()).unwrap();
        assert!(new);
        let before = gateway.store.len().unwrap();
        let msg = || vec![Message::Text("once".into())];
        let (a, _) = send_message(&chats, &chat, 41, to.clone(), msg());
        assert!(a.starts_with("Sent to"), "{a}");
        let after = gateway.store.len().unwrap();
        assert_eq!(after, before + 1, "one sealed bundle handed to the gateway");
        let (b, _) = send_message(&chats, &chat, 41, to.clone(), msg());
        assert!(b.contains("already"), "{b}");
        assert_eq!(gateway.store.len().unwrap(), after);
        // An earlier update is as done as this one; a later one goes.
        let (c, _) = send_message(&chats, &chat, 40, to.clone(), msg());
        assert!(c.contains("already"), "{c}");
        let (d, _) = send_message(&chats, &chat, 42, to.clone(), msg());
        assert!(d.starts_with("Sent to"), "{d}");
        assert_eq!(gateway.store.len().unwrap(), after + 1);
        // A task twice under one update: submitted once (refused for want of credits or a
        // marketplace, it writes nothing and leaves the update open).
        let (t1, _) = submit_task(&chats, &chat, 43, "digest", None, "x".into(), (1, 1));
        assert!(t1.contains("no marketplace"), "{t1}");
        // R, as the chat's marketplace, grants it 10 credits.
        chat.node.set_market(&to).unwrap();
        let grant = crate::adu::market::encode_payment(&crate::adu::market::Payment {
            payer: to.to_string(),
            payee: chat.node.node_id().to_string(),
            amount: 10,
            nonce: [9; 16],
            refers: None,
            memo: "grant".into(),
        });
        let c = r
            .compose(
                &[(Some(chat.node.node_id()), grant, 3_600_000)],
                DtnTime::now(),
                false,
            )
            .unwrap();
        chat.node
            .receive(c.bundles[0].raw(), DtnTime::now())
            .unwrap();
        let (t2, _) = submit_task(&chats, &chat, 43, "digest", None, "x".into(), (3, 1));
        assert!(t2.contains("submitted"), "{t2}");
        let (t3, _) = submit_task(&chats, &chat, 43, "digest", None, "x".into(), (3, 1));
        assert!(t3.contains("already"), "{t3}");
        assert_eq!(crate::wallet::submitted(&chat.node).unwrap().len(), 1);
        // Linking again is the same identity; an unknown chat without a code is refused.
        let (again, new) = chats.link(7, None, &[], DtnTime::now()).unwrap();
        assert!(!new);
        assert_eq!(again.node.node_id(), chat.node.node_id());
        assert!(matches!(
            chats.link(8, Some("nope"), &[], DtnTime::now()),
            Err(ChatError::BadInvite)
        ));
        assert!(matches!(
            chats.link(8, None, &[], DtnTime::now()),
            Err(ChatError::NotAllowed)
        ));
        assert!(!t.path().join("g").join(chats::DIR).join("8").exists());
    }
}
