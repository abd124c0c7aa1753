//! The `ledger` binary: everything is in the library (`ledger::cli`).

fn main() -> std::process::ExitCode {
    ledger::cli::main()
}
