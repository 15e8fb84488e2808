//! Integration tests of the management plane, one binary, a module per area.

mod agents;
mod agents_ui;
mod audit;
mod billing;
mod browser;
mod control_plane_alias;
mod cross_tenant;
mod dev_cli;
mod fleet;
mod health;
mod introspection;
mod kubernetes;
mod manifests;
mod objects;
mod objects_ui;
mod oidc;
mod orgs;
mod recovery;
mod revocation;
mod roles;
mod schema;
mod security;
mod sessions;
mod support;
mod tokens;
mod ui_security;
