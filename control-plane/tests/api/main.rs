//! Integration tests of one tenant's control plane, one binary, a module per area: each starts
//! standalone control planes (in this process, or as real `qleet-control-plane` processes) on
//! fresh databases.

mod agents;
mod audit;
mod control_plane;
mod drift;
mod idle;
mod objects;
mod recovery;
mod replacements;
mod schema;
