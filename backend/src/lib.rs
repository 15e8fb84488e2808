//! Qleet's management plane: identity (OpenID Connect sign-in, sessions, API tokens),
//! organisations with members, roles and invitations, the audit log, the GraphQL API and the
//! server-rendered web UI, served by one axum application over the management database.

pub mod agents;
pub mod audit;
pub mod config;
pub mod control_plane;
pub mod controlplanes;
pub mod db;
pub mod embedded_pg;
pub mod error;
pub mod graphql;
pub mod identity;
pub mod internal_token;
pub mod keys;
pub mod objects;
pub mod orgs;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod ui;
pub mod web;
