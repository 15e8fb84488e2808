//! What the hot path would otherwise read from PostgreSQL on every request, kept in process:
//! who a credential is, members' roles, control-plane records and billing accounts.
//!
//! Correctness comes from PostgreSQL, not from a lifetime: triggers (migrations
//! `0006_access_notify` and `0009_cache_notify`) `NOTIFY` the access channel whenever a
//! membership, session, API token, user, control plane or billing account changes or goes, and
//! [`AccessCache::forget`] drops what the notification names as the listener
//! ([`super::revocation::Revocations::listen`]) receives it, so a revocation takes effect
//! within the time a notification takes to arrive (milliseconds), far inside a second.
//!
//! - The cache is used only while the listener is connected ([`AccessCache::go_live`]); when
//!   the connection breaks it is emptied and bypassed until the listener is back, since
//!   notifications may have been missed meanwhile.
//! - A value read from the database is stored only if no notification arrived since the read
//!   began ([`Ticket`]), so a revocation that commits while a request is reading cannot be
//!   overwritten by what that request read before it.
//! - Only what exists is cached (no negative entries): a credential that does not authenticate
//!   is looked up again each time.
//! - Every entry also ages out after [`MAX_AGE`], and each map is bounded.
//! - What this process changes itself it also reads back at once: after a mutation the
//!   request waits for [`AccessCache::barrier`], a notification of its own sent after the
//!   mutation committed. PostgreSQL delivers notifications in commit order, so once the
//!   listener has it, it has heard every change the mutation made.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Principal;
use crate::billing::Account;
use crate::fleet::ControlPlane;
use crate::orgs::Role;

/// The longest an entry is used, notifications or not.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Entries per map; a full map is emptied and fills again.
const MAX_ENTRIES: usize = 50_000;
/// How often a cached API token's `last_used_at` is written.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Proof that nothing was forgotten since a read began; see [`AccessCache::ticket`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(Option<u64>);

struct Entry<V> {
    value: V,
    at: Instant,
}

/// A principal as cached: when its credential expires, and when its `last_used_at` was last
/// written (tokens).
#[derive(Clone)]
struct CachedPrincipal {
    principal: Principal,
    expires_at: Option<DateTime<Utc>>,
    touched: Instant,
}

struct Map<K, V>(Mutex<HashMap<K, Entry<V>>>);

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    fn new() -> Self {
        Map(Mutex::new(HashMap::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry<V>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &K) -> Option<V> {
        let map = self.lock();
        let entry = map.get(key)?;
        (entry.at.elapsed() < MAX_AGE).then(|| entry.value.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(
            key,
            Entry {
                value,
                at: Instant::now(),
            },
        );
    }

    fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        self.lock().retain(|k, e| keep(k, &e.value));
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// The process's cache; see the module documentation.
pub struct AccessCache {
    /// Names this process's barrier notifications (`sync:<id>:<n>`).
    id: Uuid,
    /// Barrier numbers: the last sent, and the last the listener heard.
    sent: AtomicU64,
    heard: tokio::sync::watch::Sender<u64>,
    live: AtomicBool,
    /// Bumped by every notification and every (dis)connection of the listener.
    generation: AtomicU64,
    /// By the hash of the session id or API token (never the secret itself).
    principals: Map<Vec<u8>, CachedPrincipal>,
    /// By (organisation, user).
    roles: Map<(Uuid, Uuid), Role>,
    control_planes: Map<Uuid, ControlPlane>,
    /// By organisation.
    accounts: Map<Uuid, Account>,
}

impl Default for AccessCache {
    fn default() -> Self {
        AccessCache {
            id: Uuid::new_v4(),
            sent: AtomicU64::new(0),
            heard: tokio::sync::watch::Sender::new(0),
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            principals: Map::new(),
            roles: Map::new(),
            control_planes: Map::new(),
            accounts: Map::new(),
        }
    }
}

impl AccessCache {
    /// Taken before reading from the database what [`AccessCache`] would store: the value is
    /// stored only if nothing was forgotten in between (and the cache is live).
    pub fn ticket(&self) -> Ticket {
        if !self.live.load(Ordering::SeqCst) {
            return Ticket(None);
        }
        Ticket(Some(self.generation.load(Ordering::SeqCst)))
    }

    fn valid(&self, ticket: Ticket) -> bool {
        ticket.0.is_some_and(|g| {
            self.live.load(Ordering::SeqCst) && self.generation.load(Ordering::SeqCst) == g
        })
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// The listener is connected and listening: start from nothing and use the cache.
    pub fn go_live(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.clear();
        self.live.store(true, Ordering::SeqCst);
    }

    /// The listener lost its connection: notifications may be missed, so forget everything
    /// and read through until it is back.
    pub fn go_dark(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.clear();
    }

    fn clear(&self) {
        self.principals.clear();
        self.roles.clear();
        self.control_planes.clear();
        self.accounts.clear();
    }

    /// Forgets what a notification payload names: `user:<id>` (their sessions, the tokens
    /// they made, their memberships), `token:<id>`, `cp:<id>`, `org:<id>` (its billing
    /// account). An unreadable payload forgets everything.
    pub fn forget(&self, payload: &str) {
        if let Some(rest) = payload.strip_prefix("sync:") {
            // A barrier: this process's own (heard), or another's (nothing to forget).
            if let Some((id, n)) = rest.split_once(':')
                && id.parse::<Uuid>().is_ok_and(|id| id == self.id)
                && let Ok(n) = n.parse::<u64>()
            {
                self.heard.send_if_modified(|heard| {
                    let newer = n > *heard;
                    *heard = (*heard).max(n);
                    newer
                });
            }
            return;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        let subject = payload
            .split_once(':')
            .and_then(|(kind, id)| Some((kind, id.parse::<Uuid>().ok()?)));
        match subject {
            Some(("user", id)) => {
                self.principals.retain(|_, p| p.principal.user_id() != id);
                self.roles.retain(|(_, user), _| *user != id);
            }
            Some(("token", id)) => self
                .principals
                .retain(|_, p| p.principal.token_id() != Some(id)),
            Some(("cp", id)) => self.control_planes.retain(|k, _| *k != id),
            Some(("org", id)) => self.accounts.retain(|k, _| *k != id),
            _ => self.clear(),
        }
    }

    /// Waits (at most a second) until the listener has heard every change committed before
    /// this call: what a request changed is then what the next one reads, even from the cache.
    pub async fn barrier(&self, pool: &sqlx::PgPool) {
        if !self.is_live() {
            return;
        }
        let n = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        let mut heard = self.heard.subscribe();
        let sent = sqlx::query("select pg_notify($1, $2)")
            .bind(super::revocation::CHANNEL)
            .bind(format!("sync:{}:{n}", self.id))
            .execute(pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot send a cache barrier; forgetting everything");
            self.forget("");
            return;
        }
        let waited = tokio::time::timeout(Duration::from_secs(1), heard.wait_for(|h| *h >= n));
        if !matches!(waited.await, Ok(Ok(_))) {
            tracing::warn!("the cache barrier was not heard in time; forgetting everything");
            self.forget("");
        }
    }

    /// The principal a credential hash names, unless expired; and whether its `last_used_at`
    /// is due to be written again (noted as written).
    pub fn principal(&self, hash: &[u8]) -> Option<(Principal, bool)> {
        if !self.is_live() {
            return None;
        }
        let mut map = self.principals.lock();
        let entry = map.get_mut(hash)?;
        if entry.at.elapsed() >= MAX_AGE
            || entry.value.expires_at.is_some_and(|at| at <= Utc::now())
        {
            map.remove(hash);
            return None;
        }
        let touch = entry.value.touched.elapsed() >= TOUCH_EVERY;
        if touch {
            entry.value.touched = Instant::now();
        }
        Some((entry.value.principal.clone(), touch))
    }

    pub fn put_principal(
        &self,
        ticket: Ticket,
        hash: Vec<u8>,
        principal: Principal,
        expires_at: Option<DateTime<Utc>>,
    ) {
        if self.valid(ticket) {
            let cached = CachedPrincipal {
                principal,
                expires_at,
                touched: Instant::now(),
            };
            self.principals.put(hash, cached);
        }
    }

    pub fn role(&self, org_id: Uuid, user_id: Uuid) -> Option<Role> {
        self.is_live()
            .then(|| self.roles.get(&(org_id, user_id)))
            .flatten()
    }

    pub fn put_role(&self, ticket: Ticket, org_id: Uuid, user_id: Uuid, role: Role) {
        if self.valid(ticket) {
            self.roles.put((org_id, user_id), role);
        }
    }

    pub fn control_plane(&self, id: Uuid) -> Option<ControlPlane> {
        self.is_live()
            .then(|| self.control_planes.get(&id))
            .flatten()
    }

    pub fn put_control_plane(&self, ticket: Ticket, cp: ControlPlane) {
        if self.valid(ticket) {
            self.control_planes.put(cp.id, cp);
        }
    }

    pub fn account(&self, org_id: Uuid) -> Option<Account> {
        self.is_live().then(|| self.accounts.get(&org_id)).flatten()
    }

    pub fn put_account(&self, ticket: Ticket, org_id: Uuid, account: Account) {
        if self.valid(ticket) {
            self.accounts.put(org_id, account);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: Uuid) -> Principal {
        Principal::User {
            user_id: id,
            email: "a@example.com".into(),
            csrf: "c".into(),
        }
    }

    fn token(id: Uuid, user_id: Uuid) -> Principal {
        Principal::Token {
            token_id: id,
            org_id: Uuid::new_v4(),
            role: Role::Viewer,
            name: "t".into(),
            user_id,
            email: "a@example.com".into(),
        }
    }

    #[test]
    fn nothing_is_kept_or_served_while_the_listener_is_away() {
        let cache = AccessCache::default();
        let alice = Uuid::new_v4();
        cache.put_principal(cache.ticket(), b"h".to_vec(), user(alice), None);
        assert!(cache.principal(b"h").is_none(), "not live yet");
        cache.go_live();
        cache.put_principal(cache.ticket(), b"h".to_vec(), user(alice), None);
        assert!(cache.principal(b"h").is_some());
        cache.go_dark();
        assert!(
            cache.principal(b"h").is_none(),
            "forgotten when the listener breaks"
        );
        cache.go_live();
        assert!(cache.principal(b"h").is_none(), "and not back by itself");
    }

    #[test]
    fn a_read_that_raced_a_notification_is_not_stored() {
        let cache = AccessCache::default();
        cache.go_live();
        let alice = Uuid::new_v4();
        let org = Uuid::new_v4();
        let ticket = cache.ticket();
        // The revocation commits and is heard while the request is still reading.
        cache.forget(&format!("user:{alice}"));
        cache.put_role(ticket, org, alice, Role::Admin);
        cache.put_principal(ticket, b"h".to_vec(), user(alice), None);
        assert_eq!(cache.role(org, alice), None);
        assert!(cache.principal(b"h").is_none());
        cache.put_role(cache.ticket(), org, alice, Role::Admin);
        assert_eq!(cache.role(org, alice), Some(Role::Admin));
    }

    #[test]
    fn notifications_forget_exactly_what_they_name() {
        let cache = AccessCache::default();
        cache.go_live();
        let (alice, bob, tok, org) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let fill = |cache: &AccessCache| {
            let t = cache.ticket();
            cache.put_principal(t, b"alice-session".to_vec(), user(alice), None);
            cache.put_principal(t, b"alice-token".to_vec(), token(tok, alice), None);
            cache.put_principal(t, b"bob-session".to_vec(), user(bob), None);
            cache.put_role(t, org, alice, Role::Owner);
            cache.put_role(t, org, bob, Role::Member);
            cache.put_account(t, org, Account::default());
        };
        fill(&cache);
        cache.forget(&format!("token:{tok}"));
        assert!(cache.principal(b"alice-token").is_none());
        assert!(cache.principal(b"alice-session").is_some());

        fill(&cache);
        cache.forget(&format!("user:{alice}"));
        assert!(cache.principal(b"alice-session").is_none());
        assert!(cache.principal(b"alice-token").is_none(), "her tokens too");
        assert_eq!(cache.role(org, alice), None);
        assert!(cache.principal(b"bob-session").is_some());
        assert_eq!(cache.role(org, bob), Some(Role::Member));

        cache.forget(&format!("org:{org}"));
        assert!(cache.account(org).is_none());
        assert!(cache.principal(b"bob-session").is_some());
        cache.forget("garbage");
        assert!(cache.principal(b"bob-session").is_none(), "unreadable: all");
    }

    #[test]
    fn barriers_are_heard_without_forgetting_anything() {
        let cache = AccessCache::default();
        cache.go_live();
        let alice = Uuid::new_v4();
        cache.put_principal(cache.ticket(), b"h".to_vec(), user(alice), None);
        let ticket = cache.ticket();
        cache.forget(&format!("sync:{}:3", Uuid::new_v4()));
        cache.forget(&format!("sync:{}:2", cache.id));
        assert_eq!(*cache.heard.borrow(), 2);
        cache.forget(&format!("sync:{}:1", cache.id));
        assert_eq!(*cache.heard.borrow(), 2, "never goes back");
        assert!(cache.principal(b"h").is_some());
        cache.put_role(ticket, Uuid::nil(), alice, Role::Admin);
        assert_eq!(cache.role(Uuid::nil(), alice), Some(Role::Admin));
    }

    #[test]
    fn an_expired_credential_is_not_served() {
        let cache = AccessCache::default();
        cache.go_live();
        let past = Utc::now() - chrono::Duration::seconds(1);
        cache.put_principal(
            cache.ticket(),
            b"h".to_vec(),
            user(Uuid::new_v4()),
            Some(past),
        );
        assert!(cache.principal(b"h").is_none());
    }
}
