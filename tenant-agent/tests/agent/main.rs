//! The tenant agent against real peers on loopback: a moto server for AWS (plain, and in its
//! policy-checking mode), a recording proxy in front of it for what moto cannot enforce, kube's
//! `tower-test` mock for the Kubernetes API server, and an in-process control plane.

mod aws;
mod eks_access;
mod journey;
mod kube;
mod load_balancer;
mod state_secret;
mod support;
