//! `qleet-agent` entry point: parse the configuration, set up logging, run until SIGTERM or
//! ctrl-c. Any failure ends the process non-zero with a one-line reason.

use clap::Parser;
use qleet_agent::config::{Cli, Config};

fn fail(code: i32, reason: &str) -> ! {
    eprintln!("qleet-agent: {reason}");
    std::process::exit(code);
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{e}");
            return;
        }
        Err(e) => {
            let text = e.to_string();
            let line = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            fail(2, line);
        }
    };
    let config = Config::try_from(cli).unwrap_or_else(|e| fail(2, &e));
    init_logging(config.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(1, &format!("tokio: {e}")));
    let result = runtime.block_on(qleet_agent::start(config, shutdown_signal()));
    if let Err(e) = result {
        let code = match e {
            qleet_agent::StartError::Config(_) | qleet_agent::StartError::State(_) => 2,
            qleet_agent::StartError::Agent(_) => 3,
            qleet_agent::StartError::Register(_) => 4,
        };
        fail(code, &e.to_string());
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
