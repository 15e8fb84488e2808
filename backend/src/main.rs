//! `qleet`: the management-plane server binary.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use qleet::config::{Cli, Command, Config, LogFormat, Mode};
use qleet::startup::Application;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's report spans several lines; keep its first paragraph, on one line.
            let rendered = e.render().to_string();
            let reason: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let reason = reason.join(" ");
            eprintln!("qleet: {}", reason.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `qleet manifests`: the install, printed; nothing is contacted.
#[cfg(feature = "kubernetes")]
fn manifests(args: qleet::config::ManifestsArgs) -> anyhow::Result<()> {
    use qleet::install::{Values, render, to_yaml};
    let values = match &args.values {
        None => Values::default(),
        Some(path) => {
            let shown = path.display();
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
            Values::parse(&text).with_context(|| shown.to_string())?
        }
    };
    let yaml = to_yaml(&render(&values)?)?;
    print!("{yaml}");
    Ok(())
}

#[cfg(not(feature = "kubernetes"))]
fn manifests(_: qleet::config::ManifestsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`qleet manifests` needs a qleet built with `--features kubernetes`")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match cli.command {
        Command::Serve(args) => Config::from_serve(args)?,
        Command::Dev(args) => Config::from_dev(args)?,
        Command::Migrate(args) => {
            qleet::telemetry::init_logging(LogFormat::Pretty);
            let url = secrecy::SecretString::from(args.database_url);
            let pool = qleet::db::connect(&url).await?;
            qleet::db::migrate(&pool).await?;
            println!("management database is up to date");
            return Ok(());
        }
        Command::ControlPlane { args } => {
            // The alias: the control plane is its own lean binary, installed next to `qleet`.
            let binary = match std::env::var_os("QLEET_CONTROL_PLANE_BIN") {
                Some(path) => std::path::PathBuf::from(path),
                None => qleet::config::sibling_binary(qleet::config::CONTROL_PLANE_BIN)?,
            };
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(&binary).args(args),
            );
            return Err(anyhow::Error::new(err).context(format!("cannot run {}", binary.display())));
        }
        Command::Schema => {
            print!("{}", qleet::graphql::sdl());
            return Ok(());
        }
        Command::Manifests(args) => return manifests(args),
    };
    qleet::telemetry::init_logging(config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let url = config.public_url.clone();
    let mode = config.mode;
    let app = Application::build(config, listener).await?;
    match mode {
        Mode::Dev => {
            println!("Qleet is running at {url} (development sign-in enabled; Ctrl-C stops it)")
        }
        Mode::Serve => tracing::info!(%url, "Qleet is serving"),
    }
    app.run_until(qleet_common::shutdown::shutdown_signal())
        .await
}
