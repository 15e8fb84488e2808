//! `qleet-control-plane`: one tenant's control plane server (started by the management plane's
//! process driver or Kubernetes driver, or run standalone).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use qleet_control_plane::Application;
use qleet_control_plane::config::{ControlPlaneArgs, ControlPlaneConfig, PoolConfig};

fn main() -> ExitCode {
    let args = match ControlPlaneArgs::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's report spans several lines; keep its first paragraph, on one line.
            let rendered = e.render().to_string();
            let reason: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!(
                "qleet-control-plane: {}",
                reason.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    // Many control planes share a server: two workers and a small blocking pool keep an idle
    // one's threads (and their stacks) few.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qleet-control-plane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let pool = PoolConfig::from_args(&args);
    let config = ControlPlaneConfig::from_args(args)?;
    qleet_common::telemetry::init_logging(config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let stdin_ends = config.stop_on_stdin_eof.then(stdin_closed).transpose()?;
    let app = Application::build_with_pool(config, pool, listener).await?;
    tracing::info!(addr = %app.local_addr()?, "control plane serving");
    app.run_until(async move {
        match stdin_ends {
            Some(closed) => tokio::select! {
                () = qleet_common::shutdown::shutdown_signal() => {}
                () = closed => tracing::info!("standard input closed (the supervisor is gone or asked us to stop); shutting down"),
            },
            None => qleet_common::shutdown::shutdown_signal().await,
        }
    })
    .await
}

/// Resolves when standard input, a pipe from the supervisor, reaches its end (or fails).
fn stdin_closed() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use std::os::fd::AsFd as _;
    use tokio::io::AsyncReadExt as _;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot take standard input")?;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
        .context("QLEET_CP_STOP_ON_STDIN_EOF needs standard input to be a pipe")?;
    Ok(async move {
        let mut buf = [0u8; 64];
        while matches!(pipe.read(&mut buf).await, Ok(n) if n > 0) {}
    })
}
