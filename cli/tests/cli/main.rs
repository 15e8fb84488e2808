//! End-to-end tests of `qleetctl`: the real management plane in-process on port 0 against real
//! PostgreSQL, real control-plane processes (`qleet-control-plane`), the real OpenID provider of
//! the backend tests, and the built `qleetctl` binary driven as a user or a pipeline would;
//! `journey` runs the README's example through `qleet dev`, the agent binary and moto;
//! `snapshots` pins what people and scripts read (table, JSON and YAML; `snapshots/`).

mod bad_input;
mod journey;
mod login;
mod snapshots;
mod support;
mod workflow;
