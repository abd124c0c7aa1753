//! The `ledger` binary: everything is in the library (`ledger::cli`).

/// mimalloc instead of glibc's malloc: a request allocates and frees many
/// small objects on whichever worker thread polls it, and glibc's arenas
/// spent about a quarter of the server's CPU on that under the load
/// benchmark (`malloc`, `_int_free`, `malloc_consolidate` in `perf`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ledger::cli::main()
}
