//! Orchestration commands: the tenant control plane's GraphQL API through the gateway
//! (`/cp/{id}/graphql`), and its `objectChanges` subscription for live progress.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::error::{Failure, Result};
use crate::output::{self, Column, Format};
use crate::{Ctx, parse_duration};

/// Biggest file `plan` / `apply` read (the server bounds it too).
const MAX_FILE: u64 = 4 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct FileArgs {
    /// The YAML file (`-` for standard input).
    #[arg(short = 'f', long = "filename", required = true)]
    file: PathBuf,
    /// Delete top-level objects the file does not mention.
    #[arg(long)]
    prune: bool,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Wait until every changed object is Ready or gone (at most TIMEOUT, default 10m); exit
    /// 1 if one ends FAILED or time runs out.
    #[arg(long, num_args = 0..=1, default_missing_value = "10m", require_equals = true, value_parser = parse_duration)]
    wait: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct TargetArgs {
    /// `Kind/name`, or a kind followed by a name.
    target: String,
    name: Option<String>,
}

#[derive(Args, Debug)]
pub struct RerunArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Wait until it is Ready again (at most TIMEOUT, default 10m); exit 1 if it ends FAILED
    /// or time runs out.
    #[arg(long, num_args = 0..=1, default_missing_value = "10m", require_equals = true, value_parser = parse_duration)]
    wait: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// A kind, `Kind/name`, or nothing for every object.
    target: Option<String>,
    name: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Wait until it is gone (at most TIMEOUT, default 10m).
    #[arg(long, num_args = 0..=1, default_missing_value = "10m", require_equals = true, value_parser = parse_duration)]
    wait: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// How many events.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// What to wait for.
    #[arg(long = "for", value_parser = ["ready", "deleted"], default_value = "ready")]
    condition: String,
    /// How long at most.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Only this kind.
    kind: Option<String>,
    /// Stop after this long (default: until interrupted).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    /// Print Graphviz DOT instead of a text tree.
    #[arg(long)]
    dot: bool,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Issue a one-time registration token and print the install commands (admins).
    Token {
        /// Minutes the token stays valid (5 to 1440).
        #[arg(long, default_value_t = 60)]
        ttl_minutes: u32,
    },
    /// Registered agents and their connection state.
    List,
    /// Revoke an agent by id: its credential stops working at once.
    Revoke { id: String },
}

/// `Kind/name` or `Kind name`.
fn parse_target(target: &str, name: Option<&str>) -> Result<(String, String)> {
    let (kind, name) = match (target.split_once('/'), name) {
        (Some((k, n)), None) => (k, n),
        (None, Some(n)) => (target, n),
        _ => {
            return Err(Failure::usage(format!(
                "{target:?}: name an object as Kind/name (e.g. Workload/web) or Kind name"
            )));
        }
    };
    if kind.is_empty() || name.is_empty() {
        return Err(Failure::usage(format!(
            "{target:?}: name an object as Kind/name (e.g. Workload/web)"
        )));
    }
    Ok((kind.to_owned(), name.to_owned()))
}

/// The file's text, checked locally: readable, bounded, and well-formed YAML.
fn read_yaml(path: &PathBuf) -> Result<String> {
    let shown = path.display();
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::failed(format!("cannot read standard input: {e}")))?;
        s
    } else {
        let meta = std::fs::metadata(path)
            .map_err(|e| Failure::failed(format!("cannot read {shown}: {}", io_reason(&e))))?;
        if meta.len() > MAX_FILE {
            return Err(Failure::failed(format!(
                "{shown} is larger than {} MiB",
                MAX_FILE / 1024 / 1024
            )));
        }
        std::fs::read_to_string(path)
            .map_err(|e| Failure::failed(format!("cannot read {shown}: {}", io_reason(&e))))?
    };
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| {
        let first = e.to_string();
        let first = first.lines().next().unwrap_or("invalid YAML").to_owned();
        Failure::failed(format!("{shown} is not valid YAML: {first}"))
    })?;
    if docs.iter().all(Value::is_null) {
        return Err(Failure::failed(format!("{shown} has no objects")));
    }
    Ok(text)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

const PLAN: &str = "mutation($y: String!, $d: Boolean!, $p: Boolean!) { apply(yaml: $y, dryRun: $d, prune: $p) { applied summary { create update delete unchanged } changes { action kind name owner { kind name } diffs { path before after } } } }";

/// The plan as people read it: `+` create, `~` update, `-` delete, field diffs, line diffs
/// for multi-line text such as manifests.
pub fn render_plan(plan: &Value, colour: bool) -> String {
    let mut out = String::new();
    for change in plan["changes"].as_array().into_iter().flatten() {
        let action = change["action"].as_str().unwrap_or("");
        let (sign, code) = match action {
            "CREATE" => ("+", "32"),
            "UPDATE" => ("~", "33"),
            "DELETE" => ("-", "31"),
            _ => continue,
        };
        let owner = match change["owner"]["kind"].as_str() {
            Some(k) => format!(" (owned by {k}/{})", output::cell(&change["owner"]["name"])),
            None => String::new(),
        };
        let head = format!(
            "{sign} {}/{}{owner}  {}",
            output::cell(&change["kind"]),
            output::cell(&change["name"]),
            action.to_lowercase()
        );
        out.push_str(&output::paint(colour, code, &head));
        out.push('\n');
        for diff in change["diffs"].as_array().into_iter().flatten() {
            let path = output::cell(&diff["path"]);
            let (before, after) = (&diff["before"], &diff["after"]);
            let multiline = |v: &Value| v.as_str().is_some_and(|s| s.contains('\n'));
            if multiline(before) || multiline(after) {
                out.push_str(&format!("    {path}:\n"));
                let lines =
                    output::line_diff(before.as_str().unwrap_or(""), after.as_str().unwrap_or(""));
                for (mark, line) in lines {
                    let text = format!("      {mark} {line}");
                    let text = match mark {
                        '+' => output::paint(colour, "32", &text),
                        '-' => output::paint(colour, "31", &text),
                        _ => text,
                    };
                    out.push_str(text.trim_end());
                    out.push('\n');
                }
            } else {
                let show = |v: &Value| match v {
                    Value::Null => "(none)".to_owned(),
                    other => other.to_string(),
                };
                out.push_str(&format!("    {path}: {} → {}\n", show(before), show(after)));
            }
        }
    }
    let s = &plan["summary"];
    let verb = if plan["applied"] == true {
        "Applied"
    } else {
        "Plan"
    };
    out.push_str(&format!(
        "{verb}: {} to create, {} to update, {} to delete, {} unchanged.\n",
        s["create"], s["update"], s["delete"], s["unchanged"]
    ));
    out
}

pub async fn plan(ctx: &Ctx, args: FileArgs) -> Result<()> {
    let yaml = read_yaml(&args.file)?;
    let cp = ctx.control_plane().await?;
    let data = ctx
        .client
        .control_plane(&cp, PLAN, json!({ "y": yaml, "d": true, "p": args.prune }))
        .await?;
    let plan = &data["apply"];
    match ctx.format {
        Format::Table => print!("{}", render_plan(plan, output::colour())),
        f => output::print(f, plan, plan, &[]),
    }
    Ok(())
}

/// What `--wait` waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    Ready,
    Gone,
}

pub async fn apply(ctx: &Ctx, args: ApplyArgs) -> Result<()> {
    let yaml = read_yaml(&args.file.file)?;
    let cp = ctx.control_plane().await?;
    // Subscribe before applying, so no change is missed.
    let live = match args.wait {
        Some(_) => subscribe(ctx, &cp, None, None).await,
        None => None,
    };
    let data = ctx
        .client
        .control_plane(
            &cp,
            PLAN,
            json!({ "y": yaml, "d": false, "p": args.file.prune }),
        )
        .await?;
    let plan = &data["apply"];
    match ctx.format {
        Format::Table => print!("{}", render_plan(plan, output::colour())),
        f => output::print(f, plan, plan, &[]),
    }
    let Some(timeout) = args.wait else {
        return Ok(());
    };
    let targets: BTreeMap<(String, String), Want> = plan["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let key = (
                c["kind"].as_str()?.to_owned(),
                c["name"].as_str()?.to_owned(),
            );
            match c["action"].as_str()? {
                "CREATE" | "UPDATE" | "UNCHANGED" => Some((key, Want::Ready)),
                "DELETE" => Some((key, Want::Gone)),
                _ => None,
            }
        })
        .collect();
    wait_for(ctx, &cp, targets, timeout, live).await
}

async fn subscribe(
    ctx: &Ctx,
    cp: &str,
    kind: Option<&str>,
    name: Option<&str>,
) -> Option<tokio::sync::mpsc::Receiver<Result<Value>>> {
    match ctx
        .client
        .subscribe(
            cp,
            "subscription($k: String, $n: String) { objectChanges(kind: $k, name: $n) { kind name phase message generation observedGeneration deleted at } }",
            json!({ "k": kind, "n": name }),
        )
        .await
    {
        Ok(rx) => Some(rx),
        Err(f) => {
            eprintln!("note: no live updates ({f}); polling instead");
            None
        }
    }
}

const PHASES: &str =
    "{ objects { kind name phase message generation observedGeneration deleting } }";

/// Follows `targets` until each is Ready (phase READY at its current generation) or gone,
/// printing each phase change; FAILED or the timeout end it with exit 1.
async fn wait_for(
    ctx: &Ctx,
    cp: &str,
    mut targets: BTreeMap<(String, String), Want>,
    timeout: Duration,
    mut live: Option<tokio::sync::mpsc::Receiver<Result<Value>>>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut seen: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    let progress = |line: String| {
        if ctx.format == Format::Table {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    // Decides one object's fate from a snapshot; `None` = still going.
    let settle = |want: Want, obj: Option<&Value>| -> Option<std::result::Result<(), String>> {
        match (want, obj) {
            (Want::Gone, None) => Some(Ok(())),
            (Want::Gone, Some(o)) if o["deleted"] == true => Some(Ok(())),
            (Want::Ready, None) => None,
            (_, Some(o)) => {
                let current = o["observedGeneration"].as_i64() >= o["generation"].as_i64();
                match o["phase"].as_str() {
                    Some("READY") if want == Want::Ready && current => Some(Ok(())),
                    Some("FAILED") if current => Some(Err(output::cell(&o["message"]))),
                    _ => None,
                }
            }
        }
    };
    let mut poll_now = true;
    loop {
        if poll_now {
            poll_now = false;
            let data = ctx.client.control_plane(cp, PHASES, json!({})).await?;
            let objects: BTreeMap<(String, String), Value> = data["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| {
                    Some((
                        (
                            o["kind"].as_str()?.to_owned(),
                            o["name"].as_str()?.to_owned(),
                        ),
                        o.clone(),
                    ))
                })
                .collect();
            let keys: Vec<_> = targets.keys().cloned().collect();
            for key in keys {
                let obj = objects.get(&key);
                if let Some(o) = obj {
                    report(&mut seen, &key, o, &progress);
                }
                match settle(targets[&key], obj) {
                    Some(Ok(())) => {
                        if obj.is_none() {
                            progress(format!("{}/{}  DELETED", key.0, key.1));
                        }
                        targets.remove(&key);
                    }
                    Some(Err(msg)) => {
                        return Err(Failure::failed(format!(
                            "{}/{} FAILED: {msg}",
                            key.0, key.1
                        )));
                    }
                    None => {}
                }
            }
        }
        if targets.is_empty() {
            if ctx.format == Format::Table {
                println!("Done: everything is Ready.");
            }
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let pending: Vec<String> = targets
                .keys()
                .map(|k| {
                    let phase = seen
                        .get(k)
                        .map(|s| s.0.clone())
                        .unwrap_or_else(|| "?".into());
                    format!("{}/{} ({phase})", k.0, k.1)
                })
                .collect();
            return Err(Failure::failed(format!(
                "timed out after {} s waiting for {}",
                timeout.as_secs(),
                pending.join(", ")
            )));
        }
        // Poll every 5 s anyway (and every second without live updates), as a backstop.
        let tick = if live.is_some() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(1)
        };
        let sleep = tokio::time::sleep(tick.min(deadline - now));
        tokio::select! {
            msg = async { match live.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match msg {
                    Some(Ok(data)) => {
                        let o = &data["objectChanges"];
                        let key = (output::cell(&o["kind"]), output::cell(&o["name"]));
                        if let Some(want) = targets.get(&key).copied() {
                            report(&mut seen, &key, o, &progress);
                            match settle(want, Some(o)) {
                                Some(Ok(())) => {
                                    if o["deleted"] == true {
                                        progress(format!("{}/{}  DELETED", key.0, key.1));
                                    }
                                    targets.remove(&key);
                                }
                                Some(Err(msg)) => return Err(Failure::failed(format!("{}/{} FAILED: {msg}", key.0, key.1))),
                                None => {}
                            }
                        }
                    }
                    Some(Err(f)) => {
                        eprintln!("note: live updates stopped ({f}); polling instead");
                        live = None;
                    }
                    None => {
                        live = None;
                        poll_now = true;
                    }
                }
            }
            _ = sleep => { poll_now = true; }
        }
    }
}

/// Prints `Kind/name  PHASE  message` when an object's phase or message changed.
fn report(
    seen: &mut BTreeMap<(String, String), (String, String)>,
    key: &(String, String),
    o: &Value,
    progress: &impl Fn(String),
) {
    let now = (
        output::cell(&o["phase"]),
        o["message"].as_str().unwrap_or("").to_owned(),
    );
    if seen.get(key) != Some(&now) {
        progress(
            format!("{}/{}  {}  {}", key.0, key.1, now.0, now.1)
                .trim_end()
                .to_owned(),
        );
        seen.insert(key.clone(), now);
    }
}

const OBJECT_COLUMNS: &[Column<'_>] = &[
    ("KIND", "/kind"),
    ("NAME", "/name"),
    ("PHASE", "/phase"),
    ("GENERATION", "/generation"),
    ("OBSERVED", "/observedGeneration"),
    ("MESSAGE", "/message"),
];

pub async fn get(ctx: &Ctx, args: GetArgs) -> Result<()> {
    let cp = ctx.control_plane().await?;
    let one = match (&args.target, &args.name) {
        (Some(t), n) if t.contains('/') || n.is_some() => Some(parse_target(t, n.as_deref())?),
        _ => None,
    };
    if let Some((kind, name)) = one {
        let obj = object(
            ctx,
            &cp,
            &kind,
            &name,
            "kind name phase message generation observedGeneration spec outputs",
        )
        .await?;
        output::print(ctx.format, &obj, &obj, OBJECT_COLUMNS);
        return Ok(());
    }
    let data = ctx
        .client
        .control_plane(
            &cp,
            "query($k: String) { objects(kind: $k) { kind name phase message generation observedGeneration deleting updatedAt } }",
            json!({ "k": args.target }),
        )
        .await?;
    let rows = &data["objects"];
    output::print(ctx.format, rows, rows, OBJECT_COLUMNS);
    Ok(())
}

async fn object(ctx: &Ctx, cp: &str, kind: &str, name: &str, fields: &str) -> Result<Value> {
    let data = ctx
        .client
        .control_plane(
            cp,
            &format!(
                "query($k: String!, $n: String!) {{ object(kind: $k, name: $n) {{ {fields} }} }}"
            ),
            json!({ "k": kind, "n": name }),
        )
        .await?;
    match &data["object"] {
        Value::Null => Err(Failure::failed(format!(
            "NOT_FOUND: there is no {kind}/{name}"
        ))),
        o => Ok(o.clone()),
    }
}

const DESCRIBE: &str = "id kind name phase message generation observedGeneration deleting createdAt updatedAt spec outputs rendered conditions { type status reason message lastTransitionAt } events(last: 20) { at type reason message } dependencies { kind name phase } dependents { kind name phase } owner { kind name }";

pub async fn describe(ctx: &Ctx, args: TargetArgs) -> Result<()> {
    let (kind, name) = parse_target(&args.target, args.name.as_deref())?;
    let cp = ctx.control_plane().await?;
    let o = object(ctx, &cp, &kind, &name, DESCRIBE).await?;
    if ctx.format != Format::Table {
        output::print(ctx.format, &o, &o, &[]);
        return Ok(());
    }
    let refs = |v: &Value| -> String {
        let list: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}/{} ({})",
                    output::cell(&r["kind"]),
                    output::cell(&r["name"]),
                    output::cell(&r["phase"])
                )
            })
            .collect();
        if list.is_empty() {
            "-".into()
        } else {
            list.join(", ")
        }
    };
    let indent = |text: String| -> String { text.lines().map(|l| format!("  {l}\n")).collect() };
    let mut out = format!(
        "Object:       {kind}/{name}\nPhase:        {}\nMessage:      {}\nGeneration:   {} (observed {})\nOwner:        {}\nDependencies: {}\nDependents:   {}\nCreated:      {}\nUpdated:      {}\n",
        output::cell(&o["phase"]),
        output::cell(&o["message"]),
        o["generation"],
        o["observedGeneration"],
        match o["owner"]["kind"].as_str() {
            Some(k) => format!("{k}/{}", output::cell(&o["owner"]["name"])),
            None => "-".into(),
        },
        refs(&o["dependencies"]),
        refs(&o["dependents"]),
        output::cell(&o["createdAt"]),
        output::cell(&o["updatedAt"]),
    );
    out.push_str("Spec:\n");
    out.push_str(&indent(output::yaml(&o["spec"])));
    // Secret outputs are stored as references (`secretRef`), never values: shown as they are.
    out.push_str("Outputs:\n");
    out.push_str(&indent(output::yaml(&o["outputs"])));
    out.push_str("Conditions:\n");
    out.push_str(&indent(output::table(
        &o["conditions"],
        &[
            ("TYPE", "/type"),
            ("STATUS", "/status"),
            ("REASON", "/reason"),
            ("SINCE", "/lastTransitionAt"),
            ("MESSAGE", "/message"),
        ],
    )));
    out.push_str("Events:\n");
    out.push_str(&indent(output::table(&o["events"], EVENT_COLUMNS)));
    print!("{out}");
    Ok(())
}

const EVENT_COLUMNS: &[Column<'_>] = &[
    ("AT", "/at"),
    ("TYPE", "/type"),
    ("REASON", "/reason"),
    ("MESSAGE", "/message"),
];

pub async fn events(ctx: &Ctx, args: EventsArgs) -> Result<()> {
    let (kind, name) = parse_target(&args.target.target, args.target.name.as_deref())?;
    let cp = ctx.control_plane().await?;
    let o = object(
        ctx,
        &cp,
        &kind,
        &name,
        &format!(
            "events(last: {}) {{ at type reason message }}",
            args.limit.min(1000)
        ),
    )
    .await?;
    let rows = &o["events"];
    output::print(ctx.format, rows, rows, EVENT_COLUMNS);
    Ok(())
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> Result<()> {
    let (kind, name) = parse_target(&args.target.target, args.target.name.as_deref())?;
    let cp = ctx.control_plane().await?;
    let live = match args.wait {
        Some(_) => subscribe(ctx, &cp, Some(&kind), Some(&name)).await,
        None => None,
    };
    let data = ctx
        .client
        .control_plane(
            &cp,
            "mutation($k: String!, $n: String!) { delete(kind: $k, name: $n) { applied summary { create update delete unchanged } changes { action kind name owner { kind name } diffs { path before after } } } }",
            json!({ "k": kind, "n": name }),
        )
        .await?;
    let plan = &data["delete"];
    match ctx.format {
        Format::Table => println!("Deleting {kind}/{name}."),
        f => output::print(f, plan, plan, &[]),
    }
    if let Some(timeout) = args.wait {
        let targets = plan["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["action"] == "DELETE")
            .filter_map(|c| {
                Some((
                    (
                        c["kind"].as_str()?.to_owned(),
                        c["name"].as_str()?.to_owned(),
                    ),
                    Want::Gone,
                ))
            })
            .collect();
        wait_for(ctx, &cp, targets, timeout, live).await?;
    }
    Ok(())
}

pub async fn wait(ctx: &Ctx, args: WaitArgs) -> Result<()> {
    let (kind, name) = parse_target(&args.target.target, args.target.name.as_deref())?;
    let cp = ctx.control_plane().await?;
    let want = if args.condition == "deleted" {
        Want::Gone
    } else {
        Want::Ready
    };
    let live = subscribe(ctx, &cp, Some(&kind), Some(&name)).await;
    let targets = BTreeMap::from([((kind, name), want)]);
    wait_for(ctx, &cp, targets, args.timeout, live).await
}

pub async fn watch(ctx: &Ctx, args: WatchArgs) -> Result<()> {
    let cp = ctx.control_plane().await?;
    let Some(mut rx) = subscribe(ctx, &cp, args.kind.as_deref(), None).await else {
        return Err(Failure::unavailable("live updates are not available"));
    };
    if ctx.format == Format::Table {
        println!("AT  OBJECT  PHASE  MESSAGE");
    }
    let follow = async {
        while let Some(item) = rx.recv().await {
            let data = item?;
            let o = &data["objectChanges"];
            match ctx.format {
                Format::Table => println!(
                    "{}  {}/{}  {}  {}",
                    output::cell(&o["at"]),
                    output::cell(&o["kind"]),
                    output::cell(&o["name"]),
                    if o["deleted"] == true {
                        "DELETED".to_owned()
                    } else {
                        output::cell(&o["phase"])
                    },
                    o["message"].as_str().unwrap_or("")
                ),
                Format::Json => println!("{o}"),
                Format::Yaml => print!("---\n{}", output::yaml(o)),
            }
        }
        Err(Failure::unavailable("the live connection closed"))
    };
    match args.timeout {
        Some(t) => tokio::time::timeout(t, follow).await.unwrap_or(Ok(())),
        None => follow.await,
    }
}

pub async fn graph(ctx: &Ctx, args: GraphArgs) -> Result<()> {
    let cp = ctx.control_plane().await?;
    let data = ctx
        .client
        .control_plane(
            &cp,
            "{ graph { nodes { kind name phase } edges { from { kind name } to { kind name } } } }",
            json!({}),
        )
        .await?;
    let g = &data["graph"];
    if ctx.format != Format::Table {
        output::print(ctx.format, g, g, &[]);
        return Ok(());
    }
    let id = |r: &Value| format!("{}/{}", output::cell(&r["kind"]), output::cell(&r["name"]));
    let nodes: Vec<&Value> = g["nodes"].as_array().into_iter().flatten().collect();
    let phase: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (id(n), output::cell(&n["phase"])))
        .collect();
    // from (dependent) → to (dependency).
    let mut uses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut used = std::collections::BTreeSet::new();
    for e in g["edges"].as_array().into_iter().flatten() {
        uses.entry(id(&e["from"])).or_default().push(id(&e["to"]));
        used.insert(id(&e["to"]));
    }
    if args.dot {
        let mut out = String::from("digraph qleet {\n  rankdir=LR;\n");
        for n in phase.keys() {
            out.push_str(&format!("  \"{n}\" [label=\"{n}\\n{}\"];\n", phase[n]));
        }
        for (from, tos) in &uses {
            for to in tos {
                out.push_str(&format!("  \"{from}\" -> \"{to}\";\n"));
            }
        }
        out.push_str("}\n");
        print!("{out}");
        return Ok(());
    }
    // A tree from each object nothing uses, down through what it uses.
    fn walk(
        n: &str,
        depth: usize,
        uses: &BTreeMap<String, Vec<String>>,
        phase: &BTreeMap<String, String>,
        path: &mut Vec<String>,
        out: &mut String,
    ) {
        let p = phase.get(n).map(String::as_str).unwrap_or("-");
        out.push_str(&format!("{}{n} ({p})\n", "  ".repeat(depth)));
        if path.iter().any(|x| x == n) || depth > 50 {
            return;
        }
        path.push(n.to_owned());
        for child in uses.get(n).into_iter().flatten() {
            walk(child, depth + 1, uses, phase, path, out);
        }
        path.pop();
    }
    let mut out = String::new();
    for n in phase.keys().filter(|n| !used.contains(*n)) {
        walk(n, 0, &uses, &phase, &mut Vec::new(), &mut out);
    }
    if out.is_empty() {
        out.push_str("(no objects)\n");
    }
    print!("{out}");
    Ok(())
}

/// `retry` (a FAILED object tries again from its first attempt) and `refresh` (the agent
/// checks a READY or FAILED object against the cloud again, re-making what was deleted behind
/// Qleet's back and reading its outputs back): `mutation` names the control plane's mutation.
pub async fn rerun(ctx: &Ctx, args: RerunArgs, mutation: &str) -> Result<()> {
    let (kind, name) = parse_target(&args.target.target, args.target.name.as_deref())?;
    let cp = ctx.control_plane().await?;
    let live = match args.wait {
        Some(_) => subscribe(ctx, &cp, Some(&kind), Some(&name)).await,
        None => None,
    };
    let data = ctx
        .client
        .control_plane(
            &cp,
            &format!(
                "mutation($k: String!, $n: String!) {{ {mutation}(kind: $k, name: $n) {{ kind name phase message }} }}"
            ),
            json!({ "k": kind, "n": name }),
        )
        .await?;
    let object = &data[mutation];
    output::print_or(
        ctx.format,
        object,
        &format!("{kind}/{name}: {}", output::cell(&object["message"])),
    );
    if let Some(timeout) = args.wait {
        let targets = BTreeMap::from([((kind, name), Want::Ready)]);
        wait_for(ctx, &cp, targets, timeout, live).await?;
    }
    Ok(())
}

pub async fn agent(ctx: &Ctx, cmd: AgentCommand) -> Result<()> {
    let cp = ctx.control_plane().await?;
    match cmd {
        AgentCommand::Token { ttl_minutes } => {
            let data = ctx
                .client
                .control_plane(
                    &cp,
                    "mutation($t: Int!) { createAgentRegistration(ttlMinutes: $t) { token expiresAt controlPlane } }",
                    json!({ "t": ttl_minutes }),
                )
                .await?;
            let r = &data["createAgentRegistration"];
            let url = format!("{}/cp/{cp}", ctx.client.url);
            let token = output::cell(&r["token"]);
            let human = format!(
                "Registration token (one use, valid until {}):\n{token}\n\n\
                 On a host:\n  qleet-agent --url '{url}' --token '{token}' --state-file ./qleet-agent.json\n\n\
                 On Kubernetes (Helm):\n  helm install qleet-agent deploy/agent/helm --namespace qleet-agent --create-namespace \\\n    --set controlPlaneUrl='{url}' --set registrationToken='{token}'",
                output::cell(&r["expiresAt"])
            );
            output::print_or(
                ctx.format,
                &json!({ "token": token, "expiresAt": r["expiresAt"], "url": url }),
                &human,
            );
        }
        AgentCommand::List => {
            let data = ctx
                .client
                .control_plane(&cp, "{ agents { id name version status running registeredAt lastSeenAt revokedAt } }", json!({}))
                .await?;
            let rows = &data["agents"];
            output::print(
                ctx.format,
                rows,
                rows,
                &[
                    ("ID", "/id"),
                    ("NAME", "/name"),
                    ("VERSION", "/version"),
                    ("STATUS", "/status"),
                    ("RUNNING", "/running"),
                    ("LAST SEEN", "/lastSeenAt"),
                ],
            );
        }
        AgentCommand::Revoke { id } => {
            if !crate::is_uuid(&id) {
                return Err(Failure::usage(format!(
                    "{id:?} is not a valid agent id (a UUID)"
                )));
            }
            let data = ctx
                .client
                .control_plane(
                    &cp,
                    "mutation($id: UUID!) { revokeAgent(id: $id) { id name status revokedAt } }",
                    json!({ "id": id }),
                )
                .await?;
            output::print_or(
                ctx.format,
                &data["revokeAgent"],
                &format!("Revoked agent {id}."),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_kind_slash_name_or_two_words() {
        assert_eq!(
            parse_target("Workload/web", None).ok(),
            Some(("Workload".into(), "web".into()))
        );
        assert_eq!(
            parse_target("Workload", Some("web")).ok(),
            Some(("Workload".into(), "web".into()))
        );
        assert!(parse_target("web", None).is_err());
        assert!(parse_target("Workload/", None).is_err());
    }

    #[test]
    fn a_plan_reads_as_signs_field_diffs_and_line_diffs() {
        let plan = json!({
            "applied": false,
            "summary": {"create": 1, "update": 1, "delete": 1, "unchanged": 2},
            "changes": [
                {"action": "CREATE", "kind": "ObjectStorageBucket", "name": "assets", "owner": null, "diffs": []},
                {"action": "UPDATE", "kind": "Workload", "name": "web", "owner": null, "diffs": [
                    {"path": "spec.manifests", "before": "a: 1\nb: 2\n", "after": "a: 1\nb: 3\n"},
                    {"path": "spec.namespace", "before": "shop", "after": "store"}
                ]},
                {"action": "DELETE", "kind": "RelationalDatabase", "name": "db", "owner": {"kind": "WebApp", "name": "shop"}, "diffs": []},
                {"action": "UNCHANGED", "kind": "AwsAccount", "name": "main", "owner": null, "diffs": []}
            ]
        });
        assert_eq!(
            render_plan(&plan, false),
            "+ ObjectStorageBucket/assets  create\n\
             ~ Workload/web  update\n    spec.manifests:\n        a: 1\n      - b: 2\n      + b: 3\n\
             \x20   spec.namespace: \"shop\" → \"store\"\n\
             - RelationalDatabase/db (owned by WebApp/shop)  delete\n\
             Plan: 1 to create, 1 to update, 1 to delete, 2 unchanged.\n"
        );
    }
}
