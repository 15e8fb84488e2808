//! `/orgs/:slug/control-planes/:id/agents`: the control plane's tenant agents — their live
//! status, version, last heartbeat and running tasks — and, for admins and owners, adding one
//! (a one-time registration token with copy-paste install instructions) and revoking one.
//!
//! An agent's status is derived from the time since its last heartbeat (Connected under 30 s,
//! Unknown up to 2 min, then Disconnected), so it changes without any event to push: the
//! browser re-reads the list every [`POLL_SECONDS`] instead of following a stream. The query
//! is one small GraphQL call through the gateway; an SSE stream would still need a timer on one
//! side to notice silence.
//!
//! The registration token is shown once. With JavaScript it comes back as the form's result;
//! without, the plain form post answers with a redirect to this page and the token rides along
//! in a short-lived, HttpOnly, SameSite=Strict cookie scoped to this page's path, which the
//! page's render reads and clears at once (never in the URL, so not in history or logs).

use std::collections::HashMap;

use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};

use super::{detail_path, objects::use_cp_id};
use crate::{
    api::format_time,
    components::{CsrfField, ErrorBox, Loading, Notice, Refresh, Submit, action_error, mutation},
    identity::use_session,
    orgs::{OrgContext, tab_basics},
};

/// How often the open page re-reads the agents' status.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub const POLL_SECONDS: u64 = 5;

/// The container image the install instructions name (the Helm chart's default too).
pub const IMAGE: &str = "ghcr.io/qleet/qleet-agent";

/// The flash cookie carrying a new registration to the page after a no-JavaScript post.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
const FLASH_COOKIE: &str = "qleet_agent_registration";

/// `.../control-planes/{id}/agents`.
pub fn agents_path(slug: &str, cp: &str) -> String {
    format!("{}/agents", detail_path(slug, cp))
}

/// An agent's connection state: the GraphQL `AgentStatus` value, such as `CONNECTED`. Kept as
/// text so a state added later still shows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentStatus(pub String);

impl AgentStatus {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `CONNECTED` → `Connected`.
    pub fn label(&self) -> String {
        super::Status(self.0.clone()).label()
    }

    pub fn is_revoked(&self) -> bool {
        self.0 == "REVOKED"
    }
}

/// A row of the agent list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub version: String,
    pub status: AgentStatus,
    pub last_seen_at: Option<String>,
    pub registered_at: String,
    pub running: i64,
    pub revoked_at: Option<String>,
    /// Seconds between its last heartbeat and when the server answered (not a GraphQL
    /// field: computed by the server function, so the browser's clock does not matter).
    #[serde(default)]
    pub seen_seconds_ago: Option<i64>,
}

/// A registration token just issued; the control plane never shows it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub token: String,
    pub expires_at: String,
    pub control_plane: String,
}

/// An `AwsAccount` object of the control plane, as far as installing the agent goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInstall {
    pub name: String,
    pub account_id: Option<String>,
    pub role_arn: Option<String>,
    pub region: Option<String>,
    pub external_id: Option<String>,
    pub trust_policy: Option<String>,
    pub cloud_formation_template: Option<String>,
}

/// What the install instructions are filled in with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallInfo {
    /// `<public URL>/cp/<id>`: what `qleet-agent --url` takes.
    pub agent_url: String,
    pub accounts: Vec<AccountInstall>,
}

/// "just now", "12 s ago", "3 min ago", "2 h ago", "4 d ago".
pub fn ago(seconds: i64) -> String {
    match seconds {
        s if s < 2 => "just now".to_owned(),
        s if s < 120 => format!("{s} s ago"),
        s if s < 7_200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3_600),
        s => format!("{} d ago", s / 86_400),
    }
}

/// Quotes `value` for a POSIX shell (single quotes, each `'` as `'\''`).
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The agent URL from the control plane's GraphQL endpoint (`.../cp/<id>/graphql`).
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
pub fn agent_url_from_endpoint(endpoint: &str) -> String {
    endpoint
        .strip_suffix("/graphql")
        .unwrap_or(endpoint)
        .to_owned()
}

/// The image reference the instructions use: this release's tag.
pub fn image() -> String {
    format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION"))
}

/// `qleet-agent --url ... --token ...` on a host.
pub fn binary_command(url: &str, token: &str) -> String {
    format!(
        "qleet-agent \\\n  --url {} \\\n  --token {} \\\n  --state-file /var/lib/qleet-agent/state.json",
        sh_quote(url),
        sh_quote(token)
    )
}

/// `helm install` of `deploy/agent/helm`. On EKS, `serviceAccount.roleArn` names the IAM role
/// the pod runs as (IRSA): the agent's own identity, which then assumes the customer's role.
pub fn helm_command(url: &str, token: &str, account_id: Option<&str>) -> String {
    let mut out = format!(
        "helm install qleet-agent deploy/agent/helm \\\n  --namespace qleet-agent --create-namespace \\\n  \
         --set controlPlaneUrl={} \\\n  --set registrationToken={}",
        sh_quote(url),
        sh_quote(token)
    );
    if let Some(account) = account_id {
        out.push_str(&format!(
            " \\\n  --set serviceAccount.roleArn={}",
            sh_quote(&format!("arn:aws:iam::{account}:role/qleet-agent-runner"))
        ));
    }
    out
}

/// `docker run` of the agent image, its state on a named volume.
pub fn docker_command(url: &str, token: &str) -> String {
    format!(
        "docker run -d --name qleet-agent --restart unless-stopped \\\n  \
         -v qleet-agent-state:/var/lib/qleet-agent \\\n  \
         -e QLEET_AGENT_URL={} \\\n  -e QLEET_AGENT_TOKEN={} \\\n  \
         -e AWS_REGION -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_SESSION_TOKEN \\\n  \
         {}",
        sh_quote(url),
        sh_quote(token),
        image()
    )
}

/// The file name to save an account's CloudFormation template as.
pub fn template_file(account: &str) -> String {
    let safe: String = account
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("qleet-agent-role-{safe}.json")
}

/// `aws cloudformation deploy` of an account's generated template.
pub fn cloudformation_command(account: &AccountInstall) -> String {
    let file = template_file(&account.name);
    let stack = file.trim_end_matches(".json");
    let region = account
        .region
        .as_deref()
        .map(|r| format!(" \\\n  --region {}", sh_quote(r)))
        .unwrap_or_default();
    format!(
        "aws cloudformation deploy \\\n  --stack-name {stack} \\\n  --template-file {file} \\\n  \
         --capabilities CAPABILITY_NAMED_IAM{region}"
    )
}

/// The same role from the chart's parameterised template (`deploy/agent/cloudformation`).
pub fn cloudformation_params_command(account: &AccountInstall, external_id: &str) -> String {
    let role = account
        .role_arn
        .as_deref()
        .and_then(|arn| arn.rsplit('/').next())
        .unwrap_or("qleet-agent");
    let principal = account
        .account_id
        .as_deref()
        .map(|id| format!("arn:aws:iam::{id}:role/qleet-agent-runner"))
        .unwrap_or_else(|| "arn:aws:iam::ACCOUNT_ID:role/qleet-agent-runner".to_owned());
    format!(
        "aws cloudformation deploy \\\n  --stack-name qleet-agent-role \\\n  \
         --template-file deploy/agent/cloudformation/qleet-agent-role.yaml \\\n  \
         --capabilities CAPABILITY_NAMED_IAM \\\n  --parameter-overrides \\\n    \
         ExternalId={} \\\n    RoleName={} \\\n    AgentPrincipalArn={}",
        sh_quote(external_id),
        sh_quote(role),
        sh_quote(&principal)
    )
}

/// A `data:` URL of `text`, so a plain link downloads it (no JavaScript).
pub fn data_url(mime: &str, text: &str) -> String {
    format!("data:{mime};charset=utf-8,{}", crate::api::url_encode(text))
}

// ---------------------------------------------------------------------------------------------
// Server functions.

/// The control plane's agents, newest first, with how long ago each was heard from.
#[server(endpoint = "cp_agents")]
pub async fn list_agents(cp: String) -> Result<Vec<Agent>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        agents: Vec<Agent>,
    }
    super::check_id(&cp)?;
    let query = "query Agents { agents { id name version status lastSeenAt registeredAt running \
                 revokedAt } }";
    let data: Data = crate::api::cp_gql(&cp, query, serde_json::json!({}), None).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    Ok(data
        .agents
        .into_iter()
        .map(|mut agent| {
            agent.seen_seconds_ago = agent
                .last_seen_at
                .as_deref()
                .and_then(super::live::instant)
                .map(|(at, _)| (now - at).max(0));
            agent
        })
        .collect())
}

/// The agent URL and the control plane's AWS accounts (admins only: it needs the role to
/// issue a token anyway).
#[server(endpoint = "cp_agent_install")]
pub async fn agent_install_info(org: String, cp: String) -> Result<InstallInfo, ServerFnError> {
    #[derive(Deserialize)]
    struct Management {
        organization: Org,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Org {
        control_plane: Endpoint,
    }
    #[derive(Deserialize)]
    struct Endpoint {
        endpoint: String,
    }
    #[derive(Deserialize)]
    struct Objects {
        objects: Vec<Object>,
    }
    #[derive(Deserialize)]
    struct Object {
        name: String,
        #[serde(default)]
        outputs: serde_json::Value,
    }
    super::check_id(&cp)?;
    let query = "query AgentUrl($slug: String!, $id: UUID!) { organization(slug: $slug) \
                 { controlPlane(id: $id) { endpoint } } }";
    let management: Management =
        crate::api::gql(query, serde_json::json!({ "slug": org, "id": cp }), None).await?;
    let objects: Objects = crate::api::cp_gql(
        &cp,
        "query Accounts { objects(kind: \"AwsAccount\") { name outputs } }",
        serde_json::json!({}),
        None,
    )
    .await?;
    let text = |outputs: &serde_json::Value, key: &str| {
        outputs
            .get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    Ok(InstallInfo {
        agent_url: agent_url_from_endpoint(&management.organization.control_plane.endpoint),
        accounts: objects
            .objects
            .into_iter()
            .map(|o| AccountInstall {
                account_id: text(&o.outputs, "accountId"),
                role_arn: text(&o.outputs, "roleArn"),
                region: text(&o.outputs, "region"),
                external_id: text(&o.outputs, "externalId"),
                trust_policy: text(&o.outputs, "trustPolicy"),
                cloud_formation_template: text(&o.outputs, "cloudFormationTemplate"),
                name: o.name,
            })
            .collect(),
    })
}

/// Issues a one-time registration token. A plain form post (no JavaScript) gets it back on
/// the page it came from through a flash cookie (see the module's notes).
#[server(endpoint = "cp_create_agent_registration")]
pub async fn create_registration(
    csrf: String,
    org: String,
    cp: String,
    ttl_minutes: i32,
) -> Result<Registration, ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        create_agent_registration: Registration,
    }
    super::check_id(&cp)?;
    let query = "mutation Register($ttl: Int!) { createAgentRegistration(ttlMinutes: $ttl) \
                 { token expiresAt controlPlane } }";
    let data: Data = crate::api::cp_gql(
        &cp,
        query,
        serde_json::json!({ "ttl": ttl_minutes }),
        Some(csrf),
    )
    .await?;
    let registration = data.create_agent_registration;
    flash::remember(&org, &cp, &registration);
    Ok(registration)
}

/// The registration a plain form post just issued, if this page render carries one; clears
/// it. Always `None` when called from the browser (the cookie is scoped to the page's path).
#[server(endpoint = "cp_agent_registration_flash")]
pub async fn flashed_registration(
    org: String,
    cp: String,
) -> Result<Option<Registration>, ServerFnError> {
    super::check_id(&cp)?;
    Ok(flash::take(&org, &cp))
}

/// Revokes an agent: its credential stops working at once.
#[server(endpoint = "cp_revoke_agent")]
pub async fn revoke_agent(csrf: String, cp: String, id: String) -> Result<(), ServerFnError> {
    super::check_id(&cp)?;
    if !super::is_uuid(&id) {
        return Err(crate::api::refusal("NOT_FOUND", "There is no such agent."));
    }
    let query = "mutation Revoke($id: UUID!) { revokeAgent(id: $id) { id status } }";
    crate::api::cp_gql::<serde_json::Value>(
        &cp,
        query,
        serde_json::json!({ "id": id }),
        Some(csrf),
    )
    .await?;
    Ok(())
}

#[cfg(feature = "ssr")]
mod flash {
    use http::{HeaderValue, header};
    use leptos::prelude::use_context;
    use leptos_axum::ResponseOptions;

    use super::{FLASH_COOKIE, Registration, agents_path};

    fn cookie(org: &str, cp: &str, value: &str, max_age: u32, secure: bool) -> Option<HeaderValue> {
        let secure = if secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{FLASH_COOKIE}={value}; Path={}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
            agents_path(org, cp)
        ))
        .ok()
    }

    /// Whether the browser reached us over https (directly or, as the Origin says, through
    /// a TLS-terminating proxy).
    fn is_https(parts: &http::request::Parts) -> bool {
        parts.uri.scheme_str() == Some("https")
            || [header::ORIGIN, header::REFERER].iter().any(|name| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("https://"))
            })
    }

    /// For a plain form post (the browser accepts HTML: no JavaScript ran), keeps the new
    /// registration for the next render of the agents page, for two minutes at most.
    pub fn remember(org: &str, cp: &str, registration: &Registration) {
        let (Some(parts), Some(response)) = (
            use_context::<http::request::Parts>(),
            use_context::<ResponseOptions>(),
        ) else {
            return;
        };
        let plain_form = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
        if !plain_form {
            return;
        }
        let value = format!(
            "{}|{}|{}",
            registration.control_plane, registration.token, registration.expires_at
        );
        if value
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b";,\\\"".contains(&b))
        {
            return;
        }
        if let Some(cookie) = cookie(org, cp, &value, 120, is_https(&parts)) {
            response.append_header(header::SET_COOKIE, cookie);
        }
    }

    /// The registration remembered for this page, if any; clears it.
    pub fn take(org: &str, cp: &str) -> Option<Registration> {
        let parts = use_context::<http::request::Parts>()?;
        let raw = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == FLASH_COOKIE)
            .map(|(_, value)| value.to_owned())?;
        if let (Some(response), Some(clear)) = (
            use_context::<ResponseOptions>(),
            cookie(org, cp, "", 0, is_https(&parts)),
        ) {
            response.append_header(header::SET_COOKIE, clear);
        }
        let mut fields = raw.splitn(3, '|');
        let (control_plane, token, expires_at) = (fields.next()?, fields.next()?, fields.next()?);
        (control_plane == cp).then(|| Registration {
            token: token.to_owned(),
            expires_at: expires_at.to_owned(),
            control_plane: control_plane.to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The page.

/// The newest state heard from polling, by agent id.
type AgentLive = RwSignal<HashMap<String, Agent>>;

/// Re-reads the agents every [`POLL_SECONDS`] while the page lives (in the browser only);
/// `on_poll` hears each answer. `polling` turns true once that has started (the page then
/// says `data-live="true"`).
fn poll_agents(
    cp: Memo<String>,
    polling: RwSignal<bool>,
    on_poll: impl Fn(&[Agent]) + 'static,
) -> AgentLive {
    let live: AgentLive = RwSignal::new(HashMap::new());
    #[cfg(feature = "hydrate")]
    {
        use std::rc::Rc;
        let on_poll = Rc::new(on_poll);
        Effect::new(move |_| {
            let cp = cp.get();
            let on_poll = on_poll.clone();
            let tick = move || {
                let (cp, on_poll) = (cp.clone(), on_poll.clone());
                leptos::task::spawn_local(async move {
                    if let Ok(agents) = list_agents(cp).await {
                        on_poll(&agents);
                        live.set(agents.into_iter().map(|a| (a.id.clone(), a)).collect());
                    }
                });
            };
            if let Ok(handle) =
                set_interval_with_handle(tick, std::time::Duration::from_secs(POLL_SECONDS))
            {
                polling.set(true);
                on_cleanup(move || handle.clear());
            }
        });
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (cp, polling, on_poll);
    live
}

#[component]
pub fn AgentsPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let cp = use_cp_id();
    let reload = RwSignal::new(0usize);
    let agents = Resource::new(
        move || (cp.get(), Refresh::generation(), reload.get()),
        |(cp, _, _)| list_agents(cp),
    );
    let flashed = Resource::new(
        move || (ctx.slug.get(), cp.get()),
        |(slug, cp)| flashed_registration(slug, cp),
    );
    let install = Resource::new(
        move || (ctx.slug.get(), cp.get(), Refresh::generation()),
        |(slug, cp, _)| agent_install_info(slug, cp),
    );
    let shown = StoredValue::new(Vec::<String>::new());
    let polling = RwSignal::new(false);
    let live = poll_agents(cp, polling, move |agents| {
        let known = shown.with_value(|ids| agents.iter().all(|a| ids.contains(&a.id)));
        if !known {
            reload.update(|n| *n += 1);
        }
    });
    let create = mutation::<CreateRegistration>();
    let revoke = mutation::<RevokeAgent>();

    view! {
        <Title text="Agents · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let (slug, id) = (org.slug.clone(), cp.get_untracked());
                let admin = org.viewer_role.is_admin();
                let body = match agents.await {
                    Ok(agents) => {
                        shown.set_value(agents.iter().map(|a| a.id.clone()).collect());
                        agent_table(agents, admin, &id, &csrf, live, revoke)
                    }
                    Err(error) => view! { <div id="agents-error"><ErrorBox error/></div> }.into_any(),
                };
                let add = if admin {
                    let flashed = flashed.await.ok().flatten();
                    let install = install.await;
                    add_section(&slug, &id, &csrf, create, flashed, install)
                } else {
                    view! {
                        <section class="card">
                            <Notice text="Only admins and owners can add or revoke agents."/>
                        </section>
                    }
                        .into_any()
                };
                Some(
                    view! {
                        <section
                            class="card"
                            id="agents-card"
                            data-live=move || polling.get().then_some("true")
                        >
                            <div class="card-head">
                                <h2>"Agents"</h2>
                                <a
                                    id="agents-refresh"
                                    class="refresh"
                                    href=agents_path(&slug, &id)
                                    rel="external"
                                >
                                    "Refresh"
                                </a>
                            </div>
                            <p class="hint">
                                "Agents run in your own cloud account, dial out to this control plane and do its work there. Status follows their heartbeats: Connected (heard within 30 s), Unknown (missed some), Disconnected (silent for over 2 min)."
                            </p>
                            {action_error(revoke)}
                            {body}
                        </section>
                        {add}
                    }
                        .into_any(),
                )
            })}
        </Transition>
    }
}

fn agent_table(
    agents: Vec<Agent>,
    admin: bool,
    cp: &str,
    csrf: &str,
    live: AgentLive,
    revoke: ServerAction<RevokeAgent>,
) -> AnyView {
    if agents.is_empty() {
        return view! {
            <p class="muted" id="agents-empty">
                {if admin { "No agents yet. Add one below." } else { "No agents yet." }}
            </p>
        }
        .into_any();
    }
    let rows = agents
        .into_iter()
        .map(|agent| {
            let id = agent.id.clone();
            let loaded = agent.clone();
            let now = Memo::new(move |_| {
                live.with(|map| map.get(&id).cloned())
                    .unwrap_or_else(|| loaded.clone())
            });
            let status = move || now.with(|a| a.status.as_str().to_owned());
            let label = move || now.with(|a| a.status.label());
            let version = move || now.with(|a| a.version.clone());
            let running = move || now.with(|a| a.running.to_string());
            let seen = move || {
                now.with(|a| match (a.seen_seconds_ago, &a.last_seen_at) {
                    (Some(s), _) => ago(s),
                    (None, Some(at)) => format_time(at),
                    (None, None) => "never".to_owned(),
                })
            };
            let seen_title = move || now.with(|a| a.last_seen_at.as_deref().map(format_time));
            let action = if admin && !agent.status.is_revoked() {
                revoke_form(&agent, cp, csrf, revoke)
            } else if let Some(at) = &agent.revoked_at {
                view! { <span class="muted">{format!("Revoked {}", format_time(at))}</span> }.into_any()
            } else {
                ().into_any()
            };
            view! {
                <tr class="agent-row" data-id=agent.id.clone() data-name=agent.name.clone() data-status=status>
                    <td class="agent-name">{agent.name.clone()}</td>
                    <td class="agent-version">
                        <code>{version}</code>
                    </td>
                    <td class="agent-status">
                        <span class="badge agent-status" data-status=status>
                            {label}
                        </span>
                    </td>
                    <td class="agent-seen nowrap" title=seen_title>
                        {seen}
                    </td>
                    <td class="agent-running">{running}</td>
                    <td class="nowrap">{format_time(&agent.registered_at)}</td>
                    <td class="actions">{action}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table id="agents" class="agents">
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Version"</th>
                    <th scope="col">"Status"</th>
                    <th scope="col">"Last heartbeat"</th>
                    <th scope="col">"Running tasks"</th>
                    <th scope="col">"Registered"</th>
                    <th scope="col">"Actions"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

/// "Revoke…" opens a confirmation (a `<details>`, so it works without JavaScript).
fn revoke_form(agent: &Agent, cp: &str, csrf: &str, revoke: ServerAction<RevokeAgent>) -> AnyView {
    let (cp, csrf, id) = (cp.to_owned(), csrf.to_owned(), agent.id.clone());
    let name = agent.name.clone();
    view! {
        <details class="confirm agent-revoke">
            <summary class="danger">"Revoke…"</summary>
            <ActionForm action=revoke>
                <CsrfField csrf/>
                <input type="hidden" name="cp" value=cp/>
                <input type="hidden" name="id" value=id/>
                <p class="hint">
                    "Its credential stops working at once and its tasks go to other agents. This cannot be undone."
                </p>
                <Submit
                    label=format!("Revoke {name}")
                    class="danger agent-revoke-submit"
                    pending=revoke.pending()
                />
            </ActionForm>
        </details>
    }
    .into_any()
}

fn add_section(
    slug: &str,
    cp: &str,
    csrf: &str,
    create: ServerAction<CreateRegistration>,
    flashed: Option<Registration>,
    install: Result<InstallInfo, ServerFnError>,
) -> AnyView {
    let (slug, cp, csrf) = (slug.to_owned(), cp.to_owned(), csrf.to_owned());
    // The token of the last successful post (JavaScript), else the flashed one (plain post).
    let registration = Memo::new(move |_| {
        create
            .value()
            .get()
            .and_then(Result::ok)
            .or_else(|| flashed.clone())
    });
    let details = match install {
        Ok(info) => {
            let accounts = accounts_section(&info);
            let commands = move || {
                registration
                    .get()
                    .map(|registration| instructions(&registration, &info))
            };
            view! {
                {commands}
                {accounts}
            }
            .into_any()
        }
        Err(error) => view! { <ErrorBox error/> }.into_any(),
    };
    view! {
        <section class="card" id="agents-add">
            <h2>"Add an agent"</h2>
            <p class="hint">
                "Issue a one-time registration token, then start the agent with it in the account it should work in. The agent trades the token for its own credential on first start; the token cannot be used twice."
            </p>
            <ActionForm action=create>
                <CsrfField csrf/>
                <input type="hidden" name="org" value=slug/>
                <input type="hidden" name="cp" value=cp/>
                <div class="inline">
                    <div>
                        <label for="agent-ttl">"Token valid for"</label>
                        <select id="agent-ttl" name="ttl_minutes">
                            <option value="15">"15 minutes"</option>
                            <option value="60" selected>
                                "1 hour"
                            </option>
                            <option value="1440">"24 hours"</option>
                        </select>
                    </div>
                    <Submit
                        id="agent-add-submit"
                        label="Issue a registration token"
                        pending=create.pending()
                    />
                </div>
                <div id="agent-add-error">{action_error(create)}</div>
            </ActionForm>
            {details}
        </section>
    }
    .into_any()
}

fn copy_block(id: &str, text: String) -> AnyView {
    view! { <pre class="example"><code id=id.to_owned()>{text}</code></pre> }.into_any()
}

fn instructions(registration: &Registration, info: &InstallInfo) -> AnyView {
    let (url, token) = (info.agent_url.as_str(), registration.token.as_str());
    let account_id = info.accounts.iter().find_map(|a| a.account_id.as_deref());
    view! {
        <div class="secret" role="status" id="agent-registration">
            <p>
                <strong>"Copy the registration token now: it will not be shown again."</strong>
                " It expires "
                <span id="agent-token-expires">{format_time(&registration.expires_at)}</span>
                "."
            </p>
            <label for="agent-token" class="visually-hidden">
                "Registration token"
            </label>
            <input
                id="agent-token"
                class="copy"
                type="text"
                readonly
                value=registration.token.clone()
            />
            <p class="hint">"Agent URL: " <code id="agent-url">{info.agent_url.clone()}</code></p>
        </div>
        {install_ways(url, token, account_id)}
    }
    .into_any()
}

/// The commands for each way to install, in pieces of few siblings (see [`account_section`]).
fn install_ways(url: &str, token: &str, account_id: Option<&str>) -> AnyView {
    let binary = view! {
        <h4>"On a host (binary)"</h4>
        <p class="hint">
            "The agent keeps its credential in the state file (mode 0600); AWS credentials come from the host (instance profile, environment or "
            <code>"~/.aws"</code> ")."
        </p>
        {copy_block("agent-install-binary", binary_command(url, token))}
    }
    .into_any();
    let helm = view! {
        <h4>"On Kubernetes (Helm)"</h4>
        <p class="hint">
            "The chart in " <code>"deploy/agent/helm"</code>
            " runs one non-root replica with least-privilege RBAC and keeps the credential in a Secret. On EKS, "
            <code>"serviceAccount.roleArn"</code>
            " is the IAM role the pod itself runs as (IRSA); that role assumes the one below."
        </p>
        {copy_block("agent-install-helm", helm_command(url, token, account_id))}
    }
    .into_any();
    let docker = view! {
        <h4>"As a container"</h4>
        <p class="hint">"AWS credentials from the environment (or the instance's role)."</p>
        {copy_block("agent-install-docker", docker_command(url, token))}
    }
    .into_any();
    view! {
        <h3>"Install"</h3>
        {binary}
        {helm}
        {docker}
    }
    .into_any()
}

/// The IAM role to create in each AWS account (shown before a token is issued too).
fn accounts_section(info: &InstallInfo) -> AnyView {
    let accounts = if info.accounts.is_empty() {
        view! {
            <p class="muted" id="agent-no-accounts">
                "This control plane has no AwsAccount object yet. Apply one to get its ExternalId and the IAM role's template here; the agent needs that role for AWS resources."
            </p>
        }
        .into_any()
    } else {
        info.accounts
            .iter()
            .map(account_section)
            .collect_view()
            .into_any()
    };
    view! {
        <h3>"IAM role in your AWS account"</h3>
        <p class="hint">
            "The agent assumes this role with the control plane's ExternalId; its permissions are limited to resources Qleet tags and to "
            <code>"qleet-*"</code> " buckets."
        </p>
        {accounts}
    }
    .into_any()
}

fn account_section(account: &AccountInstall) -> AnyView {
    let name = account.name.clone();
    let Some(external_id) = account.external_id.clone() else {
        return view! {
            <div class="agent-account" data-account=name.clone()>
                <h4>{format!("AwsAccount/{name}")}</h4>
                <p class="muted">"Its ExternalId has not been generated yet; reload in a moment."</p>
            </div>
        }
        .into_any();
    };
    let template = account.cloud_formation_template.clone().unwrap_or_default();
    let download = view! {
        <a
            class="button secondary agent-template-download"
            download=template_file(&name)
            href=data_url("application/json", &template)
        >
            {format!("Download {}", template_file(&name))}
        </a>
    }
    .into_any();
    let policy = account.trust_policy.clone().unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&policy)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(policy);
    let trust = view! {
        <details>
            <summary>"Trust policy"</summary>
            <pre class="example">
                <code class="agent-trust-policy">{pretty}</code>
            </pre>
        </details>
    }
    .into_any();
    // Few children per `view!`: a longer list of siblings here failed to hydrate (Leptos 0.8),
    // so the section is built from smaller pieces.
    let facts = view! {
        <h4>{format!("AwsAccount/{name}")}</h4>
        <dl class="facts">
            <dt>"ExternalId"</dt>
            <dd>
                <code class="agent-external-id">{external_id.clone()}</code>
            </dd>
            <dt>"Role"</dt>
            <dd>
                <code>{account.role_arn.clone().unwrap_or_default()}</code>
            </dd>
        </dl>
        {trust}
    }
    .into_any();
    let generated = view! {
        <p>"Create the role with the generated CloudFormation template (ExternalId included):"</p>
        {download}
        <details>
            <summary>"Template"</summary>
            <pre class="example">
                <code class="agent-template">{template}</code>
            </pre>
        </details>
    }
    .into_any();
    let commands = view! {
        <pre class="example">
            <code class="agent-cfn-deploy">{cloudformation_command(account)}</code>
        </pre>
        <p class="hint">"Or with the parameterised template shipped in deploy/agent:"</p>
        <pre class="example">
            <code class="agent-cfn-params">
                {cloudformation_params_command(account, &external_id)}
            </code>
        </pre>
    }
    .into_any();
    view! {
        <div class="agent-account" data-account=name.clone()>
            {facts}
            {generated}
            {commands}
        </div>
    }
    .into_any()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_read_as_time_ago() {
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(12), "12 s ago");
        assert_eq!(ago(180), "3 min ago");
        assert_eq!(ago(7_300), "2 h ago");
        assert_eq!(ago(200_000), "2 d ago");
    }

    #[test]
    fn commands_quote_their_values() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        let binary = binary_command("https://q.example/cp/x", "qleet_reg_abc");
        assert!(
            binary.contains("--url 'https://q.example/cp/x'"),
            "{binary}"
        );
        assert!(binary.contains("--token 'qleet_reg_abc'"), "{binary}");
        let helm = helm_command(
            "https://q.example/cp/x",
            "qleet_reg_abc",
            Some("123456789012"),
        );
        assert!(
            helm.contains("--set registrationToken='qleet_reg_abc'"),
            "{helm}"
        );
        assert!(
            helm.contains("arn:aws:iam::123456789012:role/qleet-agent-runner"),
            "{helm}"
        );
        let docker = docker_command("https://q.example/cp/x", "qleet_reg_abc");
        assert!(docker.contains(&image()), "{docker}");
        assert!(
            docker.contains("QLEET_AGENT_TOKEN='qleet_reg_abc'"),
            "{docker}"
        );
    }

    #[test]
    fn the_agent_url_is_the_endpoint_without_graphql() {
        assert_eq!(
            agent_url_from_endpoint("https://q.example/cp/0b6f/graphql"),
            "https://q.example/cp/0b6f"
        );
    }

    #[test]
    fn cloudformation_commands_name_the_file_and_region() {
        let account = AccountInstall {
            name: "main acct".into(),
            account_id: Some("123456789012".into()),
            role_arn: Some("arn:aws:iam::123456789012:role/qleet".into()),
            region: Some("eu-west-1".into()),
            ..AccountInstall::default()
        };
        assert_eq!(
            template_file(&account.name),
            "qleet-agent-role-main-acct.json"
        );
        let deploy = cloudformation_command(&account);
        assert!(deploy.contains("--template-file qleet-agent-role-main-acct.json"));
        assert!(deploy.contains("--region 'eu-west-1'"));
        let params = cloudformation_params_command(&account, "qleet-abc");
        assert!(params.contains("ExternalId='qleet-abc'"), "{params}");
        assert!(params.contains("RoleName='qleet'"), "{params}");
    }

    #[test]
    fn the_contract_shapes_decode() {
        let agent: Agent = serde_json::from_value(serde_json::json!({
            "id": "0b6f2d4e-8c1a-4f3e-9a7b-2c5d8e1f0a93", "name": "a", "version": "0.1.0",
            "status": "CONNECTED", "lastSeenAt": "2026-01-01T00:00:00Z",
            "registeredAt": "2026-01-01T00:00:00Z", "running": 2, "revokedAt": null
        }))
        .unwrap();
        assert_eq!(agent.status.label(), "Connected");
        assert_eq!(agent.seen_seconds_ago, None);
        assert_eq!(
            agents_path("acme", "x"),
            "/orgs/acme/control-planes/x/agents"
        );
    }
}
