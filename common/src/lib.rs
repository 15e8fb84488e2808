//! What both of Qleet's servers (the management plane `qleet` and each tenant's
//! `qleet-control-plane`) need and define once: the API error type with its stable codes and
//! GraphQL mapping ([`error`]), logs, request spans and metrics ([`telemetry`]), random secrets
//! and their hashes ([`secrets`]), the shutdown signal ([`shutdown`]), the `DATABASE_URL` check
//! ([`database_url`]), the refusal of text PostgreSQL cannot store ([`text`]), and stable codes
//! and size limits for every GraphQL error and document ([`graphql`]).

pub mod database_url;
pub mod error;
pub mod graphql;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod text;
