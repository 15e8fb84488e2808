//! End-to-end tests of `qleetctl`: the real management plane in-process on port 0 against real
//! PostgreSQL, real control-plane processes (`qleet-control-plane`), the real OpenID provider of
//! the backend tests, and the built `qleetctl` binary driven as a user or a pipeline would.

mod bad_input;
mod login;
mod support;
mod workflow;
