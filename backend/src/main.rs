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
    // The process runtime holds two pipes per control plane (and each may hold pooled
    // connections): use as many open files as the system allows, not the usual 1,024.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("qleet: cannot raise the open-files limit: {e}");
    }
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

/// `qleet database-servers ...`: prints the servers (or the one changed) as a table.
async fn database_servers(command: qleet::config::DatabaseServersCommand) -> anyhow::Result<()> {
    use qleet::config::DatabaseServersCommand as C;
    use qleet::fleet::servers;
    let common = match &command {
        C::List(common)
        | C::Add { common, .. }
        | C::Drain { common, .. }
        | C::Undrain { common, .. }
        | C::SetCapacity { common, .. }
        | C::Remove { common, .. } => common,
    };
    let secret = secrecy::SecretString::from(common.secret_key.clone());
    let keys = qleet::keys::Keys::from_secret(&secret)?;
    let pool =
        qleet::db::connect(&secrecy::SecretString::from(common.database_url.clone())).await?;
    qleet::db::migrate(&pool).await?;
    let shown = match command {
        C::List(_) => servers::list(&pool).await?,
        C::Add {
            name,
            url,
            capacity,
            ..
        } => {
            let url = secrecy::SecretString::from(url);
            vec![servers::add(&pool, &keys, &name, &url, capacity).await?]
        }
        C::Drain { name, .. } => vec![servers::set_draining(&pool, &name, true).await?],
        C::Undrain { name, .. } => vec![servers::set_draining(&pool, &name, false).await?],
        C::SetCapacity { name, capacity, .. } => {
            vec![servers::set_capacity(&pool, &name, capacity).await?]
        }
        C::Remove { name, .. } => {
            servers::remove(&pool, &name).await?;
            println!("removed database server {name}");
            return Ok(());
        }
    };
    println!(
        "{:<24} {:>8} {:>14}  STATE",
        "NAME", "CAPACITY", "CONTROL PLANES"
    );
    let now = chrono::Utc::now();
    for s in shown {
        let state = if s.draining {
            "draining".to_owned()
        } else if s.unavailable_until.is_some_and(|t| t > now) {
            format!(
                "refusing connections ({})",
                s.unavailable_reason.as_deref().unwrap_or("full")
            )
        } else if s.control_planes >= i64::from(s.capacity) {
            "full".to_owned()
        } else {
            "open".to_owned()
        };
        println!(
            "{:<24} {:>8} {:>14}  {state}",
            s.name, s.capacity, s.control_planes
        );
    }
    Ok(())
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
        Command::DatabaseServers(command) => return database_servers(command).await,
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
