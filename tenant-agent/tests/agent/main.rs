//! The tenant agent against real peers on loopback: a moto server for AWS (plain, and in its
//! policy-checking mode), a recording proxy in front of it for what moto cannot enforce, kube's
//! `tower-test` mock (or the same fake on a loopback port) for the Kubernetes API server, an
//! in-process control plane, and `qleet dev` itself for the whole journey.

mod aws;
mod drift;
mod eks_access;
mod fault;
mod fields;
mod journey;
mod kube;
mod load_balancer;
mod managed;
mod state_secret;
mod support;
