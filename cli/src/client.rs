//! The two doors `qleetctl` uses, both public: GraphQL over HTTP (the management plane's
//! `/graphql` and a control plane's `/cp/{id}/graphql` through the gateway) and the
//! `graphql-transport-ws` WebSocket for subscriptions (`/cp/{id}/graphql/ws`).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::error::{Exit, Failure, Result};

/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A signed-in client of one Qleet.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Qleet's URL without a trailing slash.
    pub url: String,
    token: Option<String>,
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|e| Failure::usage(format!("QLEET_URL {url:?} is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Failure::usage(format!(
                "QLEET_URL {url:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("qleetctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::failed(format!("cannot start the HTTP client: {e}")))?;
        Ok(Client {
            http,
            url: url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A query or mutation on the management plane; answers `data`.
    pub async fn management(&self, query: &str, variables: Value) -> Result<Value> {
        self.post(&format!("{}/graphql", self.url), query, variables)
            .await
    }

    /// A query or mutation on control plane `cp` through the gateway; answers `data`.
    pub async fn control_plane(&self, cp: &str, query: &str, variables: Value) -> Result<Value> {
        self.post(&format!("{}/cp/{cp}/graphql", self.url), query, variables)
            .await
    }

    /// GETs `path` (with its query) of control plane `cp` through the gateway and copies the
    /// body to `out` as it arrives.
    pub async fn download(
        &self,
        cp: &str,
        path: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt as _;
        let token = self.token()?;
        let mut resp = self
            .http
            .get(format!("{}/cp/{cp}/{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unreachable(&self.url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let err = &body["error"];
            let code = err["code"].as_str().unwrap_or(match status.as_u16() {
                401 => "UNAUTHENTICATED",
                403 => "FORBIDDEN",
                404 => "NOT_FOUND",
                502..=504 => "UNAVAILABLE",
                _ => "ERROR",
            });
            let message = err["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{path} answered {status}"));
            return Err(Failure::from_code(code, &message, err));
        }
        let write = |e: std::io::Error| Failure::failed(format!("cannot write the output: {e}"));
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| Failure::unavailable(format!("the download broke off: {e}")))?
        {
            out.write_all(&chunk).await.map_err(write)?;
        }
        out.flush().await.map_err(write)?;
        Ok(())
    }

    fn token(&self) -> Result<&str> {
        self.token
            .as_deref()
            .ok_or_else(|| Failure::auth("not signed in: run `qleetctl login`, or set QLEET_TOKEN"))
    }

    async fn post(&self, endpoint: &str, query: &str, variables: Value) -> Result<Value> {
        let token = self.token()?;
        let resp = self
            .http
            .post(endpoint)
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| unreachable(&self.url, &e))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        // The gateway's own refusals: `{"error": {"code", "message"}}`.
        if let Some(err) = body.get("error") {
            let code = err["code"].as_str().unwrap_or("ERROR");
            let message = err["message"].as_str().unwrap_or("refused");
            return Err(Failure::from_code(code, message, err));
        }
        if let Some(err) = body["errors"].as_array().and_then(|e| e.first()) {
            let ext = &err["extensions"];
            let code = ext["code"].as_str().unwrap_or("ERROR");
            let message = err["message"].as_str().unwrap_or("refused");
            return Err(Failure::from_code(code, message, ext));
        }
        if !status.is_success() || body.get("data").is_none() {
            let exit = match status.as_u16() {
                401 | 403 => Exit::Auth,
                502..=504 => Exit::Unavailable,
                _ => Exit::Failed,
            };
            return Err(Failure::new(
                exit,
                format!("{endpoint} answered {status} without a GraphQL response"),
            ));
        }
        Ok(body["data"].clone())
    }

    /// Subscribes on control plane `cp` over `graphql-transport-ws`; yields each `data`.
    pub async fn subscribe(
        &self,
        cp: &str,
        query: &str,
        variables: Value,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Value>>> {
        let token = self.token()?.to_owned();
        let ws_url = format!("{}/cp/{cp}/graphql/ws", self.url.replacen("http", "ws", 1));
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| Failure::failed(format!("bad WebSocket URL {ws_url}: {e}")))?;
        let headers = request.headers_mut();
        for (name, value) in [
            ("authorization", format!("Bearer {token}")),
            ("sec-websocket-protocol", "graphql-transport-ws".to_owned()),
        ] {
            let value = value
                .parse()
                .map_err(|_| Failure::usage("the token contains characters a header cannot"))?;
            headers.insert(name, value);
        }
        let (mut socket, _) =
            tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| Failure::unavailable(format!("{ws_url}: no answer")))?
                .map_err(|e| ws_refused(&ws_url, e))?;
        let send = |v: Value| Message::Text(v.to_string().into());
        let io = |e: tokio_tungstenite::tungstenite::Error| {
            Failure::unavailable(format!("live updates: {e}"))
        };
        socket
            .send(send(json!({"type": "connection_init", "payload": {}})))
            .await
            .map_err(io)?;
        // Wait for the acknowledgement before subscribing.
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["type"] == "connection_ack" {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(io(e)),
                None => return Err(Failure::unavailable("live updates: connection closed")),
            }
        }
        socket
            .send(send(json!({
                "type": "subscribe", "id": "1",
                "payload": { "query": query, "variables": variables },
            })))
            .await
            .map_err(io)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(msg) = socket.next().await {
                let item = match msg {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        match v["type"].as_str() {
                            Some("next") => {
                                if let Some(err) =
                                    v["payload"]["errors"].as_array().and_then(|e| e.first())
                                {
                                    let ext = &err["extensions"];
                                    Err(Failure::from_code(
                                        ext["code"].as_str().unwrap_or("ERROR"),
                                        err["message"].as_str().unwrap_or("refused"),
                                        ext,
                                    ))
                                } else {
                                    Ok(v["payload"]["data"].clone())
                                }
                            }
                            Some("ping") => {
                                let _ = socket.send(send(json!({"type": "pong"}))).await;
                                continue;
                            }
                            Some("error") => Err(Failure::failed(format!(
                                "subscription refused: {}",
                                v["payload"]
                            ))),
                            Some("complete") => break,
                            _ => continue,
                        }
                    }
                    Ok(Message::Close(_)) => break,
                    Ok(_) => continue,
                    Err(e) => Err(io(e)),
                };
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    /// An unauthenticated GET, for `login` to check the server answers.
    pub async fn reachable(&self) -> Result<()> {
        self.http
            .get(format!("{}/healthz", self.url))
            .send()
            .await
            .map_err(|e| unreachable(&self.url, &e))?;
        Ok(())
    }
}

fn unreachable(url: &str, e: &reqwest::Error) -> Failure {
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "cannot be reached"
    };
    Failure::unavailable(format!(
        "{url} {what} (is QLEET_URL right and Qleet running?)"
    ))
}

fn ws_refused(url: &str, e: tokio_tungstenite::tungstenite::Error) -> Failure {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => {
            let status = resp.status();
            let body: Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            if let Some(err) = body.get("error") {
                return Failure::from_code(
                    err["code"].as_str().unwrap_or("ERROR"),
                    err["message"].as_str().unwrap_or("refused"),
                    err,
                );
            }
            let exit = match status.as_u16() {
                401 | 403 => Exit::Auth,
                _ => Exit::Unavailable,
            };
            Failure::new(exit, format!("{url} refused live updates ({status})"))
        }
        other => Failure::unavailable(format!("{url}: {other}")),
    }
}
