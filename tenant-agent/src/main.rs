//! `qleet-agent` entry point.

fn main() {
    eprintln!(
        "qleet-agent {}: the agent protocol is not implemented yet",
        qleet_agent::VERSION
    );
    std::process::exit(2);
}
