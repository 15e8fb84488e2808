//! Revocation reaches live connections. A long-lived connection (the gateway's GraphQL
//! WebSocket, the event streams) is bound when it opens to a [`Grant`]: the credential that
//! opened it (session or API token), the organisation and the role it was allowed. It ends,
//! within a second, as soon as that no longer holds: the member is removed or their role
//! lowered, the token revoked, the session signed out, or the credential (or the gateway token
//! minted for the connection) expires.
//!
//! PostgreSQL says when to look: triggers (migration `0006_access_notify`) `NOTIFY` the
//! [`CHANNEL`] with `user:<id>` or `token:<id>` whenever a membership, session or API token
//! changes or goes, by whatever code path. [`Revocations::listen`] wakes the connections of that
//! user or token, and each re-checks its grant against the database, which alone decides.
//! A connection also re-checks before passing on each operation a client starts, so nothing
//! sent after a revocation runs, however quickly it follows it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Principal, hash_secret, session, tokens};
use crate::error::ApiError;
use crate::orgs::Role;

/// The notification channel the access triggers fire on.
pub const CHANNEL: &str = "qleet_access";

/// How a connection authenticated (kept to re-authenticate it).
#[derive(Clone)]
enum Credential {
    Session(String),
    Token(String),
}

/// What a long-lived connection was allowed when it opened.
#[derive(Clone)]
pub struct Grant {
    credential: Credential,
    user_id: Uuid,
    token_id: Option<Uuid>,
    org_id: Uuid,
    role: Role,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("user_id", &self.user_id)
            .field("token_id", &self.token_id)
            .field("org_id", &self.org_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Grant {
    /// The grant of `principal` (authenticated from `headers`) holding `role` in `org_id`;
    /// `None` if the headers carry no credential.
    pub fn new(
        headers: &HeaderMap,
        principal: &Principal,
        org_id: Uuid,
        role: Role,
    ) -> Option<Grant> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_owned());
        let credential = match bearer {
            Some(token) => Credential::Token(token),
            None => Credential::Session(session::cookie_value(headers)?),
        };
        Some(Grant {
            credential,
            user_id: principal.user_id(),
            token_id: principal.token_id(),
            org_id,
            role,
        })
    }

    /// Whether the grant still holds; answers when its credential expires (if ever).
    async fn check(&self, pool: &PgPool) -> Result<Option<DateTime<Utc>>, Ended> {
        let failed = |e: ApiError| {
            tracing::warn!(error = %e, "re-checking a live connection failed; closing it");
            Ended::CheckFailed
        };
        let (principal, expires_at) = match &self.credential {
            Credential::Session(raw) => {
                let principal = session::authenticate(pool, raw).await.map_err(failed)?;
                let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar!(
                    "select expires_at from sessions where id_hash = $1",
                    hash_secret(raw)
                )
                .fetch_optional(pool)
                .await
                .map_err(|e| failed(e.into()))?;
                (principal, expires_at)
            }
            Credential::Token(raw) => {
                let principal = match tokens::authenticate(pool, raw).await {
                    Ok(p) => Some(p),
                    Err(ApiError::Unauthenticated) => None,
                    Err(e) => return Err(failed(e)),
                };
                let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar!(
                    "select expires_at from api_tokens where token_hash = $1",
                    hash_secret(raw)
                )
                .fetch_optional(pool)
                .await
                .map_err(|e| failed(e.into()))?
                .flatten();
                (principal, expires_at)
            }
        };
        let principal = principal.ok_or(Ended::SignedOut)?;
        let role = match &principal {
            Principal::Token { org_id, role, .. } if *org_id == self.org_id => Some(*role),
            Principal::Token { .. } => None,
            Principal::User { user_id, .. } => {
                let role: Option<String> = sqlx::query_scalar!(
                    "select role from memberships where org_id = $1 and user_id = $2",
                    self.org_id,
                    user_id
                )
                .fetch_optional(pool)
                .await
                .map_err(|e| failed(e.into()))?;
                role.map(|r| Role::parse(&r))
                    .transpose()
                    .map_err(|e| failed(e.into()))?
            }
        };
        match role {
            Some(now) if now.at_least(self.role) => Ok(expires_at),
            _ => Err(Ended::AccessLost),
        }
    }
}

/// Why a live connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The credential no longer authenticates: signed out, token revoked, or either expired.
    SignedOut,
    /// Removed from the organisation, or the role lowered.
    AccessLost,
    /// The gateway's token for this connection expired (reconnecting mints a new one).
    TokenExpired,
    /// The database could not confirm the grant.
    CheckFailed,
    /// The server is shutting down; reconnect (to another instance, or to this one restarted).
    ShuttingDown,
}

impl Ended {
    /// The WebSocket close code (`graphql-transport-ws` uses 4401 and 4403 the same way).
    pub fn close_code(self) -> u16 {
        match self {
            Ended::SignedOut | Ended::TokenExpired => 4401,
            Ended::AccessLost => 4403,
            Ended::CheckFailed => 1011,
            // "Service Restart": the client should reconnect.
            Ended::ShuttingDown => 1012,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Ended::SignedOut => "signed out, or the credential was revoked or expired",
            Ended::AccessLost => "access to the organisation was removed or lowered",
            Ended::TokenExpired => "the connection's token expired; reconnect",
            Ended::CheckFailed => "access could not be confirmed; reconnect",
            Ended::ShuttingDown => "the server is restarting; reconnect",
        }
    }
}

struct Entry {
    user_id: Uuid,
    token_id: Option<Uuid>,
    kick: Arc<Notify>,
}

/// The live connections and what revokes them.
pub struct Revocations {
    pool: PgPool,
    /// What the hot path caches; forgotten by the same notifications, see [`super::cache`].
    pub cache: super::cache::AccessCache,
    /// Where live control-plane status changes announced by PostgreSQL go (every instance's
    /// subscribers, see [`crate::fleet::replicas`]).
    changes: tokio::sync::broadcast::Sender<crate::fleet::Change>,
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    /// Cancelled when the server starts shutting down: every live connection ends at once.
    stopping: CancellationToken,
}

impl Revocations {
    pub fn new(
        pool: PgPool,
        changes: tokio::sync::broadcast::Sender<crate::fleet::Change>,
    ) -> Arc<Revocations> {
        Arc::new(Revocations {
            pool,
            cache: super::cache::AccessCache::default(),
            changes,
            entries: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            stopping: CancellationToken::new(),
        })
    }

    /// Ends every live connection now and any opened from here on ([`Ended::ShuttingDown`]):
    /// the server is stopping, and streams must not hold its graceful shutdown up.
    pub fn shut_down(&self) {
        self.stopping.cancel();
    }

    /// Resolves once [`Revocations::shut_down`] was called.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await;
    }

    /// Binds a connection to `grant` until at most `until` (the gateway token's expiry):
    /// registers it, then checks the grant (so no revocation in between is missed).
    pub async fn watch(
        self: &Arc<Self>,
        grant: Grant,
        until: Option<DateTime<Utc>>,
    ) -> Result<Watch, Ended> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Entry {
                user_id: grant.user_id,
                token_id: grant.token_id,
                kick: kick.clone(),
            },
        );
        let watch = Watch {
            hub: self.clone(),
            id,
            grant,
            kick,
            until,
            expires_at: Mutex::new(None),
        };
        watch.recheck().await?;
        Ok(watch)
    }

    /// How many connections are bound (for tests and metrics).
    pub fn live(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the connections a notification payload (`user:<id>` / `token:<id>`) names.
    fn kick(&self, payload: &str) {
        // Cache barriers and forgettings name no live connection.
        if ["sync:", "cp:", "org:"]
            .iter()
            .any(|p| payload.starts_with(p))
        {
            return;
        }
        let subject = payload
            .split_once(':')
            .and_then(|(kind, id)| Some((kind, id.parse::<Uuid>().ok()?)));
        let Some((kind, id)) = subject else {
            tracing::warn!(payload, "ignoring an access notification");
            return;
        };
        for entry in self.lock().values() {
            let hit = match kind {
                "user" => entry.user_id == id,
                "token" => entry.token_id == Some(id),
                _ => false,
            };
            if hit {
                entry.kick.notify_one();
            }
        }
    }

    /// Wakes every connection (after notifications may have been missed).
    fn kick_all(&self) {
        for entry in self.lock().values() {
            entry.kick.notify_one();
        }
    }

    /// Listens on [`CHANNEL`] for as long as the server runs, reconnecting when the database
    /// connection breaks; every connection re-checks after a reconnect. The cache is used only
    /// while this listens, and forgets what each notification names before anyone is woken.
    pub async fn listen(self: Arc<Self>) {
        loop {
            match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => match listener
                    .listen_all([CHANNEL, crate::fleet::replicas::CHANGES_CHANNEL])
                    .await
                {
                    Ok(()) => {
                        self.cache.go_live();
                        self.kick_all();
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(n)) if n.channel() == CHANNEL => {
                                    self.cache.forget(n.payload());
                                    self.kick(n.payload());
                                }
                                Ok(Some(n)) => {
                                    match crate::fleet::replicas::change_of(n.payload()) {
                                        Some(change) => {
                                            let _ = self.changes.send(change);
                                        }
                                        None => tracing::warn!(
                                            payload = n.payload(),
                                            "ignoring an unreadable status change"
                                        ),
                                    }
                                }
                                // The connection broke (what was sent meanwhile is lost):
                                // start again from a fresh one.
                                Ok(None) => {
                                    tracing::warn!("access notifications broke; reconnecting");
                                    break;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "access notifications broke");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot listen for access changes"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot listen for access changes"),
            }
            self.cache.go_dark();
            self.kick_all();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A live connection's binding; dropping it unregisters the connection.
pub struct Watch {
    hub: Arc<Revocations>,
    id: u64,
    grant: Grant,
    kick: Arc<Notify>,
    until: Option<DateTime<Utc>>,
    /// The credential's expiry as last checked.
    expires_at: Mutex<Option<DateTime<Utc>>>,
}

impl Watch {
    /// Checks the grant now: before a connection passes on an operation.
    pub async fn recheck(&self) -> Result<(), Ended> {
        let now = Utc::now();
        if self.until.is_some_and(|until| until <= now) {
            return Err(Ended::TokenExpired);
        }
        let expires_at = self.grant.check(&self.hub.pool).await?;
        if expires_at.is_some_and(|at| at <= now) {
            return Err(Ended::SignedOut);
        }
        *self.expires_at.lock().unwrap_or_else(|e| e.into_inner()) = expires_at;
        Ok(())
    }

    /// Resolves when the connection must end: on a revocation that concerns it (re-checked),
    /// or at the earlier of its credential's and its gateway token's expiry.
    pub async fn ended(&self) -> Ended {
        loop {
            let expires_at = *self.expires_at.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = match (expires_at, self.until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match deadline {
                    Some(at) => {
                        let left = (at - Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(left).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.kick.notified() => {}
                () = sleep => {}
                () = self.hub.stopping.cancelled() => return Ended::ShuttingDown,
            }
            if let Err(ended) = self.recheck().await {
                return ended;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
    }
}
