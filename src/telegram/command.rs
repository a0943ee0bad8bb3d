//! What a chat says to the bridge, and how the bridge answers within Telegram's limits:
//! parsing of commands, the per-chat rate limit, splitting long texts. Pure: no I/O, the
//! clock is passed in.

/// Telegram's limit on one message's text (in UTF-16 code units, the way it counts).
pub const TEXT_LIMIT: usize = 4096;
/// Telegram's limit on a caption.
pub const CAPTION_LIMIT: usize = 1024;
/// Most parts one mesh text is split into on its way to a chat; beyond it the text is cut
/// and the chat told how much was left out (the whole stays in the mesh inbox).
pub const MAX_PARTS: usize = 8;

/// One command from a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/start [INVITE]`: link this chat to a new mesh identity.
    Start { invite: Option<String> },
    /// `/id`: this chat's node ID.
    Id,
    /// `/send NODE_ID TEXT`.
    Send { to: String, text: String },
    /// `/inbox`: the latest messages that reached this chat's identity.
    Inbox,
    /// `/wallet`: balance, spendable, pending.
    Wallet,
    /// `/task KIND [MODEL] TEXT`: a marketplace task (model: 64 hex digits).
    Task {
        kind: String,
        model: Option<String>,
        input: String,
    },
    /// `/help` (and anything unknown starting with `/`).
    Help,
}

/// Why a text is not a command the bridge can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("not a command: send /help to see what I understand")]
    NotACommand,
    #[error("unknown command {0}: send /help to see what I understand")]
    Unknown(String),
    #[error("usage: {0}")]
    Usage(&'static str),
}

pub const USAGE_SEND: &str = "/send NODE_ID TEXT";
pub const USAGE_TASK: &str = "/task digest|embed|generate [MODEL_HASH] TEXT";

/// Parse a message text. Commands may carry the bot's name (`/id@my_bot`), as Telegram
/// writes them in groups.
pub fn parse(text: &str) -> Result<Command, CommandError> {
    let text = text.trim_start();
    let Some(rest) = text.strip_prefix('/') else {
        return Err(CommandError::NotACommand);
    };
    let (head, args) = split_word(rest);
    let name = head
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match name.as_str() {
        "start" => {
            let code = args.trim();
            Ok(Command::Start {
                invite: (!code.is_empty()).then(|| code.to_string()),
            })
        }
        "id" => Ok(Command::Id),
        "inbox" => Ok(Command::Inbox),
        "wallet" => Ok(Command::Wallet),
        "help" => Ok(Command::Help),
        "send" => {
            let (to, text) = split_word(args);
            let text = text.trim();
            if to.is_empty() || text.is_empty() {
                return Err(CommandError::Usage(USAGE_SEND));
            }
            Ok(Command::Send {
                to: to.to_string(),
                text: text.to_string(),
            })
        }
        "task" => {
            let (kind, rest) = split_word(args);
            if kind.is_empty() {
                return Err(CommandError::Usage(USAGE_TASK));
            }
            let (maybe_model, after) = split_word(rest);
            let (model, input) = if is_hash(maybe_model) {
                (Some(maybe_model.to_ascii_lowercase()), after)
            } else {
                (None, rest)
            };
            let input = input.trim();
            if input.is_empty() {
                return Err(CommandError::Usage(USAGE_TASK));
            }
            Ok(Command::Task {
                kind: kind.to_ascii_lowercase(),
                model,
                input: input.to_string(),
            })
        }
        other => Err(CommandError::Unknown(format!("/{other}"))),
    }
}

/// A caption on a photo or document: `NODE_ID [TEXT]` (a leading `/send` is allowed).
/// Returns (recipient, text).
pub fn parse_caption(caption: &str) -> Option<(String, String)> {
    let c = caption.trim_start();
    let c = c.strip_prefix("/send").map(str::trim_start).unwrap_or(c);
    let (to, text) = split_word(c);
    (!to.is_empty()).then(|| (to.to_string(), text.trim().to_string()))
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The first whitespace-separated word and the rest (leading whitespace of the rest kept
/// trimmed off).
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

pub const HELP: &str = "I carry messages between this chat and the Mycelium mesh.\n\
/id: this chat's node ID (give it to people who want to write to you)\n\
/send NODE_ID TEXT: a sealed message to a node\n\
a photo or file with the caption NODE_ID [TEXT]: sends it (up to 16 MiB)\n\
/inbox: the latest messages for you\n\
/wallet: your credits\n\
/task digest|embed|generate [MODEL_HASH] TEXT: a job for the marketplace\n\
Messages for your node ID reach this chat as they arrive.";

/// Telegram's length of a text: UTF-16 code units.
pub fn tg_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Cut `text` into parts of at most `limit` UTF-16 units, preferring line breaks, then
/// spaces, never inside a character. An empty text is one empty part.
pub fn split_text(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(2);
    let mut parts = Vec::new();
    let mut rest = text;
    while tg_len(rest) > limit {
        // The longest prefix within the limit, on a char boundary.
        let (mut units, mut end) = (0usize, 0usize);
        for (i, c) in rest.char_indices() {
            if units + c.len_utf16() > limit {
                break;
            }
            units += c.len_utf16();
            end = i + c.len_utf8();
        }
        let head = &rest[..end];
        let cut = head
            .rfind('\n')
            .or_else(|| head.rfind(' '))
            .filter(|&i| i > end / 2)
            .map(|i| i + 1)
            .unwrap_or(end);
        parts.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    parts.push(rest.to_string());
    parts
}

/// Parts of a mesh text for a chat: at most [`MAX_PARTS`]; when cut, the last part says
/// how many characters were left out.
pub fn text_for_chat(text: &str) -> Vec<String> {
    let mut parts = split_text(text, TEXT_LIMIT);
    if parts.len() > MAX_PARTS {
        let kept: usize = parts[..MAX_PARTS].iter().map(|p| p.chars().count()).sum();
        let left = text.chars().count() - kept;
        parts.truncate(MAX_PARTS);
        parts.push(format!(
            "[{left} more characters not shown here: too long for this chat]"
        ));
    }
    parts
}

/// A caption within Telegram's limit (cut with an ellipsis).
pub fn caption(text: &str) -> String {
    if tg_len(text) <= CAPTION_LIMIT {
        return text.to_string();
    }
    let mut out = split_text(text, CAPTION_LIMIT - 1).swap_remove(0);
    out.push('…');
    out
}

/// A token bucket per chat: `per_minute` commands a minute, in bursts of up to
/// `per_minute` (at least one). Refusals are told once per empty spell, so a flooding chat
/// cannot make the bot flood it back.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_minute: u32,
    tokens: f64,
    last_ms: u64,
    told: bool,
}

/// What the rate limit says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Ok,
    /// Refused; say so (the first refusal of this spell).
    Refuse,
    /// Refused; already said.
    Quiet,
}

impl RateLimit {
    pub fn new(per_minute: u32, now_ms: u64) -> RateLimit {
        let per_minute = per_minute.max(1);
        RateLimit {
            per_minute,
            tokens: f64::from(per_minute),
            last_ms: now_ms,
            told: false,
        }
    }

    /// Quiet for a minute: the bucket is full again, so forgetting it changes nothing.
    pub fn idle(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_ms) >= 60_000
    }

    pub fn check(&mut self, now_ms: u64) -> Rate {
        let cap = f64::from(self.per_minute);
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * cap / 60_000.0).min(cap);
        self.last_ms = now_ms.max(self.last_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.told = false;
            Rate::Ok
        } else if self.told {
            Rate::Quiet
        } else {
            self.told = true;
            Rate::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("/start"), Ok(Command::Start { invite: None }));
        assert_eq!(
            parse("/start  abc-123 "),
            Ok(Command::Start {
                invite: Some("abc-123".into())
            })
        );
        assert_eq!(parse("/id@mycelium_bot"), Ok(Command::Id));
        assert_eq!(parse("/INBOX"), Ok(Command::Inbox));
        assert_eq!(
            parse("/send dtn://abc/ hello  there\nsecond line"),
            Ok(Command::Send {
                to: "dtn://abc/".into(),
                text: "hello  there\nsecond line".into()
            })
        );
        assert_eq!(parse("/send abc"), Err(CommandError::Usage(USAGE_SEND)));
        assert_eq!(parse("/send"), Err(CommandError::Usage(USAGE_SEND)));
        let h = "ab".repeat(32);
        assert_eq!(
            parse(&format!("/task generate {h} Tell me a story")),
            Ok(Command::Task {
                kind: "generate".into(),
                model: Some(h.clone()),
                input: "Tell me a story".into()
            })
        );
        assert_eq!(
            parse("/task digest some words"),
            Ok(Command::Task {
                kind: "digest".into(),
                model: None,
                input: "some words".into()
            })
        );
        assert_eq!(
            parse(&format!("/task embed {h}")),
            Err(CommandError::Usage(USAGE_TASK))
        );
        assert_eq!(parse("hello"), Err(CommandError::NotACommand));
        assert_eq!(parse("/rm -rf"), Err(CommandError::Unknown("/rm".into())));
        assert_eq!(
            parse_caption("/send dtn://x/ a photo"),
            Some(("dtn://x/".into(), "a photo".into()))
        );
        assert_eq!(parse_caption("  "), None);
    }

    #[test]
    fn long_texts_split_within_the_limit() {
        // Astral characters count two units each: never split inside one.
        let text = "word 😀 ".repeat(2000) + &"x".repeat(5000);
        let parts = split_text(&text, TEXT_LIMIT);
        assert!(parts.len() >= 4);
        assert!(parts.iter().all(|p| tg_len(p) <= TEXT_LIMIT));
        assert_eq!(parts.concat(), text);
        assert_eq!(split_text("", 10), vec![String::new()]);
        let huge = "y".repeat(TEXT_LIMIT * 20);
        let parts = text_for_chat(&huge);
        assert_eq!(parts.len(), MAX_PARTS + 1);
        assert!(parts[MAX_PARTS].contains(&format!("{} more characters", TEXT_LIMIT * 12)));
        let c = caption(&"z".repeat(3000));
        assert_eq!(tg_len(&c), CAPTION_LIMIT);
    }

    #[test]
    fn rate_limit_refuses_then_recovers() {
        let mut r = RateLimit::new(6, 0);
        for _ in 0..6 {
            assert_eq!(r.check(0), Rate::Ok);
        }
        assert_eq!(r.check(100), Rate::Refuse);
        assert_eq!(r.check(200), Rate::Quiet);
        assert_eq!(r.check(300), Rate::Quiet);
        // One token every 10 s.
        assert_eq!(r.check(10_300), Rate::Ok);
        assert_eq!(r.check(10_400), Rate::Refuse);
        // A long silence fills the bucket, no more.
        for _ in 0..6 {
            assert_eq!(r.check(3_600_000), Rate::Ok);
        }
        assert_eq!(r.check(3_600_000), Rate::Refuse);
    }
}
