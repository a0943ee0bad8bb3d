//! The Bot API over HTTP: frankenstein's methods and types over a reqwest client (rustls
//! on ring, the system's proxy settings or a given one), plus file downloads. Errors never
//! carry the request URL: it holds the bot's token.

use async_trait::async_trait;
use frankenstein::AsyncTelegramApi;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to the Bot API.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("cannot reach the Bot API: {0}")]
    Http(String),
    #[error("the Bot API refused {method}: {description} ({code})")]
    Api {
        method: String,
        code: u64,
        description: String,
        /// Seconds Telegram asks us to wait (flood control).
        retry_after: Option<u64>,
    },
    #[error("the Bot API answered {method} with something unreadable: {reason}")]
    Decode { method: String, reason: String },
    #[error("file {0}: too large ({1} bytes)")]
    TooLarge(String, u64),
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("bad Bot API setup: {0}")]
    Setup(String),
}

impl From<reqwest::Error> for BotError {
    fn from(e: reqwest::Error) -> BotError {
        // The URL holds the token: never in an error.
        BotError::Http(e.without_url().to_string())
    }
}

/// A token as @BotFather gives them: `<digits>:<letters, digits, - and _>`. Anything else
/// is refused before a request could put it in a URL.
pub fn check_token(token: &str) -> Result<(), BotError> {
    let ok = token.split_once(':').is_some_and(|(id, secret)| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && !secret.is_empty()
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(BotError::Setup(
            "the bot token is not of the form 123456:ABC-def_ghi (as @BotFather gives it)".into(),
        ))
    }
}

/// A bot: its API base (`https://api.telegram.org` or a stand-in) and token.
#[derive(Clone)]
pub struct Bot {
    /// `{base}/bot{token}`
    api: String,
    /// `{base}/file/bot{token}`
    files: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bot { .. }")
    }
}

/// Longest a request may take beyond a long poll's own wait.
pub const REQUEST_SLACK: Duration = Duration::from_secs(30);

impl Bot {
    /// `proxy`: `socks5://host:port`, `http://host:port`, …; without it the usual
    /// `HTTPS_PROXY`/`ALL_PROXY` environment applies.
    pub fn new(
        base: &str,
        token: &str,
        proxy: Option<&str>,
        poll: Duration,
    ) -> Result<Bot, BotError> {
        let token = token.trim();
        check_token(token)?;
        // reqwest is built without a crypto provider of its own: use ring's, as quinn does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(poll + REQUEST_SLACK);
        if let Some(p) = proxy {
            b = b.proxy(
                reqwest::Proxy::all(p).map_err(|e| BotError::Setup(format!("proxy {p}: {e}")))?,
            );
        }
        let client = b.build().map_err(|e| BotError::Setup(e.to_string()))?;
        let base = base.trim_end_matches('/');
        Ok(Bot {
            api: format!("{base}/bot{token}"),
            files: format!("{base}/file/bot{token}"),
            client,
        })
    }

    /// Download a file `getFile` named, refusing more than `max` bytes.
    pub async fn download(&self, file_path: &str, max: u64) -> Result<Vec<u8>, BotError> {
        if file_path.contains("..") || file_path.starts_with('/') {
            return Err(BotError::Decode {
                method: "getFile".into(),
                reason: format!("file path {file_path:?}"),
            });
        }
        let mut r = self
            .client
            .get(format!("{}/{file_path}", self.files))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(BotError::Api {
                method: "file download".into(),
                code: u64::from(r.status().as_u16()),
                description: r.status().to_string(),
                retry_after: None,
            });
        }
        if r.content_length().is_some_and(|n| n > max) {
            return Err(BotError::TooLarge(
                file_path.to_string(),
                r.content_length().unwrap_or(0),
            ));
        }
        let mut out = Vec::new();
        while let Some(chunk) = r.chunk().await? {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > max {
                return Err(BotError::TooLarge(file_path.to_string(), out.len() as u64));
            }
        }
        Ok(out)
    }

    async fn decode<Output: serde::de::DeserializeOwned>(
        method: &str,
        r: reqwest::Response,
    ) -> Result<Output, BotError> {
        let ok = r.status().is_success();
        let status = r.status().as_u16();
        let body = r.text().await?;
        if ok {
            return serde_json::from_str(&body).map_err(|e| BotError::Decode {
                method: method.into(),
                reason: e.to_string(),
            });
        }
        match serde_json::from_str::<frankenstein::response::ErrorResponse>(&body) {
            Ok(e) => Err(BotError::Api {
                method: method.into(),
                code: e.error_code,
                description: e.description,
                retry_after: e.parameters.and_then(|p| p.retry_after).map(u64::from),
            }),
            Err(_) => Err(BotError::Api {
                method: method.into(),
                code: u64::from(status),
                description: body.chars().take(200).collect(),
                retry_after: None,
            }),
        }
    }
}

#[async_trait]
impl AsyncTelegramApi for Bot {
    type Error = BotError;

    async fn request<Params, Output>(
        &self,
        method: &str,
        params: Option<Params>,
    ) -> Result<Output, BotError>
    where
        Params: serde::ser::Serialize + std::fmt::Debug + std::marker::Send,
        Output: serde::de::DeserializeOwned,
    {
        let mut req = self
            .client
            .post(format!("{}/{method}", self.api))
            .header("Content-Type", "application/json");
        if let Some(p) = params {
            let body = serde_json::to_string(&p).map_err(|e| BotError::Decode {
                method: method.into(),
                reason: e.to_string(),
            })?;
            req = req.body(body);
        }
        Self::decode(method, req.send().await?).await
    }

    async fn request_with_form_data<Params, Output>(
        &self,
        method: &str,
        params: Params,
        files: Vec<(&str, PathBuf)>,
    ) -> Result<Output, BotError>
    where
        Params: serde::ser::Serialize + std::fmt::Debug + std::marker::Send,
        Output: serde::de::DeserializeOwned,
    {
        use reqwest::multipart::{Form, Part};
        let value = serde_json::to_value(&params).map_err(|e| BotError::Decode {
            method: method.into(),
            reason: e.to_string(),
        })?;
        let fields = value.as_object().cloned().unwrap_or_default();
        let keys: Vec<&str> = files.iter().map(|(k, _)| *k).collect();
        let mut form = Form::new();
        for (k, v) in fields {
            if keys.contains(&k.as_str()) {
                continue;
            }
            form = match v {
                serde_json::Value::String(s) => form.text(k, s),
                other => form.text(k, other.to_string()),
            };
        }
        for (name, path) in files {
            let data = tokio::fs::read(&path).await.map_err(|e| BotError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            form = form.part(name.to_owned(), Part::bytes(data).file_name(file_name));
        }
        let r = self
            .client
            .post(format!("{}/{method}", self.api))
            .multipart(form)
            .send()
            .await?;
        Self::decode(method, r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_before_they_reach_a_url() {
        assert!(check_token("123456:ABC-def_ghi").is_ok());
        for bad in [
            "",
            "123456",
            ":abc",
            "12a:abc",
            "123:",
            "123:abc/../getMe",
            "123:abc def",
            "123:abc?x=1",
        ] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
        assert!(Bot::new("http://127.0.0.1:1", "1:a/b", None, Duration::from_secs(1)).is_err());
    }
}
