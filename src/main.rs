//! The `mycelium` binary: parse, dispatch, exit code. Everything else is in the library.

use clap::Parser;

fn main() {
    let cli = mycelium::cli::Cli::parse();
    if let Err(e) = mycelium::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
