//! `qleetctl`: parse the command line, run it, exit with its documented code.

fn main() -> std::process::ExitCode {
    qleetctl::main()
}
