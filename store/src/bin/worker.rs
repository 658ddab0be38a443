//! The pull worker on its own: `aktualizr-rs-store-worker --sysroot P --commit C --url U ...`
//! (see `aktualizr_rs_store::worker`).

fn main() -> std::process::ExitCode {
    aktualizr_rs_store::worker_main(std::env::args_os().skip(1).collect())
}
