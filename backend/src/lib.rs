//! Qleet's management plane: identity (OpenID Connect sign-in, sessions, API tokens),
//! organisations with members, roles and invitations, billing, the audit log, the fleet of
//! tenant control planes (registry, lifecycle, runtime drivers, the gateway that forwards to
//! them over HTTP), the GraphQL API and the server-rendered web UI, served by one axum
//! application over the management database. Tenant control planes are a separate crate and
//! binary (`qleet-control-plane`); this crate only talks to them over HTTP.

pub mod audit;
pub mod billing;
pub mod config;
pub mod db;
pub mod embedded_pg;
pub mod fleet;
pub mod graphql;
pub mod identity;
#[cfg(feature = "kubernetes")]
pub mod install;
pub mod keys;
pub mod limits;
pub mod orgs;
pub mod security_headers;
pub mod startup;
pub mod state;
pub mod ui;
pub mod web;

pub use qleet_common::{error, telemetry};
pub use qleet_protocol::internal_token;
