//! The `mycelium` binary: parse, dispatch, exit code. Everything else is in the library.

fn main() {
    // Behave like other Unix tools when the reader goes away (`mycelium list | head`):
    // end quietly on SIGPIPE instead of panicking on a failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(mycelium::cli::main(std::env::args_os().collect()));
}
