//! `bench`: synthetic session traffic against a cluster, verifying every acknowledged update (see `bench --help`).

use std::process::ExitCode;

use clap::Parser;

use bench::cli::{dispatch, Cli, Cmd};

// The same allocator as `lb`: `bench minimal-proxy` must differ from it only in routing logic, and the load
// generator itself gains from it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Pingora builds its own runtimes and must not be started inside ours.
    if let Cmd::MinimalProxy {
        listen,
        upstream,
        threads,
        config,
    } = cli.cmd
    {
        if let Err(e) = bench::minimal_proxy::serve(listen, upstream, threads, config.as_deref()) {
            eprintln!("bench minimal-proxy: {e:#}");
        }
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(dispatch(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
