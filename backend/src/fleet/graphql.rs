//! GraphQL: control planes of an organisation, and their lifecycle mutations.

use std::sync::Arc;

use async_graphql::{ComplexObject, Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ControlPlane, Request, Services, Status};
use crate::error::{ApiError, GqlResult as _};
use crate::graphql::{actor, config, pool};
use crate::orgs::graphql::Organization;
use crate::orgs::{Permission, require};

fn services<'a>(ctx: &Context<'a>) -> &'a Services {
    ctx.data_unchecked::<Arc<Services>>()
}

/// One tenant's isolated control plane.
#[derive(SimpleObject)]
#[graphql(complex, name = "ControlPlane")]
pub struct ControlPlaneObject {
    id: Uuid,
    name: String,
    region: Option<String>,
    status: Status,
    /// Why it is in this state (e.g. the last error while provisioning).
    status_reason: Option<String>,
    /// The `qleet` version it runs.
    version: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl ControlPlaneObject {
    fn new(cp: ControlPlane) -> Result<Self, ApiError> {
        Ok(ControlPlaneObject {
            status: Status::parse(&cp.status)?,
            id: cp.id,
            name: cp.name,
            region: cp.region,
            status_reason: cp.status_reason,
            version: cp.version,
            created_at: cp.created_at,
            updated_at: cp.updated_at,
        })
    }
}

/// A change in a control plane's life.
#[derive(SimpleObject)]
pub struct ControlPlaneEvent {
    at: DateTime<Utc>,
    from: Option<Status>,
    to: Status,
    message: String,
}

#[ComplexObject]
impl ControlPlaneObject {
    /// Its GraphQL API through the gateway.
    async fn endpoint(&self, ctx: &Context<'_>) -> String {
        config(ctx).url(&format!("/cp/{}/graphql", self.id))
    }

    /// Its history, newest first.
    async fn events(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ControlPlaneEvent>> {
        let events = super::events(pool(ctx), self.id).await.gql()?;
        events
            .into_iter()
            .map(|e| {
                Ok(ControlPlaneEvent {
                    at: e.at,
                    from: e.from_status.as_deref().map(Status::parse).transpose()?,
                    to: Status::parse(&e.to_status)?,
                    message: e.message,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()
            .gql()
    }
}

/// Control-plane fields of [`Organization`].
pub async fn list(
    ctx: &Context<'_>,
    org: &Organization,
) -> async_graphql::Result<Vec<ControlPlaneObject>> {
    require(&org.0, Permission::Read).gql()?;
    let cps = super::list(pool(ctx), org.0.org.id).await.gql()?;
    cps.into_iter()
        .map(ControlPlaneObject::new)
        .collect::<Result<_, _>>()
        .gql()
}

pub async fn one(
    ctx: &Context<'_>,
    org: &Organization,
    id: Uuid,
) -> async_graphql::Result<ControlPlaneObject> {
    require(&org.0, Permission::Read).gql()?;
    ControlPlaneObject::new(super::get(pool(ctx), org.0.org.id, id).await.gql()?).gql()
}

/// A lifecycle request on one control plane, as the calling principal.
async fn request(
    ctx: &Context<'_>,
    org: &str,
    id: Uuid,
    request: Request,
    confirm_name: Option<&str>,
) -> async_graphql::Result<ControlPlaneObject> {
    let actor = actor(ctx).gql()?;
    let cp = super::request(
        pool(ctx),
        services(ctx),
        &actor,
        org,
        id,
        request,
        confirm_name,
    )
    .await
    .gql()?;
    ControlPlaneObject::new(cp).gql()
}

#[derive(Default)]
pub struct ControlPlaneMutation;

#[Object]
impl ControlPlaneMutation {
    /// Asks for a new control plane; it is provisioned in the background (watch `status`).
    async fn create_control_plane(
        &self,
        ctx: &Context<'_>,
        org: String,
        name: String,
        region: Option<String>,
    ) -> async_graphql::Result<ControlPlaneObject> {
        let actor = actor(ctx).gql()?;
        let cp = super::create(
            pool(ctx),
            services(ctx),
            &actor,
            &org,
            &name,
            region.as_deref(),
        )
        .await
        .gql()?;
        ControlPlaneObject::new(cp).gql()
    }

    async fn suspend_control_plane(
        &self,
        ctx: &Context<'_>,
        org: String,
        id: Uuid,
    ) -> async_graphql::Result<ControlPlaneObject> {
        request(ctx, &org, id, Request::Suspend, None).await
    }

    async fn resume_control_plane(
        &self,
        ctx: &Context<'_>,
        org: String,
        id: Uuid,
    ) -> async_graphql::Result<ControlPlaneObject> {
        request(ctx, &org, id, Request::Resume, None).await
    }

    /// Deletes a control plane: stopped at once, its database dropped after the retention
    /// period. `confirmName` must repeat its name.
    async fn delete_control_plane(
        &self,
        ctx: &Context<'_>,
        org: String,
        id: Uuid,
        confirm_name: String,
    ) -> async_graphql::Result<ControlPlaneObject> {
        request(ctx, &org, id, Request::Delete, Some(&confirm_name)).await
    }
}
