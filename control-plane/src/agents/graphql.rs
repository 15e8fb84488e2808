//! The agents part of the control plane's GraphQL API: list agents with their live status,
//! issue registration tokens, revoke agents.

use async_graphql::{Context, Object, SimpleObject};
use sqlx::PgPool;
use uuid::Uuid;

use super::AgentStatus;
use crate::caller::Caller;
use crate::error::{ApiError, GqlResult as _};
use qleet_protocol::Role;

fn require_admin<'a>(ctx: &Context<'a>) -> Result<&'a Caller, ApiError> {
    let caller = ctx.data_unchecked::<Caller>();
    caller.require(Role::Admin, "managing agents")?;
    Ok(caller)
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub version: String,
    pub registered_at: chrono::DateTime<chrono::Utc>,
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Tasks it reported working on at its last heartbeat.
    pub running: i32,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[async_graphql::ComplexObject]
impl Agent {
    /// Connected, Unknown (missed heartbeats), Disconnected or Revoked, as of now.
    async fn status(&self) -> AgentStatus {
        super::status(
            self.last_seen_at,
            self.revoked_at.is_some(),
            chrono::Utc::now(),
        )
    }
}

#[derive(SimpleObject)]
pub struct AgentRegistration {
    /// One-time token for `qleet-agent --token`; shown once.
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The control plane the agent will serve.
    pub control_plane: Uuid,
}

/// `sqlx::query_as!` for [`Agent`]s: its columns, then the rest of the query (a literal).
macro_rules! select_agents {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Agent,
            "select id, name, version, registered_at, last_seen_at, running, revoked_at from agents "
                + $rest
            $(, $arg)*
        )
    };
}

#[derive(Default)]
pub struct AgentsQuery;

#[Object]
impl AgentsQuery {
    /// Registered agents, newest first.
    async fn agents(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Agent>> {
        select_agents!("order by registered_at desc")
            .fetch_all(ctx.data_unchecked::<PgPool>())
            .await
            .map_err(ApiError::from)
            .gql()
    }
}

#[derive(Default)]
pub struct AgentsMutation;

#[Object]
impl AgentsMutation {
    /// Issues a one-time registration token for a new agent (admins; valid `ttlMinutes`, 5 to
    /// 1440, default 60).
    async fn create_agent_registration(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 60)] ttl_minutes: i32,
    ) -> async_graphql::Result<AgentRegistration> {
        let caller = require_admin(ctx).gql()?;
        if !(5..=1440).contains(&ttl_minutes) {
            return Err(ApiError::invalid(
                "ttlMinutes",
                "must be between 5 and 1440",
            ))
            .gql();
        }
        let by = caller.actor();
        let (token, expires_at) = super::create_registration(
            ctx.data_unchecked::<PgPool>(),
            &by,
            chrono::Duration::minutes(i64::from(ttl_minutes)),
            caller.limits(),
        )
        .await
        .gql()?;
        Ok(AgentRegistration {
            token,
            expires_at,
            control_plane: ctx.data_unchecked::<crate::caller::ControlPlaneId>().0,
        })
    }

    /// Revokes an agent: its credential stops working and its leased tasks go back to the
    /// queue.
    async fn revoke_agent(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Agent> {
        let caller = require_admin(ctx).gql()?;
        let pool = ctx.data_unchecked::<PgPool>();
        super::revoke(pool, id, &caller.actor()).await.gql()?;
        let agent = select_agents!("where id = $1", id)
            .fetch_optional(pool)
            .await
            .map_err(ApiError::from)
            .gql()?;
        agent
            .ok_or_else(|| ApiError::NotFound("agent".into()))
            .gql()
    }
}
