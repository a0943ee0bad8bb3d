//! The CLI's side of the control socket: find a running daemon on a home, run a command
//! there and relay its output, or fetch one API answer. Blocking, plain HTTP/1.1 over a
//! Unix stream (a request is one short write; the answer is read as it comes, chunked or
//! to the end).

use super::Output;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the daemon's control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon answered something unexpected: {0}")]
    Protocol(String),
    #[error("the daemon refused: {status} {message}")]
    Refused { status: u16, message: String },
    #[error("the daemon stopped before the command finished; what it did may or may not be stored (check with `mycelium list`)")]
    Cut,
}

/// A connection to the daemon running on `home`, or `None` when none answers there (no
/// socket, or a stale one left by a daemon that was killed).
pub fn connect(home: &Path) -> Option<UnixStream> {
    UnixStream::connect(super::socket_path(home)).ok()
}

fn request(s: &mut UnixStream, method: &str, path: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

/// The answer's status, and a reader of its body (chunked encoding undone).
fn response(s: UnixStream) -> Result<(u16, Box<dyn BufRead>), ClientError> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("status line {line:?}")))?;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(ClientError::Protocol("headers cut short".into()));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    if chunked {
        Ok((
            status,
            Box::new(BufReader::new(Chunked {
                inner: r,
                left: 0,
                done: false,
            })),
        ))
    } else {
        Ok((status, Box::new(r)))
    }
}

/// Reads the body of a chunked answer.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            if self.inner.read_line(&mut size)? == 0 {
                return Ok(0);
            }
            let size = size.trim();
            let size = size.split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(bad("chunk cut short"));
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

/// Run a CLI command (arguments without the program name) in the daemon, from `cwd`,
/// handing each piece of its output to `out` as it comes; its exit code.
pub fn run(
    mut s: UnixStream,
    argv: &[String],
    cwd: &Path,
    out: &mut dyn FnMut(Output, &str),
) -> Result<i32, ClientError> {
    let body = serde_json::json!({"argv": argv, "cwd": cwd});
    request(&mut s, "POST", "/v1/run", body.to_string().as_bytes())?;
    let (status, mut r) = response(s)?;
    if status != 200 {
        let mut text = String::new();
        let _ = r.read_to_string(&mut text);
        return Err(refused(status, &text));
    }
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(ClientError::Cut);
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))?;
        if let Some(t) = v["out"].as_str() {
            out(Output::Out, t);
        } else if let Some(t) = v["err"].as_str() {
            out(Output::Err, t);
        } else if let Some(c) = v["exit"].as_i64() {
            return Ok(i32::try_from(c).unwrap_or(1));
        }
    }
}

fn refused(status: u16, text: &str) -> ClientError {
    let message = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    ClientError::Refused { status, message }
}

/// `GET path` on the daemon of `home`, as JSON.
pub fn get(home: &Path, path: &str) -> Result<serde_json::Value, ClientError> {
    let mut s = UnixStream::connect(super::socket_path(home))?;
    request(&mut s, "GET", path, b"")?;
    let (status, mut r) = response(s)?;
    let mut text = String::new();
    r.read_to_string(&mut text)?;
    if status != 200 {
        return Err(refused(status, &text));
    }
    serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Read the daemon's event stream until `until` returns true for an event (as JSON). The
/// stream starts with `{"type": "hello"}`: from then on nothing is missed.
pub fn events(
    home: &Path,
    until: &mut dyn FnMut(&serde_json::Value) -> bool,
) -> Result<(), ClientError> {
    let mut s = UnixStream::connect(super::socket_path(home))?;
    request(&mut s, "GET", "/api/events", b"")?;
    let (status, r) = response(s)?;
    if status != 200 {
        return Err(ClientError::Refused {
            status,
            message: "event stream".into(),
        });
    }
    for line in r.lines() {
        let line = line?;
        if let Some(data) = line.strip_prefix("data:") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) {
                if until(&v) {
                    return Ok(());
                }
            }
        }
    }
    Err(ClientError::Cut)
}
