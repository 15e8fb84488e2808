//! Qleet management plane.
