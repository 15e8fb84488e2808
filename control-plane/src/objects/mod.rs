//! Application orchestration inside a tenant's control plane: objects of typed kinds, the
//! dependency graph their references make, output wiring, the reconciler and the agent API.
//!
//! - [`kinds`]: the built-in kinds (spec types with field-path validation, outputs).
//! - [`fields`]: what changing each field does (in place, a replacement, or refused).
//! - [`refs`]: `Kind/name` keys and references to outputs.
//! - [`compose`]: tenant-defined kinds as data (Composition → owned objects).
//! - [`yaml`]: the YAML of an apply, parsed with its expanded size bounded.
//! - [`apply`]: YAML → plan → atomic write (with the reconcile requests: an outbox).
//! - [`reconcile`]: workers that drive each object to its spec, one idempotent step at a time.
//! - [`render`]: spec + dependency outputs → what the agent is asked to do.
//! - [`rerun`]: retry a FAILED object, refresh one against the cloud.
//! - [`drift`]: observe what the agent made, compare it with the spec, remediate or report.
//! - [`tasks`]: the agent API (lease, renew, release, report).

pub mod apply;
pub mod compose;
pub mod drift;
pub mod fields;
pub mod graphql;
pub mod kinds;
pub mod reconcile;
pub mod refs;
pub mod render;
pub mod rerun;
pub mod store;
pub mod tasks;
pub mod yaml;
