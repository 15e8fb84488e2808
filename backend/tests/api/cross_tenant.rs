//! The cross-tenant matrix (issue 11), built from the live schemas by introspection, so that a
//! resolver added later is covered without anyone remembering to.
//!
//! The victim, `acme`, has a ready control plane with an object and an agent, a member, an
//! open invitation and an API token. Every management field that takes an argument naming
//! something of acme's (at any depth below `Query`, and every root mutation), and every root
//! field of the control plane's schema (there the gateway's path names acme's control plane),
//! is called with acme's identifiers by: anonymous, the owner of another organisation `evil`
//! (session and API token) and acme's viewer (session and token; mutations only, as a viewer
//! may read). Where a call names an organisation and one of acme's objects, it is tried again
//! under the caller's own organisation (`organization(slug: "evil") { controlPlane(id: <acme's>) }`).
//! Control-plane calls go over HTTP and over the gateway's WebSocket. Each call is refused with
//! a stable code (or the gateway's 401/403/404), no acme data comes back, and at the end the
//! database and acme's control plane are exactly as before.

use std::collections::{BTreeMap, HashMap};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest as _};
use uuid::Uuid;

use crate::support::{Auth, Session, TestApp, error_code, spawn_app};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SLUG: &str = "acme";
const ORG_NAME: &str = "Org acme";
const CP_NAME: &str = "acme-prod";
const TOKEN_NAME: &str = "acme-ci";
const OBJECT_KIND: &str = "AwsAccount";
const OBJECT_NAME: &str = "acme-main";
const AGENT_NAME: &str = "acme-agent";
const OWN_SLUG: &str = "evil";

/// acme's account object, as applied; [`Names::ObjectYaml`] sends it changed.
fn account_yaml(role: &str) -> String {
    format!(
        "kind: {OBJECT_KIND}\nmetadata: {{name: {OBJECT_NAME}}}\nspec: {{accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/{role}\", defaultRegion: eu-west-1}}\n"
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Schema {
    Management,
    ControlPlane,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Query,
    Mutation,
    Subscription,
}

impl Op {
    fn keyword(self) -> &'static str {
        match self {
            Op::Query => "query",
            Op::Mutation => "mutation",
            Op::Subscription => "subscription",
        }
    }
}

/// What a `String`, `ID` or `UUID` argument names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Names {
    /// An organisation, by slug: acme's (or, in the own-organisation variant, the caller's).
    Org,
    OrgName,
    ControlPlane,
    ControlPlaneName,
    Member,
    ApiToken,
    ApiTokenName,
    Invitation,
    InvitationToken,
    Agent,
    ObjectKind,
    ObjectName,
    /// A YAML document changing acme's object.
    ObjectYaml,
    /// acme's object as `Kind/name` (an audit-trail filter).
    ObjectKey,
    /// Nothing of acme's: free text the caller chooses, valid so that input validation does
    /// not answer before authorisation. `None`: left out where optional.
    Free(Option<&'static str>),
}

impl Names {
    /// Whether it names one of acme's existing objects (not an organisation, not a new name).
    fn is_object(self) -> bool {
        matches!(
            self,
            Names::ControlPlane
                | Names::Member
                | Names::ApiToken
                | Names::Invitation
                | Names::InvitationToken
                | Names::Agent
        )
    }
}

/// THE TABLE: what every `String`/`ID`/`UUID` argument (or input field) of either schema names,
/// by schema, the field it belongs to and its name. A new argument panics here until someone
/// says what of the victim's to fill it with, so no new resolver is skipped silently.
fn names(schema: Schema, field: &str, arg: &str) -> Names {
    use Names::*;
    let f = field.to_ascii_lowercase();
    match (schema, arg) {
        (Schema::Management, "slug" | "org" | "confirmSlug") => Org,
        (Schema::Management, "userId") => Member,
        (Schema::Management, "id") if f.contains("controlplane") => ControlPlane,
        (Schema::Management, "id") if f.contains("apitoken") => ApiToken,
        (Schema::Management, "id") if f.contains("invitation") => Invitation,
        (Schema::Management, "token") if f == "acceptinvitation" => InvitationToken,
        (Schema::Management, "confirmName") => ControlPlaneName,
        (Schema::Management, "name") if f.contains("controlplane") => ControlPlaneName,
        (Schema::Management, "name") if f.contains("organization") => OrgName,
        (Schema::Management, "name") if f.contains("apitoken") => ApiTokenName,
        (Schema::Management, "email") => Free(Some("intruder@evil.test")),
        (Schema::Management, "plan") => Free(Some("team")),
        (Schema::Management, "region") => Free(None),
        // A pagination cursor.
        (Schema::Management, "after") => Free(None),
        (Schema::ControlPlane, "kind") => ObjectKind,
        (Schema::ControlPlane, "name") => ObjectName,
        (Schema::ControlPlane, "yaml") => ObjectYaml,
        (Schema::ControlPlane, "object") => ObjectKey,
        // A pagination cursor.
        (Schema::ControlPlane, "after") => Free(None),
        (Schema::ControlPlane, "id") if f.contains("agent") => Agent,
        _ => panic!(
            "cross_tenant::names does not know argument `{arg}` of `{field}` ({schema:?} schema): \
             add it to the table with the victim's value it names (or `Free` if it names nothing \
             of the victim's), so the new resolver is tried across tenants"
        ),
    }
}

/// Refusal codes besides UNAUTHENTICATED/FORBIDDEN/NOT_FOUND that a field may answer to an
/// outsider, and why that reveals nothing.
fn also_refused(field: &str) -> &'static [&'static str] {
    match field {
        // acme's slug is taken: saying so is what creating any organisation must say.
        "createOrganization" => &["CONFLICT"],
        _ => &[],
    }
}

/// Everything of acme's a call may name, and every string that must not come back.
struct Acme {
    org_id: Uuid,
    cp: Uuid,
    member: Uuid,
    token: Uuid,
    token_secret: String,
    invitation: Uuid,
    invitation_token: String,
    agent: Uuid,
    object: Uuid,
}

impl Acme {
    fn value(&self, n: Names, own_org: bool) -> Option<Value> {
        Some(match n {
            Names::Org if own_org => json!(OWN_SLUG),
            Names::Org => json!(SLUG),
            Names::OrgName => json!(ORG_NAME),
            Names::ControlPlane => json!(self.cp),
            Names::ControlPlaneName => json!(CP_NAME),
            Names::Member => json!(self.member),
            Names::ApiToken => json!(self.token),
            Names::ApiTokenName => json!(TOKEN_NAME),
            Names::Invitation => json!(self.invitation),
            Names::InvitationToken => json!(self.invitation_token),
            Names::Agent => json!(self.agent),
            Names::ObjectKind => json!(OBJECT_KIND),
            Names::ObjectName => json!(OBJECT_NAME),
            Names::ObjectYaml => json!(account_yaml("stolen")),
            Names::ObjectKey => json!(format!("{OBJECT_KIND}/{OBJECT_NAME}")),
            Names::Free(v) => json!(v?),
        })
    }

    /// Strings that identify acme: none may appear in what an outsider gets back. (`acme`
    /// covers its slug, names and members' addresses.)
    fn secrets(&self) -> Vec<String> {
        let mut all = vec![SLUG.to_owned(), self.token_secret.clone()];
        all.push(self.invitation_token.clone());
        for id in [
            self.org_id,
            self.cp,
            self.member,
            self.token,
            self.invitation,
            self.agent,
            self.object,
        ] {
            all.push(id.to_string());
            all.push(id.simple().to_string());
        }
        all
    }

    /// The secrets found in `data`.
    fn leaked(&self, data: &Value) -> Vec<String> {
        let text = data.to_string().to_ascii_lowercase();
        self.secrets()
            .into_iter()
            .filter(|s| text.contains(&s.to_ascii_lowercase()))
            .collect()
    }
}

/// Who tries.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Who {
    Anonymous,
    /// The owner of `evil`, by session.
    EvilOwner,
    /// An owner API token of `evil`.
    EvilToken,
    /// acme's viewer (a member of `evil` too), by session.
    Viewer,
    /// A viewer API token of acme.
    ViewerToken,
}

const EVERYONE: [Who; 5] = [
    Who::Anonymous,
    Who::EvilOwner,
    Who::EvilToken,
    Who::Viewer,
    Who::ViewerToken,
];

/// Mutations a viewer may call on itself, whatever organisation: none is needed today (the
/// table names acme's member, not the viewer, in `removeMember`, and `createApiToken` is asked
/// for the highest role). Listed here, with why, if one must be.
const VIEWER_MAY: &[&str] = &[];

struct World {
    app: TestApp,
    owner: Session,
    acme: Acme,
    evil_owner: Session,
    evil_token: String,
    viewer: Session,
    viewer_token: String,
}

impl World {
    fn auth(&self, who: Who) -> Auth<'_> {
        match who {
            Who::Anonymous => Auth::Anonymous,
            Who::EvilOwner => Auth::Session(&self.evil_owner),
            Who::EvilToken => Auth::Token(&self.evil_token),
            Who::Viewer => Auth::Session(&self.viewer),
            Who::ViewerToken => Auth::Token(&self.viewer_token),
        }
    }
}

fn uuid(v: &Value) -> Uuid {
    v.as_str()
        .unwrap_or_else(|| panic!("a UUID: {v}"))
        .parse()
        .expect("uuid")
}

async fn world() -> World {
    let app = spawn_app().await;
    let owner = app.sign_in("owner@acme.test").await;
    let org_id = uuid(&app.create_org(&owner, SLUG).await["id"]);
    let member = app
        .add_member(&owner, SLUG, "member@acme.test", "MEMBER")
        .await;
    let member = uuid(
        &app.gql_ok(Auth::Session(&member), "{ me { id } }", json!({}))
            .await["me"]["id"],
    );
    let invited = app
        .gql_ok(
            Auth::Session(&owner),
            "mutation($o: String!) { inviteMember(org: $o, email: \"invitee@acme.test\", role: ADMIN) { invitation { id } acceptUrl } }",
            json!({ "o": SLUG }),
        )
        .await;
    let invitation = uuid(&invited["inviteMember"]["invitation"]["id"]);
    let invitation_token = invited["inviteMember"]["acceptUrl"]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .expect("invitation token")
        .to_owned();
    let created = app
        .gql_ok(
            Auth::Session(&owner),
            "mutation($o: String!, $n: String!) { createApiToken(org: $o, name: $n, role: ADMIN) { token apiToken { id } } }",
            json!({ "o": SLUG, "n": TOKEN_NAME }),
        )
        .await;
    let token = uuid(&created["createApiToken"]["apiToken"]["id"]);
    let token_secret = created["createApiToken"]["token"]
        .as_str()
        .expect("token")
        .to_owned();

    let cp = crate::fleet::create(&app, &owner, SLUG, CP_NAME).await;
    crate::fleet::wait_for(&app, &owner, SLUG, cp, "READY").await;
    let (status, body) = app
        .gateway(
            Auth::Session(&owner),
            cp,
            "graphql",
            json!({"query": "mutation($y: String!) { apply(yaml: $y, dryRun: false) { applied } }",
                   "variables": {"y": account_yaml("qleet")}}),
        )
        .await;
    assert_eq!(
        (status, &body["data"]["apply"]["applied"]),
        (200, &json!(true)),
        "{body}"
    );
    let (_, body) = app
        .gateway(
            Auth::Session(&owner),
            cp,
            "graphql",
            json!({"query": "mutation { createAgentRegistration { token } }"}),
        )
        .await;
    let registration = body["data"]["createAgentRegistration"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("registration: {body}"))
        .to_owned();
    let (status, body) = app
        .gateway(
            Auth::Anonymous,
            cp,
            "agent/v1/register",
            json!({"token": registration, "name": AGENT_NAME, "version": "1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = app
        .gateway(
            Auth::Session(&owner),
            cp,
            "graphql",
            json!({"query": "{ agents { id } objects { id } }"}),
        )
        .await;
    let agent = uuid(&body["data"]["agents"][0]["id"]);
    let object = uuid(&body["data"]["objects"][0]["id"]);

    let evil_owner = app.sign_in("owner@evil.test").await;
    app.create_org(&evil_owner, OWN_SLUG).await;
    let evil_token = app.create_token(&evil_owner, OWN_SLUG, "OWNER").await;
    // The viewer is someone of evil's too, so the own-organisation variant runs as a member.
    app.add_member(&owner, SLUG, "mallory@evil.test", "VIEWER")
        .await;
    let viewer = app
        .add_member(&evil_owner, OWN_SLUG, "mallory@evil.test", "MEMBER")
        .await;
    let viewer_token = app.create_token(&viewer, SLUG, "VIEWER").await;

    World {
        app,
        owner,
        acme: Acme {
            org_id,
            cp,
            member,
            token,
            token_secret,
            invitation,
            invitation_token,
            agent,
            object,
        },
        evil_owner,
        evil_token,
        viewer,
        viewer_token,
    }
}

const INTROSPECTION: &str = "{ __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { kind name
      fields { name args { name defaultValue type { ...T } } type { ...T } }
      inputFields { name defaultValue type { ...T } }
      enumValues { name } } } }
  fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } }";

/// A schema as introspected.
struct Introspected {
    schema: Schema,
    roots: Vec<(Op, String)>,
    types: HashMap<String, Value>,
}

impl Introspected {
    fn parse(schema: Schema, body: &Value) -> Introspected {
        let s = &body["data"]["__schema"];
        assert!(
            s.is_object(),
            "introspection of the {schema:?} schema: {body}"
        );
        let mut roots = Vec::new();
        for (op, key) in [
            (Op::Query, "queryType"),
            (Op::Mutation, "mutationType"),
            (Op::Subscription, "subscriptionType"),
        ] {
            if let Some(name) = s[key]["name"].as_str() {
                roots.push((op, name.to_owned()));
            }
        }
        let types = s["types"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| (t["name"].as_str().expect("name").to_owned(), t.clone()))
            .collect();
        Introspected {
            schema,
            roots,
            types,
        }
    }

    fn fields(&self, type_name: &str) -> &[Value] {
        self.types[type_name]["fields"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The named type at the bottom of a type reference.
fn named(t: &Value) -> &Value {
    let mut t = t;
    while t["ofType"].is_object() {
        t = &t["ofType"];
    }
    t
}

/// A type reference as written in a variable declaration (`[UUID!]!`).
fn type_string(t: &Value) -> String {
    match t["kind"].as_str() {
        Some("NON_NULL") => format!("{}!", type_string(&t["ofType"])),
        Some("LIST") => format!("[{}]", type_string(&t["ofType"])),
        _ => t["name"].as_str().expect("type name").to_owned(),
    }
}

fn required(arg: &Value) -> bool {
    arg["type"]["kind"] == "NON_NULL" && arg["defaultValue"].is_null()
}

/// One generated call.
#[derive(Debug)]
struct Call {
    schema: Schema,
    op: Op,
    /// `organization.controlPlane`, say.
    path: String,
    /// The root field.
    root: String,
    /// Organisations given as the caller's own (the variant catching a lookup by id alone).
    own_org: bool,
    query: String,
    variables: Value,
}

struct Generator<'a> {
    schema: &'a Introspected,
    acme: &'a Acme,
    own_org: bool,
}

impl Generator<'_> {
    /// A value for type `t` of argument `arg` of `field`, recording what of acme's it names;
    /// `None` for an optional argument the table leaves out.
    fn fill(&self, field: &str, arg: &str, t: &Value, used: &mut Vec<Names>) -> Option<Value> {
        match t["kind"].as_str().expect("kind") {
            "NON_NULL" => Some(
                self.fill(field, arg, &t["ofType"], used)
                    .unwrap_or_else(|| panic!("`{arg}` of `{field}` is required: give it a value in cross_tenant::names")),
            ),
            "LIST" => self.fill(field, arg, &t["ofType"], used).map(|v| json!([v])),
            "ENUM" => {
                let name = t["name"].as_str().expect("enum");
                Some(self.schema.types[name]["enumValues"][0]["name"].clone())
            }
            "INPUT_OBJECT" => {
                let name = t["name"].as_str().expect("input");
                let mut out = serde_json::Map::new();
                for f in self.schema.types[name]["inputFields"]
                    .as_array()
                    .expect("input fields")
                {
                    let fname = f["name"].as_str().expect("name");
                    let before = used.len();
                    let value = self.fill(field, fname, &f["type"], used);
                    let names_acme = used[before..].iter().any(|n| !matches!(n, Names::Free(_)));
                    if let Some(v) = value.filter(|_| required(f) || names_acme) {
                        out.insert(fname.to_owned(), v);
                    }
                }
                Some(Value::Object(out))
            }
            _ => match t["name"].as_str().expect("scalar") {
                "String" | "ID" | "UUID" => {
                    let n = names(self.schema.schema, field, arg);
                    used.push(n);
                    self.acme.value(n, self.own_org)
                }
                "Int" => Some(json!(1)),
                "Float" => Some(json!(1.0)),
                "Boolean" => Some(json!(false)),
                "DateTime" => Some(json!("2099-01-01T00:00:00Z")),
                "JSON" => Some(json!({})),
                other => panic!(
                    "cross_tenant: no dummy for scalar `{other}` (`{arg}` of `{field}`); add one"
                ),
            },
        }
    }

    /// The arguments of `field` as `(name, declared type, value)`, and what they name.
    fn args(&self, field: &Value) -> (Vec<(String, String, Value)>, Vec<Names>) {
        let fname = field["name"].as_str().expect("field name");
        let mut out = Vec::new();
        let mut all = Vec::new();
        for arg in field["args"].as_array().into_iter().flatten() {
            let aname = arg["name"].as_str().expect("arg name");
            let mut used = Vec::new();
            let value = self.fill(fname, aname, &arg["type"], &mut used);
            let names_acme = used.iter().any(|n| !matches!(n, Names::Free(_)));
            if let Some(v) = value.filter(|_| required(arg) || names_acme) {
                out.push((aname.to_owned(), type_string(&arg["type"]), v));
            }
            all.extend(used);
        }
        (out, all)
    }

    /// The call through `path` (fields from the root down).
    fn call(&self, op: Op, path: &[&Value]) -> Call {
        let mut decls = Vec::new();
        let mut variables = serde_json::Map::new();
        let mut opening = String::new();
        for field in path {
            let (args, _) = self.args(field);
            let mut rendered = Vec::new();
            for (name, ty, value) in args {
                let var = format!("v{}", decls.len());
                decls.push(format!("${var}: {ty}"));
                rendered.push(format!("{name}: ${var}"));
                variables.insert(var, value);
            }
            opening.push_str(field["name"].as_str().expect("name"));
            if !rendered.is_empty() {
                opening.push_str(&format!("({})", rendered.join(", ")));
            }
            opening.push_str(" { ");
        }
        // The last field's own selection: `__typename`, or nothing for a scalar.
        let last = path.last().expect("a field");
        let leaf = matches!(
            named(&last["type"])["kind"].as_str(),
            Some("SCALAR" | "ENUM")
        );
        let mut body = opening;
        if leaf {
            body.truncate(body.len() - " { ".len());
            body.push(' ');
        } else {
            body.push_str("__typename ");
        }
        let closing = path.len() - usize::from(leaf);
        body.push_str(&"} ".repeat(closing));
        let decls = if decls.is_empty() {
            String::new()
        } else {
            format!("({})", decls.join(", "))
        };
        Call {
            schema: self.schema.schema,
            op,
            path: path
                .iter()
                .map(|f| f["name"].as_str().expect("name"))
                .collect::<Vec<_>>()
                .join("."),
            root: path[0]["name"].as_str().expect("name").to_owned(),
            own_org: self.own_org,
            query: format!("{} {decls} {{ {body}}}", op.keyword()),
            variables: Value::Object(variables),
        }
    }
}

/// Every call of the matrix for `schema`.
fn calls(schema: &Introspected, acme: &Acme) -> Vec<Call> {
    let acme_gen = Generator {
        schema,
        acme,
        own_org: false,
    };
    let own_gen = Generator {
        schema,
        acme,
        own_org: true,
    };
    let mut out = Vec::new();
    for (op, root) in &schema.roots {
        for field in schema.fields(root) {
            match schema.schema {
                // The gateway's path names acme's control plane: every root field is acme's.
                Schema::ControlPlane => out.push(acme_gen.call(*op, &[field])),
                Schema::Management => {
                    let depth = if *op == Op::Query { 4 } else { 1 };
                    walk(&acme_gen, &own_gen, *op, &mut vec![field], depth, &mut out);
                }
            }
        }
    }
    out
}

/// Emits the calls of the last field of `path` if it names something of acme's, then goes
/// down into its object type (not revisiting a type on the path) while `depth` lasts.
fn walk<'a>(
    acme_gen: &Generator<'a>,
    own_gen: &Generator<'a>,
    op: Op,
    path: &mut Vec<&'a Value>,
    depth: usize,
    out: &mut Vec<Call>,
) {
    let schema = acme_gen.schema;
    let last = *path.last().expect("a field");
    let (_, names_last) = acme_gen.args(last);
    if names_last.iter().any(|n| !matches!(n, Names::Free(_))) {
        out.push(acme_gen.call(op, path));
        let on_path: Vec<Names> = path.iter().flat_map(|f| acme_gen.args(f).1).collect();
        if on_path.contains(&Names::Org) && on_path.iter().any(|n| n.is_object()) {
            out.push(own_gen.call(op, path));
        }
    }
    let ty = named(&last["type"]);
    if depth <= 1 || ty["kind"] != "OBJECT" {
        return;
    }
    let type_name = ty["name"].as_str().expect("name");
    let seen = path
        .iter()
        .filter(|f| named(&f["type"])["name"] == type_name)
        .count();
    if seen > 1 {
        return;
    }
    for field in schema.fields(type_name) {
        path.push(field);
        walk(acme_gen, own_gen, op, path, depth - 1, out);
        path.pop();
    }
}

/// Whether `who` is tried on `call`: a viewer may read acme, so only its mutations (and reads
/// under its own organisation) are; subscriptions are reads too.
fn tried(who: Who, call: &Call) -> bool {
    match who {
        Who::Viewer | Who::ViewerToken => match call.op {
            Op::Mutation => !VIEWER_MAY.contains(&call.root.as_str()),
            Op::Query => call.own_org,
            Op::Subscription => false,
        },
        _ => true,
    }
}

/// The codes `who` may be refused with.
fn expected_codes(who: Who, call: &Call) -> Vec<&'static str> {
    match who {
        Who::Anonymous => vec!["UNAUTHENTICATED"],
        _ => {
            let mut codes = vec!["FORBIDDEN", "NOT_FOUND"];
            codes.extend(also_refused(&call.root));
            codes
        }
    }
}

/// What went wrong with one call by one principal over one transport, if anything.
fn judge(acme: &Acme, who: Who, call: &Call, status: u16, body: &Value) -> Option<String> {
    let leaked = acme.leaked(&body["data"]);
    if !leaked.is_empty() {
        return Some(format!("leaked {leaked:?}: {body}"));
    }
    if call.schema == Schema::ControlPlane && status != 200 {
        return (![401, 403, 404].contains(&status))
            .then(|| format!("gateway answered {status}: {body}"));
    }
    let codes = expected_codes(who, call);
    match error_code(body) {
        Some(code) if codes.contains(&code.as_str()) => None,
        code => Some(format!("expected one of {codes:?}, got {code:?}: {body}")),
    }
}

/// Opens the gateway's GraphQL WebSocket as `auth`: the socket, or the status refusing it.
async fn open_ws(app: &TestApp, auth: Auth<'_>, cp: Uuid) -> Result<Ws, u16> {
    let url = format!("{}/cp/{cp}/graphql/ws", app.url.replacen("http", "ws", 1));
    let mut request = url.into_client_request().expect("request");
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    match auth {
        Auth::Session(s) => {
            let cookie = format!("qleet_session={}", s.cookie);
            headers.insert("cookie", cookie.parse().expect("header"));
            headers.insert("origin", app.url.parse().expect("header"));
        }
        Auth::Token(t) => {
            let bearer = format!("Bearer {t}");
            headers.insert("authorization", bearer.parse().expect("header"));
        }
        Auth::Anonymous => {}
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("WebSocket through the gateway: {e}"),
    }
}

/// The next JSON message; `Err(close code)` once the socket closes.
async fn next_json(ws: &mut Ws) -> Result<Value, Option<u16>> {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a WebSocket message in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Ok(serde_json::from_str(t.as_str()).expect("json"));
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            None | Some(Err(_)) => return Err(None),
            Some(Ok(_)) => {}
        }
    }
}

/// Runs `call` over the gateway's WebSocket as `who`; answers the status (the upgrade's
/// refusal, or 200) and a GraphQL-shaped body of the first answer.
async fn over_ws(w: &World, who: Who, call: &Call) -> (u16, Value) {
    let mut ws = match open_ws(&w.app, w.auth(who), w.acme.cp).await {
        Ok(ws) => ws,
        Err(status) => return (status, Value::Null),
    };
    let send = |m: Value| Message::text(m.to_string());
    ws.send(send(json!({"type": "connection_init"})))
        .await
        .expect("send");
    match next_json(&mut ws).await {
        Ok(ack) => assert_eq!(ack["type"], "connection_ack", "{ack}"),
        Err(code) => return (close_status(code), Value::Null),
    }
    let payload = json!({"query": call.query, "variables": call.variables});
    ws.send(send(
        json!({"id": "c", "type": "subscribe", "payload": payload}),
    ))
    .await
    .expect("send");
    let answer = loop {
        match next_json(&mut ws).await {
            Ok(m) if m["id"] == "c" => break m,
            Ok(_) => {}
            Err(code) => return (close_status(code), Value::Null),
        }
    };
    let _ = ws.close(None).await;
    match answer["type"].as_str() {
        Some("next") => (200, answer["payload"].clone()),
        Some("error") => (200, json!({"errors": answer["payload"]})),
        _ => (200, json!({"unexpected": answer})),
    }
}

/// A close code as the status it stands for (4401, 4403, 4404 → 401, 403, 404).
fn close_status(code: Option<u16>) -> u16 {
    match code {
        Some(c @ 4400..=4499) => c - 4000,
        Some(c) => c,
        None => 0,
    }
}

/// The whole management database a refused call must leave alone, and acme's control plane.
async fn state(w: &World) -> Value {
    let mut snapshot = w.app.snapshot().await;
    let planes: Vec<(Value,)> = sqlx::query_as(
        "select jsonb_build_object('id', id, 'org', org_id, 'name', name, 'region', region,
                'status', status, 'desired', desired, 'hold', billing_hold) r
         from control_planes order by id",
    )
    .fetch_all(&w.app.pool)
    .await
    .expect("control planes");
    snapshot["control_planes"] = Value::Array(planes.into_iter().map(|r| r.0).collect());
    let (status, body) = w
        .app
        .gateway(
            Auth::Session(&w.owner),
            w.acme.cp,
            "graphql",
            json!({"query": "{ objects { id kind name spec generation deleting } agents { id name revokedAt } }"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    snapshot["control_plane"] = body["data"].clone();
    snapshot
}

#[tokio::test]
async fn no_query_or_mutation_of_either_schema_reaches_another_organisations_data() {
    let w = world().await;
    let management = Introspected::parse(
        Schema::Management,
        &w.app
            .gql(Auth::Session(&w.owner), INTROSPECTION, json!({}))
            .await,
    );
    let (status, body) = w
        .app
        .gateway(
            Auth::Session(&w.owner),
            w.acme.cp,
            "graphql",
            json!({ "query": INTROSPECTION }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let control_plane = Introspected::parse(Schema::ControlPlane, &body);
    let before = state(&w).await;

    let mut all = calls(&management, &w.acme);
    all.extend(calls(&control_plane, &w.acme));
    let mut failures = Vec::new();
    // (schema, transport) → (calls, fields, tries)
    let mut coverage: BTreeMap<(String, &str), (usize, std::collections::BTreeSet<String>, usize)> =
        BTreeMap::new();
    for call in &all {
        let transports: &[&str] = match call.schema {
            Schema::Management => &["HTTP"],
            Schema::ControlPlane => &["HTTP", "WebSocket"],
        };
        for &transport in transports {
            let entry = coverage
                .entry((format!("{:?}", call.schema), transport))
                .or_default();
            entry.0 += 1;
            entry.1.insert(format!("{:?} {}", call.op, call.path));
            for who in EVERYONE {
                if !tried(who, call) {
                    continue;
                }
                entry.2 += 1;
                let body = json!({ "query": call.query, "variables": call.variables });
                let (status, answer) = match (call.schema, transport) {
                    (Schema::Management, _) => (
                        200,
                        w.app
                            .gql(w.auth(who), &call.query, call.variables.clone())
                            .await,
                    ),
                    (Schema::ControlPlane, "HTTP") => {
                        w.app.gateway(w.auth(who), w.acme.cp, "graphql", body).await
                    }
                    (Schema::ControlPlane, _) => over_ws(&w, who, call).await,
                };
                if let Some(why) = judge(&w.acme, who, call, status, &answer) {
                    failures.push(format!(
                        "{who:?} over {transport}: {} (own org: {})\n    {}\n    {}",
                        call.path, call.own_org, call.query, why
                    ));
                }
            }
        }
    }
    for ((schema, transport), (calls, fields, tries)) in &coverage {
        println!(
            "{schema} over {transport}: {} fields, {calls} calls, {tries} tries: {:?}",
            fields.len(),
            fields
        );
    }
    assert!(
        failures.is_empty(),
        "{} holes:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The matrix cannot pass by finding nothing.
    let fields = |s: &str| {
        coverage
            .iter()
            .filter(|((schema, _), _)| schema == s)
            .map(|(_, (_, f, _))| f.len())
            .max()
            .unwrap_or(0)
    };
    assert!(
        fields("Management") >= 15,
        "management fields: {}",
        fields("Management")
    );
    assert!(
        fields("ControlPlane") >= 9,
        "control-plane fields: {}",
        fields("ControlPlane")
    );

    assert_eq!(state(&w).await, before, "a refused call changed something");
}
