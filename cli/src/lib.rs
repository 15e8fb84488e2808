//! `qleetctl`, Qleet's command-line client for people and pipelines. It speaks only the public
//! GraphQL API — the management plane's `/graphql` and each control plane's API through the
//! gateway, over HTTP and the `graphql-transport-ws` WebSocket — so it is a binary of its own
//! and links nothing of the servers (the control plane's binary stays as lean as it was).

mod client;
mod config;
mod error;
mod login;
mod manage;
mod objects;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use error::Result;
pub use error::{Exit, Failure};
use output::Format;

const EXAMPLES: &str = "\
Examples:
  qleetctl login --url https://qleet.example          # sign in through the browser
  qleetctl login --url https://qleet.example --token qleet_...   # or with an API token
  qleetctl use acme --control-plane prod               # choose organisation and control plane
  qleetctl cp create prod --wait                       # a control plane, ready to use
  qleetctl plan -f app.yaml                            # what would change
  qleetctl apply -f app.yaml --wait=10m                # apply and follow it live
  qleetctl get                                         # every object and its phase
  qleetctl describe Workload/web -o yaml
In CI set QLEET_URL and QLEET_TOKEN (and QLEET_ORG / QLEET_CONTROL_PLANE) instead of logging in.

Exit codes: 0 ok; 1 something failed (a refused request, an object FAILED, a wait timed out);
2 usage (bad flags, no context chosen); 3 not signed in or forbidden; 4 Qleet or the control
plane unavailable (retry).";

/// Qleet's command-line client.
#[derive(Parser, Debug)]
#[command(name = "qleetctl", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Qleet's URL (default: the one you logged in to).
    #[arg(long, env = "QLEET_URL", global = true)]
    url: Option<String>,
    /// Organisation (slug) to act in (default: the current context).
    #[arg(long, env = "QLEET_ORG", global = true)]
    org: Option<String>,
    /// Control plane (name or id) to act on (default: the current context).
    #[arg(
        long = "control-plane",
        visible_alias = "cp",
        env = "QLEET_CONTROL_PLANE",
        global = true
    )]
    control_plane: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    output: Format,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sign in: through the browser (Qleet's own sign-in), or store an API token.
    Login(LoginArgs),
    /// Sign out: revoke the stored token and forget it.
    Logout {
        /// Forget the token without revoking it.
        #[arg(long)]
        keep_token: bool,
    },
    /// Who you are, where, and in which context.
    Whoami,
    /// Choose the current organisation and, optionally, control plane.
    Use {
        /// Organisation slug.
        org: String,
        /// Control plane name or id.
        control_plane: Option<String>,
    },
    /// Organisations.
    #[command(subcommand)]
    Org(manage::OrgCommand),
    /// Members of the current organisation.
    #[command(subcommand)]
    Member(manage::MemberCommand),
    /// Open invitations of the current organisation.
    #[command(subcommand, alias = "invitations")]
    Invitation(manage::InvitationCommand),
    /// API tokens of the current organisation.
    #[command(subcommand)]
    Token(manage::TokenCommand),
    /// Control planes of the current organisation.
    #[command(subcommand, name = "cp", alias = "control-plane")]
    ControlPlane(manage::CpCommand),
    /// Show what applying a YAML file would change (nothing is written).
    Plan(objects::FileArgs),
    /// Apply a YAML file; with `--wait`, follow it live until everything is Ready.
    Apply(objects::ApplyArgs),
    /// List objects (all, of one kind) or show one.
    Get(objects::GetArgs),
    /// One object in full: spec, outputs (secrets only as references), conditions, events,
    /// dependencies.
    Describe(objects::TargetArgs),
    /// Delete an object.
    Delete(objects::DeleteArgs),
    /// An object's events, newest first.
    Events(objects::EventsArgs),
    /// Wait until an object is Ready (or deleted).
    Wait(objects::WaitArgs),
    /// Follow phase changes live (Ctrl-C to stop).
    Watch(objects::WatchArgs),
    /// The dependency graph, as a text tree or DOT.
    Graph(objects::GraphArgs),
    /// The organisation's audit log, newest first; with `--trail` or `--object`, the current
    /// control plane's audit trail (every apply, delete, retry, refresh and agent report).
    Audit(manage::AuditArgs),
    /// Retry a FAILED object now, from its first attempt.
    Retry(objects::RerunArgs),
    /// Have the agent check a READY or FAILED object against the cloud again: what was deleted
    /// behind Qleet's back is made again, its outputs are read back.
    Refresh(objects::RerunArgs),
    /// Tenant agents of the current control plane.
    #[command(subcommand)]
    Agent(objects::AgentCommand),
    /// Print a shell completion script, e.g. `qleetctl completion bash > /etc/bash_completion.d/qleetctl`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
struct LoginArgs {
    /// Store this API token instead of signing in through the browser (`-` reads it from
    /// standard input).
    #[arg(long)]
    token: Option<String>,
    /// Preselect this organisation on the browser's confirmation page.
    #[arg(long = "select-org")]
    select_org: Option<String>,
    /// Print the sign-in URL but do not try to open a browser.
    #[arg(long)]
    no_browser: bool,
    /// How long to wait for the browser, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// What every command gets: the client, the stored config and the chosen context.
pub(crate) struct Ctx {
    client: client::Client,
    stored: config::Stored,
    org: Option<String>,
    control_plane: Option<String>,
    format: Format,
}

impl Ctx {
    /// The organisation to act in, or a usage error saying how to choose one.
    fn org(&self) -> Result<&str> {
        self.org.as_deref().ok_or_else(|| {
            Failure::usage("no organisation chosen: pass --org SLUG or run `qleetctl use SLUG`")
        })
    }

    /// The control plane's id: `--control-plane` (a name or id, looked up in the
    /// organisation) or the current context.
    async fn control_plane(&self) -> Result<String> {
        let Some(cp) = self.control_plane.as_deref() else {
            return Err(Failure::usage(
                "no control plane chosen: pass --control-plane NAME or run `qleetctl use ORG CONTROL_PLANE`",
            ));
        };
        if self.stored.control_plane.as_deref() == Some(cp) && is_uuid(cp) {
            return Ok(cp.to_owned());
        }
        Ok(manage::find_control_plane(self, cp).await?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Parses `30s`, `5m`, `1h` or plain seconds.
pub(crate) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 30s, 5m, 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?} is not a duration (like 30s, 5m, 1h)")),
    };
    Ok(Duration::from_secs(secs))
}

/// Entry point of the binary: parses, runs, prints a one-line error, exits with its code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { Exit::Usage as u8 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {f}");
            ExitCode::from(f.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Completion { shell } = cli.command {
        use clap::CommandFactory as _;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "qleetctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let stored = config::load()?;
    let g = cli.global;
    if let Command::Login(args) = cli.command {
        return login(g, stored, args).await;
    }
    if let Command::Logout { keep_token } = cli.command {
        return logout(g, stored, keep_token).await;
    }
    let url = g
        .url
        .clone()
        .or_else(|| stored.url.clone())
        .ok_or_else(|| {
            Failure::auth(
                "not signed in: run `qleetctl login --url URL`, or set QLEET_URL and QLEET_TOKEN",
            )
        })?;
    // The environment wins over the stored token (CI), read here once.
    let token = std::env::var("QLEET_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| stored.token.clone());
    let ctx = Ctx {
        client: client::Client::new(&url, token)?,
        org: g.org.clone().or_else(|| stored.org.clone()),
        control_plane: g
            .control_plane
            .clone()
            .or_else(|| stored.control_plane.clone()),
        stored,
        format: g.output,
    };
    match cli.command {
        Command::Login(_) | Command::Logout { .. } | Command::Completion { .. } => Ok(()),
        Command::Whoami => whoami(&ctx).await,
        Command::Use { org, control_plane } => use_context(ctx, org, control_plane).await,
        Command::Org(c) => manage::org(&ctx, c).await,
        Command::Member(c) => manage::member(&ctx, c).await,
        Command::Invitation(c) => manage::invitation(&ctx, c).await,
        Command::Token(c) => manage::token(&ctx, c).await,
        Command::ControlPlane(c) => manage::control_plane(&ctx, c).await,
        Command::Plan(a) => objects::plan(&ctx, a).await,
        Command::Apply(a) => objects::apply(&ctx, a).await,
        Command::Get(a) => objects::get(&ctx, a).await,
        Command::Describe(a) => objects::describe(&ctx, a).await,
        Command::Delete(a) => objects::delete(&ctx, a).await,
        Command::Events(a) => objects::events(&ctx, a).await,
        Command::Wait(a) => objects::wait(&ctx, a).await,
        Command::Watch(a) => objects::watch(&ctx, a).await,
        Command::Graph(a) => objects::graph(&ctx, a).await,
        Command::Audit(a) => manage::audit(&ctx, a).await,
        Command::Retry(a) => objects::rerun(&ctx, a, "retry").await,
        Command::Refresh(a) => objects::rerun(&ctx, a, "refresh").await,
        Command::Agent(c) => objects::agent(&ctx, c).await,
    }
}

const WHOAMI: &str =
    "{ me { id email displayName organizations { role organization { slug name } } } }";

async fn login(g: Global, mut stored: config::Stored, args: LoginArgs) -> Result<()> {
    let url = g
        .url
        .or_else(|| stored.url.clone())
        .ok_or_else(|| Failure::usage("which Qleet? pass --url URL (or set QLEET_URL)"))?;
    let probe = client::Client::new(&url, None)?;
    probe.reachable().await?;
    let (token, org) = match args.token {
        Some(t) => {
            let t = if t == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| Failure::failed(format!("cannot read the token: {e}")))?;
                line.trim().to_owned()
            } else {
                t
            };
            if t.is_empty() {
                return Err(Failure::usage("--token is empty"));
            }
            (t, None)
        }
        None => {
            let granted = login::browser(
                &probe.url,
                args.select_org.as_deref(),
                !args.no_browser,
                Duration::from_secs(args.timeout),
            )
            .await?;
            (granted.token, Some(granted.org))
        }
    };
    // Check the token before keeping it.
    let client = client::Client::new(&url, Some(token.clone()))?;
    let me = client.management(WHOAMI, json!({})).await?;
    let orgs = me["me"]["organizations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let org = org.or(g.org).or_else(|| {
        // An API token acts in exactly one organisation.
        (orgs.len() == 1)
            .then(|| orgs[0]["organization"]["slug"].as_str().map(str::to_owned))
            .flatten()
    });
    if stored.url.as_deref() != Some(probe.url.as_str()) || stored.org != org {
        stored.control_plane = None;
        stored.control_plane_name = None;
    }
    stored.url = Some(probe.url.clone());
    stored.token = Some(token);
    stored.org = org.clone();
    config::save(&stored)?;
    let email = me["me"]["email"].as_str().unwrap_or("?");
    let human = match &org {
        Some(o) => format!("Signed in to {} as {email} (organisation {o}).", probe.url),
        None => format!("Signed in to {} as {email}.", probe.url),
    };
    output::print_or(
        g.output,
        &json!({ "url": probe.url, "email": email, "org": org }),
        &human,
    );
    Ok(())
}

async fn logout(g: Global, stored: config::Stored, keep_token: bool) -> Result<()> {
    let mut revoked = false;
    if let (Some(url), Some(token), Some(org), false) =
        (&stored.url, &stored.token, &stored.org, keep_token)
    {
        let client = client::Client::new(url, Some(token.clone()))?;
        revoked = manage::revoke_own_token(&client, org, token).await;
    }
    let removed = config::remove()?;
    let human = match (removed, revoked) {
        (false, _) => "Not signed in.".to_owned(),
        (true, true) => "Signed out; the token was revoked.".to_owned(),
        (true, false) => "Signed out (the token was forgotten, not revoked).".to_owned(),
    };
    output::print_or(
        g.output,
        &json!({ "signedOut": removed, "revoked": revoked }),
        &human,
    );
    Ok(())
}

async fn whoami(ctx: &Ctx) -> Result<()> {
    let data = ctx.client.management(WHOAMI, json!({})).await?;
    let me = &data["me"];
    let value = json!({
        "url": ctx.client.url,
        "email": me["email"],
        "displayName": me["displayName"],
        "organizations": me["organizations"],
        "context": { "org": ctx.org, "controlPlane": ctx.control_plane },
    });
    let orgs: Vec<String> = me["organizations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    format!(
                        "{} ({})",
                        output::cell(&m["organization"]["slug"]),
                        output::cell(&m["role"]).to_lowercase()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let cp = ctx
        .stored
        .control_plane_name
        .clone()
        .filter(|_| ctx.control_plane == ctx.stored.control_plane)
        .or_else(|| ctx.control_plane.clone())
        .unwrap_or_else(|| "-".into());
    let human = format!(
        "URL:           {}\nUser:          {}\nOrganisations: {}\nContext:       org {}, control plane {}",
        ctx.client.url,
        output::cell(&me["email"]),
        if orgs.is_empty() {
            "-".into()
        } else {
            orgs.join(", ")
        },
        ctx.org.as_deref().unwrap_or("-"),
        cp,
    );
    output::print_or(ctx.format, &value, &human);
    Ok(())
}

async fn use_context(mut ctx: Ctx, org: String, control_plane: Option<String>) -> Result<()> {
    // The organisation must exist for this caller.
    ctx.client
        .management(
            "query($o: String!) { organization(slug: $o) { slug } }",
            json!({ "o": org }),
        )
        .await
        .map_err(|f| context_error(f, &format!("organisation {org:?}")))?;
    ctx.org = Some(org.clone());
    let mut stored = ctx.stored.clone();
    stored.org = Some(org.clone());
    stored.control_plane = None;
    stored.control_plane_name = None;
    if let Some(cp) = &control_plane {
        let found = manage::find_control_plane(&ctx, cp)
            .await
            .map_err(|f| context_error(f, &format!("control plane {cp:?}")))?;
        stored.control_plane = found["id"].as_str().map(str::to_owned);
        stored.control_plane_name = found["name"].as_str().map(str::to_owned);
    }
    if stored.url.is_none() {
        stored.url = Some(ctx.client.url.clone());
    }
    config::save(&stored)?;
    let human = match &stored.control_plane_name {
        Some(cp) => format!("Now using organisation {org}, control plane {cp}."),
        None => format!("Now using organisation {org}."),
    };
    output::print_or(
        ctx.format,
        &json!({ "org": org, "controlPlane": stored.control_plane, "controlPlaneName": stored.control_plane_name }),
        &human,
    );
    Ok(())
}

/// A context that names something that is not there is a usage error (exit 2).
fn context_error(f: Failure, what: &str) -> Failure {
    if f.message.starts_with("NOT_FOUND") {
        Failure::usage(format!("{what} not found (or you are not a member)"))
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
