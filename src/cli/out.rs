//! Where a command's output goes and which node it works on: this process's stdout and
//! stderr and its own store, or, when the daemon runs a command for a CLI on its socket,
//! that request's output stream and the daemon's open node. Every command prints through
//! [`outln!`]/[`errln!`] (and `say!`/`esay!`, which use them) and opens its home with
//! [`super::open`], so one command body serves both.

use crate::node::Node;
use std::cell::RefCell;
use std::sync::Arc;

/// Which of the two output streams a piece of text belongs to.
pub use crate::daemon::Output as Stream;

/// Receives a command's output when it runs inside the daemon.
pub type Sink = Box<dyn FnMut(Stream, &str)>;

/// What a command run inside the daemon sees instead of its own process.
pub struct Borrowed {
    /// The daemon's node (its store is open there; opening it again would fail).
    pub node: Arc<Node>,
    pub sink: Sink,
}

thread_local! {
    static CTX: RefCell<Option<Borrowed>> = const { RefCell::new(None) };
}

/// Run `f` with output going to `b.sink` and `b.node` as the node, on this thread.
pub fn borrowed<R>(b: Borrowed, f: impl FnOnce() -> R) -> R {
    CTX.with(|c| *c.borrow_mut() = Some(b));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CTX.with(|c| c.borrow_mut().take());
        }
    }
    let _reset = Reset;
    f()
}

/// Whether output goes to a caller's stream rather than this process's terminal.
pub fn captured() -> bool {
    CTX.with(|c| c.borrow().is_some())
}

/// The daemon's node, when running inside it.
pub fn shared_node() -> Option<Arc<Node>> {
    CTX.with(|c| c.borrow().as_ref().map(|b| b.node.clone()))
}

/// Write one piece of text to the stream; the process's own when not captured.
pub fn write(stream: Stream, text: &str) {
    let done = CTX.with(|c| match c.borrow_mut().as_mut() {
        Some(b) => {
            (b.sink)(stream, text);
            true
        }
        None => false,
    });
    if !done {
        use std::io::Write;
        // A closed reader (`| head`) ends the process quietly via SIGPIPE's default.
        let _ = match stream {
            Stream::Out => std::io::stdout().lock().write_all(text.as_bytes()),
            Stream::Err => std::io::stderr().lock().write_all(text.as_bytes()),
        };
    }
}

/// Whether progress bars may draw: a terminal on stderr, not `--json`, not captured.
pub fn interactive(json: bool) -> bool {
    !json && !captured() && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// `println!` through [`write`].
macro_rules! outln {
    () => { $crate::cli::out::write($crate::cli::out::Stream::Out, "\n") };
    ($($t:tt)*) => {
        $crate::cli::out::write($crate::cli::out::Stream::Out, &format!("{}\n", format_args!($($t)*)))
    };
}

/// `eprintln!` through [`write`].
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::cli::out::write($crate::cli::out::Stream::Err, &format!("{}\n", format_args!($($t)*)))
    };
}

pub(crate) use {errln, outln};
