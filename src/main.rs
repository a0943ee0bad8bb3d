//! The `mycelium` binary: parse, dispatch, exit code. Everything else is in the library.

use clap::Parser;

fn main() {
    // Behave like other Unix tools when the reader goes away (`mycelium list | head`):
    // end quietly on SIGPIPE instead of panicking on a failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = mycelium::cli::Cli::parse();
    if let Err(e) = mycelium::cli::run(cli) {
        // Errors quote outside text (a refusal's reason, a peer's words): escaped, and any
        // line breaks in them indented under the first line.
        eprintln!(
            "error: {}",
            mycelium::cli::safe::block(&format!("{e:#}"), "  ")
        );
        std::process::exit(1);
    }
}
